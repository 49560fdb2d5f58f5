"""Validation of a batch input file (streamed line by line), with the real API's error codes.

Errors are {code, message, param, line} entries for `batch.errors.data`: invalid_json_line, missing_required_parameter,
invalid_type, duplicate_custom_id, invalid_method, url_mismatch, model_mismatch, model_not_found, too_many_tasks,
empty_file, file_too_large. Request bodies themselves are checked when each request runs (like the real API: a bad
body becomes a 400 line in the error file).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import jsonutil
from .moderations import DEFAULT_MODEL as DEFAULT_MODERATION_MODEL

MAX_ERRORS = 100


@dataclass
class InputSummary:
    """What validation learned: request count, model, per-request prompt tokens, errors."""

    total: int = 0
    model: str | None = None
    prompt_tokens: array = field(default_factory=lambda: array("q"))
    embedding_inputs: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(self.prompt_tokens)


def batch_error(code: str, message: str, param: str | None = None, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_line(raw: bytes) -> Any:
    """The JSON value of a line (raises ValueError if it is not JSON)."""
    return jsonutil.loads(raw)


def validate_batch_input(
    lines: Iterable[bytes],
    endpoint: str,
    *,
    max_requests: int,
    max_embedding_inputs: int,
    count_prompt: Callable[[str, dict[str, Any]], int],
    known_model: Callable[[str], bool] = lambda model: True,
    should_stop: Callable[[], bool] = lambda: False,
    canonical_url: Callable[[str], str] = lambda url: url,
) -> InputSummary:
    """Check every line; the summary's `errors` is empty when the batch may run."""
    summary = InputSummary()
    errors = summary.errors
    seen: set[str] = set()
    count_errors = 0

    def add(error: dict[str, Any]) -> None:
        nonlocal count_errors
        count_errors += 1
        if len(errors) < MAX_ERRORS:
            errors.append(error)

    for number, raw in enumerate(lines, start=1):
        if number % 4096 == 0 and should_stop():
            break
        if not raw.strip():
            continue
        try:
            item = parse_line(raw)
        except ValueError:
            add(batch_error("invalid_json_line", "This line is not parseable as valid JSON.", None, number))
            continue
        if not isinstance(item, dict):
            add(batch_error("invalid_json_line", "This line is not a JSON object.", None, number))
            continue
        summary.total += 1
        custom_id = item.get("custom_id")
        if custom_id is None:
            add(batch_error("missing_required_parameter", "Missing required parameter: 'custom_id'.",
                            "custom_id", number))
        elif not isinstance(custom_id, str):
            add(batch_error("invalid_type", "Invalid type for 'custom_id': expected a string.", "custom_id", number))
        elif custom_id in seen:
            add(batch_error(
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' for this request is a duplicate of another request. The custom_id "
                "parameter must be unique for each request in a batch.",
                "custom_id", number))
        else:
            seen.add(custom_id)
        method = item.get("method")
        if method != "POST":
            add(batch_error("invalid_method", f"Invalid method {method!r}: batch requests must use 'POST'.",
                            "method", number))
        url = item.get("url")
        if not isinstance(url, str) or canonical_url(url) != endpoint:
            add(batch_error("url_mismatch",
                            f"The provided URL {url!r} does not match the batch endpoint '{endpoint}'. All requests "
                            "in a batch must use the batch's endpoint.", "url", number))
        body = item.get("body")
        if not isinstance(body, dict):
            add(batch_error("missing_required_parameter", "Missing required parameter: 'body' (a JSON object).",
                            "body", number))
            continue
        model = body.get("model", DEFAULT_MODERATION_MODEL if endpoint == "/v1/moderations" else None)
        if not isinstance(model, str) or not model:
            add(batch_error("missing_required_parameter", "Missing required parameter: 'body.model'.",
                            "body.model", number))
            continue
        if summary.model is None:
            summary.model = model
            if not known_model(model):
                add(batch_error("model_not_found", f"The model '{model}' does not exist or you do not have "
                                "access to it.", "body.model", number))
        elif model != summary.model:
            add(batch_error("model_mismatch",
                            f"The provided model '{model}' does not match the model '{summary.model}' of the other "
                            "requests. All requests in a batch must use the same model.", "body.model", number))
        if endpoint.endswith("/embeddings"):
            raw_input = body.get("input")
            summary.embedding_inputs += len(raw_input) if isinstance(raw_input, list) and raw_input and \
                not isinstance(raw_input[0], int) else 1
        summary.prompt_tokens.append(count_prompt(endpoint, body) if not count_errors else 0)
    if summary.total > max_requests:
        add(batch_error("too_many_tasks", f"The batch input file has {summary.total} requests; the limit is "
                        f"{max_requests} requests per batch. Split it into smaller batches."))
    if summary.embedding_inputs > max_embedding_inputs:
        add(batch_error("too_many_tasks", f"The batch has {summary.embedding_inputs} embedding inputs; the limit is "
                        f"{max_embedding_inputs} inputs per batch."))
    if summary.total == 0 and not errors:
        add(batch_error("empty_file", "The batch input file is empty: it has no requests."))
    return summary
