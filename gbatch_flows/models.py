"""Pydantic records the engine keeps in the manifest and in its immutable JSONL blobs.

Every manifest section is one of these models (see ``engine/state.py`` for the section keys). They are small: per
request data never lives in the manifest, only in blobs the manifest references.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_ENDPOINT = "/v1/chat/completions"


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
