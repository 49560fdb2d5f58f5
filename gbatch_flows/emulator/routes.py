"""HTTP routes: /v1 (OpenAI-shaped) and /_emulator (stats and faults for tests). Thin: services do the work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from . import jsonutil
from .azure import AZURE_DEPLOYMENT
from .config import FaultConfig
from .errors import ApiError, invalid_value
from .executor import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES
from .files import parse_limit
from .moderations import DEFAULT_MODEL as MODERATION_MODEL
from .runtime import Emulator

v1 = APIRouter(prefix="/v1")
admin = APIRouter(prefix="/_emulator")

MODEL_CREATED = 1_700_000_000


def _emulator(request: Request) -> Emulator:
    return request.app.state.emulator


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return jsonutil.loads(raw)
    except ValueError:
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                       "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent "
                       "was not valid JSON.)", code="invalid_json") from None


# --- model endpoints -------------------------------------------------------------------------------------------------


def _body_model(body: Any, endpoint: str) -> str | None:
    model = body.get("model") if isinstance(body, dict) else None
    if model is None and endpoint == MODERATIONS:
        return MODERATION_MODEL
    return model if isinstance(model, str) else None


async def _model_call(request: Request, endpoint: str) -> JSONResponse:
    """One direct model request. With rpm/tpm set, every answer (also a 4xx) carries the x-ratelimit-* headers."""
    emulator = _emulator(request)
    executor, limiter = emulator.executor, emulator.limiter
    model: str | None = None
    try:
        body = await _json_body(request)
        deployment = request.scope.get("state", {}).get(AZURE_DEPLOYMENT)
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
        result = await run_in_threadpool(executor.respond, endpoint, body, params, prompt)
    except ApiError as exc:
        exc.headers = {**headers, **exc.headers}
        raise
    return FastJSONResponse(result, headers=headers)


class FastJSONResponse(JSONResponse):
    """A JSON answer rendered by orjson (the same compact UTF-8 JSON as JSONResponse, in a fraction of the time)."""

    def render(self, content: Any) -> bytes:
        return jsonutil.dumps(content)


@v1.post("/chat/completions")
async def chat_completions(request: Request) -> JSONResponse:
    return await _model_call(request, CHAT)


@v1.post("/responses")
async def responses(request: Request) -> JSONResponse:
    return await _model_call(request, RESPONSES)


@v1.post("/embeddings")
async def embeddings(request: Request) -> JSONResponse:
    return await _model_call(request, EMBEDDINGS)


@v1.post("/completions")
async def completions(request: Request) -> JSONResponse:
    return await _model_call(request, COMPLETIONS)


@v1.post("/moderations")
async def moderations(request: Request) -> JSONResponse:
    return await _model_call(request, MODERATIONS)


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "gbatch-emulator"}


@v1.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(m) for m in _emulator(request).executor.known_models]}


@v1.get("/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> dict[str, Any]:
    if model not in _emulator(request).executor.known_models:
        raise ApiError(404, f"The model '{model}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return _model_object(model)


# --- files -----------------------------------------------------------------------------------------------------------


@v1.post("/files")
async def create_file(request: Request) -> dict[str, Any]:
    emulator = _emulator(request)
    async with request.form(max_files=1, max_fields=20) as form:
        upload = form.get("file")
        if upload is not None and not isinstance(upload, UploadFile):
            raise ApiError(400, "'file' must be a file upload (multipart/form-data), not a text field.",
                           param="file", code="invalid_type")
        expires = {key: form.get(f"expires_after[{key}]") for key in ("anchor", "seconds")}
        return await run_in_threadpool(
            emulator.files.create,
            upload.file if upload is not None else None,
            upload.filename if upload is not None else None,
            form.get("purpose"),
            expires if any(v is not None for v in expires.values()) else None,
        )


@v1.get("/files")
async def list_files(request: Request) -> dict[str, Any]:
    query = request.query_params
    return _emulator(request).files.list(query.get("purpose"), parse_limit(query.get("limit"), 10_000),
                                         query.get("order", "desc"), query.get("after"))


@v1.get("/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
    return _emulator(request).files.retrieve(file_id)


@v1.delete("/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    return await run_in_threadpool(_emulator(request).files.delete, file_id)


@v1.get("/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    content = await run_in_threadpool(_emulator(request).files.content, file_id)
    if isinstance(content, Path):
        return FileResponse(content, media_type="application/octet-stream")
    return Response(content, media_type="application/octet-stream")


# --- batches ---------------------------------------------------------------------------------------------------------


@v1.post("/batches")
async def create_batch(request: Request) -> dict[str, Any]:
    emulator = _emulator(request)
    body = await _json_body(request)
    call_number = request.scope.get("state", {}).get("call_number", 0)
    return await run_in_threadpool(emulator.batches.create, body, call_number)


@v1.get("/batches")
async def list_batches(request: Request) -> dict[str, Any]:
    limit = parse_limit(request.query_params.get("limit"), 20)
    if not 1 <= limit <= 100:
        raise invalid_value("limit", f"must be between 1 and 100, got {limit}.")
    return _emulator(request).batches.list(request.query_params.get("after"), limit)


@v1.get("/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> dict[str, Any]:
    return await run_in_threadpool(_emulator(request).batches.retrieve, batch_id)


@v1.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    return await run_in_threadpool(_emulator(request).batches.cancel, batch_id)


# --- emulator control ------------------------------------------------------------------------------------------------


@admin.get("/health")
async def health() -> dict[str, Any]:
    return {"ok": True}


@admin.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    return _emulator(request).stats_snapshot()


@admin.post("/stats/reset")
async def reset_stats(request: Request) -> dict[str, Any]:
    _emulator(request).stats.reset()
    return {"ok": True}


@admin.get("/faults")
async def get_faults(request: Request) -> dict[str, Any]:
    return _emulator(request).faults.config.model_dump(mode="json")


@admin.post("/faults")
async def set_faults(request: Request) -> dict[str, Any]:
    body = await _json_body(request)
    try:
        config = FaultConfig.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, f"Invalid fault config: {exc}", param="faults", code="invalid_faults") from None
    _emulator(request).set_faults(config)
    return config.model_dump(mode="json")


@admin.get("/config")
async def get_config(request: Request) -> dict[str, Any]:
    config = _emulator(request).config
    data = config.model_dump(mode="json", exclude={"responders"})
    data["responders"] = sorted(config.responders)
    return data
