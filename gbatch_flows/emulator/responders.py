"""Responders: what the emulated model "says".

A responder is any callable `fn(body)` or `fn(body, ctx)` that returns the assistant message content (str):
`body` is the chat completion request body (dict) — for /v1/responses and /v1/completions a chat-shaped view of the
request (messages, response_format, max_completion_tokens) — and `ctx` a `ResponderContext` (model, the real
endpoint, choice index and a seed derived from the request). Register them per model with `EmulatorConfig(responders={"model": fn, "*": fn})`
(or as "package.module:function" strings). The default responder writes schema-valid JSON for
`response_format={"type": "json_schema", ...}`, a JSON object for `{"type": "json_object"}`, and plain text otherwise;
it is deterministic: the same request gives the same answer, and the n choices of one request differ.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import random
from collections.abc import Callable, Mapping
from dataclasses import FrozenInstanceError
from typing import Any, Protocol

from . import jsonutil
from .schema_gen import WORDS, SchemaError, generate_instance


class LazySeed:
    """A seed computed on first use, once: the request seed costs a canonical dump of the whole body, which
    responders that never read `ctx.seed` (the demos' answers) need not pay."""

    __slots__ = ("_compute", "_value")

    def __init__(self, compute: Callable[[], int]) -> None:
        self._compute = compute
        self._value: int | None = None

    def __call__(self) -> int:
        if self._value is None:
            self._value = self._compute()
        return self._value

    def choice(self, index: int) -> LazySeed:
        """The seed of choice `index` (`choice_seed` of this one), also computed on first use."""
        return self if index == 0 else LazySeed(lambda: choice_seed(self(), index))


class ResponderContext:
    """What a responder knows besides the request body (immutable). `seed` may be given as an int or as a
    zero-argument callable (a `LazySeed`) that computes it when a responder first reads `ctx.seed`."""

    __slots__ = ("model", "endpoint", "choice_index", "_seed")
    model: str
    endpoint: str
    choice_index: int

    def __init__(self, model: str, endpoint: str, choice_index: int, seed: int | Callable[[], int]) -> None:
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "endpoint", endpoint)
        object.__setattr__(self, "choice_index", choice_index)
        object.__setattr__(self, "_seed", seed)

    @property
    def seed(self) -> int:
        seed = self._seed
        if callable(seed):
            seed = seed()
            object.__setattr__(self, "_seed", seed)
        return seed

    def _fields(self) -> tuple[str, str, int, int]:
        return self.model, self.endpoint, self.choice_index, self.seed

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"ResponderContext(model={self.model!r}, endpoint={self.endpoint!r}, "
                f"choice_index={self.choice_index!r}, seed={self.seed!r})")


class Responder(Protocol):
    """The full responder signature (a one-argument `fn(body)` is accepted too)."""

    def __call__(self, body: Mapping[str, Any], ctx: ResponderContext) -> str: ...


def request_seed(body: Mapping[str, Any]) -> int:
    """A stable seed from the whole request body (any change of the request changes the answer)."""
    canonical = jsonutil.dumps(body, sort_keys=True)
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big")


def choice_seed(base: int, index: int) -> int:
    return base if index == 0 else int.from_bytes(
        hashlib.blake2b(f"{base}:{index}".encode(), digest_size=8).digest(), "big")


def _last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def default_responder(body: Mapping[str, Any], ctx: ResponderContext) -> str:
    """Schema-valid JSON for json_schema requests, a JSON object for json_object, plain text otherwise."""
    rng = random.Random(ctx.seed)
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            schema = {"type": "object", "properties": {}}
        value = generate_instance(schema, rng)
        return jsonutil.dumps(value).decode()
    if kind == "json_object":
        return jsonutil.dumps({"answer": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))}).decode()
    echo = " ".join(_last_user_text(body).split()[:8])
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 48)))
    prefix = f"Emulated reply to: {echo}. " if echo else "Emulated reply. "
    return prefix + words[0].upper() + words[1:] + "."


def load_responder(spec: Any) -> Callable[..., str]:
    """A callable responder from a callable or a 'package.module:function' string."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load responder {spec!r}: {exc}") from exc
        if not callable(target):
            raise ValueError(f"responder {spec!r} is not callable")
        return target
    raise ValueError(f"a responder must be a callable or 'package.module:function', got {spec!r}")


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class ResponderRegistry:
    """Picks the responder for a model: exact name, then "*", then the default."""

    def __init__(self, responders: Mapping[str, Any]) -> None:
        self._by_model: dict[str, tuple[Callable[..., str], bool]] = {}
        for model, spec in responders.items():
            fn = load_responder(spec)
            self._by_model[model] = (fn, _takes_context(fn))

    @property
    def models(self) -> list[str]:
        return [m for m in self._by_model if m != "*"]

    def respond(self, body: Mapping[str, Any], ctx: ResponderContext) -> str:
        """The content for one choice. Raises SchemaError for unusable schemas; other errors come from user code."""
        entry = self._by_model.get(ctx.model) or self._by_model.get("*")
        if entry is None:
            return default_responder(body, ctx)
        fn, with_ctx = entry
        content = fn(body, ctx) if with_ctx else fn(body)
        if not isinstance(content, str):
            raise TypeError(f"responder for {ctx.model!r} returned {type(content).__name__}, not str")
        return content


__all__ = [
    "LazySeed",
    "Responder",
    "ResponderContext",
    "ResponderRegistry",
    "SchemaError",
    "choice_seed",
    "default_responder",
    "load_responder",
    "request_seed",
]
