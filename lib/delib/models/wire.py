"""What goes over the wire and back for the model client: errors worth a retry, secrets scrubbed from messages,
keys from .env, a chat completion read from a reply.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx2
import openai

from delib.models.calls import ChatRequest
from delib.models.usage import Usage

RETRY_AFTER_CAP_S = 300.0  # a server asking for a longer wait than this is treated as down


PARSE_RETRY_SEED_STRIDE = 1_000_003  # a retried invalid reply samples again with seed + k * stride


# Workers start this far apart. All starting at once keeps their calls in lockstep against a server of steady
# latency: each wave of answers then queues for the one client thread (measured: 32 in flight at 100 ms took
# 1.15-1.19x the ideal time; staggered by 4 ms, see bench/bench_client.py). It also spares a real server a burst.
WORKER_STAGGER_S = 0.004


_KEY_LIKE = re.compile(r"(sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+\S+)")


class ModelAuthError(RuntimeError):
    """The backend refused the API key (401/403) or no key is set: the message says which variable to set."""


class ModelCallsFailed(RuntimeError):
    """Too many of a role's requests failed (no connection, an unknown model, server errors): the stage stops with
    the cause instead of writing a table of failures. Replies that did not parse are not counted here. `results`
    holds every result of the batch, failed or not (the finished ones are also in the cache)."""

    def __init__(self, message: str, results: list):
        super().__init__(message)
        self.results = results


class MalformedReply(Exception):
    """The body was not a usable chat completion."""


@dataclass
class CallPlan:
    """One distinct call of a chat_many: its key, the request and the JSON body of /chat/completions."""

    key: str
    request: ChatRequest
    body: dict
    seed: int
    spent: Usage = field(default_factory=Usage)


def scrub_secret(text: str, secret: Optional[str]) -> str:
    """An error message safe to record: no API key, not even a masked one."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def retry_after_s(exc: Exception) -> Optional[float]:
    """Seconds the server asked us to wait (Retry-After or retry-after-ms), if it said."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:  # an HTTP date: rare enough to fall back on our own backoff
        return None
    return None


def classify_error(exc: Exception) -> tuple[str, bool]:
    """(error kind, worth retrying) of an exception raised by one call."""
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return "auth", False
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited", True
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return "server_error", True
        if exc.status_code in (408, 409):
            return "timeout", True
        return "bad_request", False
    if isinstance(exc, httpx2.TimeoutException):
        return "timeout", True
    if isinstance(exc, httpx2.HTTPError):
        return "connection", True
    if isinstance(exc, (MalformedReply, openai.APIResponseValidationError)):
        return "malformed_response", True
    raise exc  # a bug of ours: let it surface


def json_body(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise MalformedReply(f"the body is not JSON ({err})") from None


def extract_reply(data: Any, prefill: Optional[str] = None) -> dict:
    """The cacheable part of a chat completion (the JSON body): text, finish reason, logprobs, usage, choices.

    A text completion (a pre-started reply on the embedded server) reads the same, its text led by `prefill`."""
    def text_of(choice: dict) -> Optional[str]:
        if "message" in choice:
            content = choice["message"].get("content")
            # vLLM's continue_final_message returns only the continuation, llama-server the pre-fill and after it
            if prefill is not None and content is not None and not content.startswith(prefill):
                content = prefill + content
            return content
        return (prefill or "") + choice["text"]

    try:
        first = data["choices"][0]
        logprobs = None
        content = (first.get("logprobs") or {}).get("content")
        if content:
            logprobs = [[t["token"], t["logprob"], [[a["token"], a["logprob"]] for a in (t.get("top_logprobs") or [])]]
                        for t in content]
        usage = data.get("usage") or {}
        return {
            "text": text_of(first),
            "finish_reason": first.get("finish_reason"),
            "choices": [text_of(c) for c in data["choices"]],
            "logprobs": logprobs,
            "usage": {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                      "completion_tokens": int(usage.get("completion_tokens") or 0),
                      # prompt tokens the server did not read again (its prefix cache, a restored slot)
                      "cached_tokens": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)},
        }
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
        raise MalformedReply(f"not a chat completion ({type(err).__name__}: {err})") from None
