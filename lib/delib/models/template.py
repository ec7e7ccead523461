"""The embedded model's chat template, rendered here so that a reply can be pre-started (prefilled).

llama.cpp's chat endpoint always opens a fresh assistant turn; to continue one ("<think>\\n..."), the client
renders the GGUF's own template with llama-cpp-python's formatter (the one its server uses) and completes the text.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def _field(reader, name: str):
    f = reader.fields[name]
    return f.parts[f.data[0]]


@lru_cache(maxsize=4)
def _formatter(gguf_path: str):
    from gguf import GGUFReader
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    reader = GGUFReader(gguf_path)
    if "tokenizer.chat_template" not in reader.fields:
        raise ValueError(f"{gguf_path}: the model has no chat template, so a reply cannot be pre-started")
    template = bytes(_field(reader, "tokenizer.chat_template")).decode("utf-8")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    token = lambda key: bytes(tokens.parts[tokens.data[int(_field(reader, key)[0])]]).decode("utf-8")  # noqa: E731
    return Jinja2ChatFormatter(template=template, eos_token=token("tokenizer.ggml.eos_token_id"),
                               bos_token=token("tokenizer.ggml.bos_token_id"))


def render_prompt(messages: list[dict], gguf_path: str | Path) -> tuple[str, list[str]]:
    """The raw prompt the server would build for `messages`, opening the assistant's turn; and its stop strings."""
    response = _formatter(str(gguf_path))(messages=messages)
    stop = response.stop if isinstance(response.stop, list) else [response.stop] if response.stop else []
    return response.prompt, stop
