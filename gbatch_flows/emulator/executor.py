"""Executes one model request (chat completions, responses, embeddings, completions, moderations), for the direct
endpoints and for batch lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from . import usage
from .chat import ChatParams, build_chat_completion, check_chat_request
from .completions import CompletionParams, build_completion, check_completion_request
from .completions import chat_view as completion_view
from .config import EmulatorConfig
from .embeddings import build_embedding_response, check_embedding_request
from .errors import ApiError, server_error
from .ids import derived_id, random_id
from .moderations import build_moderation, check_moderation_request
from .responders import LazySeed, ResponderContext, ResponderRegistry, SchemaError, request_seed
from .responses import ResponsesParams, build_response, check_responses_request
from .responses import chat_view as responses_view
from .stats import Stats

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
COMPLETIONS = "/v1/completions"
MODERATIONS = "/v1/moderations"
#: Every endpoint the emulator serves directly and in batches (the model endpoints the Batch API accepts).
ENDPOINTS = (CHAT, RESPONSES, EMBEDDINGS, COMPLETIONS, MODERATIONS)
#: Prefix of the object id in each endpoint's answer.
ID_PREFIXES = {CHAT: "chatcmpl-", RESPONSES: "resp_", EMBEDDINGS: "emb-", COMPLETIONS: "cmpl-", MODERATIONS: "modr-"}
ID_LENGTHS = {CHAT: 29, RESPONSES: 48, EMBEDDINGS: 24, COMPLETIONS: 29, MODERATIONS: 32}
_FORMAT_PARAM = {CHAT: "response_format", RESPONSES: "text.format"}


def _request_seed(body: Mapping[str, Any]) -> LazySeed:
    """The request's seed (`request_seed`), computed when a responder first reads it: responders get the body as a
    read-only Mapping, so it is the same as computing it now."""
    return LazySeed(lambda: request_seed(body))


def new_object_id(endpoint: str) -> str:
    return random_id(ID_PREFIXES.get(endpoint, ""), ID_LENGTHS.get(endpoint, 24))


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

    def check(self, endpoint: str, body: Any) -> Any:
        """Validate a body for `endpoint`; returns the parsed parameters."""
        if endpoint == CHAT:
            params: Any = check_chat_request(body)
        elif endpoint == RESPONSES:
            params = check_responses_request(body)
        elif endpoint == EMBEDDINGS:
            params = check_embedding_request(body, self.config.embedding_dimensions)
        elif endpoint == COMPLETIONS:
            params = check_completion_request(body)
        elif endpoint == MODERATIONS:
            params = check_moderation_request(body)
        else:
            raise ApiError(404, f"Invalid URL (POST {endpoint})")
        self.check_model(params.model)
        return params

    def requested_tokens(self, endpoint: str, body: dict[str, Any], params: Any) -> tuple[int, int]:
        """(prompt tokens, tokens counted against TPM: prompt + max output tokens x choices)."""
        prompt = usage.prompt_tokens(endpoint, body)
        if isinstance(params, ChatParams):
            return prompt, prompt + (params.max_tokens or 0) * params.n
        if isinstance(params, ResponsesParams):
            return prompt, prompt + (params.max_output_tokens or 0)
        if isinstance(params, CompletionParams):
            return prompt, prompt + params.max_tokens * params.n * len(params.prompts)
        return prompt, prompt

    def _content(self, view: Mapping[str, Any], model: str, endpoint: str, seed: LazySeed, index: int) -> str:
        """One responder answer; schema problems are a 400 naming the format parameter, responder bugs a 500.
        `seed` is the request's (or the prompt's) seed; the choice's is derived from it when a responder reads it."""
        ctx = ResponderContext(model=model, endpoint=endpoint, choice_index=index, seed=seed.choice(index))
        try:
            return self.responders.respond(view, ctx)
        except SchemaError as exc:
            param = _FORMAT_PARAM.get(endpoint, "response_format")
            raise ApiError(400, f"Invalid schema for {param}: {exc}", param=param,
                           code="invalid_json_schema") from exc
        except ApiError:
            raise
        except Exception as exc:  # a user responder failed: a clear 500, not a traceback
            log.exception("responder for %s failed", model)
            raise server_error(f"The emulator's responder for model {model!r} raised "
                               f"{type(exc).__name__}: {exc}") from exc

    def chat(self, body: dict[str, Any], params: ChatParams, prompt_tokens: int, *,
             completion_id: str | None = None, created: int | None = None) -> dict[str, Any]:
        base = _request_seed(body)
        contents = [self._content(body, params.model, CHAT, base, index) for index in range(params.n)]
        return build_chat_completion(
            completion_id=completion_id or new_object_id(CHAT),
            created=created if created is not None else int(time.time()),
            params=params,
            contents=contents,
            prompt_tokens=prompt_tokens,
            cached_tokens=self.prompt_cache.cached_tokens(body, prompt_tokens),
            count=partial(usage.text_tokens, model=params.model),
        )

    def responses(self, body: dict[str, Any], params: ResponsesParams, prompt_tokens: int, *,
                  completion_id: str | None = None, created: int | None = None) -> dict[str, Any]:
        view = responses_view(body, params)
        response_id = completion_id or new_object_id(RESPONSES)
        return build_response(
            response_id=response_id,
            message_id=derived_id("msg_", response_id, length=48),
            created=created if created is not None else int(time.time()),
            body=body,
            params=params,
            content=self._content(view, params.model, RESPONSES, _request_seed(body), 0),
            prompt_tokens=prompt_tokens,
            cached_tokens=self.prompt_cache.cached_tokens(view, prompt_tokens),
            count=partial(usage.text_tokens, model=params.model),
        )

    def completions(self, body: dict[str, Any], params: CompletionParams, prompt_tokens: int, *,
                    completion_id: str | None = None, created: int | None = None) -> dict[str, Any]:
        base = _request_seed(body)
        texts: list[str] = []
        for number, prompt in enumerate(params.prompts):
            view = completion_view(body, params, prompt)
            seed = base.choice(number * 1_000)
            texts.extend(self._content(view, params.model, COMPLETIONS, seed, index) for index in range(params.n))
        return build_completion(
            completion_id=completion_id or new_object_id(COMPLETIONS),
            created=created if created is not None else int(time.time()),
            params=params,
            texts=texts,
            prompt_tokens=prompt_tokens,
            count=partial(usage.text_tokens, model=params.model),
        )

    def respond(self, endpoint: str, body: dict[str, Any], params: Any, prompt_tokens: int,
                **ids: Any) -> dict[str, Any]:
        """The response body for a checked request; `ids` may fix completion_id and created (batch lines)."""
        completion = 0
        if endpoint == CHAT:
            result = self.chat(body, params, prompt_tokens, **ids)
            completion = result["usage"]["completion_tokens"]
        elif endpoint == RESPONSES:
            result = self.responses(body, params, prompt_tokens, **ids)
            completion = result["usage"]["output_tokens"]
        elif endpoint == COMPLETIONS:
            result = self.completions(body, params, prompt_tokens, **ids)
            completion = result["usage"]["completion_tokens"]
        elif endpoint == MODERATIONS:
            result = build_moderation(ids.get("completion_id") or new_object_id(MODERATIONS), params)
        else:
            result = build_embedding_response(params, prompt_tokens)
        self.stats.tokens(prompt_tokens, completion)
        return result

    def execute(self, endpoint: str, body: Any, *, prompt_tokens: int | None = None,
                completion_id: str | None = None, created: int | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, response body) for one batch line; errors become their error bodies."""
        try:
            params = self.check(endpoint, body)
            if prompt_tokens is None:
                prompt_tokens = usage.prompt_tokens(endpoint, body)
            ids = {"completion_id": completion_id, "created": created} if endpoint != EMBEDDINGS else {}
            return 200, self.respond(endpoint, body, params, prompt_tokens, **ids)
        except ApiError as exc:
            return exc.status, exc.body()


def usage_counts(body: Mapping[str, Any]) -> tuple[int, int, int]:
    """(input, output, cached) tokens of a response body, whichever usage shape it has (none for moderations)."""
    use = body.get("usage") or {}
    if "input_tokens" in use:
        details = use.get("input_tokens_details") or {}
        return use.get("input_tokens", 0), use.get("output_tokens", 0), details.get("cached_tokens", 0)
    details = use.get("prompt_tokens_details") or {}
    return use.get("prompt_tokens", 0), use.get("completion_tokens", 0), details.get("cached_tokens", 0)
