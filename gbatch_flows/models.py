"""Pydantic records the engine keeps in the manifest and in its immutable JSONL blobs.

Every manifest section is one of these models (see ``engine/state.py`` for the section keys). They are small: per
request data never lives in the manifest, only in blobs the manifest references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_ENDPOINT = "/v1/chat/completions"
#: Remote batch statuses that are final: the batch runs no more and no longer counts in the enqueued-token limit.
FINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})

M = TypeVar("M", bound=BaseModel)
_setattr = object.__setattr__


def trusted(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` from ``values`` that are already valid, without validation (for values the engine
    computed or wrote itself: ~1 µs instead of 3-5 µs for a validated model, and faster than ``model_construct``).

    ``values`` must hold every field of ``cls``, with values of the declared types, in the declared order (the
    order ``model_dump`` follows); the result equals ``cls(**values)`` (same fields set, same dump). It becomes the
    instance's ``__dict__``: the caller hands it over.
    """
    obj = _new(cls)
    _setattr(obj, "__dict__", values)
    _set_fields_set(obj, set(values))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


# BaseModel's slots, set through their descriptors (faster than object.__setattr__ by name); models define no
# __new__ of their own
_new = object.__new__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestSpec(_Model):
    """What a task yields: one API call for one sample (``key`` is the stable sample key)."""

    key: str
    payload: dict[str, Any]
    endpoint: str = DEFAULT_ENDPOINT
    meta: dict[str, Any] = Field(default_factory=dict)


class Request(_Model):
    """A request as the engine queues it: the spec plus identity, retry count and estimates."""

    seq: int  # generation order of the sample; also orders the task output
    key: str
    endpoint: str
    payload: dict[str, Any]
    meta: dict[str, Any] = Field(default_factory=dict)
    retry: int = 0
    part: int = 0  # follow-up number for the same sample (e.g. more opinions)
    tokens: int  # estimated prompt tokens
    max_out: int  # worst-case completion tokens

    @property
    def custom_id(self) -> str:
        return f"{self.seq}-{self.part}-{self.retry}"


REQUEST_FIELDS = tuple(Request.model_fields)
_UNLOADED: Any = type("Unloaded", (), {"__repr__": lambda self: "<payload not loaded>"})()


class LazyRequest(Request):
    """A :class:`Request` whose ``payload`` is read only when something asks for it.

    The process stage builds one per result from the batch's sidecar line (which the engine wrote) and hands it to
    the task; most tasks never look at the payload, which lives in the much bigger batch input file. Reading the
    attribute, dumping, copying, comparing, printing or pickling loads it first (``load()`` returns the payload);
    afterwards it is a plain ``Request`` in every respect.
    """

    __slots__ = ("_loader",)

    @classmethod
    def lazy(cls, v: dict[str, Any], loader: Callable[[], dict[str, Any]]) -> LazyRequest:
        """``v``: every field but ``payload`` (valid values); ``loader`` returns the payload."""
        obj = trusted(cls, {"seq": v["seq"], "key": v["key"], "endpoint": v["endpoint"], "payload": _UNLOADED,
                            "meta": v["meta"], "retry": v["retry"], "part": v["part"], "tokens": v["tokens"],
                            "max_out": v["max_out"]})
        _setattr(obj, "_loader", loader)
        return obj

    def load(self) -> dict[str, Any]:
        payload = self.__dict__["payload"]
        if payload is _UNLOADED:
            payload = self.__dict__["payload"] = self._loader()
        return payload

    def _loaded(self) -> Request:
        self.load()
        return self

    def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super(LazyRequest, self._loaded()).model_dump(*args, **kwargs)

    def model_dump_json(self, *args: Any, **kwargs: Any) -> str:
        return super(LazyRequest, self._loaded()).model_dump_json(*args, **kwargs)

    def model_copy(self, *args: Any, **kwargs: Any) -> Any:  # copies are plain Requests
        return _plain(self).model_copy(*args, **kwargs)

    def __copy__(self) -> Any:
        return _plain(self).__copy__()

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        return _plain(self).__deepcopy__(memo)

    def __eq__(self, other: Any) -> bool:  # equal to a Request with the same values, like a Request is
        if not isinstance(other, Request):
            return NotImplemented
        return _plain(self) == _plain(other)

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Any:
        return super(LazyRequest, self._loaded()).__iter__()

    def __repr_name__(self) -> str:
        return "Request"

    def __repr_args__(self) -> Any:
        return super(LazyRequest, self._loaded()).__repr_args__()

    def __getstate__(self) -> dict[Any, Any]:
        return super(LazyRequest, self._loaded()).__getstate__()

    def __reduce__(self) -> Any:  # unpickles as a plain Request (the loader does not travel)
        return _plain, (_plain(self),)


def _plain(request: Request) -> Request:
    """A plain ``Request`` with the same values (the request itself when it is one)."""
    if type(request) is Request:
        return request
    if isinstance(request, LazyRequest):
        request.load()
    plain = trusted(Request, dict(request.__dict__))
    _setattr(plain, "__pydantic_fields_set__", set(request.__pydantic_fields_set__))
    return plain


def _payload_get(self: LazyRequest) -> dict[str, Any]:
    return self.load()


def _payload_set(self: LazyRequest, value: dict[str, Any]) -> None:  # a plain Request does not validate assignment
    self.__dict__["payload"] = value


