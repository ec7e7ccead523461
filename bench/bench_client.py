"""Benchmark of the model client (issue 3): client overhead, warm cache, embedded throughput, and faults.

    .venv/bin/python bench/bench_client.py            # all four; about 1-2 minutes on 2 cores
    .venv/bin/python bench/bench_client.py --skip-embedded

Prints its figures; it is not a timed test. The loopback server is tests/fault_server.py in its own process.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "tests"))

from fault_server import fetch_stats  # noqa: E402

from delib.models import ChatRequest, ModelClient  # noqa: E402
from delib.models.servers import cpu_count, embedded_model_path  # noqa: E402
from delib.run.config import CacheParams, ModelRole, Sampling  # noqa: E402


class LoopbackServer:
    """tests/fault_server.py in a subprocess, so that it does not share the client's interpreter."""

    def __init__(self, **options):
        args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_server.py"), "--port", "0", *args],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"fault server did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def stats(self) -> dict:
        return fetch_stats(self.base_url)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def requests_for(n: int, label: str = "benchmark question") -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{label} number {i}"}]) for i in range(n)]


def bench_overhead_and_cache(n: int, concurrency: int, latency: float, cache_dir: Path, progress: bool) -> None:
    server = LoopbackServer(latency_s=latency)
    role = ModelRole(backend="openai_compatible", model="fake", base_url=server.base_url,
                     max_concurrency=concurrency, timeout_s=30)
    cache = CacheParams(path=str(cache_dir / "bench.sqlite"))
    try:
        with ModelClient(role, "generator", cache, run_dir=cache_dir, stage="bench", progress=progress) as client:
            client.chat_many(requests_for(concurrency, "warm-up"), desc="warm-up")  # opens the connections
            before = server.stats()["received"]
            start = time.perf_counter()
            cold = client.chat_many(requests_for(n), desc="cold")
            cold_s = time.perf_counter() - start
            sent = server.stats()["received"] - before
        ideal = n / concurrency * latency
        print(f"[overhead] {n} requests, max_concurrency {concurrency}, server latency {latency * 1000:.0f} ms")
        print(f"           wall {cold_s:.3f} s, ideal {ideal:.3f} s, ratio {cold_s / ideal:.3f} (target <= 1.15); "
              f"ok {sum(r.ok for r in cold)}/{n}, calls reaching the server {sent}")

        with ModelClient(role, "generator", cache, run_dir=cache_dir, stage="bench", progress=progress) as client:
            before = server.stats()["received"]
            start = time.perf_counter()
            warm = client.chat_many(requests_for(n), desc="warm")
            warm_s = time.perf_counter() - start
            reached = server.stats()["received"] - before
        print(f"[cache]    same {n} requests again: wall {warm_s * 1000:.1f} ms, {cold_s / warm_s:.0f}x faster "
              f"(target >= 50x); cache hits {sum(r.cached for r in warm)}/{n}; calls reaching the server {reached}")
    finally:
        server.close()


def bench_faults(n: int, concurrency: int, rate: float) -> None:
    each = rate / 5
    server = LoopbackServer(latency_s=0.02, rate_429=each, rate_500=each, rate_hang=each, rate_malformed=each,
                            rate_drop=each, hang_s=5.0, retry_after_s=0.05, seed=42)
    role = ModelRole(backend="openai_compatible", model="fake", base_url=server.base_url,
                     max_concurrency=concurrency, timeout_s=1.0, max_retries=6)
    try:
        with ModelClient(role, "generator", CacheParams(enabled=False), backoff_base_s=0.05,
                         progress=False) as client:
            start = time.perf_counter()
            requests = requests_for(n)
            results = client.chat_many(requests, desc="faults")
            wall = time.perf_counter() - start
        stats = server.stats()
    finally:
        server.close()
    expected_keys = [client._plan(r).key for r in requests]
    lost = sum(1 for r, k in zip(results, expected_keys) if r is None or r.key != k) + (n - len(results))
    failed = sum(not r.ok for r in results)
    answered_twice = sum(c - 1 for c in stats["ok_by_body"].values() if c > 1)
    print(f"[faults]   {n} requests with {rate:.0%} injected faults ({stats['faults']}), wall {wall:.2f} s")
    print(f"           lost {lost}, duplicated {answered_twice + len(results) - len({r.key for r in results})}, "
          f"ok {n - failed}, recorded failures {failed}, calls {stats['received']} for {n} requests")


