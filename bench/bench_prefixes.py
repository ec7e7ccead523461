"""Benchmark of the spec prefixes kept across stages (models.prefixes, issue 12): the spec_prompt variant's
answers to the default run's held-out prompts (each with its category's spec as system prompt, ~1,800 tokens),
on the embedded llama-server with 8 slots, answered three ways through the real client with the model-call cache
empty each time:

  lanes       no saved prefixes: a spec's calls one after another on at most two lanes (the scheme before)
  fan-out     saved prefixes, none yet: each spec read once by its group's first call (on at most two lanes,
              restoring the part an earlier one read), then restored on any slot
  fan-out, warm  the same with the prefixes saved by an earlier stage (what the judge, RL and stage 06 get)

    .venv/bin/python bench/bench_prefixes.py            # about 5 minutes on 2 cores
    .venv/bin/python bench/bench_prefixes.py --prompts 14 --rounds 1

Rounds visit the modes in turn, so that a noisy neighbour hits all of them alike; the figures are medians over
rounds. Prints its figures; it is not a timed test.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from delib.generation import generate  # noqa: E402
from delib.models import ChatRequest, ModelClient  # noqa: E402
from delib.models.servers import llama_server_binary  # noqa: E402
from delib.spec.overview import load_inputs  # noqa: E402
from delib.run.config import CacheParams, ModelRole, Sampling, load_params  # noqa: E402
from delib.evaluation.lineup import spec_system_prompt  # noqa: E402


def requests_for(n: int) -> list[ChatRequest]:
    params = load_params(ROOT / "params" / "default.yaml")
    spec, prompts = load_inputs(params)
    held_out = generate.select_prompts(prompts, "eval", n)
    return [ChatRequest([{"role": "system", "content": spec_system_prompt(spec, r.category)},
                         {"role": "user", "content": r.prompt}]) for r in held_out.itertuples()]


def answer(requests: list, folder: Path, store: bool) -> tuple[float, int, int]:
    """(wall seconds, prompt tokens read, tokens generated) of one pass with an empty model-call cache."""
    cache = folder / f"calls-{time.monotonic_ns()}.sqlite"
    role = ModelRole(max_concurrency=8, sampling=Sampling(max_tokens=128, temperature=0.0))
    client = ModelClient(role, "policy", CacheParams(path=str(cache)), progress=False)
    if not store:
        client._slot_dir = lambda: None  # the client then schedules in lanes, as without llama-server's slot files
    try:
        t0 = time.perf_counter()
        results = client.chat_many(requests)
        wall = time.perf_counter() - t0
    finally:
        client.close()
    read = sum(r.usage["prompt_tokens"] - r.usage.get("cached_tokens", 0) for r in results)
    return wall, read, sum(r.usage["completion_tokens"] for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=28)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if llama_server_binary() is None:
        sys.exit("no llama-server here: this benchmark needs it (make env builds it)")
    requests = requests_for(args.prompts)
    figures: dict[str, list] = {"lanes": [], "fan-out": [], "fan-out, warm": []}
    for r in range(args.rounds):
        folder = Path(tempfile.mkdtemp(prefix="bench-prefixes-"))  # kv/ under it starts empty each round
        try:
            for mode in figures:
                figures[mode].append(answer(requests, folder, store=mode != "lanes"))
                wall, read, made = figures[mode][-1]
                print(f"round {r + 1} {mode:>14}: {wall:6.1f} s, {read:6d} prompt tokens read, {made} generated",
                      flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    base = statistics.median(w for w, _, _ in figures["lanes"])
    print(f"\n{len(requests)} spec_prompt answers, 8 slots, medians of {args.rounds} round(s)")
    print(f"{'mode':>14}  {'wall s':>7}  {'read':>7}  {'made':>6}  {'vs lanes':>8}")
    for mode, runs in figures.items():
        wall = statistics.median(w for w, _, _ in runs)
        print(f"{mode:>14}  {wall:7.1f}  {statistics.median(r for _, r, _ in runs):7.0f}  "
              f"{statistics.median(m for _, _, m in runs):6.0f}  {base / wall:7.2f}x")


if __name__ == "__main__":
    main()