# A data descriptor outranks the instance __dict__: reading ``payload`` loads it (set after class creation, so that
# pydantic keeps ``payload`` as the inherited field).
LazyRequest.payload = property(_payload_get, _payload_set)  # type: ignore[assignment,misc]


class Spend(_Model):
    """Requests, tokens (prompt + completion) and cost in USD."""

    requests: int = 0
    tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            requests=self.requests + other.requests,
            tokens=self.tokens + other.tokens,
            cost=self.cost + other.cost,
        )

    def __sub__(self, other: Spend) -> Spend:
        return Spend(
            requests=self.requests - other.requests,
            tokens=self.tokens - other.tokens,
            cost=self.cost - other.cost,
        )


class Budget(_Model):
    """Spend reserved (worst case of in-flight work) and settled (actual usage of finished work)."""

    reserved: Spend = Field(default_factory=Spend)
    settled: Spend = Field(default_factory=Spend)

    @property
    def committed(self) -> Spend:
        return self.reserved + self.settled


class Segment(_Model):
    """An immutable JSONL blob of queued ``Request`` lines (generated, requeued or follow-ups)."""

    ref: dict[str, Any]  # BlobRef as dict
    count: int
    tokens: int
    origin: Literal["generated", "retry", "wiped"] = "generated"


class Cursor(_Model):
    """How far the queue has been consumed by assembly: next line ``line`` of segment ``segment``."""

    segment: int = 0
    line: int = 0


BatchState = Literal["assembled", "pushing", "pushed", "done", "processed", "failed"]


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Outcomes(_Model):
    ok: int = 0
    retried: int = 0
    failed: int = 0
    followups: int = 0
    unanswered: int = 0  # of those retried: direct calls the remote left without an answer (not judged)


class BatchRecord(_Model):
    """One local batch: the uploaded file, its remote twin and what came back."""

    local_id: int
    mode: Literal["batch", "direct"] = "batch"
    state: BatchState = "assembled"
    model: str
    endpoint: str
    input_ref: dict[str, Any]  # exactly the uploaded JSONL
    sidecar_ref: dict[str, Any]  # Request lines without payload, same order as input
    requests: int
    tokens: int  # estimated prompt tokens
    max_out: int  # worst-case completion tokens
    mb: float
    worst_cost: float
    session: str | None = None  # session that reserved its spend
    attempts: int = 0  # remote creations (a token_limit_exceeded failure re-pushes)
    pushing_since: float | None = None
    remote_id: str | None = None
    past_remote_ids: list[str] = Field(default_factory=list)  # earlier creations refused (token_limit_exceeded)
    not_before: float | None = None  # after token_limit_exceeded: not re-pushed before this while others run
    input_file_id: str | None = None
    remote_status: str | None = None
    remote_errors: list[dict[str, Any]] = Field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] = Field(default_factory=dict)
    results_ref: dict[str, Any] | None = None
    output_ref: dict[str, Any] | None = None
    failed_ref: dict[str, Any] | None = None  # requests that failed for good, with the reason
    failure_output_ref: dict[str, Any] | None = None  # their records from process_failure (dropped by wipe_failed)
    direct_sent: int = 0  # direct mode: requests (a prefix of the file) whose calls were started...
    direct_done: int = 0  # ...and those whose results are committed in direct_parts
    direct_parts: list[dict[str, Any]] = Field(default_factory=list)
    extra_reserved: Spend = Field(default_factory=Spend)  # re-sending calls lost in a crash
    lost_spend: Spend = Field(default_factory=Spend)  # worst case of calls lost in a crash (charged, never known)
    outcomes: Outcomes = Field(default_factory=Outcomes)
    usage: Usage = Field(default_factory=Usage)
    cost: float = 0.0
    completion: dict[str, Any] = Field(default_factory=dict)  # observed completion tokens (status.CompletionStats)
    cancel_requested_at: float | None = None  # --wipe_requests cancelled the remote batch at this time
    passed: bool | None = None
    created_at: float
    pushed_at: float | None = None
    finished_at: float | None = None
    processed_at: float | None = None


class TaskInfo(_Model):
    """Identity and fixed metadata of a task (changed only by ``reinit_meta``)."""

    task_id: str
    name: str
    created_at: float
    meta: dict[str, Any]
    generated: bool = False
    generated_count: int = 0  # samples yielded by generate_requests so far
    generated_requests: int = 0
    next_batch: int = 1
    next_segment: int = 0
    next_part: int = 1  # follow-up requests get fresh part numbers, so custom_ids never repeat
    consecutive_pass_failures: int = 0
    consecutive_lost_batches: int = 0  # batches in a row the server lost (or returned without results)
    failed_batches_processed: int = 0
    finished: bool = False
    skip_sent_keys: bool = False  # set by wipe_requests: regeneration skips samples already sent or done


class ResultLine(_Model):
    """One line of a batch output/error file, or of a direct call, normalised."""

    custom_id: str
    status_code: int | None = None
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    request_id: str | None = None


class OrphanRecord(_Model):
    """A remote batch of this task that no local batch owns (cancelled; its spend reserved, then settled): the
    manifest's ``orphan/<remote id>`` sections (``engine/reconcile.py`` writes them)."""

    remote_id: str
    local_id: int | None = None
    status: str
    seen_at: float
    reserved: Spend = Field(default_factory=Spend)
    settled: Spend | None = None  # set once the batch ended and its usage was counted
    usage: Usage = Field(default_factory=Usage)
