"""Prompt tokens of chat messages (``/v1/chat/completions``) and response inputs (``/v1/responses``).

Chat rule (OpenAI cookbook "How to count tokens with tiktoken"): every message costs ``tokens_per_message`` (3)
plus the tokens of each of its string values (role, content, name, tool_call_id, ...); a ``name`` adds
``tokens_per_name`` (+1); the reply is primed with 3 tokens. gpt-3.5-turbo-0301: 4 per message and -1 per name.
Published checks: the cookbook's six-message example is 124 tokens on gpt-4o / gpt-4o-mini, 129 on gpt-4 /
gpt-3.5-turbo, 127 on gpt-3.5-turbo-0301.

Where the published rule says nothing, our rules are:

- multi-part content: each text (and refusal) part counts its text; each ``image_url`` part its image tokens
  (see ``images.py``); audio and file parts cannot be estimated offline and raise :class:`EstimateError`;
- ``tool_calls``: the function name and arguments of each call (custom tools: name and input); ``function_call``
  likewise; ids are not counted;
- responses: ``input`` as a string is one user message; each item of an ``input`` list costs like one message
  (``tokens_per_message`` plus its role's tokens for messages); function calls count name and arguments, their
  outputs count the output; ``instructions`` count as one system message; the reply priming is the same 3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gbatch_flows.tokenizing.rules import ModelRules
from gbatch_flows.tokenizing.types import EstimateError

Count = Callable[[str], int]
# (url or None for a file id, detail, field) -> image tokens
ImageTokens = Callable[[str | None, Any, str], int]


class Tally:
    """Running sums of a breakdown while a payload is walked."""

    __slots__ = ("images", "names", "overhead", "text", "tools")

    def __init__(self) -> None:
        self.text = self.names = self.tools = self.images = self.overhead = 0


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise EstimateError(field, f"expected a string, got {type(value).__name__}")
    return value


def _parts(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise EstimateError(field, f"expected a string or a list of content parts, got {type(value).__name__}")
    return value


def _part_type(part: Any, field: str) -> Any:
    if not isinstance(part, dict):
        raise EstimateError(field, f"expected a content part object, got {type(part).__name__}")
    return part.get("type")


_OFFLINE_UNKNOWABLE = "cannot be estimated offline (its token count is not derivable from the request)"


def _chat_content(value: Any, field: str, count: Count, image_tokens: ImageTokens, tally: Tally) -> None:
    if isinstance(value, str):
        tally.text += count(value)
        return
    if value is None:
        return
    for j, part in enumerate(_parts(value, field)):
        where = f"{field}[{j}]"
        kind = _part_type(part, where)
        if kind == "text":
            tally.text += count(_str(part.get("text"), f"{where}.text"))
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict):
                raise EstimateError(f"{where}.image_url", "expected an object with 'url' (and optional 'detail')")
            url = _str(image.get("url"), f"{where}.image_url.url")
            tally.images += image_tokens(url, image.get("detail"), f"{where}.image_url")
        elif kind == "refusal":
            tally.text += count(_str(part.get("refusal"), f"{where}.refusal"))
        elif kind in ("input_audio", "file"):
            raise EstimateError(f"{where}.type", f"{kind!r} content {_OFFLINE_UNKNOWABLE}")
        else:
            raise EstimateError(
                f"{where}.type", f"unknown content part type {kind!r}; supported: text, image_url, refusal"
            )


def _call_tokens(call: Any, field: str, count: Count) -> int:
    """Name and arguments of one chat tool call (or a legacy function_call)."""
    if not isinstance(call, dict):
        raise EstimateError(field, f"expected a tool call object, got {type(call).__name__}")
    if "custom" in call:
        custom = call["custom"]
        if not isinstance(custom, dict):
            raise EstimateError(f"{field}.custom", "expected an object with name and input")
        return count(_str(custom.get("name"), f"{field}.custom.name")) + count(
            _str(custom.get("input"), f"{field}.custom.input")
        )
    function = call.get("function", call)
    if not isinstance(function, dict):
        raise EstimateError(f"{field}.function", "expected an object with name and arguments")
    sub = f"{field}.function" if function is not call else field
    return count(_str(function.get("name"), f"{sub}.name")) + count(_str(function.get("arguments"), f"{sub}.arguments"))


def _chat_field(
    key: str, value: Any, where: str, per_name: int, count: Count, image_tokens: ImageTokens, tally: Tally
) -> None:
    """Any message field other than a string role/content (the slow, general path)."""
    if key == "content":
        _chat_content(value, f"{where}.content", count, image_tokens, tally)
    elif key == "role":
        tally.overhead += count(_str(value, f"{where}.role"))
    elif key == "name":
        tally.names += count(_str(value, f"{where}.name")) + per_name
    elif key == "tool_calls":
        if value is not None:
            if not isinstance(value, list):
                raise EstimateError(f"{where}.tool_calls", f"expected a list, got {type(value).__name__}")
            for j, call in enumerate(value):
                tally.text += _call_tokens(call, f"{where}.tool_calls[{j}]", count)
    elif key == "function_call":
        if value is not None:
            tally.text += _call_tokens(value, f"{where}.function_call", count)
    elif isinstance(value, str):
        tally.text += count(value)  # tool_call_id, refusal, ...: the cookbook counts every string value
    elif value is not None:
        raise EstimateError(
            f"{where}.{key}", f"unsupported message field of type {type(value).__name__} {_OFFLINE_UNKNOWABLE}"
        )


def chat_messages(
    messages: Any, rules: ModelRules, count: Count, image_tokens: ImageTokens, tally: Tally, field: str = "messages"
) -> None:
    """Add the prompt tokens of a chat ``messages`` list (including the reply priming) to ``tally``."""
    if not isinstance(messages, list) or not messages:
        raise EstimateError(field, "expected a non-empty list of messages")
    per_message, per_name = rules.tokens_per_message, rules.tokens_per_name
    text = 0
    overhead = rules.reply_priming + per_message * len(messages)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise EstimateError(f"{field}[{i}]", f"expected a message object, got {type(message).__name__}")
        if "role" not in message:
            raise EstimateError(f"{field}[{i}].role", "missing")
        for key, value in message.items():
            if type(value) is str:
                if key == "content":
                    text += count(value)
                    continue
                if key == "role":
                    overhead += count(value)
                    continue
            _chat_field(key, value, f"{field}[{i}]", per_name, count, image_tokens, tally)
    tally.text += text
    tally.overhead += overhead


# -- /v1/responses --------------------------------------------------------------------------------------------------


def _responses_content(value: Any, field: str, count: Count, image_tokens: ImageTokens, tally: Tally) -> None:
    if isinstance(value, str):
        tally.text += count(value)
        return
    for j, part in enumerate(_parts(value, field)):
        where = f"{field}[{j}]"
        kind = _part_type(part, where)
        if kind in ("input_text", "output_text"):
            tally.text += count(_str(part.get("text"), f"{where}.text"))
        elif kind == "refusal":
            tally.text += count(_str(part.get("refusal"), f"{where}.refusal"))
        elif kind == "input_image":
            url = part.get("image_url")
            if url is None and not isinstance(part.get("file_id"), str):
                raise EstimateError(where, "input_image needs 'image_url' or 'file_id'")
            if url is not None:
                url = _str(url, f"{where}.image_url")
            tally.images += image_tokens(url, part.get("detail"), where)
        elif kind in ("input_file", "input_audio"):
            raise EstimateError(f"{where}.type", f"{kind!r} content {_OFFLINE_UNKNOWABLE}")
        else:
            raise EstimateError(
                f"{where}.type",
                f"unknown content part type {kind!r}; supported: input_text, output_text, refusal, input_image",
            )


def responses_input(
    value: Any, rules: ModelRules, count: Count, image_tokens: ImageTokens, tally: Tally, field: str = "input"
) -> None:
    """Add the prompt tokens of a responses ``input`` (string or item list) to ``tally`` (without the priming)."""
    per_message = rules.tokens_per_message
    if isinstance(value, str):
        tally.overhead += per_message + count("user")
        tally.text += count(value)
        return
    if not isinstance(value, list) or not value:
        raise EstimateError(field, "expected a string or a non-empty list of input items")
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise EstimateError(where, f"expected an input item object, got {type(item).__name__}")
        kind = item.get("type")
        tally.overhead += per_message
        if kind in (None, "message"):
            tally.overhead += count(_str(item.get("role"), f"{where}.role"))
            if "content" not in item:
                raise EstimateError(f"{where}.content", "missing")
            _responses_content(item["content"], f"{where}.content", count, image_tokens, tally)
        elif kind == "function_call":
            tally.text += count(_str(item.get("name"), f"{where}.name"))
            tally.text += count(_str(item.get("arguments"), f"{where}.arguments"))
        elif kind == "custom_tool_call":
            tally.text += count(_str(item.get("name"), f"{where}.name"))
            tally.text += count(_str(item.get("input"), f"{where}.input"))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            _responses_content(item.get("output"), f"{where}.output", count, image_tokens, tally)
        else:
            raise EstimateError(
                f"{where}.type",
                f"input item type {kind!r} {_OFFLINE_UNKNOWABLE}; supported: message, function_call, "
                "function_call_output, custom_tool_call, custom_tool_call_output",
            )


def responses_instructions(value: Any, rules: ModelRules, count: Count, tally: Tally) -> None:
    """``instructions`` count as one system message."""
    if value is None:
        return
    tally.overhead += rules.tokens_per_message + count("system")
    tally.text += count(_str(value, "instructions"))
