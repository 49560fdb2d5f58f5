"""Token counts for `usage`: the project's estimator (gbatch_flows.tokens) when importable, else a rough fallback.

The estimator is looked up once per process. Only an ImportError selects the fallback; if the estimator raises on
one odd payload, that payload is counted with the fallback so bad input never becomes a 500.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from . import jsonutil

log = logging.getLogger(__name__)


class _Estimator(Protocol):
    """What the emulator uses of gbatch_flows.tokens.TokenEstimator."""

    def estimate(self, endpoint: str, payload: dict[str, Any]) -> Any: ...

    def count_text(self, text: str, model: str) -> int: ...

    def one_off_counter(self, model: str) -> Callable[[str], int]: ...


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


class CompletionCounter:
    """Token counts of generated texts for one model: exact (the estimator's count, else the fallback) and memoised
    in two bounded generations of plain dicts (a responder's answers often repeat; a unique one costs one lookup)."""

    MAX_ENTRIES = 65_536
    MAX_CHARS = 8_000_000

    def __init__(self, model: str) -> None:
        self.model = model
        self._count = self._exact_counter(model)
        self._young: dict[str, int] = {}
        self._old: dict[str, int] = {}
        self._young_chars = 0

    @staticmethod
    def _exact_counter(model: str) -> Callable[[str], int]:
        estimator = project_estimator()
        if estimator is None:
            return fallback_text_tokens
        try:
            return estimator.one_off_counter(model)
        except Exception as exc:  # noqa: BLE001 - counted like count_text's failures: the fallback
            _warn_once(f"count_text(model={model!r})", exc)
            return fallback_text_tokens

    def __call__(self, text: str) -> int:
        n = self._young.get(text)
        if n is None:
            n = self._old.get(text)
            if n is None:
                n = self._exact(text)
            self._remember(text, n)
        return n

    def _exact(self, text: str) -> int:
        try:
            return int(self._count(text))
        except Exception as exc:  # noqa: BLE001 - never fail a response over a count
            _warn_once(f"count_text(model={self.model!r})", exc)
            return fallback_text_tokens(text)

    def _remember(self, text: str, n: int) -> None:
        size = len(text)
        if len(self._young) >= self.MAX_ENTRIES or self._young_chars + size > self.MAX_CHARS:
            self._old, self._young, self._young_chars = self._young, {}, 0
            if size > self.MAX_CHARS:
                return
        self._young[text] = n
        self._young_chars += size


_completion_counters: dict[str, CompletionCounter] = {}
MAX_COUNTED_MODELS = 16


def completion_counter(model: str) -> CompletionCounter:
    """The shared `CompletionCounter` of `model` (at most MAX_COUNTED_MODELS models are kept)."""
    counter = _completion_counters.get(model)
    if counter is None:
        with _lock:
            counter = _completion_counters.get(model)
            if counter is None:
                if len(_completion_counters) >= MAX_COUNTED_MODELS:
                    _completion_counters.clear()
                counter = _completion_counters[model] = CompletionCounter(model)
    return counter


def text_tokens(text: str, model: str) -> int:
    """Tokens of a generated text (memoised per (text, model))."""
    return completion_counter(model)(text)


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
