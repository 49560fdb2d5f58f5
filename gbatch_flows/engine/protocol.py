"""What the engine needs from a task: request generation and result processing callbacks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gbatch_flows.models import Request, RequestSpec, ResultLine, Usage


class ResponseInvalid(ValueError):
    """Raised by a task's ``process_result`` for a response that fails validation: the request is retried."""


@dataclass
class Result:
    """One request's outcome handed to the task: the request, the response body (on success) or the error."""

    request: Request
    ok: bool
    body: dict[str, Any] | None
    error: str | None
    usage: Usage
    line: ResultLine | None
    mode: str  # "batch" or "direct"


@dataclass
class Processed:
    """What the task made of a result.

    ``records`` go to the task output; ``followups`` are new requests for the same sample (e.g. more opinions);
    ``retry`` asks for the same request again (e.g. the response failed validation); ``fail`` gives up on the sample
    with a reason.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    followups: list[RequestSpec] = field(default_factory=list)
    retry: str | None = None
    fail: str | None = None


class TaskProtocol(Protocol):
    name: str

    def generate_requests(self, meta: dict[str, Any]) -> Iterable[RequestSpec]:
        """Yield requests in a deterministic order (a restart skips the ones already generated)."""
        ...

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        """Turn one successful response into output records (or a retry / follow-ups / a failure)."""
        ...

    def process_failure(self, request: Request, reason: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """Records to write for a sample that failed for good (may be empty)."""
        ...
