"""Dropping a connection without answering (the `drop_connection` fault).

ASGI gives an app no handle on the socket, so the server runs uvicorn with a tracking protocol (`tracking_protocol`:
uvicorn's httptools protocol when httptools is installed, whose C parser takes a fraction of h11's CPU per call,
else its h11 protocol), which records each connection's transport by (server address, client address); `drop_connection(scope)` looks it up and aborts
it. Under another server the fallback starts a response and breaks it off, which a client also sees as a broken
connection.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is uvicorn's own fallback
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

_transports: dict[tuple[Any, Any], asyncio.Transport] = {}
_lock = threading.Lock()


def _address(raw: Any) -> tuple[str, int] | None:
    if isinstance(raw, (tuple, list)) and len(raw) >= 2:
        return str(raw[0]), int(raw[1])
    return None


class _TransportTracking:
    """Mixin for a uvicorn protocol: remembers its transport so a fault can abort it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        socket = transport.get_extra_info("socket")
        self._tracking_key = None
        if socket is not None:
            try:
                key = (_address(socket.getsockname()), _address(socket.getpeername()))
            except OSError:
                return
            self._tracking_key = key
            with _lock:
                _transports[key] = transport

    def connection_lost(self, exc: Exception | None) -> None:
        key = getattr(self, "_tracking_key", None)
        if key is not None:
            with _lock:
                _transports.pop(key, None)
        super().connection_lost(exc)  # type: ignore[misc]


class TrackingH11Protocol(_TransportTracking, H11Protocol):
    """uvicorn's h11 protocol (pure Python), tracked."""


if HttpToolsProtocol is not None:
    class TrackingHttpToolsProtocol(_TransportTracking, HttpToolsProtocol):  # type: ignore[misc,valid-type]
        """uvicorn's httptools protocol (C parser), tracked."""


def tracking_protocol() -> type:
    """The protocol class the server runs: httptools when installed, else h11."""
    return TrackingHttpToolsProtocol if HttpToolsProtocol is not None else TrackingH11Protocol


class _BrokenResponse(Exception):
    """Raised after a started response to make the server close the connection."""


async def drop_connection(scope: dict[str, Any], send: Any) -> None:
    """Close the client's connection without a (complete) response."""
    key = (_address(scope.get("server")), _address(scope.get("client")))
    with _lock:
        transport = _transports.get(key)
    if transport is not None:
        transport.abort()
        for _ in range(3):  # let the server notice the disconnect before the app returns
            await asyncio.sleep(0)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
    raise _BrokenResponse("connection dropped by fault injection")
