"""`python -m delib.stages STAGE RECIPE [--run-name NAME]`: one stage of a recipe, without Jupyter.

The stage reads what earlier stages of the same run wrote and writes its own files, as under `delib run`; it
prints what it made. `python -m delib.stages.s02_generate RECIPE` is the same for one stage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from delib.run.config import ParamsError, recipe_params
from delib.stages import REGISTRY, get, module


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m delib.stages", description=__doc__.splitlines()[0])
    p.add_argument("stage", help=f"one of {', '.join(REGISTRY)} (or its number or short name)")
    p.add_argument("recipe", help="params YAML file, e.g. params/smoke.yaml")
    p.add_argument("--run-name", dest="run_name", help="run under this name instead of the recipe's run_name")
    args = p.parse_args(argv)
    try:
        stage = get(args.stage)
        recipe = Path(args.recipe).expanduser().resolve()  # from where the command runs, as `delib run` reads it
        params = recipe_params(recipe, args.run_name)
        from delib.run.runner import check_named_files
        check_named_files(params, recipe)
    except (KeyError, ParamsError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    result = module(stage).run(params)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
