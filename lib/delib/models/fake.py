"""A scripted fake model for unit tests of any stage: no network and no server, but the real `openai` package
and the real client code path (cache, retries, parsing) above it.

    transport = scripted_transport(lambda body: "I can't help with that.")
    client = ModelClient(role, "judge", cache=..., transport=transport)
    transport.calls   # the request bodies the model received

Its model list (GET /models, which probes read) names the server `owned_by` ("llamacpp", "vllm": one that takes
a grammar); it is not a call.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, Union

import httpx2

# What a script step may answer: reply text, a whole chat-completion dict, an HTTP status, (status, body,
# headers), or an exception for the transport to raise (httpx2.ReadTimeout, httpx2.ConnectError, ...).
Answer = Union[str, dict, int, tuple, Exception]


def completion_body(text: str, body: dict, finish_reason: str = "stop") -> dict:
    """A chat completion answering `body` with `text`; logprobs (one token per word) when asked for."""
    words = text.split() or [text]
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": finish_reason, "logprobs": None}
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0)
        choice["logprobs"] = {"content": [
            {"token": w, "logprob": -0.5, "bytes": None,
             "top_logprobs": [{"token": w, "logprob": -0.5, "bytes": None}] +
                             [{"token": f"alt{j}", "logprob": -1.0 - j, "bytes": None} for j in range(1, k)]}
            for w in words]}
    if "prompt" in body:  # a text completion (a pre-started reply on the embedded server)
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    prompt_tokens += len(str(body.get("prompt", "")).split())
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "scripted"), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                      "total_tokens": prompt_tokens + len(words)}}


class ScriptedTransport(httpx2.MockTransport):
    """An httpx2 transport that answers /chat/completions from a script; `calls` holds every body it got."""

    def __init__(self, script: Union[Callable[[dict], Answer], Iterable[Answer]], owned_by: str = "scripted"):
        self.calls: list[dict] = []
        self.owned_by = owned_by
        if callable(script):
            self._next = script
        else:
            steps = iter(list(script))
            self._next = lambda body: next(steps)
        super().__init__(self._answer)

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx2.Response(200, json={"object": "list", "data": [
                {"id": "scripted", "object": "model", "owned_by": self.owned_by}]})
        body = json.loads(request.content or b"{}")
        self.calls.append(body)
        answer = self._next(body)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str):
            return httpx2.Response(200, json=completion_body(answer, body))
        if isinstance(answer, dict):
            return httpx2.Response(200, json=answer)
        if isinstance(answer, int):
            return httpx2.Response(answer, json={"error": {"message": f"scripted status {answer}"}})
        status, payload, headers = (tuple(answer) + ({},))[:3]
        if isinstance(payload, (bytes, str)):
            return httpx2.Response(status, content=payload, headers={"content-type": "application/json", **headers})
        return httpx2.Response(status, json=payload, headers=headers)


def scripted_transport(script: Union[Callable[[dict], Answer], Iterable[Answer]],
                       owned_by: str = "scripted") -> ScriptedTransport:
    """A fake model: `script` maps each request body to an answer, or lists the answers in order; `owned_by`: who
    its model list says serves it."""
    return ScriptedTransport(script, owned_by)
