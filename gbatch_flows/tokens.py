"""Prompt-token estimation for OpenAI requests, offline, on real tiktoken encodings.

Usage::

    from gbatch_flows.tokens import get_estimator
    est = get_estimator()
    est.estimate("/v1/chat/completions", {"model": "gpt-4o", "messages": [...]}).total
    est.count_text("some completion", "gpt-4o")

Endpoints: ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``, ``/v1/completions`` (``prompt`` and
``suffix`` text, no chat format) and ``/v1/moderations`` (the text of ``input``; image inputs count 0, the endpoint
is free and only token-rate limits see the count). The counting rules are documented where
they are implemented: ``tokenizing/chat.py`` (messages), ``tokenizing/tools.py`` (tools and schemas),
``tokenizing/images.py`` (images), ``tokenizing/encodings.py`` (encodings and model names). A payload the estimator
cannot count raises :class:`EstimateError` (a ``ValueError``) naming the field and the request's custom_id; it never
returns a silent 0.

Models map to encodings through tiktoken's own table (fine-tuned ``ft:<base>:...`` names through their base). An
unknown model is counted with o200k_base and logged once per model name (logger ``gbatch_flows.tokens``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gbatch_flows.tokenizing.chat import Tally, chat_messages, responses_input, responses_instructions
from gbatch_flows.tokenizing.counter import (
    DEFAULT_CACHE_CHARS,
    DEFAULT_CACHE_ENTRIES,
    Backend,
    TextCounter,
    resolve_backend,
)
from gbatch_flows.tokenizing.images import DETAILS, REMOTE_IMAGE_SIZE, url_image_tokens
from gbatch_flows.tokenizing.rules import ModelRules, rules_for
from gbatch_flows.tokenizing.tools import (
    chat_tools,
    function_tokens,
    legacy_functions,
    response_format_tokens,
    responses_tools,
    text_format_tokens,
)
from gbatch_flows.tokenizing.types import EstimateError, TokenBreakdown

__all__ = ["ENDPOINTS", "EstimateError", "TokenBreakdown", "TokenEstimator", "get_estimator"]

log = logging.getLogger("gbatch_flows.tokens")

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"
MODERATIONS = "/v1/moderations"
ENDPOINTS = (CHAT, EMBEDDINGS, RESPONSES, COMPLETIONS, MODERATIONS)


@dataclass(frozen=True)
class _ModelContext:
    """Everything the hot path needs for one model name, looked up once."""

    rules: ModelRules
    counter: TextCounter
    count: Callable[[str], int]
    image_tokens: Callable[[str | None, Any, str], int]
    # for the fast path: (role -> tokens_per_message + the role's tokens, reply priming, counter,
    # counter.quick_printable, counter.raw)
    fast: tuple[dict[str, int], int, TextCounter, Callable[[str], int] | None, Callable[[str], int]]


_FAST_ROLES = ("system", "developer", "user", "assistant")
_BREAKDOWN_CACHE_SIZE = 65536
_FORMAT_CACHE_SIZE = 256


class TokenEstimator:
    """Counts prompt tokens of API payloads the way the API does (see the module docstring).

    ``backend``: ``auto`` (quicktok if installed in a verified version, else tiktoken), ``quicktok`` or ``tiktoken``;
    all give identical counts. ``remote_image_size``: the size assumed for images given by http(s) URL or file id.
    ``threads``: quicktok threads for batch counts (1 keeps the estimator on one core). Thread-safe.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        *,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_chars: int = DEFAULT_CACHE_CHARS,
        remote_image_size: tuple[int, int] = REMOTE_IMAGE_SIZE,
        threads: int = 1,
    ) -> None:
        self.backend = resolve_backend(backend)
        self.remote_image_size = remote_image_size
        self._cache_entries = cache_entries
        self._cache_chars = cache_chars
        self._threads = threads
        self._counters: dict[str, TextCounter] = {}
        self._models: dict[str, _ModelContext] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._plain_breakdowns: dict[tuple[int, int, int], TokenBreakdown] = {}
        self._format_counts: dict[tuple[str, bytes], int] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], TokenBreakdown]] = {
            CHAT: self._chat,
            EMBEDDINGS: self._embeddings,
            RESPONSES: self._responses,
            COMPLETIONS: self._completions,
            MODERATIONS: self._moderations,
        }

    # -- models and encodings -----------------------------------------------------------------------------------

    def _context(self, model: str) -> _ModelContext:
        ctx = self._models.get(model)
        if ctx is None:
            ctx = self._new_context(model)
        return ctx

    def _new_context(self, model: str) -> _ModelContext:
        if not isinstance(model, str) or not model:
            raise EstimateError("model", f"expected a non-empty model name, got {model!r}")
        with self._lock:
            ctx = self._models.get(model)
            if ctx is not None:
                return ctx
            rules, problem = rules_for(model)
            if problem is not None and model not in self._warned:
                self._warned.add(model)
                log.warning("token estimate for model %r uses %s (%s)", model, rules.encoding, problem)
            counter = self._counters.get(rules.encoding)
            if counter is None:
                counter = TextCounter(
                    rules.encoding, self.backend, self._cache_entries, self._cache_chars, self._threads
                )
                self._counters[rules.encoding] = counter
            role_costs = {role: rules.tokens_per_message + counter.count(role) for role in _FAST_ROLES}
            fast = (role_costs, rules.reply_priming, counter, counter.quick_printable, counter.raw)
            ctx = _ModelContext(rules, counter, counter.count, self._image_counter(rules), fast)
            self._models[model] = ctx
            return ctx

    def _image_counter(self, rules: ModelRules) -> Callable[[str | None, Any, str], int]:
        remote_size = self.remote_image_size

        def image_tokens(url: str | None, detail: Any, field: str) -> int:
            if detail is None:
                detail = "auto"
            if detail not in DETAILS:
                raise EstimateError(f"{field}.detail", f"expected one of {', '.join(DETAILS)}, got {detail!r}")
            try:
                return url_image_tokens(rules.image, url, detail, remote_size)
            except ValueError as exc:
                raise EstimateError(f"{field}.url" if url is not None else field, str(exc)) from None

        return image_tokens

    def rules(self, model: str) -> ModelRules:
        """The counting rules used for ``model``."""
        return self._context(model).rules

    def encoding_name(self, model: str) -> str:
        """Name of the tiktoken encoding used for ``model`` (``o200k_base`` or ``cl100k_base``)."""
        return self._context(model).rules.encoding

    def count_text(self, text: str, model: str) -> int:
        """Tokens of plain ``text`` in ``model``'s encoding (special-token text counts as ordinary text)."""
        if not isinstance(text, str):
            raise TypeError(f"count_text expects a str, got {type(text).__name__}")
        return self._context(model).count(text)

    def one_off_counter(self, model: str) -> Callable[[str], int]:
        """An exact, uncached count of ``model``'s encoding for texts seen once (generated completions): equal to
        :meth:`count_text`, but the texts do not crowd the prompt cache and a printable text goes straight to
        quicktok."""
        _role_costs, _priming, _counter, quick, raw = self._context(model).fast
        if quick is None:
            return raw

        def count(text: str) -> int:
            return quick(text) if text.isprintable() else raw(text)

        return count

    # -- estimates ----------------------------------------------------------------------------------------------

    def estimate(self, endpoint: str, payload: dict[str, Any], custom_id: str | None = None) -> TokenBreakdown:
        """Prompt tokens of one request body (``payload``) for ``endpoint``."""
        if endpoint == CHAT:
            plain = self._plain_chat(payload)
            if plain is not None:
                breakdown = self._plain_breakdowns.get(plain)
                if breakdown is None:
                    breakdown = self._plain_breakdown(plain)
                return breakdown
        try:
            handler = self._handlers.get(endpoint)
            if handler is None:
                raise EstimateError("endpoint", f"unsupported endpoint {endpoint!r}; supported: {', '.join(ENDPOINTS)}")
            if not isinstance(payload, dict):
                raise EstimateError("payload", f"expected a JSON object, got {type(payload).__name__}")
            return handler(payload)
        except EstimateError as exc:
            if custom_id is None or exc.custom_id is not None:
                raise
            raise EstimateError(exc.field, exc.problem, custom_id) from None

    def estimate_many(
        self, endpoint: str, payloads: Iterable[dict[str, Any]], custom_ids: Sequence[str | None] | None = None
    ) -> list[TokenBreakdown]:
        """:meth:`estimate` for many payloads of one endpoint (``custom_ids`` parallel to ``payloads``)."""
        estimate = self.estimate
        if custom_ids is None:
            return [estimate(endpoint, payload) for payload in payloads]
        return [estimate(endpoint, payload, cid) for payload, cid in zip(payloads, custom_ids, strict=True)]

    def totals(
        self, endpoint: str, payloads: Sequence[dict[str, Any]], custom_ids: Sequence[str | None] | None = None
    ) -> list[int]:
        """``estimate(...).total`` of many payloads of one endpoint, faster (no breakdown objects)."""
        if custom_ids is not None and len(custom_ids) != len(payloads):
            raise ValueError(f"{len(custom_ids)} custom_ids for {len(payloads)} payloads")
        out: list[int] = []
        append = out.append
        plain_chat = self._plain_chat if endpoint == CHAT else None
        for i, payload in enumerate(payloads):
            plain = plain_chat(payload) if plain_chat is not None else None
            if plain is not None:
                append(plain[0] + plain[1] + plain[2])
            else:
                append(self.estimate(endpoint, payload, custom_ids[i] if custom_ids is not None else None).total)
        return out

    def _plain_chat(self, payload: Any) -> tuple[int, int, int] | None:
        """``(text, overhead, tools)`` of a plain chat payload, or None to take the general path.

        The hot path of every limit check, so it is written flat. Plain means: a known model, no tools or
        functions, a ``response_format`` (if any) of type text / json_object / json_schema whose schema text is
        memoised per encoding (``_format_tokens``), and only ``{"role": <system|developer|user|assistant>,
        "content": <str>}`` messages.
        Its counts equal the general path's (the tests compare them). Cache policy: the contents of all but the last
        message are cached (system prompts and few-shot examples repeat across requests); the last one is counted
        directly, as it is usually unique to its request.
        """
        if type(payload) is not dict:
            return None
        try:
            ctx = self._models.get(payload.get("model"))  # type: ignore[arg-type]
        except TypeError:  # unhashable model value: the general path reports it
            return None
        if ctx is None:
            return None
        tools = 0
        if len(payload) > 2:
            if "tools" in payload or "functions" in payload:
                return None
            response_format = payload.get("response_format")
            if response_format is not None:
                tools = self._format_tokens(response_format, ctx)
                if tools is None:
                    return None
        messages = payload.get("messages")
        if type(messages) is not list or not messages:
            return None
        role_costs, overhead, counter, quick, raw = ctx.fast
        young = counter.young
        last = messages[-1]
        text = 0
        for message in messages:
            if type(message) is not dict or len(message) != 2:
                return None
            content = message.get("content")
            if type(content) is not str:
                return None
            try:
                overhead += role_costs[message["role"]]
            except (KeyError, TypeError):  # no role, another role, or an unhashable one
                return None
            if message is last:
                text += quick(content) if quick is not None and content.isprintable() else raw(content)
            else:
                n = young.get(content)
                text += counter.count_missed(content) if n is None else n
        return text, overhead, tools

    def _format_tokens(self, response_format: Any, ctx: _ModelContext) -> int | None:
        """Tokens of a chat ``response_format`` (``response_format_tokens``), or None to take the general path (which
        reports what is wrong with it). A json_schema's count is memoised per encoding and schema (keyed by its
        ``orjson.dumps``): every request of a task usually carries the same schema."""
        if type(response_format) is not dict:
            return None
        kind = response_format.get("type")
        if kind == "text" or kind == "json_object":
            return 0
        schema = response_format.get("json_schema")
        if kind != "json_schema" or type(schema) is not dict:
            return None
        try:
            key = (ctx.rules.encoding, orjson.dumps(schema))
        except TypeError:
            return None
        tokens = self._format_counts.get(key)
        if tokens is None:
            try:
                tokens = response_format_tokens(response_format, ctx.count)
            except EstimateError:
                return None
            if len(self._format_counts) >= _FORMAT_CACHE_SIZE:
                self._format_counts = {}
            self._format_counts[key] = tokens
        return tokens

    def _plain_breakdown(self, plain: tuple[int, int, int]) -> TokenBreakdown:
        # Breakdowns are immutable values: share one object per distinct (text, overhead, tools) triple.
        if len(self._plain_breakdowns) >= _BREAKDOWN_CACHE_SIZE:
            self._plain_breakdowns = {}
        breakdown = TokenBreakdown.of(text=plain[0], overhead=plain[1], tools=plain[2])
        self._plain_breakdowns[plain] = breakdown
        return breakdown

    # -- endpoints ----------------------------------------------------------------------------------------------

    def _chat(self, payload: dict[str, Any]) -> TokenBreakdown:
        ctx = self._context(payload.get("model"))  # type: ignore[arg-type]
        tally = Tally()
        chat_messages(payload.get("messages"), ctx.rules, ctx.count, ctx.image_tokens, tally)
        if len(payload) > 2:
            self._chat_extras(payload, ctx, tally)
        return TokenBreakdown.of(tally.text, tally.names, tally.tools, tally.images, tally.overhead)

    def _chat_extras(self, payload: dict[str, Any], ctx: _ModelContext, tally: Tally) -> None:
        tools = payload.get("tools")
        if tools:
            tally.tools += function_tokens(chat_tools(tools), ctx.count, ctx.rules.tools)
        functions = payload.get("functions")
        if functions:
            tally.tools += function_tokens(legacy_functions(functions), ctx.count, ctx.rules.tools)
        response_format = payload.get("response_format")
        if response_format is not None:
            tally.tools += response_format_tokens(response_format, ctx.count)

    def _responses(self, payload: dict[str, Any]) -> TokenBreakdown:
        ctx = self._context(payload.get("model"))  # type: ignore[arg-type]
        tally = Tally()
        if "input" not in payload:
            raise EstimateError("input", "missing")
        responses_instructions(payload.get("instructions"), ctx.rules, ctx.count, tally)
        responses_input(payload["input"], ctx.rules, ctx.count, ctx.image_tokens, tally)
        tally.overhead += ctx.rules.reply_priming
        tools = payload.get("tools")
        if tools:
            tally.tools += function_tokens(responses_tools(tools), ctx.count, ctx.rules.tools)
        text = payload.get("text")
        if text is not None:
            tally.tools += text_format_tokens(text, ctx.count)
        return TokenBreakdown.of(tally.text, tally.names, tally.tools, tally.images, tally.overhead)

    def _embeddings(self, payload: dict[str, Any]) -> TokenBreakdown:
        ctx = self._context(payload.get("model"))  # type: ignore[arg-type]
        return TokenBreakdown.of(text=embedding_input_tokens(payload.get("input"), ctx.counter))

    def _completions(self, payload: dict[str, Any]) -> TokenBreakdown:
        """Legacy completions: the prompt(s) as plain text or token ids, plus ``suffix``; no chat format."""
        ctx = self._context(payload.get("model"))  # type: ignore[arg-type]
        if "prompt" not in payload:
            raise EstimateError("prompt", "missing")
        text = embedding_input_tokens(payload["prompt"], ctx.counter, field="prompt")
        suffix = payload.get("suffix")
        if suffix is not None:
            if not isinstance(suffix, str):
                raise EstimateError("suffix", f"expected a string, got {type(suffix).__name__}")
            text += ctx.count(suffix)
        return TokenBreakdown.of(text=text)

    def _moderations(self, payload: dict[str, Any]) -> TokenBreakdown:
        """Moderations: a string, a list of strings, or a list of ``text`` / ``image_url`` parts (images: 0)."""
        model = payload.get("model") or "omni-moderation-latest"
        ctx = self._context(model)
        value = payload.get("input")
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            texts = []
            for i, part in enumerate(value):
                kind = part.get("type")
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise EstimateError(f"input[{i}].text", "expected a string")
                    texts.append(part["text"])
                elif kind != "image_url":
                    raise EstimateError(f"input[{i}].type", f"expected 'text' or 'image_url', got {kind!r}")
            return TokenBreakdown.of(text=sum(ctx.count(t) for t in texts))
        return TokenBreakdown.of(text=embedding_input_tokens(value, ctx.counter))


