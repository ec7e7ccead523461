"""Benchmark of parallel decoding on the embedded server (issue 12): aggregate generated tokens/s and the median
per-request latency at 1, 2, 4, 8 and 16 requests at once, on the same prompts, through the real model client (no
cache), and whether greedy outputs at N > 1 equal those at N = 1.

    .venv/bin/python bench/bench_parallel.py                 # about 5 minutes on 2 cores
    .venv/bin/python bench/bench_parallel.py --levels 1 4 --rounds 1 --prompts 8

Each level gets its own server with as many slots as requests in flight (what `max_concurrency: N` gives a role).
Rounds visit the levels in turn (1, 2, 4, 8, 1, 2, ...) so that a noisy neighbour hits all of them alike; the
figures are medians over rounds and the speed-ups are ratios to N = 1 within the same run.
Prints its figures; it is not a timed test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from delib.models import ChatRequest, ModelClient  # noqa: E402
from delib.models.servers import cpu_count, llama_server_binary  # noqa: E402
from delib.run.config import CacheParams, ModelRole, Sampling  # noqa: E402

PROMPTS = [
    "Explain how a bicycle's gears make climbing a hill easier.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are three good habits for keeping a vegetable garden healthy?",
    "Describe the water cycle to a ten-year-old.",
    "Give me a recipe for a simple tomato soup.",
    "Why do leaves change colour in autumn?",
    "How should I prepare for a job interview at a library?",
    "Summarise the rules of chess in a few sentences.",
    "What is the difference between weather and climate?",
    "Write a polite email asking a neighbour to trim their hedge.",
    "How do vaccines train the immune system?",
    "List some ways to save energy at home in winter.",
    "Explain what a prime number is, with examples.",
    "What should I pack for a two-day hike?",
    "Tell me about the history of the printing press.",
    "How do I make a paper aeroplane that flies far?",
]


def run_level(n: int, prompts: list[str], max_tokens: int) -> tuple[float, float, list[str]]:
    """(aggregate generated tokens/s, median latency s, texts) with `n` requests in flight."""
    role = ModelRole(max_concurrency=n, sampling=Sampling(temperature=0.0, max_tokens=max_tokens))
    requests = [ChatRequest(messages=[{"role": "user", "content": p}]) for p in prompts]
    with ModelClient(role, role_name=f"bench-n{n}", cache=CacheParams(enabled=False), progress=False) as client:
        client.chat(ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=1))  # start the server
        results = client.chat_many(requests)
        usage = client.last_usage
    failed = [r.error for r in results if r.error]
    if failed:
        raise SystemExit(f"N={n}: {len(failed)} requests failed, the first: {failed[0]}")
    return usage.completion_tokens / usage.wall_s, statistics.median(r.latency_s for r in results), \
        [r.text for r in results]


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    binary = llama_server_binary()
    print(f"server: {binary or 'llama-cpp-python (one request at a time: no llama-server found)'}; "
          f"{cpu_count()} threads; {args.prompts} prompts x {args.max_tokens} tokens max, greedy")
    # distinct texts (identical requests would be merged into one call by the client)
    prompts = [PROMPTS[i % len(PROMPTS)] + (f" Keep it under {40 + i} words." if i >= len(PROMPTS) else "")
               for i in range(args.prompts)]
    speed: dict[int, list[float]] = {n: [] for n in args.levels}
    latency: dict[int, list[float]] = {n: [] for n in args.levels}
    texts: dict[int, list[str]] = {}
    for r in range(args.rounds):
        for n in args.levels:
            tps, lat, out = run_level(n, prompts, args.max_tokens)
            speed[n].append(tps)
            latency[n].append(lat)
            texts.setdefault(n, out)
            print(f"  round {r + 1}, N={n}: {tps:.1f} tok/s, median latency {lat:.2f} s", flush=True)
    base = statistics.median(speed[args.levels[0]])
    print(f"\n{'N':>3} {'tok/s (median)':>15} {'x N=' + str(args.levels[0]):>8} {'latency s':>10} {'greedy = N=1':>13}")
    for n in args.levels:
        same = sum(a == b for a, b in zip(texts[n], texts[args.levels[0]]))
        print(f"{n:>3} {statistics.median(speed[n]):>15.1f} {statistics.median(speed[n]) / base:>8.2f} "
              f"{statistics.median(latency[n]):>10.2f} {same:>7}/{len(prompts)}")
    for n in args.levels[1:]:
        diffs = [(i, first_difference(a, b)) for i, (a, b) in enumerate(zip(texts[n], texts[args.levels[0]]))
                 if a != b]
        for i, at in diffs[:3]:
            print(f"  N={n}, prompt {i}: first differs at character {at}: "
                  f"{texts[args.levels[0]][i][max(0, at - 30):at + 30]!r} vs {texts[n][i][max(0, at - 30):at + 30]!r}")


if __name__ == "__main__":
    main()
