"""The Responses API (/v1/responses): request checks, a chat-shaped view for responders, and the `response` object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .chat import truncate_to_tokens
from .errors import ApiError, invalid_type, invalid_value, missing_param, require_model, require_object

TEXT_FORMATS = frozenset({"text", "json_object", "json_schema"})
MIN_OUTPUT_TOKENS = 16


@dataclass(frozen=True)
class ResponsesParams:
    """The parts of a Responses request the emulator acts on."""

    model: str
    max_output_tokens: int | None
    text_format: dict[str, Any]


def _check_text_format(text: Any) -> dict[str, Any]:
    if text is None:
        return {"type": "text"}
    if not isinstance(text, dict):
        raise invalid_type("text", "an object", text)
    fmt = text.get("format")
    if fmt is None:
        return {"type": "text"}
    if not isinstance(fmt, dict):
        raise invalid_type("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind not in TEXT_FORMATS:
        raise invalid_value("text.format.type", f"'{kind}'. Supported values are: {sorted(TEXT_FORMATS)}.")
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not fmt["name"]:
            raise missing_param("text.format.name")
        if "schema" not in fmt:
            raise missing_param("text.format.schema")
        if not isinstance(fmt["schema"], (dict, bool)):
            raise invalid_type("text.format.schema", "an object", fmt["schema"])
    return fmt


def _check_input(value: Any) -> None:
    if value is None:
        raise missing_param("input")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise invalid_type("input", "a string or an array", value)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid_type(f"input[{i}]", "an object", item)
        content = item.get("content")
        if "role" in item and content is not None and not isinstance(content, (str, list)):
            raise invalid_type(f"input[{i}].content", "a string or an array", content)


def check_responses_request(body: Any) -> ResponsesParams:
    """Validate a Responses body like the real API would; raise ApiError(400) naming the bad parameter."""
    body = require_object(body)
    model = require_model(body)
    _check_input(body.get("input"))
    if body.get("stream"):
        raise ApiError(400, "The emulator does not support stream=true; send the request without streaming.",
                       param="stream", code="unsupported_parameter")
    if body.get("background"):
        raise ApiError(400, "The emulator does not support background=true.", param="background",
                       code="unsupported_parameter")
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise invalid_type("max_output_tokens", "an integer", limit)
        if limit < MIN_OUTPUT_TOKENS:
            raise invalid_value("max_output_tokens", f"expected an integer at least {MIN_OUTPUT_TOKENS}, "
                                f"got {limit}.")
    return ResponsesParams(model=model, max_output_tokens=limit, text_format=_check_text_format(body.get("text")))


def _part_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return ""


def chat_view(body: dict[str, Any], params: ResponsesParams) -> dict[str, Any]:
    """The request as a chat completion body (messages, response_format, max tokens) for responders and caching."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "developer", "content": instructions})
    raw = body.get("input")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and "role" in item:
                messages.append({"role": item["role"], "content": _part_text(item.get("content"))})
    view: dict[str, Any] = {"model": params.model, "messages": messages}
    fmt = params.text_format
    if fmt.get("type") == "json_schema":
        view["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt["name"], "schema": fmt["schema"], "strict": fmt.get("strict")}}
    elif fmt.get("type") == "json_object":
        view["response_format"] = {"type": "json_object"}
    if params.max_output_tokens is not None:
        view["max_completion_tokens"] = params.max_output_tokens
    return view


def build_response(
    *,
    response_id: str,
    message_id: str,
    created: int,
    body: dict[str, Any],
    params: ResponsesParams,
    content: str,
    prompt_tokens: int,
    cached_tokens: int,
    count: Callable[[str], int],
) -> dict[str, Any]:
    """A `response` object with one assistant message; cut to `max_output_tokens` (status "incomplete")."""
    tokens = count(content)
    incomplete = params.max_output_tokens is not None and tokens > params.max_output_tokens
    if incomplete:
        assert params.max_output_tokens is not None
        content = truncate_to_tokens(content, params.max_output_tokens, count)
        tokens = params.max_output_tokens
    status = "incomplete" if incomplete else "completed"
    text = {"format": params.text_format}
    if isinstance(body.get("text"), dict) and "verbosity" in body["text"]:
        text["verbosity"] = body["text"]["verbosity"]
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": None if incomplete else created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": params.max_output_tokens,
        "max_tool_calls": body.get("max_tool_calls"),
        "model": params.model,
        "output": [{
            "id": message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}],
        }],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
