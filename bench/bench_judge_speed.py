"""Seconds per judge call on the embedded llama.cpp server, with and without log-probabilities and structured output.

Usage: .venv/bin/python bench/bench_judge_speed.py [RUN_DIR]   (default outputs/default: needs stages 01-02 done)

Judges the first usable samples of one category of the run's stage 02 (the spec excerpt is read once per setting,
before the timing starts), cache off, and prints the median seconds per call of each setting and their ratio.
Log-probabilities make llama-cpp-python's server keep the logits of every prompt token (`logits_all`).
"""
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from delib.config import CacheParams, ModelRole, Sampling
from delib.judge import JudgeVerdict, judge_messages
from delib.models import ChatRequest, ModelClient
from delib.models import server as embedded

run = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/default")
spec = json.loads((run / "01_policy" / "spec_for_category.json").read_text())
samples = pd.read_json(run / "02_generate" / "samples.jsonl", lines=True)
samples = samples[samples.malformed.isna()]
category = samples.category.value_counts().index[0]
samples = samples[samples.category == category].head(6)
if len(samples) < 2:
    sys.exit(f"{run}: fewer than 2 usable samples in one category; run stages 01-02 first")
role = ModelRole(backend="embedded", max_concurrency=1, sampling=Sampling(temperature=0.0, max_tokens=128))


def per_call(logprobs: bool, structured: bool) -> float:
    client = ModelClient(role, "judge", CacheParams(enabled=False), seed=0, progress=False)
    requests = [ChatRequest(messages=judge_messages(r.prompt, r.answer, spec[category]["text"], cot=r.cot,
                                                    expected_action=r.expected_action),
                            response_model=JudgeVerdict if structured else None, logprobs=logprobs,
                            top_logprobs=5 if logprobs else None) for r in samples.itertuples()]
    try:
        client.chat_many(requests[:1])  # server start and the spec excerpt, not timed
        times = []
        for r in requests[1:]:
            t = time.perf_counter()
            client.chat_many([r])
            times.append(time.perf_counter() - t)
    finally:
        client.close()
        embedded.stop_all()
    return statistics.median(times)


plain = per_call(False, True)
with_logprobs = per_call(True, True)
free_text = per_call(False, False)
print(f"{len(samples) - 1} judge calls per setting, category {category}, median seconds per call:")
print(f"  structured (GBNF), no logprobs   {plain:6.2f}")
print(f"  structured (GBNF), top_logprobs 5 {with_logprobs:6.2f}   ratio {with_logprobs / plain:.2f}x")
print(f"  free text, no logprobs           {free_text:6.2f}   ratio {free_text / plain:.2f}x")
