"""The model endpoints (chat/completions, responses, embeddings, completions, moderations) as a plain ASGI handler.

These are the calls direct mode makes hundreds of times a second. Served through FastAPI, routing, request objects,
dependency solving and the thread-pool hop took about half of the emulator's CPU per call; here the middleware hands
them to `serve_model_call`, which reads the body, runs the executor inline (the built-in responders take well
under a millisecond; user responders, which may block, run in a thread) and sends orjson bytes. Answers, errors
and `x-ratelimit-*` headers are the same as every other route's (errors in the real API's shape).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from . import jsonutil
from .errors import ApiError, error_body
from .executor import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES
from .moderations import DEFAULT_MODEL as MODERATION_MODEL

if TYPE_CHECKING:
    from .runtime import Emulator

log = logging.getLogger(__name__)

#: Key in the ASGI scope's "state" holding the Azure deployment named in the path (set by the Azure middleware).
AZURE_DEPLOYMENT = "azure_deployment"

#: operation name (config.OPERATIONS) -> executor endpoint
MODEL_OPERATIONS: dict[str, str] = {
    "chat.completions": CHAT,
    "responses": RESPONSES,
    "embeddings": EMBEDDINGS,
    "completions": COMPLETIONS,
    "moderations": MODERATIONS,
}

_INVALID_JSON = ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                 "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
                 "JSON.)")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Any) -> bytes:
    """The whole request body from ASGI `receive`."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json_body(raw: bytes) -> Any:
    """The parsed body, or the real API's 400 for a body that is not JSON."""
    try:
        return jsonutil.loads(raw)
    except ValueError:
        raise ApiError(400, _INVALID_JSON, code="invalid_json") from None


async def send_json(send: Any, status: int, content: Any, headers: Mapping[str, str]) -> None:
    """One JSON answer: compact UTF-8 (orjson) with content-type and content-length."""
    body = jsonutil.dumps(content)
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _body_model(body: Any, endpoint: str) -> str | None:
    model = body.get("model") if isinstance(body, dict) else None
    if model is None and endpoint == MODERATIONS:
        return MODERATION_MODEL
    return model if isinstance(model, str) else None


def answer_model_call(emulator: Emulator, endpoint: str, raw: bytes, deployment: str | None
                      ) -> tuple[dict[str, Any], dict[str, str]]:
    """(answer, headers) of one model request; raises ApiError. With rpm/tpm set, every answer (also a 4xx)
    carries the x-ratelimit-* headers."""
    executor, limiter = emulator.executor, emulator.limiter
    model: str | None = None
    try:
        body = parse_json_body(raw)
        if deployment is not None and isinstance(body, dict):
            body = {**body, "model": deployment}  # Azure: the deployment in the path is the model
        model = _body_model(body, endpoint)
        params = executor.check(endpoint, body)
        prompt, needed = executor.requested_tokens(endpoint, body, params)
    except ApiError as exc:
        exc.headers = {**limiter.peek(model), **exc.headers}
        raise
    try:
        headers = limiter.acquire(params.model, needed)
    except ApiError:
        emulator.stats.rate_limited()
        raise
    try:
        return executor.respond(endpoint, body, params, prompt), headers
    except ApiError as exc:
        exc.headers = {**headers, **exc.headers}
        raise


async def serve_model_call(emulator: Emulator, endpoint: str, scope: dict[str, Any], receive: Any,
                           send: Any) -> None:
    """Answer one model request (ASGI)."""
    try:
        raw = await read_body(receive)
    except ClientGone:
        return
    deployment = (scope.get("state") or {}).get(AZURE_DEPLOYMENT)
    try:
        if emulator.config.responders:  # user code may block: off the event loop, in anyio's pool of 40 threads
            answer, headers = await run_in_threadpool(answer_model_call, emulator, endpoint, raw, deployment)
        else:
            answer, headers = answer_model_call(emulator, endpoint, raw, deployment)
    except ApiError as exc:
        await send_json(send, exc.status, exc.body(), exc.headers)
        return
    except Exception as exc:  # a bug: the same 500 as the app's handler, never a dropped connection
        log.exception("emulator error on %s %s", scope.get("method"), scope.get("path"))
        await send_json(send, 500, error_body(f"The emulator failed: {type(exc).__name__}: {exc}", "server_error"),
                        {})
        return
    await send_json(send, 200, answer, headers)
