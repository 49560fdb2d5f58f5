"""Configuration of the emulator: one pydantic model per knob group.

`EmulatorConfig` holds every knob; the CLI (`python -m gbatch_flows.emulator --help`) has a flag for each.
`FaultConfig` (seed, rates, script) can also be replaced at run time (`RunningEmulator.set_faults`,
`POST /_emulator/faults`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

MIB = 1024 * 1024

#: Operation names, each with the path templates that also select it in a fault rule.
OPERATIONS: dict[str, tuple[str, str]] = {
    "files.create": ("POST", "/v1/files"),
    "files.list": ("GET", "/v1/files"),
    "files.retrieve": ("GET", "/v1/files/{file_id}"),
    "files.delete": ("DELETE", "/v1/files/{file_id}"),
    "files.content": ("GET", "/v1/files/{file_id}/content"),
    "batches.create": ("POST", "/v1/batches"),
    "batches.list": ("GET", "/v1/batches"),
    "batches.retrieve": ("GET", "/v1/batches/{batch_id}"),
    "batches.cancel": ("POST", "/v1/batches/{batch_id}/cancel"),
    "chat.completions": ("POST", "/v1/chat/completions"),
    "responses": ("POST", "/v1/responses"),
    "embeddings": ("POST", "/v1/embeddings"),
    "completions": ("POST", "/v1/completions"),
    "moderations": ("POST", "/v1/moderations"),
    "models.list": ("GET", "/v1/models"),
    "models.retrieve": ("GET", "/v1/models/{model}"),
}

HttpFault = Literal["http_500", "http_503", "http_429", "drop_connection", "upload_error"]
BatchEndFault = Literal["batch_failed", "batch_expired", "batch_cancelled"]
LineFault = Literal["lines_missing", "lines_malformed", "request_errors"]
FaultKind = Literal[
    "http_500",
    "http_503",
    "http_429",
    "drop_connection",
    "upload_error",
    "batch_failed",
    "batch_expired",
    "batch_cancelled",
    "lines_missing",
    "lines_malformed",
    "request_errors",
]
HTTP_FAULTS: frozenset[str] = frozenset(get_args(HttpFault))
BATCH_END_FAULTS: frozenset[str] = frozenset(get_args(BatchEndFault))
LINE_FAULTS: frozenset[str] = frozenset(get_args(LineFault))

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "gpt-3.5-turbo-instruct",
    "omni-moderation-latest",
)


def normalize_op(name: str) -> str:
    """Map an op name, a path template ("/v1/batches") or "METHOD path" to an op name ("*" = every op)."""
    text = " ".join(name.split())
    if text == "*" or text in OPERATIONS:
        return text
    method, _, path = text.rpartition(" ")
    path = path.rstrip("/")
    matches = [
        op
        for op, (op_method, template) in OPERATIONS.items()
        if template == path and (not method or method.upper() == op_method)
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:  # a path served by several methods: prefer the one that creates something
        return next((op for op in matches if OPERATIONS[op][0] == "POST"), matches[0])
    raise ValueError(f"unknown op {name!r}; use '*', one of {sorted(OPERATIONS)} or a path like '/v1/batches'")


class FaultRule(BaseModel):
    """A scripted fault: the `nth` call (1-based, counted since the faults were set) of `op` gets `fault`.

    HTTP faults (`http_500`, `http_503`, `http_429`, `drop_connection`, `upload_error`) answer the call itself.
    Batch faults (`batch_failed`, `batch_expired`, `batch_cancelled`, `lines_missing`, `lines_malformed`,
    `request_errors`) need `op="batches.create"` and shape the batch that call creates.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    op: str = Field(validation_alias=AliasChoices("op", "endpoint"))
    nth: int | None = Field(default=None, ge=1, description="1-based call number; None = every call")
    fault: FaultKind
    at: float = Field(default=0.5, ge=0.0, le=1.0, description="batch_expired/batch_cancelled: share of requests done")
    fraction: float = Field(default=0.1, ge=0.0, le=1.0, description="line faults: share of lines affected")
    custom_ids: list[str] | None = Field(default=None, description="line faults: exactly these requests")
    status_code: int | None = Field(default=None, description="request_errors: 400/429/500; None = mixed")

    @field_validator("op")
    @classmethod
    def _known_op(cls, value: str) -> str:
        return normalize_op(value)

    @model_validator(mode="after")
    def _batch_faults_on_create(self) -> FaultRule:
        if self.fault not in HTTP_FAULTS and self.op not in ("batches.create", "*"):
            raise ValueError(f"fault {self.fault!r} shapes a new batch: use op='batches.create', not {self.op!r}")
        if self.fault == "upload_error" and self.op not in ("files.create", "*"):
            raise ValueError("fault 'upload_error' needs op='files.create'")
        return self


