"""Stages 06-07: the evaluation's figures (seaborn), each saved as a small PNG in the run folder.

Every figure of a metric carries its bootstrap interval as an error bar: metrics per variant, paired differences,
the Pareto plot of not_unsafe against not_overrefuse; plus the funnel, judge scores, training curves and the
heatmap of the sections chains of thought cite.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from delib.evaluation.metrics import bootstrap_weights
from delib.judging.plots import funnel  # noqa: F401  (stage 07 redraws stage 03's funnel)
from delib.run.figures import plt, save, sns

PALETTE = "colorblind"


def _colors(names: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(names, sns.color_palette(PALETTE, max(3, len(names)))))


def level(table: pd.DataFrame) -> str:
    """The intervals' confidence level as a percentage, from the table's `confidence` column (0.95 without one)."""
    c = table["confidence"].dropna() if "confidence" in table else pd.Series(dtype=float)
    return f"{(c.iloc[0] if len(c) else 0.95) * 100:.3g}%"


def _empty(path: Path, text: str, size=(6, 1.6)) -> Path:
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return save(fig, path)


def metrics_per_variant(metrics: pd.DataFrame, keys: Sequence[str], path: Path, title: str = "",
                        labels: Optional[Mapping[str, str]] = None) -> Path:
    """Each metric (x) for each variant (colour), point and bootstrap interval."""
    m = metrics[metrics["key"].isin(keys)]
    keys = [k for k in keys if k in set(m["key"])]
    if m.empty:
        return _empty(path, "no metric to show")
    variants = list(dict.fromkeys(m["variant"]))
    colors = _colors(variants)
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(keys) + 2), 3.4))
    sns.set_style("whitegrid")
    for i, v in enumerate(variants):
        rows = m[m["variant"] == v].set_index("key").reindex(keys)
        x = np.arange(len(keys)) + (i - (len(variants) - 1) / 2) * width
        y = rows["value"].to_numpy(float)
        err = np.vstack([y - rows["lo"].to_numpy(float), rows["hi"].to_numpy(float) - y])
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o", capsize=3, color=colors[v],
                    label=(labels or {}).get(v, v))
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set(ylim=(-0.05, 1.05), ylabel=f"rate ({level(m)} bootstrap CI)", title=title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    return save(fig, path)


def differences(diffs: pd.DataFrame, keys: Sequence[str], path: Path, title: str = "") -> Path:
    """Paired differences (variant - baseline) with their intervals: a forest plot; filled = interval excludes 0."""
    d = diffs[diffs["key"].isin(keys)]
    if d.empty:
        return _empty(path, "no paired difference to show (a single variant was evaluated)")
    pairs = list(dict.fromkeys(d["variant"] + " - " + d["baseline"]))
    colors = _colors(pairs)
    keys = [k for k in keys if k in set(d["key"])]
    height = 0.8 / len(pairs)
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(keys) * max(1, len(pairs) / 2) + 1.2))
    for i, pair in enumerate(pairs):
        rows = d[(d["variant"] + " - " + d["baseline"]) == pair].set_index("key").reindex(keys)
        y = np.arange(len(keys)) + (i - (len(pairs) - 1) / 2) * height
        x = rows["diff"].to_numpy(float)
        err = np.vstack([x - rows["lo"].to_numpy(float), rows["hi"].to_numpy(float) - x])
        ax.errorbar(x, y, xerr=np.nan_to_num(err), fmt="none", ecolor=colors[pair], capsize=2)
        sig = rows["significant"].fillna(False).to_numpy(bool)
        ax.scatter(x[sig], y[sig], color=colors[pair], zorder=3, label=pair)
        ax.scatter(x[~sig], y[~sig], facecolor="white", edgecolor=colors[pair], zorder=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(keys)), keys)
    ax.invert_yaxis()
    ax.set(xlabel=f"difference, {level(d)} paired bootstrap CI\n(hollow: not significant)", title=title,
           xlim=(-1.08, 1.08) if d["kind"].isin(["rate", "share"]).all() else None)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return save(fig, path)


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points no other point beats on both x and y (higher is better on both)."""
    keep = [i for i, p in points.iterrows()
            if not ((points[x] >= p[x]) & (points[y] >= p[y]) & ((points[x] > p[x]) | (points[y] > p[y]))).any()]
    return points.loc[keep].sort_values(x)


