"""Errors with the real API's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(Exception):
    """An error answered to the client with an HTTP status and the real error shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def missing_param(name: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def invalid_type(name: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{name}': expected {expected}, but got {type(value).__name__} instead.",
        param=name,
        code="invalid_type",
    )


def invalid_value(name: str, message: str) -> ApiError:
    return ApiError(400, f"Invalid value for '{name}': {message}", param=name, code="invalid_value")


def not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind} object: {object_id}", param=param)


def server_error(message: str = "The server had an error while processing your request. Sorry about that!"
                 ) -> ApiError:
    return ApiError(500, message, type="server_error")


def require_object(body: Any, what: str = "request body") -> dict[str, Any]:
    """Return `body` if it is a JSON object, else a 400 that says so."""
    if not isinstance(body, dict):
        raise ApiError(400, f"The {what} must be a JSON object, got {type(body).__name__}.",
                       code="invalid_request_body")
    return body


def require_model(body: dict[str, Any]) -> str:
    """The body's ``model``: missing -> 400 missing parameter, not a non-empty string -> 400 invalid type."""
    model = body.get("model")
    if model is None:
        raise missing_param("model")
    if not isinstance(model, str) or not model:
        raise invalid_type("model", "a non-empty string", model)
    return model
