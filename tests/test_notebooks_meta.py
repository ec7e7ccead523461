"""Every stage notebook: kernel python3, exactly one parameters cell, literals only, in step with default.yaml."""
import ast
import json

import pytest

from delib.config import as_papermill_parameters, load_params
from delib.notebooks import parameters_cells, parameters_source
from delib.paths import STAGES


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


def test_parameters_cell_mirrors_default_recipe(nb, root):
    expected = parameters_source(as_papermill_parameters(load_params(root / "params" / "default.yaml")))
    assert "".join(parameters_cells(nb)[0]["source"]) == expected, "run: python -m delib.notebooks sync"


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
