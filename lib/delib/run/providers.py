"""The backends of a model role as providers, in the manner of inspect_ai's model APIs: one class per backend says
what its server can do (a grammar, a pre-filled reply, logprobs, a LoRA adapter, the Batch API) and decides all that
differs between backends: how a request is shaped, whether this process starts the server, what the preflight
checks, what identifies the weights. The client, the preflight and the manifest ask `provider_for(role)`.

It sits beside the schema (config.ModelRole) so that run/ may ask it too; the client in models/ starts the servers.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Optional

import httpx2

from delib.run.config import ModelRole
from delib.run.io import env_value, sha256_file, sha256_path
from delib.run.paths import embedded_model_path, project_root, resolve

OPENAI_URL = "https://api.openai.com/v1"
REASONING_MODEL = re.compile(r"^(o\d|gpt-5(?!-chat))")  # OpenAI's reasoning models: max_completion_tokens only
PROBE_TIMEOUT_S = 5.0
# What an OpenAI-compatible server's model list says in `owned_by`, and the grammar dialect that server takes.
GRAMMAR_BY_OWNER = {"llamacpp": "llama_cpp", "vllm": "vllm"}
_PROBED: dict[tuple, Optional[str]] = {}  # (base_url, model) -> dialect, for this process (every client shares it)


class Provider:
    """What one model role's backend can do and how it is asked. Capabilities are class attributes; where one
    depends on the server behind an openai_compatible role, a method finds out (`grammar_dialect`, and the client's
    pre-fill probe)."""

    backend: ClassVar[str]
    grammar: ClassVar[bool] = False  # may decode under a free-text grammar (grammar_dialect says how, or that it can't)
    prefill: ClassVar[bool] = False  # may continue a pre-started reply (planned_prefill says how)
    logprobs: ClassVar[bool] = True  # token log-probabilities
    lora: ClassVar[bool] = False  # loads the role's LoRA adapter
    batch: ClassVar[bool] = False  # the Batch API (/v1/files, /v1/batches)
    choices: ClassVar[bool] = True  # several samples in one request (sampling.n)
    local_server: ClassVar[bool] = False  # this process starts the server (on loopback, without a key)
    json_fallback: ClassVar[bool] = False  # a server that turns json_schema down is asked for json_object + schema
    max_tokens_key: ClassVar[str] = "max_tokens"

    def __init__(self, role: ModelRole):
        self.role = role
        self._dialect: Optional[tuple[Optional[str]]] = None  # (dialect,) once known

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.role.model!r})"

    # ------------------------------------------------------------ shaping requests

    def is_reasoning_model(self) -> bool:
        """Whether the model takes max_completion_tokens and refuses temperature, top_p and logprobs."""
        return False

    def structured_output(self) -> str:
        """How JSON that fits a schema is asked for: "grammar" (GBNF, llama.cpp: it keeps the schema's bounds),
        "json_schema" (response_format); a server may turn the latter down for "json_object" (json_fallback)."""
        return "json_schema"

    def grammar_dialect(self, cache: Any = None, transport: Optional[httpx2.BaseTransport] = None,
                        env_file: Optional[Path] = None) -> Optional[str]:
        """How this role's server takes a free-text grammar: "llama_cpp", "vllm", or None (it cannot). `cache` (a
        CallCache) keeps a probe's verdict; `transport` stands in for the network (tests)."""
        return None

    def add_grammar(self, body: dict, grammar: str, dialect: Optional[str]) -> None:
        """Put a GBNF grammar into `body` the way a server of `dialect` takes it; ValueError where it takes none."""
        if dialect == "llama_cpp":
            body["grammar"] = grammar
        elif dialect == "vllm":  # vLLM 0.12 dropped guided_grammar and ignores unknown fields: an old name fails open
            body["structured_outputs"] = {"grammar": grammar}
        else:
            raise ValueError(f"a free-text grammar needs a server that decodes one (llama.cpp's or vLLM's): "
                             f"{self.no_grammar()}, or turn generate.structured off for this generator")

    def finish_body(self, body: dict) -> None:
        """Last changes to a request's body that only this backend's server needs (nothing by default)."""

    def no_grammar(self) -> str:
        """Why this role takes no grammar, and what to do where it could."""
        return f"the {self.backend} backend decodes none"

    def planned_prefill(self) -> str:
        """How a pre-filled reply is sent before anything is known of the server: the role's `prefill`, or on auto
        this backend's default."""
        return self.role.prefill if self.role.prefill != "auto" else "off"

    @property
    def probes_prefill(self) -> bool:
        """Whether one probe request finds out how the server continues a pre-filled reply (prefill auto)."""
        return False

    @property
    def probes_grammar(self) -> bool:
        """Whether grammar_dialect asks the server (grammar auto): give it a cache to keep the verdict in."""
        return False

    def template_source(self) -> Optional[Path]:
        """The GGUF file or Hugging Face folder whose chat template pre-fills for this role (prefill `template`):
        its `chat_template`, or `model` when that is a local path; None when there is none."""
        for named in (self.role.chat_template, self.role.model):
            if named and resolve(named).exists():
                return resolve(named)
        return None

    # ------------------------------------------------------------ what answers

    def model_file(self) -> Optional[Path]:
        """The weights file here that this process serves (the embedded GGUF); None for a model served elsewhere,
        and when the file is missing."""
        return None

    def weights_to_train(self) -> Optional[Path]:
        """The weights file here that training can start from (TRL dequantizes the embedded GGUF); None where the
        backend's weights are not this machine's to read (a server elsewhere, OpenAI)."""
        return None

    def identity(self, hashed: bool = True, engine: Optional[str] = None) -> str:
        """What the cache key knows of the model: its name and the hash of the weights that answer (a local file or
        folder a server loads) or the role's `revision`. `hashed` False: a fake model, no weights to hash; `engine`:
        which program serves a model this process starts."""
        role = self.role
        if resolve(role.model).exists():  # weights in a local file or folder (e.g. `transformers serve`
            return f"{role.model}@sha256:{sha256_path(resolve(role.model))[:16]}"  # of a merged checkpoint)
        return f"{role.model}@{role.revision}" if role.revision else role.model

    def manifest_entry(self) -> dict:
        """The role in the run's manifest: backend, model, server and the hashes of weights here; never a key."""
        entry = {"backend": self.role.backend, "model": self.role.model}
        if self.role.base_url:
            entry["base_url"] = self.role.base_url
        return entry

    # ------------------------------------------------------------ preflight

    @property
    def api_base(self) -> str:
        """Where the role's server answers (the preflight asks its /models)."""
        return (self.role.base_url or OPENAI_URL).rstrip("/")

    def weights_problem(self) -> Optional[str]:
        """What keeps a server this process starts from loading the weights (None: nothing, or not ours to start)."""
        return None

    def unserved_problem(self, served: list[str]) -> Optional[str]:
        """What the server's model list (`served`) says is wrong with the role's model; None when it is served."""
        return None


