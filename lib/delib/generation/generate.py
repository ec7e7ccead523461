"""Stage 02 (generation): for each training prompt, the generator is shown the spec for its category and writes
a chain of thought and an answer; several samples per prompt, each kept with why it is or is not usable.
"""
from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import yaml

from delib.generation.cot import (
    CITATION,
    MALFORMED_REASONS,
    THINK_CLOSE,
    THINK_OPEN,
    ParsedCompletion,
    parse_completion,
)
from delib.generation.skeleton import ANSWER_GRAMMAR, ANSWER_STOPS, level_choice, skeleton_grammar
from delib.models import ChatRequest
from delib.models.cache import CallCache
from delib.models.calls import groups_by_first_message
from delib.models.progress import progress_bar
from delib.spec.document import Spec
from delib.run.io import clip
from delib.run.paths import resolve
from delib.run.providers import provider_for
from delib.run.templates import fill, load_template

if TYPE_CHECKING:
    import pandas as pd

    from delib.run.config import RunParams


# The generator's system prompt is the template specs/default/templates/generator.txt (params: spec.templates):
# the spec comes first, in every role's system prompt (generator, judge, spec_prompt variant), the same leading
# tokens, so that llama-server reads each category's spec once and restores it after (models.prefixes).


@dataclass
class Example:
    """A worked example (ours) for k-shot prompting of small generators."""

    category: str
    prompt: str
    cot: str
    answer: str

    def as_messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt},
                {"role": "assistant", "content": f"{THINK_OPEN}\n{self.cot.strip()}\n{THINK_CLOSE}\n{self.answer.strip()}"}]


def load_examples(path: str | Path, spec: Spec) -> list[Example]:
    """k-shot examples from YAML (a list of category, prompt, cot, answer); their citations must exist in the spec."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: examples file not found")
    rows = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    examples = []
    for i, row in enumerate(rows):
        missing = {"category", "prompt", "cot", "answer"} - set(row)
        if missing:
            raise ValueError(f"{path}: example {i} lacks {sorted(missing)}")
        unknown = [c for c in CITATION.findall(row["cot"]) if c not in spec.sections]
        if unknown:
            raise ValueError(f"{path}: example {i} cites ids the spec {spec.source} lacks: {unknown}")
        examples.append(Example(**{k: row[k] for k in ("category", "prompt", "cot", "answer")}))
    return examples


def generation_messages(prompt: str, spec_text: str, examples: Iterable[Example] = (),
                        example_id: str = "section-id", template: Optional[str] = None) -> list[dict]:
    """The generator's chat: the spec for the prompt's category in the system turn (the generator template, the
    default one unless given), worked examples, the prompt."""
    system = fill(template or load_template("generator"), spec=spec_text.strip(), example_id=example_id)
    messages = [{"role": "system", "content": system}]
    for ex in examples:
        messages += ex.as_messages()
    messages.append({"role": "user", "content": prompt})
    return messages


def select_prompts(prompts: "pd.DataFrame", split: str, max_prompts: Optional[int]) -> "pd.DataFrame":
    """The prompts of one split, capped at `max_prompts` by taking categories in turn, so that a small run still
    covers every category (and, within a category, the actions in turn)."""
    rows = prompts[prompts["split"] == split]
    if max_prompts is None or max_prompts >= len(rows):
        return rows.sort_values(["category", "id"]).reset_index(drop=True)
    queues = []
    for c, (_, group) in enumerate(rows.groupby("category", sort=True)):
        by_action = [list(g.index) for _, g in group.groupby("expected_action", sort=True)]
        by_action = by_action[c % len(by_action):] + by_action[: c % len(by_action)]  # categories start on different actions
        queues.append([i for tier in zip_longest_all(by_action) for i in tier])
    picked = [i for tier in zip_longest_all(queues) for i in tier][:max_prompts]
    return rows.loc[picked].sort_values(["category", "id"]).reset_index(drop=True)


def zip_longest_all(lists: list[list]) -> list[list]:
    """[[a1, a2], [b1]] -> [[a1, b1], [a2]]: one from each list in turn."""
    out, i = [], 0
    while any(i < len(lst) for lst in lists):
        out.append([lst[i] for lst in lists if i < len(lst)])
        i += 1
    return out


def pick_examples(examples: list[Example], category: str, k: int) -> list[Example]:
    """Up to k worked examples, those of the prompt's own category first."""
    own = [e for e in examples if e.category == category]
    return (own + [e for e in examples if e.category != category])[:k]


