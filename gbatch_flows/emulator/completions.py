"""Legacy completions (/v1/completions): request checks and the `text_completion` object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .chat import _optional_positive_int, truncate_to_tokens
from .errors import ApiError, invalid_type, missing_param, require_model, require_object

DEFAULT_MAX_TOKENS = 16  # the spec's default for /v1/completions


@dataclass(frozen=True)
class CompletionParams:
    """The parts of a completions request the emulator acts on: one or more prompts (as text), n, max_tokens."""

    model: str
    prompts: list[str]
    n: int
    max_tokens: int
    echo: bool


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value)


def _prompts(raw: Any) -> list[str]:
    if raw is None:
        raise missing_param("prompt")
    if isinstance(raw, str):
        return [raw]
    if _is_tokens(raw):
        return [" ".join(map(str, raw))]
    if isinstance(raw, list) and raw:
        prompts = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                prompts.append(item)
            elif _is_tokens(item):
                prompts.append(" ".join(map(str, item)))
            else:
                raise invalid_type(f"prompt[{i}]", "a string or an array of integers", item)
        return prompts
    if isinstance(raw, list):
        raise ApiError(400, "Invalid 'prompt': empty array. Expected an array with minimum length 1.",
                       param="prompt", code="empty_array")
    raise invalid_type("prompt", "a string or an array", raw)


def check_completion_request(body: Any) -> CompletionParams:
    """Validate a completions body; raise ApiError(400) naming the bad parameter."""
    body = require_object(body)
    model = require_model(body)
    prompts = _prompts(body.get("prompt"))
    if body.get("stream"):
        raise ApiError(400, "The emulator does not support stream=true; send the request without streaming.",
                       param="stream", code="unsupported_parameter")
    n = _optional_positive_int(body, "n", upper=128) or 1
    max_tokens = _optional_positive_int(body, "max_tokens")
    return CompletionParams(model=model, prompts=prompts, n=n,
                            max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
                            echo=bool(body.get("echo")))


def chat_view(body: dict[str, Any], params: CompletionParams, prompt: str) -> dict[str, Any]:
    """One prompt as a chat completion body, for responders."""
    view = {k: v for k, v in body.items() if k not in ("prompt", "n", "echo", "suffix", "best_of")}
    view["messages"] = [{"role": "user", "content": prompt}]
    view["max_completion_tokens"] = params.max_tokens
    return view


def build_completion(
    *,
    completion_id: str,
    created: int,
    params: CompletionParams,
    texts: list[str],
    prompt_tokens: int,
    count: Callable[[str], int],
) -> dict[str, Any]:
    """A `text_completion` object; `texts` has n texts per prompt, in order; each is cut to max_tokens."""
    choices = []
    completion_tokens = 0
    for index, text in enumerate(texts):
        finish = "stop"
        tokens = count(text)
        if tokens > params.max_tokens:
            text = truncate_to_tokens(text, params.max_tokens, count)
            tokens = params.max_tokens
            finish = "length"
        completion_tokens += tokens
        if params.echo:
            text = params.prompts[index // params.n] + text
        choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": finish})
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": params.model,
        "choices": choices,
        "system_fingerprint": "fp_gbatch_emulator",
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
