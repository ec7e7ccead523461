"""Pre-started replies (ChatRequest.prefill) per provider, for ModelClient: how the role's server continues one
(ModelRole.prefill: continue, template or off; auto probes an openai_compatible server once), and the requests
asked in one turn where it cannot.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Optional, Sequence

import httpx2

from delib.models.cache import call_key
from delib.models.calls import ChatRequest
from delib.models.progress import LoopThread
from delib.models.wire import ModelAuthError, ModelCallsFailed, classify_error, json_body, scrub_secret

# The probe that tells whether an openai_compatible server continues a pre-filled reply (prefill_mode).
PROBE_ASK, PROBE_PREFILL = "Count from 1 to 10, separated by commas.", "1, 2, 3, 4,"
PROBE_TOKENS = 3  # too few for a new turn to write "1, 2, 3, 4, 5" (at least 9 tokens), enough to go on with " 5,"


class PrefillMixin:
    """ModelClient's pre-fill methods (they use its role, cache, loop and connection)."""

    def prefill_mode(self) -> str:
        """How this role's server continues a pre-filled reply: "continue", "template" or "off" (see
        ModelRole.prefill). For an openai_compatible role on auto, one probe request finds out, and the cache keeps
        its verdict (a resumed run needs no server for it)."""
        if self._prefill is None:
            mode = self.provider.planned_prefill()
            if self.provider.probes_prefill:
                mode = self._probed_prefill()
            self._prefill = mode
        return self._prefill

    def unless_prestartable(self, requests: Sequence[ChatRequest], max_tokens: Optional[int]
                            ) -> tuple[list[ChatRequest], bool]:
        """Pre-started requests as this role can take them: unchanged (True) where its server continues a
        pre-filled reply; otherwise each asked in one turn (no pre-fill, no stop, `max_tokens` for the whole reply:
        None, the role's) with a warning (False)."""
        requests = list(requests)
        prefilled = [r for r in requests if r.prefill is not None]
        if not prefilled or self._all_cached(prefilled) or self.prefill_mode() != "off":
            return requests, True  # (answered from the cache: no need to ask the server how it pre-fills)
        warnings.warn(f"models.{self.role_name} ({self.role.backend}, model {self.role.model!r}) cannot continue a "
                      "pre-started reply: each reply is asked for in one turn, the model writing its own <think>",
                      stacklevel=2)
        return [replace(r, prefill=None, stop=None, max_tokens=max_tokens) for r in requests], False

    def _all_cached(self, requests: Sequence[ChatRequest]) -> bool:
        try:
            keys = [self._plan(r).key for r in requests]
        except ValueError:  # a pre-fill this backend cannot plan (OpenAI): not cached either
            return False
        return len(self.cache.get_many(keys)) == len(set(keys))

    def _probed_prefill(self) -> str:
        key = call_key({"probe": "prefill continued, repeated or not", "model": self.model_identity,
                        "base_url": self.role.base_url})
        verdict = self.cache.get_many([key]).get(key)
        if verdict is None:
            self._loop = self._loop or LoopThread()
            self._openai_client()
            verdict = {"continues": self._loop.run(self._probe_continues())}
            self.cache.put(key, verdict, self.model_identity)
        if verdict["continues"]:
            return "continue"
        source = self.provider.template_source()
        where = f"models.{self.role_name} ({self.role.base_url}, model {self.role.model!r})"
        if source is not None:
            warnings.warn(f"{where}: the server restarts a pre-filled reply instead of continuing it; pre-filling "
                          f"through /completions with the chat template of {source}", stacklevel=3)
            return "template"
        warnings.warn(f"{where}: the server restarts a pre-filled reply instead of continuing it, and no chat "
                      "template is known (set the role's chat_template to a GGUF file or Hugging Face folder): "
                      "stages that pre-start the reply ask for it in one turn", stacklevel=3)
        return "off"

    async def _probe_continues(self) -> bool:
        """Ask to count to ten with the reply pre-filled "1, 2, 3, 4,": a server that continues it goes on at 5 (vLLM
        answers with what follows, llama-server with the pre-fill and what follows), one that opens a new turn starts
        over (in PROBE_TOKENS it cannot get to 5) or says something else."""
        body = {"model": self.role.model, "max_tokens": PROBE_TOKENS, "temperature": 0.0, "seed": self.run_seed,
                "messages": [{"role": "user", "content": PROBE_ASK}, {"role": "assistant", "content": PROBE_PREFILL}],
                "continue_final_message": True, "add_generation_prompt": False}
        try:
            response = await self._openai.post("/chat/completions", body=body, cast_to=httpx2.Response)
            text = json_body(response)["choices"][0]["message"]["content"] or ""
        except Exception as exc:  # noqa: BLE001 - a server that rejects the extension's fields does not continue
            kind, _ = classify_error(exc)
            if kind == "auth":
                raise ModelAuthError(self._auth_message(exc)) from None
            status = getattr(exc, "status_code", None)
            if status is not None and 400 <= status < 500 and status != 429:
                return False
            message = scrub_secret(getattr(exc, "message", None) or str(exc) or type(exc).__name__, self._secret)
            raise ModelCallsFailed(f"{self.role_name} ({self.role.backend}, model {self.role.model!r}): could not "
                                   f"ask whether the server continues a pre-filled reply: {message}", []) from None
        return text.removeprefix(PROBE_PREFILL).lstrip().startswith("5")

    # ---------------------------------------------------------------- running calls
