"""Token counts for `usage`: the project's estimator (gbatch_flows.tokens) when importable, else a rough fallback.

The estimator is looked up once per process. Only an ImportError selects the fallback; if the estimator raises on
one odd payload, that payload is counted with the fallback so bad input never becomes a 500.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from functools import lru_cache
from typing import Any, Protocol

from . import jsonutil

log = logging.getLogger(__name__)


class _Estimator(Protocol):
    """What the emulator uses of gbatch_flows.tokens.TokenEstimator."""

    def estimate(self, endpoint: str, payload: dict[str, Any]) -> Any: ...

    def count_text(self, text: str, model: str) -> int: ...


_lock = threading.Lock()
_resolved: list[_Estimator | None] = []
_warned: set[str] = set()


def project_estimator() -> _Estimator | None:
    """The project's estimator, or None when gbatch_flows.tokens is not importable."""
    if not _resolved:
        with _lock:
            if not _resolved:
                try:
                    from gbatch_flows.tokens import get_estimator
                except ImportError:
                    log.info("gbatch_flows.tokens not importable: the emulator counts tokens as len(text)//4")
                    _resolved.append(None)
                else:
                    estimator: _Estimator = get_estimator()
                    _resolved.append(estimator)
    return _resolved[0]


def _warn_once(what: str, exc: Exception) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("token estimator failed on %s (%s); using the rough fallback for such payloads", what, exc)


def fallback_text_tokens(text: str) -> int:
    """Rough count: one token per four characters (at least one for non-empty text)."""
    return (len(text) + 3) // 4


def _strings(value: Any) -> list[str]:
    """All strings inside a JSON value (message contents, parts, tool arguments...)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def fallback_prompt_tokens(endpoint: str, payload: dict[str, Any]) -> int:
    """Rough input-token count for a request body."""
    if endpoint.endswith("/embeddings"):
        items = payload.get("input")
        if isinstance(items, list) and items and isinstance(items[0], list):
            return sum(len(x) for x in items if isinstance(x, list))
        if isinstance(items, list) and items and isinstance(items[0], int):
            return len(items)
        return sum(fallback_text_tokens(s) for s in _strings(items))
    messages = payload.get("messages", payload.get("input"))
    if isinstance(messages, list):
        return 3 + sum(4 + sum(fallback_text_tokens(s) for s in _strings(m)) for m in messages)
    return sum(fallback_text_tokens(s) for s in _strings(messages))


@lru_cache(maxsize=131_072)
def _cached_text_tokens(text: str, model: str) -> int:
    estimator = project_estimator()
    if estimator is not None:
        try:
            return int(estimator.count_text(text, model))
        except Exception as exc:  # noqa: BLE001 - never fail a response over a count
            _warn_once(f"count_text(model={model!r})", exc)
    return fallback_text_tokens(text)


def text_tokens(text: str, model: str) -> int:
    """Tokens of a generated text (cached per (text, model))."""
    return _cached_text_tokens(text, model)


def _text_input_tokens(endpoint: str, payload: dict[str, Any]) -> int:
    """Input tokens of a /v1/completions `prompt` or a /v1/moderations `input` (text parts; token arrays by length)."""
    raw = payload.get("prompt" if endpoint == "/v1/completions" else "input")
    model = payload.get("model")
    model = model if isinstance(model, str) else "omni-moderation-latest"
    items = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    total = 0
    for item in items:
        if isinstance(item, list):
            total += len(item)
        elif isinstance(item, dict):
            text = item.get("text")
            total += text_tokens(text, model) if isinstance(text, str) else 0
        elif isinstance(item, str):
            total += text_tokens(item, model)
    return total


def prompt_tokens(endpoint: str, payload: dict[str, Any]) -> int:
    """Input tokens of a request body for `endpoint` ("/v1/chat/completions", "/v1/responses", "/v1/embeddings",
    "/v1/completions", "/v1/moderations")."""
    if endpoint in ("/v1/completions", "/v1/moderations"):
        return _text_input_tokens(endpoint, payload)
    estimator = project_estimator()
    if estimator is not None:
        try:
            return int(estimator.estimate(endpoint, payload).total)
        except Exception as exc:  # noqa: BLE001 - bad payloads are rejected elsewhere, not here
            _warn_once(f"estimate({endpoint})", exc)
    return fallback_prompt_tokens(endpoint, payload)


class PromptCache:
    """Emulated prompt caching: a prompt whose prefix (all messages but the last) was seen before, and that is at
    least 1024 tokens long, reports the prefix as cached in 128-token steps, like the real API."""

    MIN_TOKENS = 1024
    STEP = 128
    MAX_ENTRIES = 200_000

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    def cached_tokens(self, body: dict[str, Any], prompt_token_count: int) -> int:
        if not self.enabled or prompt_token_count < self.MIN_TOKENS:
            return 0
        messages = body.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            return 0
        prefix = jsonutil.dumps([body.get("model"), messages[:-1]], sort_keys=True)
        key = hashlib.blake2b(prefix, digest_size=16).digest()
        last_tokens = sum(fallback_text_tokens(s) for s in _strings(messages[-1])) + 4
        prefix_tokens = max(0, prompt_token_count - last_tokens)
        with self._lock:
            seen = key in self._seen
            if not seen:
                if len(self._seen) >= self.MAX_ENTRIES:
                    self._seen.clear()
                self._seen.add(key)
        if not seen or prefix_tokens < self.MIN_TOKENS:
            return 0
        return prefix_tokens // self.STEP * self.STEP