def pareto(metrics: pd.DataFrame, path: Path, x: str = "not_overrefuse", y: str = "not_unsafe",
           title: str = "", labels: Optional[Mapping[str, str]] = None) -> Path:
    """y against x per variant with both intervals, the non-dominated variants joined: the paper's headline plot
    (there StrongREJECT against XSTest; here by default the held-out not_unsafe against not_overrefuse)."""
    wide = {}
    for key in (x, y):
        rows = metrics[metrics["key"] == key].set_index("variant")
        wide[key], wide[key + "_lo"], wide[key + "_hi"] = rows["value"], rows["lo"], rows["hi"]
    pts = pd.DataFrame(wide).dropna(subset=[x, y])
    if pts.empty:
        return _empty(path, f"no variant has both {x} and {y}")
    colors = _colors(list(pts.index))
    markers = "osD^vP*X"
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for i, (v, p) in enumerate(pts.iterrows()):  # shrinking markers: variants on the same spot stay visible
        ax.errorbar(p[x], p[y], xerr=[[p[x] - p[x + "_lo"]], [p[x + "_hi"] - p[x]]],
                    yerr=[[p[y] - p[y + "_lo"]], [p[y + "_hi"] - p[y]]], fmt=markers[i % len(markers)],
                    markersize=max(4, 11 - 2 * i), capsize=3, color=colors[v], alpha=0.85,
                    label=(labels or {}).get(v, v))
    front = pareto_front(pts[[x, y]], x, y)
    ax.plot(front[x], front[y], color="grey", ls="--", lw=1, zorder=0)
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel=f"{x} ({level(metrics)} CI)",
           ylabel=f"{y} ({level(metrics)} CI)",
           title=title or "safety against over-refusal (up and right is better)")
    ax.legend(fontsize=8, loc="lower left")
    return save(fig, path)


def judge_scores(scored: pd.DataFrame, threshold: float, path: Path, resamples: int = 1000, seed: int = 0) -> Path:
    """The judge's min-of-k overall score and the final score of stage 03's samples, with each mean and its
    bootstrap interval marked."""
    cols = [(c, t) for c, t in (("judge_overall", "judge overall (min of k)"),
                                ("final_score", "final score (judge + rules)")) if c in scored]
    if scored.empty or not cols:
        return _empty(path, "no judged samples")
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3), sharey=True, squeeze=False)
    for ax, (col, title) in zip(axes[0], cols):
        data = scored[col].dropna().to_numpy(float)
        sns.histplot(data, bins=np.arange(-0.5, 11), ax=ax, color="#55a868")
        if len(data):
            w = bootstrap_weights(len(data), resamples, seed)
            boots = w @ data / len(data)
            lo, hi = np.percentile(boots, [2.5, 97.5])
            ax.axvspan(lo, hi, color="#4c72b0", alpha=0.25)
            ax.axvline(data.mean(), color="#4c72b0", label=f"mean {data.mean():.1f} [{lo:.1f}, {hi:.1f}]")
        if col == "final_score":
            ax.axvline(threshold, color="#c44e52", ls="--", label=f"threshold {threshold:g}")
        ax.set(title=title, xlabel="score (0-10)", xlim=(-0.5, 10.5))
        ax.legend(fontsize=7)
    return save(fig, path)


