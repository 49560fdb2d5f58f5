"""One classification of the errors of the remote API, and one retry rule for every stage (issue 15).

* transient (no connection, timeout, 408/409/429, 5xx) -> retried with back-off while the outage lasts less than
  ``--max_outage_s``; longer, the run stops with one line naming that option;
* authentication / permission (401, 403) -> the run stops; nothing is marked failed;
* a missing Batch API endpoint (404 on ``/batches`` or ``/files``) -> the run stops: "add --force_direct";
* any other 4xx -> a request-level error: the caller fails that request (the exception is re-raised as it is).

``call_remote(fn, what, policy)`` applies the rule to one call; ``remote_client.guard_client`` applies it to every
call made through an ``openai.OpenAI`` client.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar
from urllib.parse import urlparse

import openai

from gbatch_flows.engine.context import EngineStop

log = logging.getLogger("gbatch_flows.remote")

T = TypeVar("T")

OUTAGE_OPTION = "--max_outage_s"
TRANSIENT_STATUS = frozenset({408, 409, 429})
BATCH_API_PATHS = ("/batches", "/files")
REQUEST_PATHS = ("/chat/completions", "/embeddings", "/responses")


class Kind(StrEnum):
    TRANSIENT = "transient"
    AUTH = "auth"
    NO_ENDPOINT = "no_endpoint"
    REQUEST = "request"


class RemoteStop(EngineStop):
    """The run must stop because of the remote (key refused, no Batch API, outage too long); one line.

    ``kind``: AUTH, NO_ENDPOINT or TRANSIENT (an outage longer than --max_outage_s)."""

    def __init__(self, message: str, kind: Kind = Kind.TRANSIENT):
        super().__init__(message)
        self.kind = kind


def _status(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


def _request_path(exc: BaseException) -> str:
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    return str(getattr(url, "path", "") or "")


def is_openai_url(base_url: str | None) -> bool:
    return not base_url or (urlparse(base_url).hostname or "") == "api.openai.com"


def transport_errors() -> tuple[type[BaseException], ...]:
    """The ``TransportError`` classes of the HTTP libraries that are loaded: ``httpx2`` (what openai 3 talks
    through) and ``httpx`` (older openai releases, s3fs's neighbours). openai wraps them as ``APIConnectionError``
    only around a request: a connection lost while a streamed body is read (a results download) raises the
    library's own error. Looked up in ``sys.modules``: no such error exists before its library is imported, and
    importing httpx (with click and rich) costs 0.2-0.3 s."""
    return tuple(module.TransportError for name in ("httpx2", "httpx")
                 if (module := sys.modules.get(name)) is not None)


def classify(exc: BaseException) -> Kind | None:
    """The kind of a remote error, or None when ``exc`` is not an error of the remote API."""
    if isinstance(exc, (openai.APIConnectionError, ConnectionError, TimeoutError, *transport_errors())):
        return Kind.TRANSIENT
    if not isinstance(exc, openai.APIStatusError):
        return None
    status = exc.status_code
    if status in (401, 403):
        return Kind.AUTH
    path = _request_path(exc).rstrip("/")
    if status == 404 and (path.endswith(BATCH_API_PATHS) or (
            path.endswith(REQUEST_PATHS) and _error_code(exc) not in ("model_not_found", "not_found_error"))):
        return Kind.NO_ENDPOINT  # (OpenAI answers an unknown model with 404 model_not_found: that request fails)
    if status in TRANSIENT_STATUS or status >= 500:
        return Kind.TRANSIENT
    return Kind.REQUEST


def _error_code(exc: BaseException) -> str | None:
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    return str(error.get("code") or error.get("type") or "") or None if isinstance(error, dict) else None


def _short(exc: BaseException) -> str:
    status = _status(exc)
    text = f"{type(exc).__name__}{f' {status}' if status else ''}"
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message") or message
    detail = str(message or exc).splitlines()[0][:160] if (message or str(exc)) else ""
    return f"{text}: {detail}" if detail else text


def stop_message(kind: Kind, what: str, exc: BaseException, base_url: str | None) -> str:
    """The one line the user reads when a remote error stops the run."""
    where = base_url or "the OpenAI API"
    if kind is Kind.AUTH and _status(exc) == 403:
        return (f"{what}: permission denied by {where} ({_short(exc)}): the key has no access to this model, "
                "endpoint or project; fix the key's permissions or --openai_organization / --openai_project, then "
                "run again (nothing was marked failed)")
    if kind is Kind.AUTH:
        return (f"{what}: {where} refused the API key ({_short(exc)}): set a valid OPENAI_API_KEY (or "
                "--openai_api_key), then run again (nothing was marked failed)")
    if kind is Kind.NO_ENDPOINT and _request_path(exc).rstrip("/").endswith(REQUEST_PATHS):
        return (f"{what}: {where} has no {_request_path(exc)} endpoint (404, {_short(exc)}): check "
                "--client_base_url and --chat_endpoint")
    if kind is Kind.NO_ENDPOINT:
        if is_openai_url(base_url):
            return (f"{what}: the Batch API endpoint {_request_path(exc)} was not found ({_short(exc)}): check "
                    "--client_base_url (it usually ends in /v1), or add --force_direct")
        return (f"{what}: this server ({where}) has no Batch API ({_request_path(exc)} answers 404): add "
                "--force_direct to send the requests one by one")
    return f"{what}: {_short(exc)}"


def outage_message(what: str, exc: BaseException, down_s: float, bound_s: float) -> str:
    return (f"{what}: the remote has been failing for {down_s:.0f}s ({_short(exc)}), longer than "
            f"{OUTAGE_OPTION} {bound_s:g}: check the network / the server, then run again to resume (raise "
            f"{OUTAGE_OPTION} to wait longer)")


@dataclass
class OutageTracker:
    """When the current outage of each kind of call began (its first failure since its last success); shared by
    all calls of a run. Kept per call ("files.create", "direct"...): a call that keeps failing is an outage for
    the run even while other calls succeed."""

    clock: Callable[[], float] = time.monotonic
    since: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, key: str = "") -> float:
        """Note a transient failure; returns how long this call has been failing."""
        with self._lock:
            now = self.clock()
            return now - self.since.setdefault(key, now)

    def succeeded(self, key: str = "") -> None:
        with self._lock:
            self.since.pop(key, None)

    def down_for(self, key: str | None = None) -> float:
        """How long ``key`` (or, with None, the longest failing call) has been failing; 0 when it works."""
        with self._lock:
            starts = list(self.since.values()) if key is None else [self.since[key]] if key in self.since else []
            return self.clock() - min(starts) if starts else 0.0


@dataclass
class OutagePolicy:
    """How long (wall clock) a run waits out an outage, and how it backs off meanwhile."""

    max_outage_s: float = 180.0
    base_url: str | None = None
    first_wait_s: float = 0.5
    max_wait_s: float = 15.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    tracker: OutageTracker | None = None

    def __post_init__(self) -> None:
        if self.tracker is None:
            self.tracker = OutageTracker(self.clock)

    def backoff(self, attempt: int, down_s: float) -> float:
        wait = min(self.max_wait_s, self.first_wait_s * 2 ** attempt) * random.uniform(0.75, 1.0)
        return max(0.0, min(wait, self.max_outage_s - down_s))


def call_remote(fn: Callable[[], T], what: str, policy: OutagePolicy, retry: bool = True) -> T:
    """``fn()`` under the rule of this module.

    ``retry=False`` (creations, which must not be sent twice): a transient error is re-raised for the caller to
    handle, unless the outage already lasts longer than the bound (then the run stops).
    """
    tracker = policy.tracker
    assert tracker is not None
    attempt = 0
    while True:
        try:
            result = fn()
        except Exception as exc:
            kind = classify(exc)
            if kind is None or kind is Kind.REQUEST:
                if kind is Kind.REQUEST:
                    tracker.succeeded(what)  # the server answered
                raise
            if kind is not Kind.TRANSIENT:
                raise RemoteStop(stop_message(kind, what, exc, policy.base_url), kind) from exc
            down = tracker.failed(what)
            if down >= policy.max_outage_s:
                raise RemoteStop(outage_message(what, exc, down, policy.max_outage_s)) from exc
            if not retry:
                raise
            wait = policy.backoff(attempt, down)
            log.warning("%s failed (%s); retrying in %.1fs (down for %.0fs of %s %g)", what, _short(exc), wait,
                        down, OUTAGE_OPTION, policy.max_outage_s)
            policy.sleep(wait)
            attempt += 1
            continue
        tracker.succeeded(what)
        return result