class Embedded(Provider):
    """The embedded model (a GGUF, SmolLM2-135M-Instruct by default, and LoRA adapters) on llama.cpp's llama-server
    (or llama-cpp-python's server), started by this process on 127.0.0.1."""

    backend = "embedded"
    grammar = prefill = lora = local_server = True
    choices = False  # llama-cpp-python ignores n, llama-server takes a slot per choice

    def structured_output(self) -> str:
        return "grammar"

    def grammar_dialect(self, cache: Any = None, transport: Optional[httpx2.BaseTransport] = None,
                        env_file: Optional[Path] = None) -> Optional[str]:
        return "llama_cpp"

    def planned_prefill(self) -> str:
        return self.role.prefill if self.role.prefill != "auto" else "template"  # its chat template, rendered here

    def template_source(self) -> Optional[Path]:
        return embedded_model_path(self.role.model)

    def model_file(self) -> Optional[Path]:
        try:
            return embedded_model_path(self.role.model)
        except FileNotFoundError:
            return None

    def weights_to_train(self) -> Optional[Path]:
        return embedded_model_path(self.role.model)  # a missing file is an error that names it

    def identity(self, hashed: bool = True, engine: Optional[str] = None) -> str:
        role = self.role
        ident = f"embedded:{role.model}"
        if hashed:
            ident += f"@sha256:{sha256_file(embedded_model_path(role.model))[:16]}"
            # which engine answers: the same weights sample differently in llama-server and in llama-cpp-python
            # (their samplers differ), so neither replays the other's answers
            if engine:
                ident += f"@{engine}"
        if role.adapter:
            adapter = resolve(role.adapter)
            ident += f"+lora@sha256:{sha256_file(adapter)[:16]}" if adapter.is_file() else f"+lora:{role.adapter}"
        return ident

    def manifest_entry(self) -> dict:
        entry = super().manifest_entry()
        gguf = self.model_file()
        entry["model_file"] = str(gguf) if gguf else None
        if self.role.adapter:
            entry["adapter"] = str(Path(self.role.adapter))
        entry["model_sha256"] = sha256_file(gguf) if gguf else None
        if self.role.adapter:
            adapter = Path(self.role.adapter)
            entry["adapter_sha256"] = sha256_file(adapter) if adapter.is_file() else None
        return entry

    def weights_problem(self) -> Optional[str]:
        try:
            embedded_model_path(self.role.model)
        except FileNotFoundError as err:
            return str(err)
        return None


