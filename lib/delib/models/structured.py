"""Structured output for the judge and the labelling stages: ask a model for JSON matching a pydantic model.

OpenAI takes `response_format` of type `json_schema` (strict). llama.cpp's server does not accept that type and
does not enforce `minimum`, `maximum` or `maxLength`, so for it we write a GBNF grammar that bounds them.
Whatever the backend, the reply is validated with pydantic afterwards.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

# Keywords OpenAI's strict mode rejects; pydantic still enforces them when the reply is validated.
_STRICT_UNSUPPORTED = ("default", "minLength", "maxLength", "format", "title", "examples")
ENUMERATE_INTEGERS_UP_TO = 256  # an integer range this small becomes one alternative per value


def inline_refs(schema: dict) -> dict:
    """The schema with every local `$ref` replaced by its definition (no recursive models)."""
    defs = schema.get("$defs", {})

    def walk(node: Any, depth: int = 0) -> Any:
        if depth > 50:
            raise ValueError("recursive schemas are not supported for structured output")
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].split("/")[-1]
                merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
                return walk(merged, depth + 1)
            return {k: walk(v, depth + 1) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        return node

    return walk(schema)


def response_schema(model: type[BaseModel]) -> dict:
    """The JSON schema of a pydantic model, refs inlined: what the cache key and every backend use."""
    return inline_refs(model.model_json_schema())


def strict_schema(model: type[BaseModel]) -> dict:
    """The schema in the form OpenAI's strict mode takes: every property required, no extra properties."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: walk(v) for k, v in node.items() if k not in _STRICT_UNSUPPORTED}
            if node.get("type") == "object" and "properties" in node:
                node["required"] = list(node["properties"])
                node["additionalProperties"] = False
            if "allOf" in node and len(node["allOf"]) == 1:  # pydantic wraps a described ref in allOf
                inner = node.pop("allOf")[0]
                node = {**inner, **node}
            return node
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(copy.deepcopy(response_schema(model)))


