"""Figures every stage draws: small PNGs saved in the run folder, drawn with seaborn (the one place that picks
matplotlib's file backend)."""
# isort: skip_file (matplotlib.use must run before pyplot is imported)
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, not windows: notebooks show the saved PNG
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402,F401  (the figures modules draw with it)

DPI = 80  # keeps committed notebooks light


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