class FaultRates(BaseModel):
    """Fault probabilities, drawn from an RNG seeded by `FaultConfig.seed` (deterministic per call number)."""

    model_config = ConfigDict(extra="forbid")

    http_500: float = Field(default=0.0, ge=0.0, le=1.0)
    http_503: float = Field(default=0.0, ge=0.0, le=1.0)
    http_429: float = Field(default=0.0, ge=0.0, le=1.0)
    drop_connection: float = Field(default=0.0, ge=0.0, le=1.0)
    upload_error: float = Field(default=0.0, ge=0.0, le=1.0, description="per files.create call")
    batch_failed: float = Field(default=0.0, ge=0.0, le=1.0, description="per created batch")
    batch_expired: float = Field(default=0.0, ge=0.0, le=1.0, description="per created batch")
    batch_cancelled: float = Field(default=0.0, ge=0.0, le=1.0, description="per created batch")
    lines_missing: float = Field(default=0.0, ge=0.0, le=1.0, description="per result line")
    lines_malformed: float = Field(default=0.0, ge=0.0, le=1.0, description="per result line")
    request_errors: float = Field(default=0.0, ge=0.0, le=1.0, description="per request inside a batch")
    ops: list[str] | None = Field(default=None, description="ops the http_* rates apply to; None = every /v1 op")

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [normalize_op(v) for v in value]


class FaultConfig(BaseModel):
    """Fault injection: a seed, rates and a script. Replacing it restarts the per-op call counters."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    rates: FaultRates = Field(default_factory=FaultRates)
    script: list[FaultRule] = Field(default_factory=list)


class EmulatorConfig(BaseModel):
    """Every knob of the emulator (all optional)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = a free port")
    api_key: str | None = Field(default=None, description="required bearer key; None = accept any")
    batch_api: bool = Field(default=True, description="False answers 404 on /v1/files and /v1/batches (like Ollama)")
    batch_duration: float = Field(
        default=2.0, ge=0.0, description="seconds from creation to completion; 0 = done at the next retrieve"
    )
    immediate_wait_seconds: float = Field(
        default=120.0, gt=0.0, description="with batch_duration 0: how long a retrieve waits for the batch to finish"
    )
    expire_after: float = Field(default=86400.0, gt=0.0, description="completion window in seconds (expires_at)")
    max_file_bytes: int = Field(default=512 * MIB, ge=1, description="largest upload")
    max_batch_input_bytes: int = Field(default=200 * MIB, ge=1, description="largest batch input file")
    max_requests_per_batch: int = Field(default=50_000, ge=1)
    max_embedding_inputs_per_batch: int = Field(default=50_000, ge=1)
    enqueued_token_limit: int | None = Field(default=None, ge=1, description="enqueued input tokens per model")
    enqueued_token_limits: dict[str, int] = Field(default_factory=dict, description="per-model overrides")
    rpm: int | None = Field(default=None, ge=1, description="requests per minute per model on direct endpoints")
    tpm: int | None = Field(default=None, ge=1, description="tokens per minute per model on direct endpoints")
    rate_limit_burst_seconds: float = Field(
        default=1.0, gt=0.0, le=60.0,
        description="rpm/tpm buckets hold this many seconds of the per-minute allowance (at least one request), so "
                    "a burst gets 429s while evenly paced requests pass; 60 = a whole minute's worth at once",
    )
    azure: bool = Field(default=False, description="also serve Azure OpenAI paths (/openai/..., api-version, api-key)")
    azure_deployments: list[str] = Field(
        default_factory=list, description="Azure mode: known deployment names (empty = any name is a deployment)")
    state_dir: Path | None = Field(default=None, description="persist files and batches here (else in memory)")
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    strict_models: bool = Field(default=False, description="reject models not in `models` with 404 model_not_found")
    embedding_dimensions: int | None = Field(default=None, ge=1, description="vector size for every embedding model")
    prompt_cache: bool = Field(default=True, description="report cached_tokens for repeated long prompt prefixes")
    responders: dict[str, Any] = Field(
        default_factory=dict,
        description="model name or '*' -> responder (callable or 'package.module:function')",
    )
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @field_validator("responders")
    @classmethod
    def _responders_callable(cls, value: dict[str, Any]) -> dict[str, Any]:
        for model, responder in value.items():
            if not (callable(responder) or (isinstance(responder, str) and ":" in responder)):
                raise ValueError(
                    f"responder for {model!r} must be a callable or 'package.module:function', got {responder!r}"
                )
        return value

    def token_limit_for(self, model: str) -> int | None:
        """The enqueued-token limit that applies to `model` (None = unlimited)."""
        return self.enqueued_token_limits.get(model, self.enqueued_token_limit)