def bench_embedded(prompts: int, max_tokens: int, rounds: int, concurrency: int) -> None:
    """Tokens per second through the client against llama-cpp-python's in-process Llama, same prompts and
    settings. They alternate batch by batch (ABBA order: `concurrency` prompts, sent at once through the client,
    one after the other in-process), so that the load of other processes on this machine falls on both alike.
    Besides the overall ratio, the median ratio of back-to-back pairs is printed: a burst of outside load during
    a few calls does not move it."""
    from llama_cpp import Llama

    threads = cpu_count()
    topics = ["the sea", "a library", "mountains", "bread", "a train journey", "rain", "chess", "a garden"]
    messages = [[{"role": "user", "content": f"Write a short paragraph about {topics[i % len(topics)]}."}]
                for i in range(prompts)]
    batches = [messages[i : i + concurrency] for i in range(0, prompts, concurrency)]
    warm = [{"role": "user", "content": "Say hi."}]
    llm = Llama(model_path=str(embedded_model_path()), n_ctx=8192, n_threads=threads, n_threads_batch=threads,
                logits_all=True, verbose=False)  # the server's settings (its --logits_all defaults to True)
    role = ModelRole(sampling=Sampling(max_tokens=max_tokens, temperature=0.0, seed=0), max_concurrency=concurrency)
    client = ModelClient(role, "generator", CacheParams(enabled=False), progress=False)

    def in_process(batch) -> int:
        return sum(llm.create_chat_completion(messages=m, max_tokens=max_tokens, temperature=0.0, seed=0,
                                              repeat_penalty=1.1)["usage"]["completion_tokens"]  # server default
                   for m in batch)

    def through_client(batch) -> int:
        results = client.chat_many([ChatRequest(m) for m in batch])
        assert all(r.ok for r in results), [r.error for r in results]
        return sum(r.usage["completion_tokens"] for r in results)

    try:
        in_process([warm]), through_client([warm])  # model loaded, server started, both warm
        totals = {"in-process": [0, 0.0], "client": [0, 0.0]}
        pair_ratios = []
        for r in range(rounds):
            for i, batch in enumerate(batches):
                order = [("in-process", in_process), ("client", through_client)]
                rate = {}
                for name, call in order if (i + r) % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    tokens = call(batch)
                    wall = time.perf_counter() - start
                    totals[name][0] += tokens
                    totals[name][1] += wall
                    rate[name] = tokens / wall
                pair_ratios.append(rate["client"] / rate["in-process"])
    finally:
        client.close()
    (lt, lw), (ct, cw) = totals["in-process"], totals["client"]
    print(f"[embedded] SmolLM2-135M-Instruct, {prompts} prompts x {rounds} rounds, max_tokens {max_tokens}, greedy, "
          f"{threads} threads; client max_concurrency {concurrency}; batches alternating")
    print(f"           in-process Llama {lt} tokens in {lw:.2f} s = {lt / lw:.1f} tok/s; "
          f"client + embedded server {ct} tokens in {cw:.2f} s = {ct / cw:.1f} tok/s")
    print(f"           ratio {(ct / cw) / (lt / lw):.3f}; median of {len(pair_ratios)} pair ratios "
          f"{statistics.median(pair_ratios):.3f} (target >= 0.9)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embedded-concurrency", type=int, default=ModelRole().max_concurrency)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--progress", action="store_true", help="show the progress bars (as stages do)")
    args = parser.parse_args()
    print(f"machine: {cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        bench_overhead_and_cache(args.requests, args.concurrency, args.latency, Path(tmp), args.progress)
    bench_faults(args.requests, args.concurrency, args.fault_rate)
    if not args.skip_embedded:
        bench_embedded(args.prompts, args.max_tokens, args.rounds, args.embedded_concurrency)


if __name__ == "__main__":
    main()