class Transformers(Provider):
    """A Hugging Face folder here (a user's model, a merged checkpoint) behind `transformers serve`, started by this
    process on 127.0.0.1: the route for weights llama.cpp cannot take, on a CPU or a GPU. No grammar (free-text
    decoding only: turn generate.structured off, or serve the model with vLLM behind openai_compatible); a pre-filled
    reply is asked in one turn unless the role says `prefill: template` (the folder's chat template, sent to
    /completions). Training starts from the same folder."""

    backend = "transformers"
    local_server = json_fallback = True
    logprobs = False  # `transformers serve` ignores logprobs and top_logprobs
    choices = False  # one sample per request, as for the embedded model

    def finish_body(self, body: dict) -> None:
        # `transformers serve` samples only where the folder's generation config says do_sample (most do not, and a
        # converted GGUF never does): a temperature alone would be greedy decoding, every sample of a prompt alike.
        # Its `generation_config` field says so per request; the seed is taken from the body as for any server.
        temperature = body.get("temperature")
        if temperature:
            body["generation_config"] = json.dumps({"do_sample": True, "temperature": temperature,
                                                    "top_p": body.get("top_p", 1.0)})

    def folder(self) -> Path:
        return resolve(self.role.model)

    def model_file(self) -> Optional[Path]:
        return self.folder() if (self.folder() / "config.json").is_file() else None

    def weights_to_train(self) -> Optional[Path]:
        return self.folder()

    def identity(self, hashed: bool = True, engine: Optional[str] = None) -> str:
        # its own prefix: the same folder behind vLLM (openai_compatible) samples differently
        return f"transformers:{super().identity(hashed)}" if hashed else f"transformers:{self.role.model}"

    def manifest_entry(self) -> dict:
        entry = super().manifest_entry()
        folder = self.model_file()
        entry["model_file"] = str(folder) if folder else None
        entry["model_sha256"] = sha256_path(folder) if folder else None
        return entry

    def weights_problem(self) -> Optional[str]:
        if not self.folder().is_dir():
            return (f"transformers model {self.role.model!r} is not a folder here: give the path of a Hugging Face "
                    "folder (config.json, weights, tokenizer); nothing is downloaded from the hub")
        if self.model_file() is None:
            return f"transformers model {str(self.folder())!r} has no config.json: not a Hugging Face model folder"
        return None