def structured_for(params: "RunParams") -> bool:
    """Whether stage 02 writes the CoT under the skeleton grammar: `generate.structured` on, or auto where the
    generator's server decodes a grammar (the embedded model; an openai_compatible server that is llama.cpp's or
    vLLM's, as the role's `grammar` says or one probe finds) and the reply is pre-started. ValueError for on where
    the server takes no grammar."""
    g = params.generate
    if g.structured == "off" or not g.prestart_think:  # (on needs prestart_think: the schema says so)
        return False
    provider = provider_for(params.models.generator)
    if provider.probes_grammar and params.cache.enabled:  # the verdict kept where the client finds it
        with closing(CallCache(resolve(params.cache.path))) as cache:
            dialect = provider.grammar_dialect(cache)
    else:
        dialect = provider.grammar_dialect()
    if dialect is None and g.structured == "on":
        raise ValueError(f"generate.structured: on, but models.generator ({params.models.generator.backend}, model "
                         f"{params.models.generator.model!r}) takes no grammar: set its grammar (llama_cpp or vllm) "
                         "if its server decodes one, or set generate.structured to auto or off")
    return dialect is not None


def hint_line(spec: Spec, category: str, level: dict) -> str:
    """The sentence appended to the generator's system prompt when it is told the applicable level: its id (the
    category's first section for a level without one), title, and action in the spec's word and ours."""
    sid, action = level_choice(spec, category, level)
    said = level.get("said") or action
    return (f"\n\nFor the request below, the section that applies is [{sid}] ({spec.sections[sid].title}); "
            f"it prescribes: {said if said == action else f'{said} ({action})'}.")


def generation_requests(selected: "pd.DataFrame", rendered: dict[str, dict], spec: Spec, examples: list[Example],
                        k_shot: int, samples_per_prompt: int, prestart_think: bool = False,
                        cot_max_tokens: Optional[int] = None, structured: bool = False,
                        template: Optional[str] = None, hint_level: bool = False) -> list:
    """One ChatRequest per (prompt, sample): the spec for the prompt's category in context, a seed per sample.

    With `hint_level` (`generate.level_hint`), a prompt that the prompt set gives a level is generated with that
    level named at the end of the system prompt and, under the skeleton grammar, as the only level the CoT may cite:
    the label, like the spec, is context the generator sees and the trained model never does.

    With `prestart_think`, the request is the first of two: the reply is pre-started with <think> and stops at
    </think> (at most `cot_max_tokens`); `finish_answers` then asks for the answer after the closed CoT. With
    `structured` (which needs `prestart_think`), the CoT follows the category's skeleton grammar. `template`: the
    generator's system prompt template (`load_template("generator", params)`; None: the default).
    """
    if structured and not prestart_think:
        raise ValueError("generate.structured writes the CoT as its own first step: it needs generate.prestart_think")
    phase = {"prefill": THINK_OPEN + "\n", "stop": [THINK_CLOSE], "max_tokens": cot_max_tokens} if prestart_think else {}
    grammars = {c: skeleton_grammar(spec, c) for c in selected["category"].unique()} if structured else {}
    requests = []
    for row in selected.itertuples():
        cat = spec.categories[row.category]
        example_id = cat.levels[0]["section"] if cat.levels and cat.levels[0]["section"] else cat.sections[0]
        messages = generation_messages(row.prompt, rendered[row.category]["text"],
                                       pick_examples(examples, row.category, k_shot), example_id, template)
        grammar = grammars.get(row.category)
        hint = spec.level(row.category, getattr(row, "level", None)) if hint_level else None
        if hint:
            messages = [{**messages[0], "content": messages[0]["content"] + hint_line(spec, row.category, hint)},
                        *messages[1:]]
            grammar = skeleton_grammar(spec, row.category, hint) if structured else None
        for s in range(samples_per_prompt):
            requests.append(ChatRequest(messages=messages, sample_index=s,
                                        meta={"prompt_id": row.id, "told_level": hint is not None},
                                        grammar=grammar, **phase))
    return requests


def finish_answers(client, cot_requests: list, cot_results: list, desc: str = "answers",
                   max_tokens: Optional[int] = None) -> list:
    """The second step of a pre-started generation: the CoT, closed with </think>, is continued by the answer (at
    most `max_tokens`; None: the role's).

    A CoT that failed or ran out of tokens is not continued: its result stays, and parsing marks it."""
    from dataclasses import replace

    todo = [i for i, r in enumerate(cot_results) if r.ok and r.finish_reason != "length"]
    follow_ups = [replace(cot_requests[i], prefill=cot_results[i].text.rstrip() + f"\n{THINK_CLOSE}\n",
                          stop=ANSWER_STOPS if cot_requests[i].grammar else None, max_tokens=max_tokens,
                          grammar=ANSWER_GRAMMAR if cot_requests[i].grammar else None) for i in todo]
    answers = client.chat_many(follow_ups, desc=desc) if follow_ups else []
    out = list(cot_results)
    for i, answer in zip(todo, answers):
        out[i] = answer
    return out


