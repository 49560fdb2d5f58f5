"""The FastAPI app: routes, error handlers (every error in the real shape), middleware, start/stop hooks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .azure import AzureMiddleware
from .config import EmulatorConfig
from .errors import ApiError, error_body
from .middleware import EmulatorMiddleware
from .routes import admin, v1
from .runtime import Emulator

log = logging.getLogger(__name__)


def create_app(config: EmulatorConfig | Emulator | None = None) -> FastAPI:
    """An ASGI app serving the emulator; unfinished batches resume when it starts."""
    emulator = config if isinstance(config, Emulator) else Emulator(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        emulator.start()
        try:
            yield
        finally:
            emulator.shutdown()

    app = FastAPI(title="gbatch_flows OpenAI emulator", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.emulator = emulator
    app.include_router(v1)
    app.include_router(admin)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"Invalid request: {exc.errors()}"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("emulator error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"The emulator failed: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

    app.add_middleware(EmulatorMiddleware, emulator=emulator)
    app.add_middleware(AzureMiddleware, emulator=emulator)  # outermost: maps /openai/... onto /v1/...
    return app
