"""How one ChatRequest becomes what the model client sends: the request body for the role's provider (sampling,
reasoning models' own fields, structured output, a grammar, a pre-filled reply) and the cache key that identifies
its answer.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from pydantic import BaseModel

from delib.models.cache import call_key, canonical_json
from delib.models.calls import ChatRequest
from delib.models.structured import gbnf_for, json_object_response_format, openai_response_format, response_schema
from delib.models.wire import CallPlan
from delib.run.config import ModelRole
from delib.run.providers import Provider, provider_for


def plan_call(role: ModelRole, req: ChatRequest, identity: str, run_seed: int, reasoning: bool,
              structured: str, prefill: Optional[str] = None, provider: Optional[Provider] = None,
              dialect: Optional[str] = None) -> CallPlan:
    """The body to send for `req` and the key the cache knows it by (the model's identity, the messages, the
    sampling, the schema, the grammar: everything that changes the answer; not how a pre-fill is sent, `prefill`,
    which defaults to the provider's plan, nor how the server takes the grammar, `dialect`, which defaults to the
    provider's when it needs no probe)."""
    provider = provider or provider_for(role)
    s = role.sampling
    seed = sample_seed(s.seed if s.seed is not None else run_seed, req.messages, req.sample_index)
    max_tokens = req.max_tokens if req.max_tokens is not None else s.max_tokens
    temperature = req.temperature if req.temperature is not None else s.temperature
    top_logprobs = req.top_logprobs
    logprobs = bool(req.logprobs or top_logprobs)
    schema = response_schema(req.response_model) if req.response_model else None
    material = {
        "model": identity,
        "messages": req.messages,
        "sampling": {"temperature": temperature, "top_p": s.top_p, "max_tokens": max_tokens, "seed": seed,
                     "n": s.n, "reasoning_effort": s.reasoning_effort, "stop": req.stop},
        "sample_index": req.sample_index,
        "schema": schema,
        "logprobs": [logprobs, top_logprobs],
    }
    if req.prefill is not None:  # only then, so that every other key stays as it was
        material["prefill"] = req.prefill
    if req.grammar is not None:
        material["grammar"] = req.grammar
    body: dict[str, Any] = {"model": role.model, "messages": req.messages, "seed": seed}
    if reasoning:  # they take max_completion_tokens and reject temperature, top_p, logprobs
        body["max_completion_tokens"] = max_tokens
        if s.reasoning_effort:
            body["reasoning_effort"] = s.reasoning_effort
    else:
        body["temperature"] = temperature
        body["top_p"] = s.top_p
        body[provider.max_tokens_key] = max_tokens
        if s.reasoning_effort:  # e.g. a reasoning model behind vLLM
            body["reasoning_effort"] = s.reasoning_effort
        if logprobs:
            body["logprobs"] = True
            if top_logprobs:
                body["top_logprobs"] = top_logprobs
    if s.n > 1:
        body["n"] = s.n
    if req.stop:
        body["stop"] = req.stop
    if req.response_model is not None:
        add_structured(body, req.response_model, structured)
    if req.prefill is not None:
        add_prefill(body, req, role, prefill or provider.planned_prefill(), provider)
    if req.grammar is not None:
        provider.add_grammar(body, req.grammar, dialect or provider.grammar_dialect())
    provider.finish_body(body)
    return CallPlan(call_key(material), req, body, seed)


SEED_BITS = 31  # llama.cpp reads a seed as uint32 (0xFFFFFFFF: a random one); OpenAI as int64


def sample_seed(base: int, messages: list[dict], sample_index: int) -> int:
    """The server seed of one sample: a hash of (the run's seed, or the role's own, the request's messages, the
    sample index). Two samples share a seed only when they are the same sample of the same request under the same
    base seed, the case the cache answers anyway: run seeds s and s + 1 share no sample (the former seed + sample index
    made sample 1 of seed s sample 0 of seed s + 1), nor do two prompts of one run. The messages stand for the
    (stage, prompt) of the sample: they hold the prompt and each stage's own instructions, and a greedy question
    that two stages ask alike (stage 04's and 06's held-out prompts to the same model) stays one call."""
    material = canonical_json({"seed": base, "messages": messages, "sample": sample_index})
    return int(hashlib.sha256(material.encode("utf-8")).hexdigest()[:8], 16) % (1 << SEED_BITS)


class PrefillUnsupported(ValueError):
    """A pre-filled reply asked of a server that cannot continue one."""


def add_prefill(body: dict, req: ChatRequest, role: ModelRole, mode: str,
                provider: Optional[Provider] = None) -> None:
    """Make the model continue `req.prefill` as the start of its reply, the way `mode` says."""
    if mode == "continue":  # vLLM's extension of the chat API
        body["messages"] = [*req.messages, {"role": "assistant", "content": req.prefill}]
        body["continue_final_message"], body["add_generation_prompt"] = True, False
        return
    if mode == "off":
        raise PrefillUnsupported(
            f"the {role.backend} backend (model {role.model!r}) cannot continue a pre-started reply: set prefill "
            "only where the role's prefill is continue or template (stages ask in one turn where it is off)")
    source = (provider or provider_for(role)).template_source()
    if source is None:
        raise PrefillUnsupported(f"prefill 'template' for model {role.model!r} needs its chat template: set the "
                                 "role's chat_template to the model's GGUF file or Hugging Face folder")
    from delib.models.chat_template import render_chat  # late: llama_cpp, gguf or transformers, only for a pre-fill

    prompt, stop = render_chat(req.messages, source)
    del body["messages"]
    body["prompt"] = prompt + req.prefill
    body["stop"] = list(dict.fromkeys([*(req.stop or []), *stop]))


def add_structured(body: dict, model: type[BaseModel], structured: str) -> None:
    """Ask for JSON that `model` validates: a grammar (llama.cpp), a JSON schema, or JSON mode."""
    if structured == "grammar":  # llama-cpp-python: a grammar keeps the bounds the schema has
        body["grammar"] = gbnf_for(model)
    elif structured == "json_object":
        body["response_format"] = json_object_response_format(model)
    else:
        body["response_format"] = openai_response_format(model)
