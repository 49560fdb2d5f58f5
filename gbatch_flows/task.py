"""The Task API: subclass ``Task``, yield requests from ``generate_requests`` and turn results into records in
``process_result``. Everything else (limits, batches, retries, state, output) is the engine's job.

Task metadata (model, temperature, ...) is fixed when the task is created in its folder; later runs reuse it (their
meta flags may be left out) and a flag given with another value is refused unless ``--reinit_meta`` is given, so a
half-done task never silently mixes two configurations.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import pydantic
from openai.lib._parsing._completions import type_to_response_format_param

from gbatch_flows import endpoints
from gbatch_flows.engine.protocol import Processed, ResponseInvalid, Result
from gbatch_flows.models import DEFAULT_ENDPOINT, Request, RequestSpec, trusted
from gbatch_flows.opinions import OpinionAdviser

__all__ = ["Processed", "RequestSpec", "ResponseInvalid", "Result", "Task", "records", "retry"]

M = TypeVar("M", bound=pydantic.BaseModel)

RESPONSES_MIN_OUTPUT_TOKENS = 16  # the API refuses a smaller max_output_tokens

META_OPTIONS = (
    "chat_endpoint", "model", "temperature", "top_p", "max_completion_tokens", "completion_ratio",
    "opinions_min", "opinions_max", "confidence",
)


class Task:
    """Base class of a task. Override ``name``, ``default_meta``, ``generate_requests`` and ``process_result``."""

    name: ClassVar[str] = "task"
    default_meta: ClassVar[dict[str, Any]] = {
        "chat_endpoint": DEFAULT_ENDPOINT,
        "model": "gpt-4o-mini",
        "temperature": None,
        "top_p": None,
        "max_completion_tokens": None,
        "completion_ratio": 1.0,
        "opinions_min": 1,
        "opinions_max": 1,
        "confidence": 0.0,
    }
    #: the pydantic model / dataclass of one output record (used to read the output back)
    record_type: ClassVar[type | None] = None
    #: the task's own parameters (fields become CLI flags and flow parameters; their values join the metadata)
    Params: ClassVar[type[pydantic.BaseModel] | None] = None

    def __init__(self, params: pydantic.BaseModel | dict[str, Any] | None = None):
        if self.Params is None:
            self.params = None
        elif isinstance(params, self.Params):
            self.params = params
        else:
            self.params = self.Params.model_validate(params or {})

    # -- metadata -------------------------------------------------------------------------------------------------
    def build_meta(self, options: Any | None = None) -> dict[str, Any]:
        """The task's metadata from scratch: ``default_meta`` and the params, with the options that were given on
        top (what a new task, or ``--reinit_meta``, stores)."""
        meta = dict(self.default_meta)
        if self.params is not None:
            meta.update(self.params.model_dump(mode="json"))
        meta.update(self.given_meta(options))
        return meta

    def given_meta(self, options: Any | None = None) -> dict[str, Any]:
        """The metadata the user gave explicitly: meta options that are set, and the params that were passed
        (``model_fields_set``). A later run compares only these with the stored metadata; the rest is reused."""
        given: dict[str, Any] = {}
        if self.params is not None:
            dumped = self.params.model_dump(mode="json")
            given.update({name: dumped[name] for name in self.params.model_fields_set})
        if options is not None:
            for name in META_OPTIONS:
                value = getattr(options, name, None)
                if value is not None:
                    given[name] = value
        return given

    @property
    def output_name(self) -> str:
        return f"{self.name}_output.jsonl"

    def emulator_responders(self) -> dict[str, Any]:
        """Responders that make the bundled emulator answer this task plausibly (model name or '*' -> callable)."""
        return {}

    # -- to override ----------------------------------------------------------------------------------------------
    def generate_requests(self, meta: dict[str, Any]) -> Iterable[RequestSpec]:
        raise NotImplementedError

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        raise NotImplementedError

    def process_failure(self, request: Request, reason: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """Records for a sample that failed for good; none by default (it is listed in failed/*.jsonl)."""
        return []

    # -- helpers --------------------------------------------------------------------------------------------------
    @staticmethod
    def chat_request(
        key: str,
        messages: list[dict[str, Any]],
        meta: dict[str, Any],
        response_model: type[pydantic.BaseModel] | None = None,
        n: int = 1,
        request_meta: dict[str, Any] | None = None,
        **extra: Any,
    ) -> RequestSpec:
        """A chat request with the task's model and sampling metadata (and structured output), addressed to the
        task's ``chat_endpoint``: a chat completion, or on ``/v1/responses`` the same conversation as a Responses
        request (see :meth:`responses_request`; it has no ``n``, see :meth:`max_choices`)."""
        endpoint = meta.get("chat_endpoint") or DEFAULT_ENDPOINT
        if endpoints.canonical(endpoint) == endpoints.RESPONSES:
            if n != 1:
                raise ValueError(f"request {key!r}: /v1/responses answers once per request (no 'n'), asked for "
                                 f"{n} choices; ask for Task.max_choices(meta) choices per request")
            return Task.responses_request(key, messages, meta, response_model, request_meta=request_meta, **extra)
        payload: dict[str, Any] = {"model": meta["model"], "messages": messages}
        for name in ("temperature", "top_p", "max_completion_tokens"):
            if meta.get(name) is not None:
                payload[name] = meta[name]
        if n != 1:
            payload["n"] = n
        if response_model is not None:
            payload["response_format"] = response_format_for(response_model)
        payload.update(extra)
        return _spec(key, payload, endpoint, request_meta)

    @staticmethod
    def responses_request(
        key: str,
        input: str | list[dict[str, Any]],
        meta: dict[str, Any],
        response_model: type[pydantic.BaseModel] | None = None,
        instructions: str | None = None,
        request_meta: dict[str, Any] | None = None,
        **extra: Any,
    ) -> RequestSpec:
        """A ``/v1/responses`` request: ``input`` (a string or message items), ``instructions`` (when not given, a
        single leading system/developer message with text content becomes them), the task's ``temperature`` /
        ``top_p``, ``max_completion_tokens`` as ``max_output_tokens``, and structured output as ``text.format``
        (``{"type": "json_schema", "name", "schema", "strict": true}``)."""
        items: str | list[dict[str, Any]] = input
        if instructions is None and isinstance(input, list) and input:
            first = input[0]
            if first.get("role") in ("system", "developer") and isinstance(first.get("content"), str) and not any(
                m.get("role") in ("system", "developer") for m in input[1:]
            ):
                instructions, items = first["content"], input[1:]
        payload: dict[str, Any] = {"model": meta["model"], "input": items}
        if instructions is not None:
            payload["instructions"] = instructions
        for name in ("temperature", "top_p"):
            if meta.get(name) is not None:
                payload[name] = meta[name]
        if meta.get("max_completion_tokens") is not None:
            if meta["max_completion_tokens"] < RESPONSES_MIN_OUTPUT_TOKENS:
                raise ValueError(f"request {key!r}: /v1/responses needs max_output_tokens >= "
                                 f"{RESPONSES_MIN_OUTPUT_TOKENS}, the task's max_completion_tokens is "
                                 f"{meta['max_completion_tokens']}: raise --max_completion_tokens")
            payload["max_output_tokens"] = meta["max_completion_tokens"]
        if response_model is not None:
            payload["text"] = {"format": text_format_for(response_model)}
        payload.update(extra)
        return _spec(key, payload, endpoints.RESPONSES, request_meta)

    @staticmethod
    def embedding_request(key: str, input: str | list[str], meta: dict[str, Any],
                          request_meta: dict[str, Any] | None = None, **extra: Any) -> RequestSpec:
        """A ``/v1/embeddings`` request with the task's model (``Task.contents`` gives one vector per input)."""
        payload: dict[str, Any] = {"model": meta["model"], "input": input, **extra}
        return RequestSpec(key=key, payload=payload, endpoint=endpoints.EMBEDDINGS, meta=request_meta or {})

    @staticmethod
    def completion_request(key: str, prompt: str | list[str], meta: dict[str, Any],
                           request_meta: dict[str, Any] | None = None, **extra: Any) -> RequestSpec:
        """A legacy ``/v1/completions`` request (``max_completion_tokens`` becomes ``max_tokens``)."""
        payload: dict[str, Any] = {"model": meta["model"], "prompt": prompt}
        for name in ("temperature", "top_p"):
            if meta.get(name) is not None:
                payload[name] = meta[name]
        if meta.get("max_completion_tokens") is not None:
            payload["max_tokens"] = meta["max_completion_tokens"]
        payload.update(extra)
        return RequestSpec(key=key, payload=payload, endpoint=endpoints.COMPLETIONS, meta=request_meta or {})

    @staticmethod
    def moderation_request(key: str, input: str | list[Any], meta: dict[str, Any],
                           request_meta: dict[str, Any] | None = None, **extra: Any) -> RequestSpec:
        """A ``/v1/moderations`` request (free: its cost is 0)."""
        payload: dict[str, Any] = {"model": meta["model"], "input": input, **extra}
        return RequestSpec(key=key, payload=payload, endpoint=endpoints.MODERATIONS, meta=request_meta or {})

    @staticmethod
    def max_choices(meta: dict[str, Any]) -> int | None:
        """Most choices one request of the task's ``chat_endpoint`` can ask for: 1 on ``/v1/responses`` (no
        ``n``), None (no limit) on chat completions."""
        endpoint = endpoints.spec(meta.get("chat_endpoint") or DEFAULT_ENDPOINT)
        return None if endpoint.choices_field else 1

    @staticmethod
    def contents(result: Result) -> list[Any]:
        """The result contents, by the request's endpoint: one text per choice (chat completions, completions),
        one text for a response (``/v1/responses``: its ``output_text`` parts), one vector per input
        (embeddings), one result object per input (moderations). A refusal or an empty answer raises
        ``ResponseInvalid`` (the request is retried)."""
        try:
            return endpoints.contents_of(result.request.endpoint, result.body or {})
        except endpoints.ContentsError as exc:
            raise ResponseInvalid(str(exc)) from exc

    @staticmethod
    def parse(content: str, model: type[M]) -> M:
        """Parse structured output into ``model``; invalid JSON or fields raise ``ResponseInvalid``."""
        try:
            return model.model_validate_json(content)
        except pydantic.ValidationError as exc:
            raise ResponseInvalid(f"response does not match {model.__name__}: {exc.errors()[:2]}") from exc
        except json.JSONDecodeError as exc:  # pragma: no cover - pydantic wraps these
            raise ResponseInvalid(str(exc)) from exc

    @staticmethod
    def adviser(meta: dict[str, Any]) -> OpinionAdviser:
        return OpinionAdviser(int(meta.get("opinions_min") or 1), int(meta.get("opinions_max") or 1),
                              float(meta.get("confidence") or 0.0))


def _spec(key: Any, payload: dict[str, Any], endpoint: Any, request_meta: Any) -> RequestSpec:
    """``RequestSpec(key=key, payload=payload, endpoint=endpoint, meta=request_meta or {})`` for a payload the helper
    just built: without validation when the other values already have their types (validation would return the same
    values: a shallow copy of each dict), else validated (it converts or refuses them)."""
    if type(key) is str and type(endpoint) is str and (
            not request_meta or (type(request_meta) is dict and all(type(k) is str for k in request_meta))):
        return trusted(RequestSpec, {"key": key, "payload": payload, "endpoint": endpoint,
                                     "meta": dict(request_meta) if request_meta else {}})
    return RequestSpec(key=key, payload=payload, endpoint=endpoint, meta=request_meta or {})


@functools.lru_cache(maxsize=128)
def response_format_for(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The strict json_schema ``response_format`` of a pydantic model (built once per model: building it costs
    about 0.3 ms; requests share the returned dict, which nothing mutates)."""
    return type_to_response_format_param(model)  # type: ignore[return-value]


@functools.lru_cache(maxsize=128)
def text_format_for(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The Responses ``text.format`` of a pydantic model: the chat ``response_format``'s json_schema, flattened."""
    schema = response_format_for(model)["json_schema"]
    out = {"type": "json_schema", "name": schema["name"], "schema": schema["schema"], "strict": schema.get("strict", True)}
    if schema.get("description"):
        out["description"] = schema["description"]
    return out


def retry(reason: str) -> Processed:
    return Processed(retry=reason)


def records(*items: Any) -> Processed:
    from gbatch_flows.outputs import to_jsonable

    return Processed(records=[to_jsonable(i) for i in items])
