"""A tiny OpenAI / Azure OpenAI stand-in for the endpoint tests: files, batches and the five model endpoints.

The bundled emulator serves chat completions and embeddings only until its /v1/responses, /v1/completions,
/v1/moderations and Azure support lands (another branch); this server lets the engine's side be tested now. It is
deliberately small and strict where the engine could go wrong:

- bodies follow the official shapes (``usage`` of Responses in ``input_tokens`` / ``output_tokens`` /
  ``input_tokens_details.cached_tokens``, moderations without usage, ...);
- its token counts differ from the engine's estimates (the tests can tell settlement from reservation) and a
  quarter of the prompt tokens are reported as cached;
- every batch line's ``url`` must equal the batch's endpoint, and in Azure mode the Azure spelling
  (``/chat/completions``) with ``model`` = a deployment name, ``api-version`` on every call and an ``api-key`` header.

``server.calls`` records (method, path, query) of every request; ``server.batch_lines`` the parsed input lines.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Answer = Callable[[str, dict[str, Any]], str]  # (canonical endpoint, request body) -> answer text

MODEL_PATHS = ("chat/completions", "responses", "embeddings", "completions", "moderations")


def default_answer(endpoint: str, body: dict[str, Any]) -> str:
    return "ok " + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class EndpointServer:
    azure: bool = False
    answer: Answer = default_answer
    drop_usage_every: int = 0  # every k-th model answer comes without usage (0 = never)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    batch_lines: list[dict[str, Any]] = field(default_factory=list)
    batches_created: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _answers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what a client points at ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}{next(self._ids):06d}"

    # --- model answers ---------------------------------------------------------------------------------------
    def usage_counts(self, body: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, cached tokens): deterministic, unlike the engine's estimate."""
        prompt = 11 + len(json.dumps(body, sort_keys=True)) % 37
        return prompt, prompt // 4

    def respond(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not isinstance(body.get("model"), str) or not body["model"]:
            return 400, {"error": {"message": "you must provide a model parameter", "code": "missing_model"}}
        with self._lock:
            number = next(self._answers)
        drop = self.drop_usage_every and number % self.drop_usage_every == 0
        prompt, cached = self.usage_counts(body)
        model = body["model"]
        if endpoint == "/v1/chat/completions":
            n = body.get("n", 1)
            limit = body.get("max_completion_tokens") or body.get("max_tokens") or 50
            out = min(limit, 7)
            answer: dict[str, Any] = {
                "id": self._id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": i, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": self.answer(endpoint, body), "refusal": None}}
                            for i in range(n)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": out * n, "total_tokens": prompt + out * n,
                          "prompt_tokens_details": {"cached_tokens": cached}},
            }
        elif endpoint == "/v1/responses":
            if "input" not in body:
                return 400, {"error": {"message": "Missing required parameter: 'input'.", "code": "missing_required_parameter"}}
            out = min(body.get("max_output_tokens") or 50, 9)
            answer = {
                "id": self._id("resp_"), "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": model, "error": None, "incomplete_details": None,
                "output": [
                    {"type": "reasoning", "id": self._id("rs_"), "summary": []},
                    {"type": "message", "id": self._id("msg_"), "status": "completed", "role": "assistant",
                     "content": [{"type": "output_text", "text": self.answer(endpoint, body), "annotations": []}]},
                ],
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                          "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 2},
                          "total_tokens": prompt + out},
            }
        elif endpoint == "/v1/completions":
            prompts = body.get("prompt")
            count = len(prompts) if isinstance(prompts, list) and prompts and isinstance(prompts[0], str) else 1
            choices = count * body.get("n", 1)
            out = min(body.get("max_tokens") or 16, 5)
            answer = {
                "id": self._id("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": i, "text": self.answer(endpoint, body), "finish_reason": "stop",
                             "logprobs": None} for i in range(choices)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": out * choices,
                          "total_tokens": prompt + out * choices},
            }
        elif endpoint == "/v1/embeddings":
            inputs = body.get("input")
            items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
            answer = {
                "object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [round(0.01 * (i + 1) * k, 4)
                                                                          for k in range(1, 5)]}
                         for i in range(len(items))],
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        elif endpoint == "/v1/moderations":
            inputs = body.get("input")
            items = inputs if isinstance(inputs, list) else [inputs]
            flagged = [("hurt" in json.dumps(item)) for item in items]
            answer = {
                "id": self._id("modr-"), "model": model,
                "results": [{"flagged": f, "categories": {"violence": f}, "category_scores": {"violence": 0.9 if f else 0.01},
                             "category_applied_input_types": {"violence": ["text"]}} for f in flagged],
            }
            return 200, answer
        else:
            return 404, {"error": {"message": f"Invalid URL (POST {endpoint})", "code": None}}
        if drop:
            answer.pop("usage")
        return 200, answer

    # --- HTTP -----------------------------------------------------------------------------------------------------
    def _check_auth(self, request: Request) -> JSONResponse | None:
        self.calls.append((request.method, request.url.path, dict(request.query_params)))
        if self.azure:
            if not request.query_params.get("api-version"):
                return _error(404, "Resource not found (no api-version)")
            if not request.headers.get("api-key"):
                return _error(401, "Access denied due to missing subscription key")
        elif not request.headers.get("authorization", "").startswith("Bearer "):
            return _error(401, "You didn't provide an API key.")
        return None

    def _endpoint_of(self, request: Request) -> str | None:
        """The canonical model endpoint a request path names, or None (Azure: deployments path, model check)."""
        path = request.url.path
        if self.azure:
            for name in MODEL_PATHS:
                if path == f"/openai/{name}" and name == "responses":
                    return "/v1/responses"
                if path.startswith("/openai/deployments/") and path.endswith(f"/{name}"):
                    return f"/v1/{name}"
            return None
        for name in MODEL_PATHS:
            if path == f"/v1/{name}":
                return f"/v1/{name}"
        return None

    async def model_call(self, request: Request) -> Response:
        refused = self._check_auth(request)
        if refused:
            return refused
        endpoint = self._endpoint_of(request)
        if endpoint is None:
            return _error(404, f"Invalid URL (POST {request.url.path})")
        body = json.loads(await request.body())
        if self.azure and request.url.path.startswith("/openai/deployments/"):
            deployment = request.url.path.split("/")[3]
            if body.get("model") != deployment:
                return _error(400, f"model {body.get('model')!r} is not the deployment {deployment!r}")
        status, answer = self.respond(endpoint, body)
        return JSONResponse(answer, status_code=status, headers={"x-request-id": self._id("req_")})

    async def create_file(self, request: Request) -> Response:
        refused = self._check_auth(request)
        if refused:
            return refused
        async with request.form() as form:
            upload = form["file"]
            data = await upload.read()  # type: ignore[union-attr]
            purpose = form.get("purpose")
        file_id = self._id("file-")
        self.files[file_id] = data
        return JSONResponse({"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                             "filename": getattr(upload, "filename", "upload"), "purpose": purpose,
                             "status": "processed"})

    async def file_content(self, request: Request) -> Response:
        refused = self._check_auth(request)
        if refused:
            return refused
        data = self.files.get(request.path_params["file_id"])
        return _error(404, "No such file") if data is None else Response(data)

    async def delete_file(self, request: Request) -> Response:
        refused = self._check_auth(request)
        if refused:
            return refused
        file_id = request.path_params["file_id"]
        self.files.pop(file_id, None)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def create_batch(self, request: Request) -> Response:
        refused = self._check_auth(request)
        if refused:
            return refused
        body = json.loads(await request.body())
        self.batches_created.append(body)
        endpoint = body["endpoint"]
        wanted_form = (not endpoint.startswith("/v1/")) if self.azure else endpoint.startswith("/v1/")
        if not wanted_form:
            return _error(400, f"endpoint {endpoint!r} is not a {'Azure' if self.azure else 'OpenAI'} batch endpoint")
        canonical = endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint
        output: list[bytes] = []
        for raw in self.files[body["input_file_id"]].splitlines():
            line = json.loads(raw)
            self.batch_lines.append(line)
            if line["url"] != endpoint:
                status, answer = 400, {"error": {"message": f"url {line['url']!r} is not {endpoint!r}",
                                                 "code": "invalid_url"}}
            else:
                status, answer = self.respond(canonical, line["body"])
            output.append(json.dumps({"id": self._id("batch_req_"), "custom_id": line["custom_id"],
                                      "response": {"status_code": status, "request_id": self._id("req_"),
                                                   "body": answer}, "error": None}).encode())
        out_id = self._id("file-")
        self.files[out_id] = b"\n".join(output) + b"\n"
        now = int(time.time())
        batch = {"id": self._id("batch_"), "object": "batch", "endpoint": endpoint, "errors": None,
                 "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "completed",
                 "output_file_id": out_id, "error_file_id": None, "created_at": now, "completed_at": now,
                 "request_counts": {"total": len(output), "completed": len(output), "failed": 0},
                 "metadata": body.get("metadata")}
        self.batches[batch["id"]] = batch
        return JSONResponse(batch)

    async def retrieve_batch(self, request: Request) -> Response:
        refused = self._check_auth(request)
        if refused:
            return refused
        batch = self.batches.get(request.path_params["batch_id"])
        return _error(404, "No such batch") if batch is None else JSONResponse(batch)

    async def list_batches(self, request: Request) -> Response:
        refused = self._check_auth(request)
        if refused:
            return refused
        data = list(reversed(self.batches.values()))
        return JSONResponse({"object": "list", "data": data, "has_more": False,
                             "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    def app(self) -> Starlette:
        prefix = "/openai" if self.azure else "/v1"
        routes = [
            Route(prefix + "/files", self.create_file, methods=["POST"]),
            Route(prefix + "/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route(prefix + "/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route(prefix + "/batches", self.create_batch, methods=["POST"]),
            Route(prefix + "/batches", self.list_batches, methods=["GET"]),
            Route(prefix + "/batches/{batch_id}", self.retrieve_batch, methods=["GET"]),
            Route(prefix + "/{path:path}", self.model_call, methods=["POST"]),
        ]
        return Starlette(routes=routes)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": None}},
                        status_code=status)


@contextmanager
def serve_endpoints(server: EndpointServer) -> Iterator[EndpointServer]:
    """Run ``server`` on a free local port in a thread until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(server.app(), log_level="warning", access_log=False, lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True, name=f"endpoints-{port}")
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the endpoint test server did not start")
        time.sleep(0.005)
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()
