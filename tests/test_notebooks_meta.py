"""Every stage notebook: kernel python3, exactly one parameters cell, literals only, in step with the smoke recipe;
nbval markers it reads, each with its reason; no cell that shows model output compared by accident."""
import ast
import json

import pytest

from delib.run.notebooks import SOURCE, parameters_cells
from delib.run.paths import STAGES


@pytest.fixture(params=STAGES)
def nb(request, root):
    return json.loads((root / "notebooks" / f"{request.param}.ipynb").read_text())


def test_kernel_is_python3(nb):
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_one_parameters_cell_of_literals(nb):
    cells = parameters_cells(nb)
    assert len(cells) == 1
    tree = ast.parse("".join(cells[0]["source"]))
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign), ast.dump(stmt)
        ast.literal_eval(stmt.value)  # raises on anything computed


def test_parameters_cell_is_the_recipe_and_the_run_name_only(nb):
    assert "".join(parameters_cells(nb)[0]["source"]) == SOURCE, "run: python -m delib.run.notebooks sync"
    assert len(SOURCE.splitlines()) <= 4, "a few lines: the recipe is a file, not its keys"


def test_no_big_embedded_images(nb):
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            for mime, data in output.get("data", {}).items():
                if mime.startswith("image/"):
                    assert len("".join(data)) < 200_000, "keep figures small, or save them as files"


def test_nbval_markers_are_ones_nbval_reads(nb):
    """nbval matches a marker comment only when it is the whole comment: `# NBVAL_IGNORE_OUTPUT (why)` is ignored
    silently and the cell is compared after all. Put the reason on the next line."""
    from nbval.plugin import comment_markers

    for cell in nb["cells"]:
        for line in "".join(cell["source"]).splitlines():
            text = line.strip().lstrip("#").strip()
            if line.strip().startswith("#") and text.upper().startswith("NBVAL"):
                assert text in comment_markers, f"nbval does not read the marker {line.strip()!r}"


def test_stored_outputs_are_from_a_whole_run(nb):
    """nbval compares against the stored outputs: every code cell must have run (`make notebooks`)."""
    unrun = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]
    assert not unrun, f"cells {unrun} have no stored outputs: run `make notebooks`"


def test_no_cell_relies_on_a_trailing_semicolon(nb):
    """nbval executes cells with store_history=False, and IPython then cannot see a trailing ";": the value is
    displayed under nbval but not in Jupyter or papermill, so the stored outputs never match."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            code = [l for l in "".join(cell["source"]).splitlines() if l.strip() and not l.strip().startswith("#")]
            assert not (code and code[-1].split("#")[0].rstrip().endswith(";")), code[-1]


# What a notebook shows is model output when it comes from a model call, a trainer, or a file that a model stage
# wrote; such values differ from machine to machine (float summation order, sampling), so nbval must not compare them.
MODEL_CALLS = {"run_generation", "chat_many", "chat", "samples_table", "judgements_table", "score_samples",
               "filter_samples", "read_sft_set", "show_samples", "malformed_counts", "AnswerReward", "ask", "show_answers",
               "evaluate_variants", "grade_strongreject", "strongreject_per_prompt", "read_rewards", "load_evaluation",
               "judge_outputs", "judge_summary", "training_summaries", "training_logs", "stage_times", "findings"}
# The stage steps whose results follow from a model's output: 02's samples; 03's gated samples (the generator's),
# judgements, scores, funnel and sets; 04-05's training; 06's answers and what is counted from them.
MODEL_STEPS = ("generate", "gate", "judge", "score", "second_judge", "filter", "datasets", "sft_set", "train",
               "reward_of", "rewards", "ask", "answer", "grade", "metrics", "xstest", "strongreject", "validity")
MODEL_CALLS_QUALIFIED = {("training", "run"), ("logs", "read"), *(("stage", step) for step in MODEL_STEPS)}
MODEL_STAGES = ("02_generate", "03_judge", "04_sft", "05_rl", "06_evaluate")
STRUCTURE_ONLY = "# Compared by nbval, structure only"  # a deliberate claim, for a cell whose output is the same everywhere


def _mentions_model_output(node, tainted: set) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in tainted:
            return True
        if isinstance(sub, ast.Call):
            f = sub.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in MODEL_CALLS:
                return True
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in MODEL_CALLS_QUALIFIED:
                return True
            if any(isinstance(a, ast.Constant) and a.value in MODEL_STAGES for a in ast.walk(sub)
                   if isinstance(a, ast.Constant)) and name in {"require", "read_json", "read_csv"}:
                return True
    return False


def _shown(tree: ast.Module) -> list:
    """The expressions a cell displays: print/display arguments and a bare last expression (not an Image:
    nbval does not compare images)."""
    shown = []
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Call) and getattr(sub.func, "id", None) in {"print", "display"}:
            shown += [a for a in sub.args if not (isinstance(a, ast.Call) and getattr(a.func, "id", None) == "Image")]
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1].value
        if not (isinstance(last, ast.Call) and getattr(last.func, "id", None) in {"print", "display", "Image"}):
            shown.append(last)
    return shown


def test_cells_showing_model_output_are_not_compared_and_say_why(nb):
    """A cell that prints or displays a value derived from a model call, a trainer or a model stage's files carries
    `# NBVAL_IGNORE_OUTPUT` with its reason on the next line; its checks are plain asserts that run under nbval.
    Values are followed through assignments from cell to cell."""
    tainted: set = set()
    unmarked = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        source = "".join(cell["source"])
        tree = ast.parse(source)
        for sub in ast.walk(tree):
            targets = []
            if isinstance(sub, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                value = sub.value
            elif isinstance(sub, (ast.For, ast.comprehension)):
                targets, value = [sub.target], sub.iter
            elif isinstance(sub, ast.withitem) and sub.optional_vars is not None:
                targets, value = [sub.optional_vars], sub.context_expr
            if targets and value is not None and _mentions_model_output(value, tainted):
                tainted |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        lines = [l.strip() for l in source.splitlines()]
        marked = "# NBVAL_IGNORE_OUTPUT" in lines
        if marked:
            at = lines.index("# NBVAL_IGNORE_OUTPUT")
            assert at + 1 < len(lines) and lines[at + 1].startswith("#") and len(lines[at + 1]) > 12, (
                f"cell {i}: say why its output is not compared, in a comment on the line after the marker")
            continue
        if STRUCTURE_ONLY in source or not cell.get("outputs"):  # nothing stored, nothing compared
            continue
        shows = [ast.unparse(e) for e in _shown(tree) if _mentions_model_output(e, tainted)]
        if shows:
            unmarked.append(f"cell {i}: {shows[0][:70]!r}")
    assert not unmarked, ("these cells show model output that nbval would compare: mark each "
                          "# NBVAL_IGNORE_OUTPUT with the reason, and check what must hold with asserts\n"
                          + "\n".join(unmarked))
