"""One model call as the stages see it: the request they make and the result they record.

A result always comes back, in the request's place: a failed call carries its error instead of text, so a
stage can write every request to its output and count the failures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel


@dataclass
class ChatRequest:
    """One chat call. `sample_index` picks the sample: the seed is a hash of the role's seed (or the run's), the
    messages and the sample index (models.requests.sample_seed)."""

    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]
    sample_index: int = 0
    max_tokens: Optional[int] = None  # overrides the role's sampling settings when set
    temperature: Optional[float] = None
    stop: Optional[list[str]] = None
    response_model: Optional[type[BaseModel]] = None  # ask for JSON fitting this model; validated into `parsed`
    logprobs: bool = False
    top_logprobs: Optional[int] = None  # alternatives per token (0-20); implies logprobs
    meta: dict = field(default_factory=dict)  # carried through to the result untouched
    # The start of the assistant's reply, which the model continues (e.g. "<think>\n"); the result's text
    # includes it. Embedded: a completion over the model's chat template; openai_compatible: vLLM's
    # continue_final_message; OpenAI's API cannot continue a reply.
    prefill: Optional[str] = None
    # A GBNF grammar the reply (after `prefill`) must follow: llama.cpp's constrained decoding (the embedded model, a
    # llama.cpp server), or vLLM's; a role whose server takes none refuses it (run.providers).
    grammar: Optional[str] = None


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)  # the most likely alternatives, best first


@dataclass
class ChatResult:
    """The outcome of one ChatRequest; `error` is None on success."""

    key: str  # cache key of the request
    text: Optional[str] = None
    finish_reason: Optional[str] = None
    parsed: Optional[BaseModel] = None
    logprobs: Optional[list[TokenLogprob]] = None
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    latency_s: float = 0.0
    cached: bool = False
    error: Optional[str] = None  # "<kind>: <message>", kind one of ERROR_KINDS
    attempts: int = 0  # calls made for this result in this run (0 when cached)
    choices: list[str] = field(default_factory=list)  # every sampled text when the role samples n > 1
    sample_index: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict for a stage's output file."""
        return {
            "key": self.key,
            "sample_index": self.sample_index,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "parsed": self.parsed.model_dump(mode="json") if self.parsed is not None else None,
            "choices": self.choices if len(self.choices) > 1 else None,
            "usage": self.usage,
            "latency_s": round(self.latency_s, 4),
            "cached": self.cached,
            "error": self.error,
            "attempts": self.attempts,
            "meta": self.meta,
        }


ERROR_KINDS = (
    "rate_limited",  # 429 after every retry
    "server_error",  # 5xx after every retry
    "timeout",
    "connection",  # refused or dropped connection
    "malformed_response",  # the body was not a chat completion
    "bad_request",  # 400 and other 4xx: not retried
    "auth",  # 401/403: not retried; the run stops
    "parse",  # the reply did not validate against response_model
    "batch",  # the Batch API gave no usable line and live calls were off
)


def groups_by_first_message(requests: "list[ChatRequest]") -> list[list[int]]:
    """Indices of the requests, grouped by their first message (a spec in the system prompt), groups in order of
    first appearance and indices in order within each. llama.cpp's server keeps the KV cache of its previous
    request and reads only what follows the common prefix: calls sent group by group read each spec once."""
    groups: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(repr(request.messages[:1]), []).append(i)
    return list(groups.values())
