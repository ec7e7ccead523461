"""TEACHING.md and the notebooks' exercises tell the same story: each notebook exercise carries the solution that
TEACHING.md gives for it, and every exercise TEACHING.md lists for a notebook is there."""
from __future__ import annotations

import re

import nbformat


def test_each_notebook_exercise_has_the_solution_teaching_md_gives(root):
    teach = (root / "TEACHING.md").read_text(encoding="utf-8")
    solutions = {int(n): text.strip() for n, text in re.findall(
        r"\*\*Exercise (\d) \(.*?<details><summary>Solution</summary>\n\n(.*?)</details>", teach, re.S)}
    assert set(solutions) == {1, 2, 3, 4, 5}
    found = {}
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            m = re.match(r"### Exercise (\d)", cell.source)
            if cell.cell_type == "markdown" and m:
                found[int(m.group(1))] = path.stem
                assert solutions[int(m.group(1))] in cell.source, f"{path.name}: exercise {m.group(1)}"
    assert found == {1: "01_policy", 2: "03_judge", 3: "05_rl", 4: "06_evaluate"}
