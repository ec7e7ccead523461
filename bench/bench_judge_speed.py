"""Seconds per judge call on the embedded llama.cpp server, with and without log-probabilities and structured output.

Usage: .venv/bin/python bench/bench_judge_speed.py [RUN_DIR [CATEGORIES]]   (default outputs/default 3; needs
stages 01-02 done)

Judges the samples of the run's stage 02, CATEGORIES categories of them, with the cache off: per category the first
call (it reads the spec excerpt) is not timed, the others are. Prints each setting's median seconds per call and
the median of the per-call ratios (the same call under two settings).
Log-probabilities make llama-cpp-python's server keep the logits of every prompt token (`logits_all`).
"""
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from delib.judging.judge import JudgeVerdict, judge_messages
from delib.models import ChatRequest, ModelClient, servers
from delib.run.config import CacheParams, ModelRole, Sampling

run = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/default")
categories_wanted = int(sys.argv[2]) if len(sys.argv) > 2 else 3
spec = json.loads((run / "01_policy" / "spec_for_category.json").read_text())
samples = pd.read_json(run / "02_generate" / "samples.jsonl", lines=True)
samples = samples[(samples.cot.str.len() > 0) | (samples.answer.str.len() > 0)]  # something to grade
groups = [g for _, g in samples.groupby("category") if len(g) >= 2][:categories_wanted]
if not groups:
    sys.exit(f"{run}: no category with 2 samples; run stages 01-02 first")
role = ModelRole(backend="embedded", max_concurrency=1, sampling=Sampling(temperature=0.0, max_tokens=128))


def per_call(logprobs: bool, structured: bool) -> list[float]:
    """Seconds of each judge call after the first of its category (the first reads the spec excerpt: untimed)."""
    client = ModelClient(role, "judge", CacheParams(enabled=False), seed=0, progress=False)
    times = []
    try:
        for g in groups:
            requests = [ChatRequest(messages=judge_messages(r.prompt, r.answer, spec[r.category]["text"], cot=r.cot,
                                                            expected_action=r.expected_action),
                                    response_model=JudgeVerdict if structured else None, logprobs=logprobs,
                                    top_logprobs=5 if logprobs else None) for r in g.itertuples()]
            client.chat_many(requests[:1])
            for r in requests[1:]:
                t = time.perf_counter()
                client.chat_many([r])
                times.append(time.perf_counter() - t)
    finally:
        client.close()
        servers.stop_all()
    return times


plain = per_call(False, True)
with_logprobs = per_call(True, True)
free_text = per_call(False, False)
med = statistics.median
print(f"{len(plain)} judge calls per setting ({', '.join(g.category.iloc[0] for g in groups)}), seconds per call:")
print(f"  structured (GBNF), no logprobs    median {med(plain):6.2f}")
print(f"  structured (GBNF), top_logprobs 5 median {med(with_logprobs):6.2f}   median of per-call ratios "
      f"{med(b / a for a, b in zip(plain, with_logprobs)):.2f}x")
print(f"  free text, no logprobs            median {med(free_text):6.2f}   median of per-call ratios "
      f"{med(b / a for a, b in zip(plain, free_text)):.2f}x")
