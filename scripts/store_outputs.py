"""Re-execute the stage notebooks in place, in order, with their default parameters, and save their outputs.

The stored outputs are what nbval compares on `make test`; run this (`make notebooks`) after changing a notebook
or what it shows. It writes the default run's artifacts to outputs/<run_name>/ as nbval does.
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
from delib.run.paths import STAGES  # noqa: E402

only = sys.argv[1:]
for stage in STAGES:
    if only and not any(stage.startswith(o) for o in only):
        continue
    path = ROOT / "notebooks" / f"{stage}.ipynb"
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)
    print(f"{stage}: stored outputs in {time.perf_counter() - t0:.1f} s")
