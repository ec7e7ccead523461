"""Keeps the stage notebooks honest: their parameters cell mirrors `params/smoke.yaml`, in literals only.

The notebooks carry the smoke recipe, so that opening one in Jupyter runs in minutes and nbval (`make test`)
re-runs exactly what the stored outputs came from; `delib run` and papermill inject any other recipe.
`python -m delib.run.notebooks sync` rewrites every notebook's parameters cell from the smoke recipe;
a test checks that nothing has drifted.
"""
from __future__ import annotations

import json
import pprint
import sys
from pathlib import Path

from delib.run.config import as_papermill_parameters, load_params
from delib.run.paths import STAGES, project_root

RECIPE = "params/smoke.yaml"  # what the notebooks carry; their stored outputs come from it
HEADER = ("# Parameters: the smoke recipe (params/smoke.yaml). papermill and `delib run` replace these literals;\n"
          "# derived values go in the next cell\n")


def parameters_source(parameters: dict) -> str:
    """The parameters cell for a recipe: one `name = literal` per top-level key."""
    lines = [HEADER]
    for name, value in parameters.items():
        lines.append(f"{name} = {pprint.pformat(value, sort_dicts=False, width=110)}\n")
    return "".join(lines).rstrip("\n")


def parameters_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def sync(root: Path | None = None) -> list[Path]:
    """Rewrite each stage notebook's parameters cell from the smoke recipe; return those that changed."""
    root = root or project_root()
    source = parameters_source(as_papermill_parameters(load_params(root / RECIPE)))
    changed = []
    for stage in STAGES:
        path = root / "notebooks" / f"{stage}.ipynb"
        nb = json.loads(path.read_text(encoding="utf-8"))
        (cell,) = parameters_cells(nb)
        collapsed = cell.setdefault("metadata", {}).get("jupyter", {}).get("source_hidden") is True
        if "".join(cell["source"]) != source or not collapsed:
            cell["source"] = source.splitlines(keepends=True)
            cell["metadata"].setdefault("jupyter", {})["source_hidden"] = True  # the story comes first
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["sync"]:
        sys.exit("usage: python -m delib.run.notebooks sync")
    for path in sync():
        print(f"updated {path}")
