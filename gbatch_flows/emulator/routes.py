"""HTTP routes: /v1 (OpenAI-shaped) and /_emulator (stats and faults for tests). Thin: services do the work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .config import FaultConfig
from .errors import ApiError, invalid_value
from .files import parse_limit
from .model_calls import parse_json_body
from .runtime import Emulator

v1 = APIRouter(prefix="/v1")
admin = APIRouter(prefix="/_emulator")

MODEL_CREATED = 1_700_000_000


def _emulator(request: Request) -> Emulator:
    return request.app.state.emulator


async def _json_body(request: Request) -> Any:
    return parse_json_body(await request.body())


# --- model endpoints: served by model_calls.serve_model_call (the middleware hands them over) -----------------------


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
