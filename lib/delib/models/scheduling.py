"""How one batch of calls is spread over an embedded llama-server's slots: the calls that share a first message (a
spec in the system prompt) are arranged so that the spec is read as few times as possible, and the rest decode
side by side. `send(plan, slot)` makes one call (on that slot) and says whether it succeeded.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Awaitable, Callable, Optional

from delib.models.calls import groups_by_first_message
from delib.models.prefixes import MIN_SHARED_CHARS, PrefixStore
from delib.models.wire import WORKER_STAGGER_S, CallPlan

Send = Callable[[CallPlan, Optional[int]], Awaitable[bool]]

# Workers that take groups of calls sharing a prefix, a group at a time (the others take calls alone). The
# 28 spec_prompt answers of the default run (7 category specs of ~1,800 tokens, 128-token answers) took 121 s on
# one lane, 109 s on 2 and 106 s on 4 (measured in one run, 2 cores): more lanes read more specs at once, which
# gains little, and bounding them keeps 8 slots from all reading prompts at once (measured: a crawl).
SHARED_LANES = 2


async def fan_out(plans: list[CallPlan], store: PrefixStore, workers: int, send: Send) -> None:
    """llama-server with saved prefixes (models.prefixes): the first call of each group that shares a first
    message (a spec in the system prompt) restores the closest saved prefix, reads the rest and saves its slot;
    every other call of the group, on any worker, then restores that prefix and reads only what follows it. So
    each spec is read once, and all workers decode side by side. The first calls go on at most SHARED_LANES
    workers, one after another: reading is compute-bound, and a later one restores what an earlier one read
    (the categories' specs share their first half). Each worker keeps to its own slot."""
    groups = [[plans[i] for i in g] for g in groups_by_first_message([p.request for p in plans])]
    leaders: deque = deque()
    followers: deque = deque()
    ready: dict[str, asyncio.Event] = {}  # set once the group's first call has saved its prefix (or failed)
    for group in groups:
        first = group[0].request.messages[0]
        text = first["content"] if first["role"] == "system" and len(first["content"]) >= MIN_SHARED_CHARS \
            else None
        if text is None:
            followers.extend((plan, None) for plan in group)
        else:
            ready[text] = asyncio.Event()
            leaders.append((group[0], text))
            followers.extend((plan, text) for plan in group[1:])

    lanes = min(SHARED_LANES, workers)

    async def worker(slot: int) -> None:
        await asyncio.sleep(slot * WORKER_STAGGER_S)
        holds = None  # the first message whose prefix this slot holds
        while (leaders and slot < lanes) or followers:
            if leaders and slot < lanes:
                plan, text = leaders.popleft()
                try:
                    await store.restore(slot, text)
                    if await send(plan, slot):  # a failed call may have left another prefix in the slot
                        await store.save(slot, text)
                finally:
                    ready[text].set()
            else:
                plan, text = followers.popleft()
                if text is not None:
                    await ready[text].wait()
                    if holds != text:
                        await store.restore(slot, text)
                await send(plan, slot)
            holds = text

    await asyncio.gather(*(worker(slot) for slot in range(workers)))


async def in_lanes(plans: list[CallPlan], workers: int, send: Send) -> None:
    """llama-server without saved prefixes, or llama-cpp-python's server: each slot keeps its KV cache but
    shares none, and on a CPU reading a prompt is compute-bound, so side by side slots would only re-read it
    (4 prompts of 1,750 tokens at once: 44 s, one after another: 39 s, measured). So the calls that share a
    first message go one after another, a group on a lane (SHARED_LANES of them), where each reads only what
    follows it; calls with nothing in common run side by side on the other slots."""
    groups = [[plans[i] for i in g] for g in groups_by_first_message([p.request for p in plans])]
    shared = iter([g for g in groups if len(g) > 1])  # shared iterators: each taken by exactly one worker
    alone = iter([g[0] for g in groups if len(g) == 1])
    lanes = min(SHARED_LANES, workers)

    async def worker(rank: int) -> None:
        await asyncio.sleep(rank * WORKER_STAGGER_S)
        mine = itertools.chain(itertools.chain.from_iterable(shared), alone) if rank < lanes else alone
        for plan in mine:
            await send(plan)

    await asyncio.gather(*(worker(rank) for rank in range(workers)))