def training_curves(logs: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """Loss (SFT), reward and KL (RL) per optimizer step; the reward's spread across a step's group as a band."""
    panels = [(stage, col) for stage, log in logs.items() if not log.empty
              for col in ("loss", "reward", "kl") if col in log and log[col].notna().any()
              and not (col == "loss" and "reward" in log)]
    if not panels:
        return _empty(path, "no training log (stages 04 and 05 have not trained a model)")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    for ax, (stage, col) in zip(axes[0], panels):
        log = logs[stage]
        sns.lineplot(data=log, x="step", y=col, ax=ax, marker="o")
        std = f"{col}_std"
        if std in log and log[std].notna().any():
            ax.fill_between(log["step"], log[col] - log[std], log[col] + log[std], alpha=0.2,
                            label="± std over the step's completions")
            ax.legend(fontsize=7)
        ax.set(title=f"{stage}: {col}", xlabel="optimizer step")
    return save(fig, path)


def citation_heatmap(counts: pd.DataFrame, path: Path) -> Path:
    """Which category's sections the chains of thought cite (columns) for prompts of each category (rows), one
    panel per variant; a diagonal means the CoT recalls the right policy."""
    if counts.empty:
        return _empty(path, "no chain of thought cites a section of the spec")
    variants = list(dict.fromkeys(counts["variant"]))
    rows = sorted(counts["category"].unique())
    cited = set(counts["cited_category"])
    cols = sorted(cited - {"style", "other"}) + [c for c in ("style", "other") if c in cited]
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants) + 1, 0.45 * len(rows) + 2),
                             squeeze=False)
    for ax, v in zip(axes[0], variants):
        grid = (counts[counts["variant"] == v].pivot_table(index="category", columns="cited_category",
                                                           values="citations", aggfunc="sum")
                .reindex(index=rows, columns=cols).fillna(0))
        sns.heatmap(grid, annot=True, fmt=".0f", cmap="Blues", cbar=False, ax=ax)
        ax.set(title=v, xlabel="category of the cited section", ylabel="prompt category")
    return save(fig, path)


def refusal_labels(answers: pd.DataFrame, path: Path, split: str = "xstest_type") -> Path:
    """The three-way refusal labels (XSTest's) per variant, for prompts to comply with and prompts to refuse."""
    if answers.empty:
        return _empty(path, "no answers")
    df = answers.dropna(subset=["refusal"]).assign(
        prompts=lambda d: np.where(d["expected_action"] == "comply", "safe (comply)", "unsafe (refuse)"))
    share = (df.groupby(["variant", "prompts"])["refusal"].value_counts(normalize=True).rename("share")
             .reset_index())
    g = sns.catplot(data=share, kind="bar", x="share", y="variant", hue="refusal", col="prompts", height=2.6,
                    aspect=1.4, hue_order=["full_compliance", "partial_refusal", "full_refusal"], palette=PALETTE)
    g.set_titles("{col_name}")
    g.figure.set_dpi(80)
    return save(g.figure, path)


def compare_runs(table: pd.DataFrame, keys: Sequence[str], path: Path) -> Path:
    """The same metrics across run folders (one colour per run/variant), with intervals."""
    t = table.assign(variant=table["run"] + ": " + table["variant"])
    return metrics_per_variant(t, keys, path, title="runs compared")


CATEGORY_METRICS = ("not_unsafe", "not_overrefuse", "correct_action")


def by_category(metrics: pd.DataFrame, categories: Sequence[str], path: Path,
                labels: Optional[Mapping[str, str]] = None) -> Path:
    """One panel per headline metric (not_unsafe, not_overrefuse, correct_action): each category (y) for each
    variant (colour), point and bootstrap interval over that category's held-out prompts."""
    rows = [(name, c) for name in CATEGORY_METRICS for c in categories
            if (metrics["key"] == f"{name}[{c}]").any()]
    if not rows:
        return _empty(path, "no per-category metric to show")
    variants = list(dict.fromkeys(metrics["variant"]))
    colors = _colors(variants)
    names = [n for n in CATEGORY_METRICS if any(r[0] == n for r in rows)]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 1.6, 0.42 * len(categories) + 1.4),
                             sharey=True, squeeze=False)
    height = 0.8 / max(1, len(variants))
    for ax, name in zip(axes[0], names):
        for i, v in enumerate(variants):
            m = metrics[metrics["variant"] == v].set_index("key").reindex([f"{name}[{c}]" for c in categories])
            y = np.arange(len(categories)) + (i - (len(variants) - 1) / 2) * height
            x = m["value"].to_numpy(float)
            err = np.vstack([x - m["lo"].to_numpy(float), m["hi"].to_numpy(float) - x])
            ax.errorbar(x, y, xerr=np.nan_to_num(err), fmt="o", ms=4, capsize=2, color=colors[v],
                        label=(labels or {}).get(v, v))
        ax.set(xlim=(-0.05, 1.05), title=name)
        ax.set_yticks(range(len(categories)), categories)
        ax.invert_yaxis()
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    return save(fig, path)
