"""Tokens of tool/function definitions and structured-output schemas.

Function definitions follow the published rule of OpenAI's cookbook "How to count tokens with tiktoken":

- each function: ``func_init`` + tokens of ``"{name}:{description}"`` (one trailing ``.`` of the description removed);
- if its parameters have properties: ``prop_init``, then per property ``prop_key`` + tokens of
  ``"{key}:{type}:{description}"`` (trailing ``.`` removed), and for an ``enum``: ``enum_init`` + per item
  ``enum_item`` + tokens of the item;
- once for the whole list: ``func_end``.

Constants: cl100k models (gpt-4, gpt-3.5-turbo) func_init 10; o200k models (gpt-4o family and every newer model)
func_init 7; for both prop_init 3, prop_key 3, enum_init -3, enum_item 3, func_end 12. Published check: the cookbook's
weather tool with its two messages is 101 prompt tokens on gpt-4o and 105 on gpt-4 / gpt-3.5-turbo.

Our additions where the published rule is silent (each only adds tokens, so flat schemas count exactly as published):
a property ``type`` given as a list is written ``"a | b"``; non-string enum items are counted as JSON; other schema
keywords of a property (``items``, ``properties``, ``anyOf``, ``$ref``, ``format``, ...) and the parameters'
``$defs``/``definitions`` are counted as their compact JSON; a custom tool counts like a function without parameters
plus the compact JSON of its ``format``.

Structured output (``response_format: {"type": "json_schema", "json_schema": {...}}`` in chat,
``text: {"format": {"type": "json_schema", ...}}`` in responses): the tokens of the compact JSON
(``separators=(",", ":")``, non-ASCII kept) of the schema object with its name, description, schema and strict members
(for responses: the format object without its ``type``). OpenAI does not publish how it renders the schema into the
prompt, so this is our stated rule; ``json_object`` and ``text`` formats add nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gbatch_flows.tokenizing.types import EstimateError

Count = Callable[[str], int]


@dataclass(frozen=True)
class ToolConstants:
    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


O200K_TOOLS = ToolConstants(func_init=7, prop_init=3, prop_key=3, enum_init=-3, enum_item=3, func_end=12)
CL100K_TOOLS = ToolConstants(func_init=10, prop_init=3, prop_key=3, enum_init=-3, enum_item=3, func_end=12)

_PROPERTY_KEYS_IN_RULE = frozenset({"type", "description", "enum"})
_PARAMETER_EXTRA_KEYS = ("$defs", "definitions")


@dataclass(frozen=True)
class FunctionDef:
    """A function-like tool, normalised from the chat, legacy and responses shapes."""

    field: str
    name: str
    description: str
    parameters: dict[str, Any] | None
    extra: Any = None  # counted as compact JSON (custom tools' ``format``)


def compact_json(value: Any, field: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise EstimateError(field, f"not JSON-serialisable: {exc}") from None


def _require_str(value: Any, field: str, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise EstimateError(field, f"expected a string, got {type(value).__name__}")
    return value


def _function_def(spec: Any, field: str) -> FunctionDef:
    if not isinstance(spec, dict):
        raise EstimateError(field, f"expected a function object, got {type(spec).__name__}")
    parameters = spec.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise EstimateError(f"{field}.parameters", f"expected a JSON schema object, got {type(parameters).__name__}")
    return FunctionDef(
        field=field,
        name=_require_str(spec.get("name"), f"{field}.name"),
        description=_require_str(spec.get("description"), f"{field}.description", default=""),
        parameters=parameters,
    )


def _custom_def(spec: Any, field: str) -> FunctionDef:
    if not isinstance(spec, dict):
        raise EstimateError(field, f"expected a custom tool object, got {type(spec).__name__}")
    return FunctionDef(
        field=field,
        name=_require_str(spec.get("name"), f"{field}.name"),
        description=_require_str(spec.get("description"), f"{field}.description", default=""),
        parameters=None,
        extra=spec.get("format"),
    )


def _require_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise EstimateError(field, f"expected a list, got {type(value).__name__}")
    return value


def chat_tools(tools: Any, field: str = "tools") -> list[FunctionDef]:
    """Function definitions of a chat ``tools`` list (``function`` and ``custom`` tools)."""
    defs = []
    for i, tool in enumerate(_require_list(tools, field)):
        where = f"{field}[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            defs.append(_function_def(tool.get("function"), f"{where}.function"))
        elif kind == "custom":
            defs.append(_custom_def(tool.get("custom"), f"{where}.custom"))
        else:
            raise EstimateError(f"{where}.type", f"unsupported tool type {kind!r}; supported: 'function', 'custom'")
    return defs


def legacy_functions(functions: Any, field: str = "functions") -> list[FunctionDef]:
    """Function definitions of the deprecated chat ``functions`` list."""
    return [_function_def(spec, f"{field}[{i}]") for i, spec in enumerate(_require_list(functions, field))]


def responses_tools(tools: Any, field: str = "tools") -> list[FunctionDef]:
    """Function definitions of a responses ``tools`` list (flat ``function`` and ``custom`` tools)."""
    defs = []
    for i, tool in enumerate(_require_list(tools, field)):
        where = f"{field}[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            defs.append(_function_def(tool, where))
        elif kind == "custom":
            defs.append(_custom_def(tool, where))
        else:
            raise EstimateError(
                f"{where}.type",
                f"cannot estimate tool type {kind!r} offline; supported: 'function', 'custom' "
                "(built-in tools add tokens the estimator cannot know)",
            )
    return defs


def _strip_period(text: str) -> str:
    return text.removesuffix(".")


def _property_tokens(key: str, prop: Any, field: str, count: Count, consts: ToolConstants) -> int:
    if not isinstance(prop, dict):
        raise EstimateError(field, f"expected a property schema object, got {type(prop).__name__}")
    tokens = consts.prop_key
    ptype = prop.get("type", "")
    if isinstance(ptype, list) and all(isinstance(t, str) for t in ptype):
        ptype = " | ".join(ptype)
    elif not isinstance(ptype, str):
        raise EstimateError(f"{field}.type", f"expected a string or a list of strings, got {ptype!r}")
    description = _require_str(prop.get("description"), f"{field}.description", default="")
    if "enum" in prop:
        items = _require_list(prop["enum"], f"{field}.enum")
        tokens += consts.enum_init
        for item in items:
            tokens += consts.enum_item + count(item if isinstance(item, str) else compact_json(item, f"{field}.enum"))
    tokens += count(f"{key}:{ptype}:{_strip_period(description)}")
    extra = {k: v for k, v in prop.items() if k not in _PROPERTY_KEYS_IN_RULE}
    if extra:
        tokens += count(compact_json(extra, field))
    return tokens


def function_tokens(defs: list[FunctionDef], count: Count, consts: ToolConstants) -> int:
    """Tokens of a list of function definitions by the cookbook rule (0 for an empty list)."""
    if not defs:
        return 0
    tokens = 0
    for fn in defs:
        tokens += consts.func_init + count(f"{fn.name}:{_strip_period(fn.description)}")
        if fn.extra is not None:
            tokens += count(compact_json(fn.extra, f"{fn.field}.format"))
        params = fn.parameters
        if not params:
            continue
        properties = params.get("properties", {})
        if not isinstance(properties, dict):
            raise EstimateError(f"{fn.field}.parameters.properties", "expected an object of property schemas")
        if properties:
            tokens += consts.prop_init
            for key, prop in properties.items():
                tokens += _property_tokens(key, prop, f"{fn.field}.parameters.properties.{key}", count, consts)
        extra = {k: params[k] for k in _PARAMETER_EXTRA_KEYS if k in params}
        if extra:
            tokens += count(compact_json(extra, f"{fn.field}.parameters"))
    return tokens + consts.func_end


def response_format_tokens(response_format: Any, count: Count, field: str = "response_format") -> int:
    """Tokens of a chat ``response_format`` (see the module docstring for the rule)."""
    if not isinstance(response_format, dict):
        raise EstimateError(field, f"expected an object, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return 0
    if kind != "json_schema":
        raise EstimateError(
            f"{field}.type", f"unsupported type {kind!r}; expected 'text', 'json_object', 'json_schema'"
        )
    schema = response_format.get("json_schema")
    if not isinstance(schema, dict):
        raise EstimateError(f"{field}.json_schema", "expected an object with name and schema")
    return count(_schema_text(schema, f"{field}.json_schema"))


_SCHEMA_TEXTS: dict[bytes, str] = {}
_SCHEMA_TEXTS_MAX = 256


def _schema_text(schema: dict[str, Any], field: str) -> str:
    """``compact_json`` of a structured-output schema, memoised: every request of a task usually carries the same
    schema, and serialising it again per request cost more than the rest of the estimate."""
    try:
        key = orjson.dumps(schema)
    except TypeError:
        return compact_json(schema, field)  # gives the error message
    text = _SCHEMA_TEXTS.get(key)
    if text is None:
        text = compact_json(schema, field)
        if len(_SCHEMA_TEXTS) >= _SCHEMA_TEXTS_MAX:
            _SCHEMA_TEXTS.clear()
        _SCHEMA_TEXTS[key] = text
    return text


def text_format_tokens(text: Any, count: Count, field: str = "text") -> int:
    """Tokens of a responses ``text`` config's ``format`` (see the module docstring for the rule)."""
    if not isinstance(text, dict):
        raise EstimateError(field, f"expected an object, got {type(text).__name__}")
    fmt = text.get("format")
    if fmt is None:
        return 0
    if not isinstance(fmt, dict):
        raise EstimateError(f"{field}.format", f"expected an object, got {type(fmt).__name__}")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return 0
    if kind != "json_schema":
        raise EstimateError(
            f"{field}.format.type", f"unsupported type {kind!r}; expected 'text', 'json_object', 'json_schema'"
        )
    return count(compact_json({k: v for k, v in fmt.items() if k != "type"}, f"{field}.format"))
