"""Structured output: the schemas sent to OpenAI, the GBNF grammars sent to llama.cpp, and reply validation."""
from __future__ import annotations

import json
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from delib.models.structured import gbnf_for, openai_response_format, parse_reply, response_schema, strict_schema


class Citation(BaseModel):
    section: str = Field(max_length=20)
    quote: Optional[str] = None


class Judgement(BaseModel):
    score: int = Field(ge=0, le=10)
    confidence: float = Field(ge=0, le=1)
    action: Literal["comply", "refuse", "safe_complete"]
    reason: str = Field(min_length=1, max_length=200)
    citations: list[Citation] = Field(max_length=3)
    compliant: bool


def test_response_schema_inlines_refs():
    text = json.dumps(response_schema(Judgement))
    assert "$ref" not in text and "$defs" not in text and '"section"' in text


def test_strict_schema_requires_everything_and_drops_unsupported_keywords():
    schema = strict_schema(Judgement)
    assert schema["required"] == list(schema["properties"]) and schema["additionalProperties"] is False
    item = schema["properties"]["citations"]["items"]
    assert item["required"] == ["section", "quote"] and item["additionalProperties"] is False
    text = json.dumps(schema)
    assert "maxLength" not in text and '"default"' not in text
    assert schema["properties"]["score"]["maximum"] == 10
    fmt = openai_response_format(Judgement)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Judgement"


def test_grammar_bounds_what_llama_cpp_would_not():
    grammar = gbnf_for(Judgement)
    rules = dict(line.split(" ::= ", 1) for line in grammar.strip().splitlines())
    assert rules["judgement-score"] == " | ".join(f'"{i}"' for i in range(11))
    assert rules["judgement-reason"] == '"\\"" char{1,200} "\\""'
    assert rules["judgement-citations-item-section"] == '"\\"" char{0,20} "\\""'
    assert "{0,2}" in rules["judgement-citations"]  # at most 3 items
    assert rules["judgement-confidence"].startswith('("0") fraction? | "1"')
    assert '"\\"comply\\"" | "\\"refuse\\"" | "\\"safe_complete\\""' in rules["judgement"]


def test_grammar_compiles_in_llama_cpp():
    llama_cpp = pytest.importorskip("llama_cpp")
    for model in (Judgement, Citation):
        assert llama_cpp.LlamaGrammar.from_string(gbnf_for(model), verbose=False) is not None


def test_parse_reply_validates_and_says_why():
    good = '{"score": 3, "confidence": 0.5, "action": "refuse", "reason": "r", "citations": [], "compliant": true}'
    assert parse_reply(Judgement, good).score == 3
    assert parse_reply(Judgement, f"```json\n{good}\n```").action == "refuse"
    with pytest.raises(ValueError, match="score"):
        parse_reply(Judgement, good.replace('"score": 3', '"score": 11'))
    with pytest.raises(ValueError, match="empty"):
        parse_reply(Judgement, "")
    with pytest.raises(ValueError):
        parse_reply(Judgement, "{not json")