def _is_int(value: Any) -> bool:
    return type(value) is int  # not bool


def embedding_input_tokens(value: Any, counter: TextCounter, field: str = "input") -> int:
    """Tokens of an embeddings ``input``: str, list[str], list[int] (token ids) or list[list[int]]."""
    if isinstance(value, str):
        if not value:
            raise EstimateError(field, "must not be an empty string (the API rejects it)")
        return counter.count(value)
    if not isinstance(value, list) or not value:
        raise EstimateError(field, "expected a non-empty string, list of strings, list of token ids or list of lists")
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise EstimateError(f"{field}[{i}]", "expected a non-empty string (all items must be strings)")
        return sum(counter.count_many(value))
    if _is_int(first):
        for i, item in enumerate(value):
            if not _is_int(item):
                raise EstimateError(f"{field}[{i}]", "expected a token id (all items must be integers)")
        return len(value)
    if isinstance(first, list):
        total = 0
        for i, item in enumerate(value):
            if not isinstance(item, list) or not item or not all(_is_int(t) for t in item):
                raise EstimateError(f"{field}[{i}]", "expected a non-empty list of token ids")
            total += len(item)
        return total
    raise EstimateError(f"{field}[0]", f"unsupported item type {type(first).__name__}")


_SINGLETON: TokenEstimator | None = None
_SINGLETON_LOCK = threading.Lock()


def get_estimator() -> TokenEstimator:
    """The process-wide estimator (created on first use)."""
    global _SINGLETON
    if _SINGLETON is None:
        with _SINGLETON_LOCK:
            if _SINGLETON is None:
                _SINGLETON = TokenEstimator()
    return _SINGLETON