def run_generation(client, requests: list, prestart_think: bool, batch: bool = False, desc: str = "generate") -> list:
    """Every request's result, in order; with `prestart_think`, the answer after each closed CoT (finish_answers).

    A role with `max_concurrency: 1` gets the CoT and the answer calls of one system prompt (one category's spec)
    before the next: llama.cpp then reads each spec excerpt once rather than once per phase. Otherwise each phase
    goes out whole, as concurrently as the role allows (the client still sends one spec's calls one after another
    on the embedded server)."""
    if prestart_think:  # a server that cannot continue the pre-started CoT gets each sample in one turn
        requests, prestart_think = client.unless_prestartable(requests, max_tokens=None)
    if not prestart_think:
        return client.chat_many(requests, desc=desc, batch=batch)
    if batch or client.role.max_concurrency > 1:
        return finish_answers(client, requests, client.chat_many(requests, desc=desc, batch=batch))
    out: list = [None] * len(requests)
    shown, client.progress = client.progress, False
    try:
        with progress_bar()(total=len(requests), desc=f"{desc} (CoT, then answer)", unit="sample",
                            disable=not shown, mininterval=0.2) as bar:
            for idx in groups_by_first_message(requests):
                part = [requests[i] for i in idx]
                for i, result in zip(idx, finish_answers(client, part, client.chat_many(part, desc=desc))):
                    out[i] = result
                bar.update(len(idx))
    finally:
        client.progress = shown
    return out


def samples_table(selected: "pd.DataFrame", results: list, spec: Spec, cot_hidden: bool = False) -> "pd.DataFrame":
    """Every sample, usable or not: the prompt's labels, the parsed CoT and answer, and why it is malformed."""
    import pandas as pd

    by_id = selected.set_index("id")
    rows = []
    for res in results:
        pid = res.meta["prompt_id"]
        prompt = by_id.loc[pid]
        if res.error:
            parsed = ParsedCompletion("", "", malformed="request_failed", detail=res.error)
        else:
            parsed = parse_completion(res.text, res.finish_reason, spec.sections, cot_hidden)
        rows.append({"prompt_id": pid, "sample_index": res.sample_index, "category": prompt.category,
                     "expected_action": prompt.expected_action,
                     "level": prompt.level if isinstance(getattr(prompt, "level", None), str) else None,
                     "prompt": prompt.prompt, **parsed.to_dict(),
                     "completion": res.text, "finish_reason": res.finish_reason,
                     "completion_tokens": res.usage.get("completion_tokens", 0), "latency_s": res.latency_s,
                     "cached": res.cached, "cot_hidden": cot_hidden,
                     "told_level": bool(res.meta.get("told_level", False))})
    return pd.DataFrame(rows)


def malformed_counts(samples: "pd.DataFrame") -> "pd.DataFrame":
    """How many samples each malformed reason dropped (and how many are usable)."""
    import pandas as pd

    reasons = samples["malformed"].fillna("usable")
    counts = reasons.value_counts().reindex(["usable", *MALFORMED_REASONS], fill_value=0)
    return pd.DataFrame({"samples": counts, "share": (counts / max(1, len(samples))).round(3)})


def show_samples(samples: "pd.DataFrame", n: int = 3, usable_only: bool = True) -> str:
    """A few samples as text: the prompt, the sections the CoT cites, the action it decided, and the answer."""
    rows = samples[samples["malformed"].isna()] if usable_only else samples
    blocks = []
    for r in rows.head(n).itertuples():
        cited = ", ".join(r.cited) if isinstance(r.cited, (list, tuple)) and len(r.cited) else "(none)"
        decided = r.action if isinstance(r.action, str) and r.action else "(not stated)"
        blocks.append(f"[{r.prompt_id} #{r.sample_index}] {r.category}, expected {r.expected_action}\n"
                      f"  prompt : {r.prompt}\n  cites  : {cited}\n  decided: {decided}\n"
                      f"  cot    : {clip(r.cot, 300)}\n  answer : {clip(r.answer, 300)}")
    return "\n\n".join(blocks) if blocks else "(no usable samples)"


def show_request(request) -> str:
    """One generator request in full, as the model receives it: each message with its role, then how the reply is
    started and where it stops (the pre-started <think>, the grammar), so that a reader sees exactly what is asked."""
    parts = [f"--- {m['role']} ---\n{m['content']}" for m in request.messages]
    if request.prefill:
        parts.append(f"--- the reply is pre-started with ---\n{request.prefill}")
    how = []
    if request.stop:
        how.append(f"stops at {request.stop}")
    if request.grammar:
        how.append("decoded under the category's skeleton grammar (generation.skeleton)")
    if request.max_tokens:
        how.append(f"at most {request.max_tokens} tokens")
    return "\n\n".join(parts) + (f"\n\n--- {'; '.join(how)} ---" if how else "")


def show_examples(examples: list[Example], categories) -> str:
    """The worked examples (the gold target the generator is shown) of the given categories, as text."""
    shown = [e for e in examples if e.category in set(categories)]
    return "\n\n".join(f"[worked example] {e.category}\n  prompt : {e.prompt}\n  cot    : {e.cot.strip()}\n"
                       f"  answer : {e.answer.strip()}" for e in shown) or "(no worked example for these categories)"
