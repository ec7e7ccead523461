"""Entry point of each process of a multi-process stage: python -m delib.training {sft,rl} PARAMS.json|yaml."""
import json
import sys
from pathlib import Path

from delib.run.config import load_params, validate_params


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("sft", "rl"):
        sys.exit("usage: python -m delib.training {sft,rl} PARAMS.json|PARAMS.yaml")
    stage, path = argv[0], Path(argv[1])
    params = (validate_params(json.loads(path.read_text()), str(path)) if path.suffix == ".json"
              else load_params(path))
    if stage == "sft":
        from delib.training.sft import train  # late: only the stage that runs is loaded
    else:
        from delib.training.rl import train
    train(params)


if __name__ == "__main__":
    main(sys.argv[1:])
