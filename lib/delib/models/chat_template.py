"""A model's chat template, rendered here so that a reply can be pre-started (prefilled).

llama.cpp's chat endpoint (and most servers' without vLLM's continue_final_message) always opens a fresh assistant
turn; to continue one ("<think>\\n..."), the client renders the model's own template (a GGUF's, with
llama-cpp-python's formatter, the one its server uses; or a Hugging Face folder's) and completes the text.
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


@lru_cache(maxsize=4)
def _hf_tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def render_chat(messages: list[dict], source: str | Path) -> tuple[str, list[str]]:
    """render_prompt for a GGUF file or a Hugging Face folder (its tokenizer's chat template)."""
    source = Path(source)
    if source.is_file():
        return render_prompt(messages, source)
    if not (source / "tokenizer_config.json").is_file():
        raise ValueError(f"{source}: neither a GGUF file nor a Hugging Face folder with a tokenizer: no chat "
                         "template to pre-start a reply with")
    tok = _hf_tokenizer(str(source))
    if not tok.chat_template:
        raise ValueError(f"{source}: the tokenizer has no chat template, so a reply cannot be pre-started")
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt, [tok.eos_token] if tok.eos_token else []
