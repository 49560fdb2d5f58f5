"""Chat completions: request checks and the response body (shared by the direct endpoint and batches)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, invalid_type, invalid_value, missing_param, require_model, require_object

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})


@dataclass(frozen=True)
class ChatParams:
    """The parts of a chat request the emulator acts on."""

    model: str
    n: int
    max_tokens: int | None


def _optional_positive_int(body: Mapping[str, Any], name: str, upper: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(name, "an integer", value)
    if value < 1 or (upper is not None and value > upper):
        bound = f" and at most {upper}" if upper is not None else ""
        raise invalid_value(name, f"expected an integer at least 1{bound}, got {value}.")
    return value


def check_chat_request(body: Any) -> ChatParams:
    """Validate a chat completion body like the real API would; raise ApiError(400) with the bad parameter."""
    body = require_object(body)
    model = require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise missing_param("messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        raise ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                       param="messages", code="empty_array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_type(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if role is None:
            raise missing_param(f"messages[{i}].role")
        if role not in ROLES:
            raise invalid_value(f"messages[{i}].role", f"'{role}'. Supported values are: {sorted(ROLES)}.")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid_type(f"messages[{i}].content", "a string or an array", content)
    if body.get("stream"):
        raise ApiError(400, "The emulator does not support stream=true; send the request without streaming.",
                       param="stream", code="unsupported_parameter")
    n = _optional_positive_int(body, "n", upper=128) or 1
    max_completion = _optional_positive_int(body, "max_completion_tokens")
    max_tokens = _optional_positive_int(body, "max_tokens")
    check_response_format(body.get("response_format"))
    return ChatParams(model=model, n=n, max_tokens=max_completion if max_completion is not None else max_tokens)


def check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise invalid_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind not in RESPONSE_FORMATS:
        raise invalid_value("response_format.type", f"'{kind}'. Supported values are: {sorted(RESPONSE_FORMATS)}.")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if spec is None:
            raise missing_param("response_format.json_schema")
        if not isinstance(spec, dict):
            raise invalid_type("response_format.json_schema", "an object", spec)
        if not isinstance(spec.get("name"), str):
            raise missing_param("response_format.json_schema.name")
        if "schema" in spec and not isinstance(spec["schema"], (dict, bool)):
            raise invalid_type("response_format.json_schema.schema", "an object", spec["schema"])


def truncate_to_tokens(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest prefix of `text` (found by shrinking) whose count is at most `limit`."""
    total = count(text)
    if total <= limit:
        return text
    cut = max(0, int(len(text) * limit / total))
    while cut > 0 and count(text[:cut]) > limit:
        cut = int(cut * 0.9)
    return text[:cut]


def build_chat_completion(
    *,
    completion_id: str,
    created: int,
    params: ChatParams,
    contents: list[str],
    prompt_tokens: int,
    cached_tokens: int,
    count: Callable[[str], int],
) -> dict[str, Any]:
    """A `chat.completion` object; each content is cut to `max_tokens` (finish_reason "length")."""
    choices = []
    completion_tokens = 0
    for index, content in enumerate(contents):
        finish = "stop"
        tokens = count(content)
        if params.max_tokens is not None and tokens > params.max_tokens:
            content = truncate_to_tokens(content, params.max_tokens, count)
            tokens = params.max_tokens
            finish = "length"
        completion_tokens += tokens
        choices.append({
            "index": index,
            "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": finish,
        })
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": params.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_gbatch_emulator",
    }
