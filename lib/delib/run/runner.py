"""The runner: runs the stages of one recipe in order, each as its numbered notebook executed by papermill
(`engine="notebook"`, the default) or as its module's `run(params)` in this process (`engine="python"`, no
Jupyter kernel); both call the same step functions and write the same files.

With papermill each executed copy lands in `outputs/<run>/NN_stage.ipynb`; the artifacts in `outputs/<run>/NN_stage/`,
and the manifest records every stage. `resume` skips a stage whose recorded fingerprint (the stage's code, the
params it reads, its input files) still matches, whichever engine ran it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
import traceback
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from delib.run.config import ParamsError, RunParams, key_line, load_params
from delib.run.io import hash_tree, sha256_file, write_json_atomic, write_text_atomic
from delib.run.manifest import Manifest, now
from delib.run.paths import examples_path, project_root, resolve, run_dir
from delib.run import files, registry
from delib.run.preflight import preflight
from delib.run.stages import ANALYSIS, EVALUATE, STAGES
from delib.run.templates import FIELDS as TEMPLATE_FIELDS, TemplateError, load_template, template_path

DONE_MARKER = "_done.json"
PARAMS_FILE = "params.yaml"  # the run's validated recipe, which the notebooks read
ENGINES = ("notebook", "python")


class UsageError(ValueError):
    """Bad command-line input: the CLI prints it on one line and exits 2."""


def parse_stages(text: Optional[str]) -> list[str]:
    """'02-03', '02,05', 'generate', '01_policy-03' or None (all) to stage names, in pipeline order."""
    if not text:
        return list(STAGES)

    def one(token: str) -> int:
        try:
            return STAGES.index(registry.get(token.strip()).name)
        except KeyError:
            raise UsageError(f"unknown stage {token.strip()!r}; stages are {', '.join(STAGES)} "
                             "(or a range like 02-03)") from None

    picked: set[int] = set()
    for part in text.split(","):
        if "-" in part.strip("-"):
            lo, hi = part.split("-", 1)
            a, b = one(lo), one(hi)
            if a > b:
                raise UsageError(f"stage range {part!r} runs backwards")
            picked.update(range(a, b + 1))
        else:
            picked.add(one(part))
    return [STAGES[i] for i in sorted(picked)]


def notebook_code(nb_path: Path) -> str:
    """The code of a notebook without its stored outputs, so that re-saving outputs changes no fingerprint."""
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def named_files(params: RunParams, optional: bool = False) -> list[tuple[tuple, Path]]:
    """(key path, file) of every file params name that stages read: the spec, its mapping, the prompt templates
    (the defaults when params name none), the worked examples, the prompt sets, the benchmarks, the roles'
    adapters; with `optional`, also the files a stage reads only when they are there (the validity sets)."""
    pairs = [(("spec", "path"), params.spec.path), (("spec", "mapping"), params.spec.mapping),
             (("generate", "examples"), examples_path(params)), (("prompts", "xstest_path"), params.prompts.xstest_path),
             (("prompts", "strongreject_path"), params.prompts.strongreject_path)]
    if params.prompts.strongreject_path:  # its techniques
        pairs.append((("prompts", "jailbreaks_path"), params.prompts.jailbreaks_path))
    pairs += [(("spec", "templates", name), str(template_path(params, name))) for name in TEMPLATE_FIELDS]
    pairs += [(("prompts", "sets", i, "path"), s.path) for i, s in enumerate(params.prompts.sets)]
    pairs += [(("models", name, "adapter"), role.adapter) for name, role in params.models if role is not None]
    pairs += [(("evaluate", "extra_models", name, "adapter"), role.adapter)
              for name, role in params.evaluate.extra_models.items()]
    if optional:
        pairs += [(("evaluate", key), getattr(params.evaluate, key)) for key in ("validity_xstest", "validity_rbr")]
    return [(loc, resolve(p)) for loc, p in pairs if p]


def check_named_files(params: RunParams, params_file: Path) -> None:
    """Every file params name exists, and the model-call cache (when there is one) opens, before anything runs:
    one line per problem with the params file, the line and the key (the key's default when the recipe does not
    set it)."""
    root = yaml.compose(params_file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)

    def where(loc: tuple) -> str:
        line = key_line(root, loc)
        prefix = f"{params_file}:{line}" if line else str(params_file)
        return f"{prefix}: {'.'.join(map(str, loc))}"

    problems = [f"{where(loc)}: file not found: {path}" for loc, path in named_files(params) if not path.is_file()]
    for name in TEMPLATE_FIELDS:
        try:
            load_template(name, params)
        except TemplateError as err:
            if template_path(params, name).is_file():  # a missing file is reported above
                problems.append(f"{where(('spec', 'templates', name))}: {err}")
    cache = resolve(params.cache.path)
    if params.cache.enabled and cache.exists():
        try:
            with closing(sqlite3.connect(cache)) as db:
                db.execute("PRAGMA schema_version")  # reads the header: fails on a file that is not a database
        except sqlite3.DatabaseError as err:
            problems.append(f"{where(('cache', 'path'))}: {cache}: the model-call cache is not a readable sqlite "
                            f"database ({err}): move it aside, or point cache.path at a new file")
    if problems:
        raise ParamsError("\n".join(problems))


def stage_code(stage: str, notebook: Path) -> str:
    """A stage's code: its notebook's code cells (without stored outputs, so re-saving outputs changes nothing)
    and its module's source."""
    import importlib.util

    found = importlib.util.find_spec(f"{registry.PACKAGE}.{registry.get(stage).module}")
    module_source = Path(found.origin).read_text(encoding="utf-8")  # read, not imported: training imports torch
    return notebook_code(notebook) + "\n" + module_source if notebook.is_file() else module_source


