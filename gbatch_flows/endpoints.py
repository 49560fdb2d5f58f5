"""What differs between the endpoints the Batch API accepts, in one place: how a response body reports its token
``usage``, where its result contents are, whether it can produce output tokens, and whether it is billed at all.

The engine (process, direct) and ``costs`` read response bodies only through :func:`usage_of` and
:func:`contents_of`; tasks reach the contents through ``Task.contents``.

=====================  ===========================================  ===========================================
endpoint               usage (prompt / completion / cached)          contents
=====================  ===========================================  ===========================================
/v1/chat/completions   prompt_tokens / completion_tokens /           choices[].message.content (a refusal is an
                       prompt_tokens_details.cached_tokens           error)
/v1/responses          input_tokens / output_tokens /                one text per response: the ``output_text``
                       input_tokens_details.cached_tokens            parts of its ``message`` output items
/v1/completions        prompt_tokens / completion_tokens             choices[].text
/v1/embeddings         prompt_tokens / - / -                         data[].embedding (by index)
/v1/moderations        none: the endpoint is free (cost 0)           results[] (the moderation result objects)
=====================  ===========================================  ===========================================

Azure OpenAI names the same endpoints without the ``/v1`` prefix (``/chat/completions``); :func:`canonical` maps
both spellings to one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gbatch_flows.models import Usage, trusted

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
COMPLETIONS = "/v1/completions"
MODERATIONS = "/v1/moderations"
#: The model endpoints the Batch API accepts that this project runs (images and videos are out of scope).
BATCH_ENDPOINTS = (CHAT, RESPONSES, EMBEDDINGS, COMPLETIONS, MODERATIONS)

#: Legacy completions produce at most this many tokens per choice when ``max_tokens`` is not given (API default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class ContentsError(ValueError):
    """A response body whose contents the task cannot use (no choices, a refusal, no message output...)."""


@dataclass(frozen=True)
class Endpoint:
    """How one endpoint bills and answers."""

    path: str
    output: bool  # can produce completion (output) tokens
    free: bool  # billed at 0 whatever the token counts
    choices_field: str | None  # request field asking for several choices ("n"), None = one answer per request
    limit_fields: tuple[str, ...]  # request fields bounding the output tokens per choice, first one set wins
    default_limit: int | None  # output tokens per choice when no limit field is set (None = unbounded)
    usage: Callable[[Mapping[str, Any]], Usage | None]
    contents: Callable[[Mapping[str, Any]], list[Any]]


def _is_map(value: Any) -> bool:
    """``isinstance(value, Mapping)``, without the ABC check for the usual case (a dict from a JSON parse)."""
    return type(value) is dict or isinstance(value, Mapping)


def canonical(endpoint: str) -> str:
    """``/chat/completions`` (Azure) and ``/v1/chat/completions`` -> ``/v1/chat/completions``."""
    path = endpoint.rstrip("/") or endpoint
    return path if path.startswith("/v1/") else "/v1" + path


def azure_path(endpoint: str) -> str:
    """The path Azure OpenAI batch files and batch creation use: ``/v1/chat/completions`` -> ``/chat/completions``."""
    return canonical(endpoint).removeprefix("/v1")


def spec(endpoint: str) -> Endpoint:
    """The :class:`Endpoint` of a path (either spelling); ValueError for an endpoint this project does not run."""
    found = _BY_PATH.get(endpoint)
    if found is not None:
        return found
    found = _SPECS.get(canonical(endpoint))
    if found is None:
        raise ValueError(f"unsupported endpoint {endpoint!r}; supported: {', '.join(BATCH_ENDPOINTS)}")
    return found


def is_supported(endpoint: str) -> bool:
    return canonical(endpoint) in _SPECS


def usage_of(endpoint: str, body: Mapping[str, Any] | None) -> Usage | None:
    """Tokens a response body reports, or None when an endpoint that reports usage sent none that is readable
    (the caller then charges the request's worst case: an unreadable usage must never count as 0 tokens)."""
    if not _is_map(body):
        return None
    return spec(endpoint).usage(body)


def contents_of(endpoint: str, body: Mapping[str, Any] | None) -> list[Any]:
    """The result contents of a response body (see the module table); :class:`ContentsError` when there are none."""
    if not _is_map(body):
        raise ContentsError("the response has no body")
    return spec(endpoint).contents(body)


def user_text(body: Mapping[str, Any]) -> str:
    """The text of the first user message of a chat (``messages``) or Responses (``input``) request body; ""
    when there is none (for responders that answer from the user's prompt)."""
    items = body.get("messages")
    if items is None:
        items = body.get("input")
        if isinstance(items, str):
            return items
    for item in items if isinstance(items, list) else []:
        if _is_map(item) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(str(p.get("text") or "") for p in content if _is_map(p))
    return ""


def read_usage(usage: Mapping[str, Any]) -> Usage:
    """A ``usage`` object in either naming (chat/completions/embeddings or responses) as :class:`Usage`; raises
    ValueError for a value that is not a non-negative integer."""
    if not _is_map(usage):
        raise TypeError(f"usage must be an object, got {type(usage).__name__}")
    responses = "input_tokens" in usage or "output_tokens" in usage
    prompt = _count(usage, "input_tokens" if responses else "prompt_tokens")
    completion = _count(usage, "output_tokens" if responses else "completion_tokens")
    details = usage.get("input_tokens_details" if responses else "prompt_tokens_details") or {}
    if not _is_map(details):
        raise TypeError(f"usage token details must be an object, got {type(details).__name__}")
    cached = min(_count(details, "cached_tokens"), prompt)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def _count(mapping: Mapping[str, Any], key: str) -> int:
    value = mapping.get(key)
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ValueError(f"usage field {key!r} must be a non-negative integer, got {value!r}")
    return value


def _usage_fields(prompt: str, completion: str | None, details: str) -> Callable[[Mapping[str, Any]], Usage | None]:
    def read(body: Mapping[str, Any]) -> Usage | None:
        usage = body.get("usage")
        if type(usage) is dict:  # the usual case, checked flat: the same values as the general way below
            tokens = usage.get(prompt)
            out = usage.get(completion, 0) if completion else 0
            info = usage.get(details)
            cached = info.get("cached_tokens", 0) if type(info) is dict else 0 if info is None else None
            if type(tokens) is int and tokens >= 0 and type(out) is int and out >= 0 and type(cached) is int \
                    and cached >= 0:
                return trusted(Usage, {"prompt_tokens": tokens, "completion_tokens": out,
                                       "cached_tokens": min(cached, tokens)})
        if not _is_map(usage) or not isinstance(usage.get(prompt), int):
            return None
        try:
            tokens = _count(usage, prompt)
            out = _count(usage, completion) if completion else 0
            info = usage.get(details) or {}
            cached = _count(info, "cached_tokens") if _is_map(info) else 0
        except ValueError:
            return None
        # checked non-negative ints above: no validation needed
        return trusted(Usage, {"prompt_tokens": tokens, "completion_tokens": out,
                               "cached_tokens": min(cached, tokens)})

    return read


def _no_usage(body: Mapping[str, Any]) -> Usage:
    return Usage()


def _choices(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ContentsError("the response has no choices")
    if len(choices) == 1 and type(choices[0]) is dict:  # one choice: filtering and sorting give the same list
        return [choices[0]]
    items = [c for c in choices if _is_map(c)]
    return sorted(items, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)


def _chat_contents(body: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for choice in _choices(body):
        message = choice.get("message") or {}
        if message.get("refusal"):
            raise ContentsError(f"the model refused: {message['refusal']}")
        out.append(message.get("content") or "")
    return out


def _completion_contents(body: Mapping[str, Any]) -> list[Any]:
    return [choice.get("text") or "" for choice in _choices(body)]


def _response_contents(body: Mapping[str, Any]) -> list[Any]:
    """One text: the ``output_text`` parts of every ``message`` item, in order (reasoning and tool-call items carry
    no answer text)."""
    texts: list[str] = []
    found = False
    for item in body.get("output") or []:
        if not _is_map(item) or item.get("type") != "message":
            continue
        found = True
        for part in item.get("content") or []:
            if not _is_map(part):
                continue
            if part.get("type") == "refusal":
                raise ContentsError(f"the model refused: {part.get('refusal')}")
            if part.get("type") == "output_text":
                texts.append(str(part.get("text") or ""))
    if not found:
        status = body.get("status")
        reason = (body.get("incomplete_details") or {}).get("reason") if isinstance(
            body.get("incomplete_details"), Mapping) else None
        why = f" (status {status}" + (f", {reason}" if reason else "") + ")" if status else ""
        raise ContentsError(f"the response has no message output{why}")
    return ["".join(texts)]


def _embedding_contents(body: Mapping[str, Any]) -> list[Any]:
    data = body.get("data")
    if not isinstance(data, list) or not data:
        raise ContentsError("the response has no embeddings")
    items = [d for d in data if _is_map(d) and "embedding" in d]
    if len(items) != len(data):
        raise ContentsError("an embeddings data item has no embedding")
    return [d["embedding"] for d in sorted(items, key=lambda d: d.get("index", 0))]


def _moderation_contents(body: Mapping[str, Any]) -> list[Any]:
    results = body.get("results")
    if not isinstance(results, list) or not results:
        raise ContentsError("the response has no moderation results")
    return list(results)


_CHAT_USAGE = _usage_fields("prompt_tokens", "completion_tokens", "prompt_tokens_details")
_SPECS: dict[str, Endpoint] = {
    e.path: e
    for e in (
        Endpoint(CHAT, True, False, "n", ("max_completion_tokens", "max_tokens"), None, _CHAT_USAGE,
                 _chat_contents),
        Endpoint(RESPONSES, True, False, None, ("max_output_tokens",), None,
                 _usage_fields("input_tokens", "output_tokens", "input_tokens_details"), _response_contents),
        Endpoint(COMPLETIONS, True, False, "n", ("max_tokens",), COMPLETIONS_DEFAULT_MAX_TOKENS, _CHAT_USAGE,
                 _completion_contents),
        Endpoint(EMBEDDINGS, False, False, None, (), None, _usage_fields("prompt_tokens", None, "-"),
                 _embedding_contents),
        Endpoint(MODERATIONS, False, True, None, (), None, _no_usage, _moderation_contents),
    )
}
#: Both spellings of every supported path (``spec`` looks them up before canonicalising).
_BY_PATH: dict[str, Endpoint] = {**{azure_path(p): e for p, e in _SPECS.items()}, **_SPECS}