class OpenAICompatible(Provider):
    """Any server that speaks OpenAI's chat API at `base_url`: vLLM, llama.cpp's llama-server, Ollama, `transformers
    serve`. What it can do beyond the API depends on the server: the role says (`grammar`, `prefill`), or one probe
    each finds out."""

    backend = "openai_compatible"
    grammar = prefill = batch = json_fallback = True

    def structured_output(self) -> str:
        # a server the role says is llama.cpp's gets the grammar the embedded one gets; on auto, json_schema, which
        # llama-server turns into a grammar itself (and a server that refuses it gets json_object)
        return "grammar" if self.role.grammar == "llama_cpp" else "json_schema"

    def grammar_dialect(self, cache: Any = None, transport: Optional[httpx2.BaseTransport] = None,
                        env_file: Optional[Path] = None) -> Optional[str]:
        if self.role.grammar != "auto":
            return None if self.role.grammar == "none" else self.role.grammar
        if self._dialect is None:
            self._dialect = (self._probed_dialect(cache, transport, env_file),)
        return self._dialect[0]

    def _probed_dialect(self, cache: Any, transport: Optional[httpx2.BaseTransport],
                        env_file: Optional[Path]) -> Optional[str]:
        """The server's model list says who serves it (owned_by: llama-server's "llamacpp", vLLM's "vllm"). Asked
        once per process and server; a verdict from a server that answered is kept in `cache` (a resumed run needs
        no server for it). Nothing answering: None, not kept."""
        memo = (self.role.base_url, self.role.model)
        if transport is None and memo in _PROBED:
            return _PROBED[memo]
        key = hashlib.sha256(json.dumps({"probe": "grammar dialect", "base_url": self.role.base_url,
                                         "model": self.role.model}, sort_keys=True).encode()).hexdigest()
        kept = cache.get_many([key]).get(key) if cache is not None else None
        if kept is not None:
            return kept["dialect"]
        var = self.role.key_env
        key_value = env_value(var, env_file or project_root() / ".env") if var else None
        try:
            with httpx2.Client(transport=transport, timeout=PROBE_TIMEOUT_S) as http:
                response = http.get(f"{self.api_base}/models",
                                    headers={"Authorization": f"Bearer {key_value}"} if key_value else {})
            listed = response.json().get("data") if response.status_code == 200 else None
        except (httpx2.HTTPError, ValueError, AttributeError, TypeError):  # no answer, no JSON
            listed = None
        if not isinstance(listed, list):
            return None  # no answer, or not a model list: unknown, asked again next time
        owners = {str(m.get("owned_by", "")).lower() for m in listed if isinstance(m, dict)}
        dialect = next((GRAMMAR_BY_OWNER[o] for o in sorted(owners) if o in GRAMMAR_BY_OWNER), None)
        if cache is not None:
            cache.put(key, {"dialect": dialect}, self.role.model)
        if transport is None:
            _PROBED[memo] = dialect
        return dialect

    def no_grammar(self) -> str:
        said = "grammar: none" if self.role.grammar == "none" else "its model list names neither llama.cpp nor vLLM"
        return (f"the server at {self.role.base_url} (model {self.role.model!r}) takes none ({said}): set the "
                "role's grammar to llama_cpp or vllm if it decodes one")

    def planned_prefill(self) -> str:
        return self.role.prefill if self.role.prefill != "auto" else "continue"  # until the probe says otherwise

    @property
    def probes_prefill(self) -> bool:
        return self.role.prefill == "auto"

    @property
    def probes_grammar(self) -> bool:
        return self.role.grammar == "auto"

    def unserved_problem(self, served: list[str]) -> Optional[str]:
        if served and self.role.model not in served:  # (some servers list nothing, or another name)
            shown = ", ".join(map(repr, served[:8])) + (" ..." if len(served) > 8 else "")
            return f"model {self.role.model!r} is not served at {self.api_base} (served: {shown})"
        return None


class OpenAI(Provider):
    """OpenAI's API: JSON schemas, logprobs (not for reasoning models) and the Batch API; no grammar, no
    pre-filled reply."""

    backend = "openai"
    batch = True
    max_tokens_key = "max_completion_tokens"

    def is_reasoning_model(self) -> bool:
        return self.role.sampling.reasoning_effort is not None or bool(REASONING_MODEL.match(self.role.model))

    def unserved_problem(self, served: list[str]) -> Optional[str]:
        if self.role.model not in served:
            return f"model {self.role.model!r} is not among the {len(served)} models this key can use"
        return None


PROVIDERS: dict[str, type[Provider]] = {cls.backend: cls for cls in (Embedded, Transformers, OpenAICompatible,
                                                                      OpenAI)}


def provider_for(role: ModelRole) -> Provider:
    """The provider of a model role's backend."""
    return PROVIDERS[role.backend](role)
