"""Keeps the stage notebooks' parameters cells alike: two literals, the recipe and the run name.

A stage notebook takes a params file, not its keys: opened in Jupyter it runs the smoke recipe (so that nbval,
`make test`, re-runs exactly what the stored outputs came from); `delib run` and papermill pass another
(`papermill NB OUT -p recipe params/default.yaml`). `python -m delib.run.notebooks sync` rewrites every notebook's
parameters cell; a test checks that none has drifted.
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

from delib.run.paths import STAGES, project_root

RECIPE = "params/smoke.yaml"  # what the notebooks carry; their stored outputs come from it
SOURCE = ("# Parameters: papermill and `delib run` set these; opened in Jupyter, the notebook runs the smoke recipe\n"
          f"recipe = {RECIPE!r}  # the run's params file (relative to the project root, or absolute)\n"
          "run_name = None  # None: the recipe's own run_name")


INJECTED_COMMENT = "# Parameters"  # the first line of the cell papermill injects after the parameters cell


def injected_names(history: Any) -> list[str]:
    """The names that papermill's injected cells assigned, read from IPython's `In` (the sources run so far)."""
    names: list[str] = []
    for source in history if isinstance(history, (list, tuple)) else ():
        if not (isinstance(source, str) and source.lstrip().startswith(INJECTED_COMMENT)):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        names += [target.id for node in tree.body if isinstance(node, ast.Assign)
                  for target in node.targets if isinstance(target, ast.Name)]
    return names


def parameters_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def sync(root: Path | None = None) -> list[Path]:
    """Rewrite each stage notebook's parameters cell; return those that changed."""
    root = root or project_root()
    changed = []
    for stage in STAGES:
        path = root / "notebooks" / f"{stage}.ipynb"
        nb = json.loads(path.read_text(encoding="utf-8"))
        (cell,) = parameters_cells(nb)
        if "".join(cell["source"]) != SOURCE:
            cell["source"] = SOURCE.splitlines(keepends=True)
            cell["metadata"].get("jupyter", {}).pop("source_hidden", None)  # two lines: nothing to hide
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["sync"]:
        sys.exit("usage: python -m delib.run.notebooks sync")
    for path in sync():
        print(f"updated {path}")
