"""Thin layer over the official ``openai`` client: client construction and error classification in one place."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

import openai
import orjson

from gbatch_flows.models import ResultLine, trusted

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
RETRYABLE_CODES = frozenset(
    {
        "rate_limit_exceeded",
        "server_error",
        "timeout",
        "batch_expired",
        "batch_cancelled",
        "missing_result",
        "malformed_result",
        "internal_error",
        "service_unavailable",
    }
)


class Outcome(StrEnum):
    OK = "ok"
    RETRYABLE = "retryable"
    FATAL = "fatal"


def _client_args(api_key: str | None, base_url: str | None, organization: str | None, project: str | None,
                 timeout: float) -> dict[str, Any]:
    return {"api_key": api_key or "sk-no-key-needed", "base_url": base_url, "organization": organization,
            "project": project, "timeout": timeout}


def make_client(api_key: str | None, base_url: str | None = None, organization: str | None = None,
                project: str | None = None, max_retries: int = 5, timeout: float = 600.0) -> openai.OpenAI:
    """The sync client used for files and batches. It retries connection errors, 429 and 5xx itself, which is
    right for reads only: calls that create something go through ``no_retry(client, timeout)``."""
    return openai.OpenAI(max_retries=max_retries, **_client_args(api_key, base_url, organization, project, timeout))


def make_async_client(api_key: str | None, base_url: str | None = None, organization: str | None = None,
                      project: str | None = None, timeout: float = 600.0) -> openai.AsyncOpenAI:
    """The async client of the direct executor: retries are ours (they must respect the RPM/TPM pacing)."""
    return openai.AsyncOpenAI(max_retries=0, **_client_args(api_key, base_url, organization, project, timeout))


def classify_status(status_code: int | None, code: str | None = None) -> Outcome:
    """Success, worth retrying (429, 5xx, timeouts, expiry) or fatal (any other 4xx, invalid request)."""
    if status_code is not None and 200 <= status_code < 300:
        return Outcome.OK
    if code in RETRYABLE_CODES:
        return Outcome.RETRYABLE
    if status_code is None or status_code in RETRYABLE_STATUS or status_code >= 500:
        return Outcome.RETRYABLE
    return Outcome.FATAL


def classify_exception(exc: BaseException) -> Outcome:
    """Classify an exception raised by the openai client."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return Outcome.RETRYABLE
    if isinstance(exc, openai.APIStatusError):
        return classify_status(exc.status_code, _error_code(exc.body))
    return Outcome.FATAL


#: the error code of a direct call whose answer never came (lost connection, timeout, 5xx): charged at its worst
#: case and queued again; the remote's fault, so not judged by the pass rule
UNANSWERED_CODE = "outcome_unknown"


def outcome_unknown(exc: BaseException) -> bool:
    """True when a call that creates something may have taken effect although it failed: the connection broke or
    timed out after the request was sent, or the server answered 5xx (503 "overloaded" is a refusal). Resolve such
    an outcome by looking the object up, never by sending again blindly; charge a direct call at its worst case."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500 and exc.status_code != 503


def no_retry(client: openai.OpenAI, timeout: float) -> openai.OpenAI:
    """The client for calls that create something remotely: no automatic re-send (a lost answer to a create would
    create it again) and the given timeout (the create window a successor waits out)."""
    return client.with_options(max_retries=0, timeout=timeout)


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            code = err.get("code") or err.get("type")
            return str(code) if code is not None else None
    return None


def describe_exception(exc: BaseException) -> str:
    """One line naming the error and the request id the server gave (for support tickets)."""
    request_id = getattr(exc, "request_id", None)
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__}"
    if status is not None:
        text += f" {status}"
    text += f": {exc}"
    if request_id:
        text += f" (request id {request_id})"
    return text


def parse_result_line(raw: bytes) -> ResultLine | None:
    """Parse one line of a batch output or error file; ``None`` when the line is not usable."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        return None
    response = obj.get("response") or {}
    if not isinstance(response, dict):
        response = {}
    body = response.get("body")
    error = obj.get("error")
    values = {
        "custom_id": obj["custom_id"],
        "status_code": response.get("status_code"),
        "body": body if isinstance(body, dict) else None,
        "error": error if isinstance(error, dict) else None,
        "request_id": response.get("request_id"),
    }
    # JSON objects have string keys, so only the two scalars need checking: when they already have their types (as
    # in every well-formed line) validation would return the same values; otherwise it converts or refuses them
    if type(values["status_code"]) in _INT_OR_NONE and type(values["request_id"]) in _STR_OR_NONE:
        return trusted(ResultLine, values)
    return ResultLine(**values)


_INT_OR_NONE = (int, type(None))
_STR_OR_NONE = (str, type(None))


def classify_result(line: ResultLine | None) -> tuple[Outcome, str | None]:
    """Outcome of one request's result line and, when not OK, a short reason."""
    if line is None:
        return Outcome.RETRYABLE, "missing_result"
    if line.status_code is not None and 200 <= line.status_code < 300 and line.body is not None:
        return Outcome.OK, None
    code = None
    if line.error:
        code = line.error.get("code")
    if code is None and line.body:
        code = _error_code(line.body)
    outcome = classify_status(line.status_code, code)
    if outcome is Outcome.OK:  # a 2xx without a body
        return Outcome.RETRYABLE, "malformed_result"
    reason = f"{line.status_code or ''} {code or ''}".strip() or "error"
    return outcome, reason


def make_azure_client(api_key: str | None, azure_endpoint: str, api_version: str | None,
                      max_retries: int = 5, timeout: float = 600.0, *, asynchronous: bool = False
                      ) -> openai.AzureOpenAI | openai.AsyncAzureOpenAI:
    """An Azure OpenAI client (sync for files and batches, async without retries for the direct executor).

    The request bodies' ``model`` is the deployment name: the client sends chat/completions/embeddings calls to
    ``{azure_endpoint}/openai/deployments/{model}/...?api-version=...`` and files, batches and responses to
    ``{azure_endpoint}/openai/...``. ``api_key`` None: the client reads AZURE_OPENAI_API_KEY (or an Entra ID token
    from AZURE_OPENAI_AD_TOKEN); ``api_version`` None: OPENAI_API_VERSION.
    """
    args: dict[str, Any] = {"api_key": api_key, "azure_endpoint": azure_endpoint, "api_version": api_version,
                            "timeout": timeout}
    if asynchronous:
        return openai.AsyncAzureOpenAI(max_retries=0, **args)
    return openai.AzureOpenAI(max_retries=max_retries, **args)
