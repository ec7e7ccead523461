"""Stage 03's figures: the funnel from generated samples to the SFT set, and the score distributions."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from delib.run.figures import plt, save, sns


def funnel(funnel_table: pd.DataFrame, path: Path) -> Path:
    """How many samples survive each filtering step."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(funnel_table) + 1))
    sns.barplot(data=funnel_table, y="step", x="samples", ax=ax, color="#4c72b0")
    for i, n in enumerate(funnel_table["samples"]):
        ax.text(n, i, f" {n}", va="center")
    ax.set(title="From generated samples to the SFT set", xlabel="samples", ylabel="")
    return save(fig, path)


def score_distributions(scored: pd.DataFrame, threshold: float, path: Path) -> Path:
    """The judge's aggregated overall score and the final (judge + rules) score, with the threshold."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
    for ax, col, title in ((axes[0], "judge_overall", "judge overall (min of k)"),
                           (axes[1], "final_score", "final score (judge + rules)")):
        data = scored[col].dropna()
        sns.histplot(data, bins=range(0, 12), ax=ax, discrete=col == "judge_overall", color="#55a868")
        ax.set(title=title, xlabel="score (0-10)", xlim=(-0.5, 10.5))
        if col == "final_score":
            ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
            ax.legend()
    return save(fig, path)