def fingerprint(stage: str, params: RunParams, notebook: Path, rdir: Path) -> str:
    """What a stage's result depends on: its code, the params it reads (every section but those other stages
    own and it does not read), and every file upstream of it."""
    h = hashlib.sha256()
    h.update(stage_code(stage, notebook).encode())
    relevant = params.model_dump(mode="json")
    relevant.pop("run_name")
    me = registry.get(stage)
    for other in registry.REGISTRY.values():
        if other.section and other.section != me.section and other.section not in me.reads:
            relevant.pop(other.section)
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for _, f in named_files(params, optional=stage in (EVALUATE, ANALYSIS)):  # the validity sets: read by 06-07
        h.update(str(f).encode())
        h.update(sha256_file(f).encode() if f.is_file() else b"missing")
    for upstream in STAGES[: STAGES.index(stage)]:
        if (rdir / upstream).is_dir():
            hash_tree(rdir / upstream, h, skip=(DONE_MARKER,))
    return h.hexdigest()


def is_up_to_date(stage: str, fp: str, rdir: Path) -> bool:
    marker = rdir / stage / DONE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fp
    except json.JSONDecodeError:
        return False


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"outputs folder {folder} is not writable: {err.strerror or err}") from None


@contextmanager
def _stderr_to(log_file: Path):
    """Send this process's stderr, and so the kernel's (which inherits it), to the stage's log file: the
    terminal keeps one progress line per stage."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@dataclass
class StageFailed(Exception):
    stage: str
    executed: Optional[Path]  # the executed notebook; None when the stage ran as Python
    detail: str
    log_file: Optional[Path] = None

    def __str__(self) -> str:
        where = f"\n  executed notebook: {self.executed}" if self.executed else ""
        log_file = self.log_file or (self.executed.with_suffix(".log") if self.executed else None)
        return f"stage {self.stage} failed: {self.detail}{where}" + (f"\n  stage log: {log_file}" if log_file else "")


def _describe_failure(err: Exception) -> str:
    cell = getattr(err, "cell_index", None)
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if cell is not None and ename:
        count = getattr(err, "exec_count", None)
        source = (getattr(err, "source", "") or "").strip().splitlines()
        first = f", {source[0][:80]!r}" if source else ""
        return f"cell {cell + 1} of the executed notebook (In [{count}]{first}) raised {ename}: {evalue}"
    return f"{type(err).__name__}: {err}"


def _stages_to_run(params: RunParams, selected: list[str], notebooks_dir: Path, rdir: Path, resume: bool
                   ) -> list[str]:
    """The selected stages from the first one that is not up to date (all of them unless resuming): what the
    preflight check has to look at."""
    if not resume or not (rdir / "manifest.json").is_file():
        return selected
    for i, stage in enumerate(selected):
        if not is_up_to_date(stage, fingerprint(stage, params, notebooks_dir / f"{stage}.ipynb", rdir), rdir):
            return selected[i:]
    return []


def run(params_file: str | Path, stages: Optional[str] = None, resume: bool = False, force: bool = False,
        notebooks_dir: Optional[Path] = None, log: Callable[[str], None] = print,
        command: Optional[Sequence[str]] = None, check: bool = True, engine: str = "notebook") -> Path:
    """Run the selected stages of the recipe in `params_file`; return the run folder.

    `engine`: "notebook" executes each stage's notebook with papermill (the executed copy is part of the run),
    "python" calls each stage's `run(params)` in this process. Raises ParamsError or UsageError for bad input
    (before anything runs: with `check`, also every model role the stages call and what the recipe needs of the
    machine, run.preflight) and StageFailed when a stage fails.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; engines are {', '.join(ENGINES)}")
    params_file = Path(params_file)
    params = load_params(params_file)
    check_named_files(params, params_file)
    selected = parse_stages(stages)
    root = project_root()
    notebooks_dir = Path(notebooks_dir) if notebooks_dir else root / "notebooks"
    for stage in selected if engine == "notebook" else ():
        if not (notebooks_dir / f"{stage}.ipynb").is_file():
            raise UsageError(f"notebook for stage {stage} not found: {notebooks_dir / (stage + '.ipynb')}")

    rdir = run_dir(params)
    if check:
        problems = preflight(params, _stages_to_run(params, selected, notebooks_dir, rdir, resume and not force))
        if problems:
            raise UsageError("\n".join(f"preflight: {p}" for p in problems) +
                             "\n(nothing was run; --no-preflight skips these checks)")
    _check_writable(rdir.parent)
    if (rdir / "manifest.json").exists() and not (resume or force):
        raise UsageError(f"run folder {rdir} already exists: pass --resume to continue it, --force to re-run "
                         "its stages, or choose another run_name")
    rdir.mkdir(parents=True, exist_ok=True)

    manifest = Manifest(rdir)
    manifest.begin(params, params_file.resolve(), root, list(command or sys.argv))
    # the notebooks read the validated recipe as it was when the run began, written into the run folder: an edit
    # to the recipe file during a long run changes no later stage (the Python engine holds the params in memory)
    frozen = write_text_atomic(rdir / PARAMS_FILE, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    parameters = {"recipe": str(frozen), "run_name": params.run_name}
    os.environ["DELIB_ROOT"] = str(root)  # the kernel resolves params paths against the same root

    for i, stage in enumerate(selected, 1):
        notebook = notebooks_dir / f"{stage}.ipynb"
        executed = rdir / f"{stage}.ipynb" if engine == "notebook" else None
        prefix = f"[{i}/{len(selected)}] {stage}"
        fp = fingerprint(stage, params, notebook, rdir)
        if resume and not force and is_up_to_date(stage, fp, rdir):
            log(f"{prefix}: up to date, skipped")
            manifest.stage(stage, status="skipped", skipped_at=now())
            continue
        what = notebook.name if executed else f"{registry.PACKAGE}.{registry.get(stage).module} (Python)"
        log(f"{prefix}: running {what} ...")
        started, t0 = now(), time.perf_counter()
        manifest.stage(stage, status="running", start=started, end=None, duration_s=None,
                       notebook=str(executed) if executed else None, engine=engine, error=None)
        (rdir / stage / DONE_MARKER).unlink(missing_ok=True)
        files.USAGE[stage].path(rdir).unlink(missing_ok=True)  # usage is per run of a stage: a re-run replaces it
        try:
            if executed:
                import papermill
                with _stderr_to(rdir / f"{stage}.log"):
                    papermill.execute_notebook(str(notebook), str(executed), parameters=parameters,
                                               kernel_name="python3", cwd=str(root), progress_bar=False)
            else:
                registry.module(stage).run(params)
        except KeyboardInterrupt:
            manifest.stage(stage, status="interrupted", end=now(), duration_s=round(time.perf_counter() - t0, 2))
            manifest.finish("interrupted")
            raise
        except Exception as err:  # papermill's execution error, a kernel that died, or the stage's own error
            if executed:
                detail, log_file = _describe_failure(err), None
            else:
                detail, log_file = f"{type(err).__name__}: {err}", rdir / f"{stage}.log"
                with open(log_file, "a", encoding="utf-8") as f:
                    traceback.print_exception(err, file=f)
            manifest.stage(stage, status="failed", end=now(), duration_s=round(time.perf_counter() - t0, 2),
                           error=detail)
            manifest.collect_usage(rdir)
            manifest.finish("failed")
            raise StageFailed(stage, executed, detail, log_file) from None
        duration = round(time.perf_counter() - t0, 2)
        write_json_atomic(rdir / stage / DONE_MARKER, {"fingerprint": fp, "finished": now(), "engine": engine})
        manifest.collect_usage(rdir)
        manifest.stage(stage, status="ok", end=now(), duration_s=duration)
        log(f"{prefix}: ok in {duration:.1f} s" + (f" -> {executed}" if executed else ""))

    manifest.collect_usage(rdir)
    manifest.finish("ok")
    return rdir
