"""Azure OpenAI mode (`EmulatorConfig(azure=True)`): Azure's paths, `api-version` and `api-key`, mapped onto /v1.

The official client's `AzureOpenAI(azure_endpoint=URL, api_version=V, api_key=K)` sends

- model calls to ``/openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=V`` (the
  deployment is the body's `model`; the emulator answers with the deployment name as the model),
- everything else to ``/openai/{files|batches|responses|models...}?api-version=V``,
- the key in an ``api-key`` header (Entra ID tokens come as ``Authorization: Bearer``).

``/openai/v1/...`` (Azure's version-less v1 API) is served too, without `api-version`. A request without
`api-version` gets Azure's 404 "Resource not found"; an unknown deployment (when `azure_deployments` is set) gets
404 `DeploymentNotFound`; a wrong key gets Azure's 401. Batch endpoints and input lines may name the endpoint
without `/v1` (``"/chat/completions"``), as Azure's documentation does.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi.responses import JSONResponse

from .errors import error_body
from .middleware import with_request_id
from .model_calls import AZURE_DEPLOYMENT

if TYPE_CHECKING:
    from .runtime import Emulator

DEPLOYMENT_PATHS = frozenset({"/chat/completions", "/completions", "/embeddings", "/responses"})
_DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)(/.*)$")

_NOT_FOUND = "Resource not found"
_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for "
           "an active subscription and use a correct regional API endpoint for your resource.")
_NO_DEPLOYMENT = ("The API deployment for this resource does not exist. If you created the deployment within the last "
                  "5 minutes, please wait a moment and try again.")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _key_ok(scope: dict[str, Any], expected: str) -> bool:
    api_key = _header(scope, b"api-key")
    if api_key is None:
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        api_key = token.strip() if scheme.lower() == "bearer" else None
    return api_key is not None and hmac.compare_digest(api_key.encode(), expected.encode())


@dataclass(frozen=True)
class AzureRoute:
    """Where an Azure request goes: its /v1 path and the deployment named in the URL (if any)."""

    path: str
    deployment: str | None = None


@dataclass(frozen=True)
class AzureRefusal:
    """An answer instead of a route (Azure's own error shape and code)."""

    status: int
    code: str
    message: str


def azure_target(path: str, query: bytes) -> AzureRoute | AzureRefusal:
    """The /v1 route for an Azure path, or the refusal to answer instead."""
    if path.startswith("/openai/v1/"):
        return AzureRoute("/v1/" + path[len("/openai/v1/"):])
    if "api-version" not in parse_qs(query.decode("latin-1")):
        return AzureRefusal(404, "404", f"{_NOT_FOUND} (Azure OpenAI paths need the api-version query parameter).")
    match = _DEPLOYMENT.match(path)
    if match is None:
        return AzureRoute("/v1" + path[len("/openai"):])
    deployment, rest = match.groups()
    if rest.rstrip("/") not in DEPLOYMENT_PATHS:
        return AzureRefusal(404, "404", _NOT_FOUND)
    return AzureRoute("/v1" + rest.rstrip("/"), deployment)


class AzureMiddleware:
    """Outermost ASGI layer: rewrites /openai/... requests to /v1/... when the emulator runs in Azure mode."""

    def __init__(self, app: Any, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        config = self.emulator.config
        if scope["type"] != "http" or not config.azure or not scope["path"].startswith("/openai/"):
            await self.app(scope, receive, send)
            return
        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_request_id(message.get("headers") or [])
            await send(message)

        target = azure_target(scope["path"], scope.get("query_string", b""))
        if isinstance(target, AzureRefusal):
            await JSONResponse(error_body(target.message, "invalid_request_error", None, target.code),
                               status_code=target.status)(scope, receive, send_with_id)
            return
        path, deployment = target.path, target.deployment
        if config.api_key is not None and not _key_ok(scope, config.api_key):
            await JSONResponse(error_body(_DENIED, "invalid_request_error", None, "401"),
                               status_code=401)(scope, receive, send_with_id)
            return
        if deployment is not None and config.azure_deployments and deployment not in config.azure_deployments:
            await JSONResponse(error_body(_NO_DEPLOYMENT, "invalid_request_error", None, "DeploymentNotFound"),
                               status_code=404)(scope, receive, send_with_id)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k not in (b"authorization", b"api-key")]
        if config.api_key is not None:
            headers.append((b"authorization", f"Bearer {config.api_key}".encode()))
        state = dict(scope.get("state") or {})
        if deployment is not None:
            state[AZURE_DEPLOYMENT] = deployment
        inner = {**scope, "path": path, "raw_path": path.encode(), "headers": headers, "state": state}
        await self.app(inner, receive, send)
