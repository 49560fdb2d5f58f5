"""ASGI middleware in front of /v1: stats, the no-batch-API mode, the API key, and HTTP faults (before the
operation, or after it: the answer lost or late)."""

from __future__ import annotations

import asyncio
import hmac
import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from .config import OPERATIONS
from .errors import error_body
from .faults import CallFault
from .model_calls import MODEL_OPERATIONS, serve_model_call
from .runtime import Emulator
from .transport import drop_connection

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile("^" + re.sub(r"\{model\}", ".+", re.sub(r"\{(?!model)\w+\}", "[^/]+", template)) + "$"), op)
    for op, (method, template) in OPERATIONS.items()
]
_BATCH_API = re.compile(r"^/v1/(files|batches)(/|$)")

_FAULT_ERRORS: dict[str, tuple[int, str, str]] = {
    "http_500": (500, "server_error",
                 "The server had an error while processing your request. Sorry about that! (injected fault)"),
    "http_503": (503, "server_error", "The engine is currently overloaded, please try again later. (injected fault)"),
    "http_429": (429, "requests", "Rate limit reached for requests. Please try again in 1s. (injected fault)"),
    "upload_error": (500, "server_error", "There was an error uploading the file. Please retry. (injected fault)"),
}


_OP_CACHE: dict[tuple[str, str], str | None] = {}
_OP_CACHE_SIZE = 4096


def resolve_op(method: str, path: str) -> str | None:
    """The op name of a request, or None for unknown routes (remembered for the last few thousand paths)."""
    key = (method, path)
    try:
        return _OP_CACHE[key]
    except KeyError:
        pass
    op = next((op for route_method, pattern, op in _ROUTES if method == route_method and pattern.match(path)), None)
    if len(_OP_CACHE) >= _OP_CACHE_SIZE:
        _OP_CACHE.clear()
    _OP_CACHE[key] = op
    return op


def _mask(key: str) -> str:
    return key[:3] + "*" * max(0, min(len(key) - 7, 20)) + key[-4:] if len(key) > 8 else "*" * len(key)


def _auth_error(scope: dict[str, Any], api_key: str) -> JSONResponse | None:
    header = ""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        message = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                   "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    elif not hmac.compare_digest(token.encode(), api_key.encode()):
        message = (f"Incorrect API key provided: {_mask(token)}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
    else:
        return None
    return JSONResponse(error_body(message, "invalid_request_error", None, "invalid_api_key"), status_code=401)


def with_request_id(headers: Any) -> list[tuple[bytes, bytes]]:
    """The response headers plus an `x-request-id` (like the real API's "req_" + 32 hex digits) if none is set."""
    headers = list(headers)
    if not any(name.lower() == b"x-request-id" for name, _ in headers):
        headers.append((b"x-request-id", f"req_{uuid.uuid4().hex}".encode()))
    return headers


class EmulatorMiddleware:
    """Wraps the FastAPI app; only paths under /v1 are affected."""

    def __init__(self, app: Any, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        emulator = self.emulator
        stats = emulator.stats
        path = scope["path"].rstrip("/") or "/"
        op = resolve_op(scope["method"], path)
        stats.request(op or "unknown")

        async def counting_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                stats.response(message["status"])
                message["headers"] = with_request_id(message.get("headers") or [])
            await send(message)

        config = emulator.config
        if not config.batch_api and _BATCH_API.match(path):
            response = JSONResponse(error_body(
                f"Invalid URL ({scope['method']} {path}): this server has no Files/Batch API "
                "(the emulator runs with batch_api=False).", "invalid_request_error"), status_code=404)
            await response(scope, receive, counting_send)
            return
        if config.api_key is not None:
            denied = _auth_error(scope, config.api_key)
            if denied is not None:
                await denied(scope, receive, counting_send)
                return
        if op is not None:
            number, call_fault = emulator.faults.call_fault(op)
            scope.setdefault("state", {})["call_number"] = number
            if call_fault is not None and call_fault.after_operation:
                stats.fault(call_fault.kind)
                await self._spoil_answer(op, call_fault, scope, receive, send, counting_send)
                return
            if call_fault is not None:
                fault = call_fault.kind
                stats.fault(fault)
                if fault == "drop_connection":
                    await drop_connection(scope, send)
                    return
                status, kind, message = _FAULT_ERRORS[fault]
                headers = {"retry-after": "1", "x-ratelimit-remaining-requests": "0"} if status == 429 else {}
                code = "rate_limit_exceeded" if status == 429 else None
                response = JSONResponse(error_body(message, kind, None, code), status_code=status, headers=headers)
                await response(scope, receive, counting_send)
                return
        await self._operation(op, scope, receive, counting_send)

    async def _operation(self, op: str | None, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Model calls go straight to their handler (direct mode's hot path); everything else to the app."""
        endpoint = MODEL_OPERATIONS.get(op) if op is not None else None
        if endpoint is not None:
            await serve_model_call(self.emulator, endpoint, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _spoil_answer(self, op: str, fault: CallFault, scope: dict[str, Any], receive: Any, send: Any,
                            counting_send: Any) -> None:
        """Run the operation (it takes effect), then drop the connection instead of answering (`answer_lost`)
        or answer `delay_s` seconds late (`slow_answer`)."""
        held: list[MutableMapping[str, Any]] = []

        async def hold(message: MutableMapping[str, Any]) -> None:
            held.append(message)

        await self._operation(op, scope, receive, hold)
        if fault.kind == "answer_lost":
            await drop_connection(scope, send)
            return
        await asyncio.sleep(fault.delay_s)
        for message in held:
            try:
                await counting_send(message)
            except OSError:  # the client gave up waiting and closed the connection
                return