def openai_response_format(model: type[BaseModel]) -> dict:
    """`response_format` for OpenAI (and servers that accept `json_schema`, such as vLLM)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__[:64], "schema": strict_schema(model), "strict": True},
    }


def json_object_response_format(model: type[BaseModel]) -> dict:
    """`response_format` of type `json_object` with the schema beside it (llama-cpp-python's form)."""
    return {"type": "json_object", "schema": response_schema(model)}


def parse_reply(model: type[BaseModel], text: Optional[str]) -> BaseModel:
    """Validate a reply against the model; raises ValueError with a short reason when it does not fit."""
    if not text:
        raise ValueError("empty reply")
    body = text.strip()
    if body.startswith("```"):  # some models fence JSON even when asked not to
        body = body.strip("`")
        body = body[body.find("{") :] if "{" in body else body
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ValueError(f"{err.error_count()} validation error(s), first at {where}: {first['msg']}") from None


# ---------------------------------------------------------------- GBNF


class _Grammar:
    """Builds GBNF rules for a JSON schema, one named rule per schema node that needs one."""

    _PRIMITIVES = {
        "ws": '[ ]?',  # at most one space: a small model cannot loop on whitespace
        "char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        "string": '"\\"" char* "\\""',
        "digits": "[0-9]{1,15}",
        "integer": '"-"? ("0" | [1-9] [0-9]{0,15})',
        "fraction": '"." [0-9]{1,6}',
        "number": 'integer fraction? ([eE] [-+]? [0-9]{1,3})?',
        "boolean": '"true" | "false"',
        "null": '"null"',
        "value": "object | array | string | number | boolean | null",
        "object": '"{" ws ( string ws ":" ws value ( "," ws string ws ":" ws value ){0,63} )? ws "}"',
        "array": '"[" ws ( value ( "," ws value ){0,255} )? ws "]"',
    }

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._used: set[str] = set()

    def _prim(self, name: str) -> str:
        self._used.add(name)
        if name in ("number",):
            self._used.update({"integer", "fraction"})
        if name in ("string", "object", "array", "value"):
            self._used.add("char")
        if name in ("object", "array", "value"):
            self._used.update({"object", "array", "string", "number", "integer", "fraction", "boolean", "null"})
        return name

    def _add(self, hint: str, body: str) -> str:
        base = "".join(c if c.isalnum() else "-" for c in hint).strip("-").lower() or "r"
        name, i = base, 1
        while name in self.rules or name in self._PRIMITIVES:
            if self.rules.get(name) == body:
                return name
            i += 1
            name = f"{base}{i}"
        self.rules[name] = body
        return name

    def visit(self, node: dict, hint: str) -> str:
        """An expression matching the JSON values `node` allows."""
        self._used.add("ws")
        if "const" in node:
            return _literal(json.dumps(node["const"]))
        if "enum" in node:
            return "(" + " | ".join(_literal(json.dumps(v)) for v in node["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in node:
                alts = [self.visit(sub, f"{hint}-{i}") for i, sub in enumerate(node[key])]
                return self._add(hint, " | ".join(alts))
        if "allOf" in node and len(node["allOf"]) == 1:
            return self.visit({**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}, hint)
        kind = node.get("type")
        if isinstance(kind, list):
            return self._add(hint, " | ".join(self.visit({**node, "type": t}, f"{hint}-{t}") for t in kind))
        if kind == "object":
            return self._object(node, hint)
        if kind == "array":
            return self._array(node, hint)
        if kind == "string":
            return self._string(node, hint)
        if kind == "integer":
            return self._integer(node, hint)
        if kind == "number":
            return self._number(node, hint)
        if kind == "boolean":
            return self._prim("boolean")
        if kind == "null":
            return self._prim("null")
        return self._prim("value")  # no type: any JSON value

    def _object(self, node: dict, hint: str) -> str:
        props = node.get("properties")
        if not props:
            return self._prim("object")
        parts = []
        for i, (name, sub) in enumerate(props.items()):
            sep = "" if i == 0 else '"," ws '
            parts.append(f'{sep}{_literal(json.dumps(name))} ws ":" ws {self.visit(sub, f"{hint}-{name}")}')
        return self._add(hint, '"{" ws ' + " ws ".join(parts) + ' ws "}"')

    def _array(self, node: dict, hint: str) -> str:
        item = self.visit(node.get("items", {}), f"{hint}-item")
        lo, hi = int(node.get("minItems", 0)), node.get("maxItems")
        if hi is not None and int(hi) == 0:
            return self._add(hint, '"[" ws "]"')
        more_lo = max(lo - 1, 0)
        more = f'("," ws {item}){{{more_lo},{"" if hi is None else int(hi) - 1}}}'
        items = f"{item} {more}"
        body = f'"[" ws {items} ws "]"' if lo >= 1 else f'"[" ws ({items})? ws "]"'
        return self._add(hint, body)

    def _string(self, node: dict, hint: str) -> str:
        if node.get("format") or node.get("pattern"):
            return self._prim("string")  # left to validation
        lo, hi = int(node.get("minLength", 0)), node.get("maxLength")
        if lo == 0 and hi is None:
            return self._prim("string")
        self._prim("char")
        reps = f"{{{lo},{'' if hi is None else int(hi)}}}"
        return self._add(hint, f'"\\"" char{reps} "\\""')

    def _integer(self, node: dict, hint: str) -> str:
        lo, hi = _bounds(node, integer=True)
        if lo is not None and hi is not None and hi - lo <= ENUMERATE_INTEGERS_UP_TO:
            return self._add(hint, " | ".join(_literal(str(v)) for v in range(int(lo), int(hi) + 1)))
        if lo is not None and lo >= 0:  # no minus sign; at most as many digits as the bound
            width = len(str(int(hi))) if hi is not None else 15
            return self._add(hint, f'"0" | [1-9] [0-9]{{0,{width - 1}}}')
        return self._prim("integer")

    def _number(self, node: dict, hint: str) -> str:
        lo, hi = _bounds(node, integer=False)
        if lo is None or hi is None or lo < 0 or hi - lo > 1000:
            return self._prim("number")
        self._prim("fraction")
        first, last = math.floor(lo), math.floor(hi)
        alts = []
        below = [str(v) for v in range(first, last)]  # whole parts that any fraction keeps under hi
        if below:
            alts.append("(" + " | ".join(_literal(v) for v in below) + ") fraction?")
        if hi == last:  # hi is whole: hi itself, with at most zeros after the point
            alts.append(f'{_literal(str(last))} ("." "0"{{1,6}})?')
        else:
            alts.append(f"{_literal(str(last))} fraction?")
        return self._add(hint, " | ".join(alts))

    def grammar(self, root: str) -> str:
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        lines += [f"{name} ::= {self._PRIMITIVES[name]}" for name in self._PRIMITIVES if name in self._used]
        return "\n".join(lines) + "\n"


def _literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bounds(node: dict, integer: bool) -> tuple[Optional[float], Optional[float]]:
    lo, hi = node.get("minimum"), node.get("maximum")
    if "exclusiveMinimum" in node:
        lo = node["exclusiveMinimum"] + (1 if integer else 0)
    if "exclusiveMaximum" in node:
        hi = node["exclusiveMaximum"] - (1 if integer else 0)
    if integer:
        lo = math.ceil(lo) if lo is not None else None
        hi = math.floor(hi) if hi is not None else None
    return lo, hi


def gbnf_for(model: type[BaseModel]) -> str:
    """A GBNF grammar whose sentences are JSON objects fitting the model, with numeric and length bounds kept."""
    g = _Grammar()
    root = g.visit(response_schema(model), model.__name__)
    return g.grammar(root)
