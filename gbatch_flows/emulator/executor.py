"""Executes one model request (chat completion or embeddings), for the direct endpoints and for batch lines."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from . import usage
from .chat import ChatParams, build_chat_completion, check_chat_request
from .config import EmulatorConfig
from .embeddings import build_embedding_response, check_embedding_request
from .errors import ApiError, server_error
from .ids import random_id
from .responders import ResponderContext, ResponderRegistry, SchemaError, choice_seed, request_seed
from .stats import Stats

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT, EMBEDDINGS)


class RequestExecutor:
    """Turns request bodies into response bodies; raises ApiError for bad requests."""

    def __init__(self, config: EmulatorConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.responders = ResponderRegistry(config.responders)
        self.prompt_cache = usage.PromptCache(config.prompt_cache)
        self.known_models = list(dict.fromkeys([*config.models, *self.responders.models]))
        self._known = set(self.known_models)

    def check_model(self, model: str) -> None:
        if self.config.strict_models and model not in self._known:
            raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           code="model_not_found", param="model")

    def check(self, endpoint: str, body: Any) -> ChatParams | Any:
        """Validate a body for `endpoint`; returns the parsed parameters."""
        if endpoint == CHAT:
            params: Any = check_chat_request(body)
        elif endpoint == EMBEDDINGS:
            params = check_embedding_request(body, self.config.embedding_dimensions)
        else:
            raise ApiError(404, f"Invalid URL (POST {endpoint})")
        self.check_model(params.model)
        return params

    def requested_tokens(self, endpoint: str, body: dict[str, Any], params: Any) -> tuple[int, int]:
        """(prompt tokens, tokens counted against TPM: prompt + max output tokens × n)."""
        prompt = usage.prompt_tokens(endpoint, body)
        if isinstance(params, ChatParams):
            return prompt, prompt + (params.max_tokens or 0) * params.n
        return prompt, prompt

    def chat(self, body: dict[str, Any], params: ChatParams, prompt_tokens: int, *,
             completion_id: str | None = None, created: int | None = None) -> dict[str, Any]:
        base = request_seed(body)
        contents = []
        for index in range(params.n):
            ctx = ResponderContext(model=params.model, endpoint=CHAT, choice_index=index,
                                   seed=choice_seed(base, index))
            try:
                contents.append(self.responders.respond(body, ctx))
            except SchemaError as exc:
                raise ApiError(400, f"Invalid schema for response_format: {exc}",
                               param="response_format", code="invalid_json_schema") from exc
            except ApiError:
                raise
            except Exception as exc:  # a user responder failed: a clear 500, not a traceback
                log.exception("responder for %s failed", params.model)
                raise server_error(f"The emulator's responder for model {params.model!r} raised "
                                   f"{type(exc).__name__}: {exc}") from exc
        response = build_chat_completion(
            completion_id=completion_id or random_id("chatcmpl-", 29),
            created=created if created is not None else int(time.time()),
            params=params,
            contents=contents,
            prompt_tokens=prompt_tokens,
            cached_tokens=self.prompt_cache.cached_tokens(body, prompt_tokens),
            count=partial(usage.text_tokens, model=params.model),
        )
        return response

    def embeddings(self, params: Any, prompt_tokens: int) -> dict[str, Any]:
        return build_embedding_response(params, prompt_tokens)

    def respond(self, endpoint: str, body: dict[str, Any], params: Any, prompt_tokens: int,
                **ids: Any) -> dict[str, Any]:
        if endpoint == CHAT:
            result = self.chat(body, params, prompt_tokens, **ids)
            self.stats.tokens(prompt_tokens, result["usage"]["completion_tokens"])
        else:
            result = self.embeddings(params, prompt_tokens)
            self.stats.tokens(prompt_tokens, 0)
        return result

    def execute(self, endpoint: str, body: Any, *, prompt_tokens: int | None = None,
                completion_id: str | None = None, created: int | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, response body) for one batch line; errors become their error bodies."""
        try:
            params = self.check(endpoint, body)
            if prompt_tokens is None:
                prompt_tokens = usage.prompt_tokens(endpoint, body)
            ids = {"completion_id": completion_id, "created": created} if endpoint == CHAT else {}
            return 200, self.respond(endpoint, body, params, prompt_tokens, **ids)
        except ApiError as exc:
            return exc.status, exc.body()
