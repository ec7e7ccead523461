"""Benchmark of the spec parser (stage 01): time `parse_spec` on a large Markdown spec and report its shape.
Usage: python bench/bench_spec.py [SPEC.md] [--repeat N]; without a path, a synthetic ~270 KB, 400-section spec.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
from delib.spec.document import SpecError, parse_spec  # noqa: E402

FILLER = ("The assistant should weigh the request against the policy, cite the section it relies on, and prefer "
          "a safe completion to a bare refusal when part of the request can be served. ")
TITLES = ["Rules", "Examples", "Edge cases", "Style", "Levels"]  # repeated under every category: slug collisions


def synthetic_spec(categories: int = 20, per_category: int = 19) -> str:
    """A spec with explicit and slug ids, repeated titles, and fenced blocks whose `#` lines are not headings."""
    out = []
    for c in range(categories):
        out += [f"# Category {c} {{#cat-{c} authority=root}}", "", FILLER * 4, ""]
        for s in range(per_category):
            level = 2 if s % 3 == 0 else 4 if s % 7 == 6 else 3
            title = TITLES[s % len(TITLES)]
            head = f"{title} {{#cat-{c}-s{s}}}" if s % 4 == 0 else title  # every fourth gets an explicit id
            out += [f"{'#' * level} {head}", "", FILLER * (3 + s % 2), ""]
            if s % 5 == 1:
                out += ["```python", "# a comment, not a heading", "x = 1", "```", ""]
            if s % 5 == 3:
                out += ["~~~xml", "<user>", "## not a heading either", "```", "# nor this", "```", "</user>", "~~~", ""]
    return "\n".join(out)


def explicit_ids(text: str, spec) -> int:
    """Sections whose heading line carries `{#id}` (the parser keeps the line, not whether the id was explicit)."""
    lines = text.splitlines()
    count = 0
    for s in spec.sections.values():
        m = re.search(r"\{([^{}]*)\}\s*$", lines[s.line - 1])
        count += bool(m and any(tok.startswith("#") for tok in m.group(1).split()))
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", help="a Markdown spec; default: a synthetic one built in memory")
    ap.add_argument("--repeat", type=int, default=7, help="parses to time (default 7)")
    args = ap.parse_args()
    if args.spec:
        source, text = args.spec, Path(args.spec).read_text(encoding="utf-8")
    else:
        source, text = "<synthetic>", synthetic_spec()

    times = []
    for _ in range(max(args.repeat, 1)):
        t0 = time.perf_counter()
        try:
            spec = parse_spec(text, source)
        except SpecError as err:
            sys.exit(f"SpecError: {err}")
        times.append((time.perf_counter() - t0) * 1000)

    explicit = explicit_ids(text, spec)
    print(f"spec:           {source}")
    print(f"size:           {len(text.encode('utf-8')) / 1024:.1f} KB ({len(text):,} characters)")
    print(f"sections:       {len(spec.sections)} ({explicit} explicit {{#id}}, {len(spec.sections) - explicit} slug)")
    print(f"max depth:      {max((s.level for s in spec.sections.values()), default=0)}")
    print(f"parse time:     median {statistics.median(times):.2f} ms, min {min(times):.2f} ms over {len(times)} runs")


if __name__ == "__main__":
    main()
