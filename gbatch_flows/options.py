"""The options of a gbatch_flows run: one pydantic model for the CLI, the Prefect flow parameter and the engine.

Field names are the original ``gpt_batch_api`` flag names. Each field carries its ``--help`` text as its
``description``; extra metadata lives in ``json_schema_extra``: ``cli_group`` (the help section) and ``env``
(the environment variable it is read from by :meth:`Options.from_sources`).

Constructing ``Options(...)`` directly never reads the environment; only :meth:`Options.from_sources` (and
:func:`gbatch_flows.cli_args.parse_options`) layer CLI > YAML config > environment > task defaults > defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

#: What a SecretStr turns into when dumped without revealing it; refused as a key so it cannot slip through.
SECRET_MASK = "**********"
#: Parts of a storage_options key that mark its value as a credential (redacted in logs and repr).
_SENSITIVE_KEY_PARTS = ("secret", "token", "password", "passwd", "key", "credential", "auth", "signature")
_REDACTED = "***"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The Batch API's own hard limits per batch.
API_MAX_BATCH_REQUESTS = 50_000
API_MAX_BATCH_MB = 200.0

# Help sections, in the order --help shows them.
G_TASK = "Task and storage"
G_API = "API and endpoint"
G_WANDB = "Weights & Biases"
G_RUN = "Run mode and direct API"
G_BATCH = "Per-batch limits"
G_REMOTE = "Remote queue limits"
G_BUDGET = "Session and task budgets"
G_RETRY = "Failures and retries"
G_PACK = "Packing and polling"
G_ACTIONS = "Maintenance actions"
G_META = "Task meta (fixed at task creation; unset = the stored value, or the task's default for a new task)"
G_COST = "Price overrides (USD per million tokens; unset = built-in price table)"
G_LOG = "Logging"
GROUPS = (G_TASK, G_API, G_WANDB, G_RUN, G_BATCH, G_REMOTE, G_BUDGET, G_RETRY, G_PACK, G_ACTIONS, G_META,
          G_COST, G_LOG)


def _opt(default: Any, description: str, group: str, *, env: str | None = None, **constraints: Any) -> Any:
    """A Field with its help text, help section and optional environment variable."""
    extra: dict[str, Any] = {"cli_group": group}
    if env:
        extra["env"] = env
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def redact_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``data`` (recursively) with values of credential-looking keys replaced by ``'***'``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if any(part in str(key).lower() for part in _SENSITIVE_KEY_PARTS):
            out[key] = _REDACTED
        elif isinstance(value, Mapping):
            out[key] = redact_mapping(value)
        else:
            out[key] = value
    return out


class Options(BaseModel):
    """All options of a gbatch_flows run (flag names as in gpt_batch_api)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)
    _adapted: list[str] = PrivateAttr(default_factory=list)

    # --- Task and storage
    task_dir: str = _opt("./tasks", "Folder holding the task state: a local path, file://, or s3://bucket/prefix "
                         "(any fsspec URL).", G_TASK, min_length=1)
    storage_options: dict[str, Any] = _opt({}, "Extra fsspec storage options for task_dir, as a JSON object "
                                           "(e.g. '{\"endpoint_url\": \"http://127.0.0.1:9000\"}'). Prefer "
                                           "environment credentials over keys here.", G_TASK)

    quota_dir: str | None = _opt(None, "Shared quota ledger (a local path or s3://bucket/prefix) that every task "
                                 "using it reserves in before a push: one enqueued-token limit and one daily/monthly "
                                 "budget per model for many tasks and workers (set it up with `python -m "
                                 "gbatch_flows.quota set`).", G_TASK, min_length=1)

    # --- API and endpoint
    model: str | None = _opt(None, "Model to use instead of the task's default model.", G_API, min_length=1)
    client_base_url: str | None = _opt(None, "Base URL of an OpenAI-compatible server (e.g. "
                                       "http://127.0.0.1:8000/v1); unset = the OpenAI API.", G_API,
                                       env="OPENAI_BASE_URL")
    chat_endpoint: str = _opt("/v1/chat/completions", "Endpoint path the requests are addressed to (the "
                              "batch file's 'url').", G_API, env="OPENAI_ENDPOINT")
    openai_api_key: SecretStr | None = _opt(None, "OpenAI API key (prefer the environment variable: a key on "
                                            "the command line is visible to other users).", G_API,
                                            env="OPENAI_API_KEY")
    openai_organization: str | None = _opt(None, "OpenAI organization ID.", G_API, env="OPENAI_ORG_ID")
    openai_project: str | None = _opt(None, "OpenAI project ID.", G_API, env="OPENAI_PROJECT_ID")
    emulator: Literal["auto", "always", "never"] = _opt(
        "auto", "Bundled OpenAI emulator: 'auto' starts it when there is neither an API key nor a base URL, "
        "'always' always uses it, 'never' never does.", G_API)

    # --- Azure OpenAI (endpoint, api-version, key; the request's model is the deployment name)
    azure_endpoint: str | None = _opt(None, "Azure OpenAI resource endpoint, e.g. https://my-resource.openai.azure.com "
                                      "(set = use Azure OpenAI: --model names a deployment).", G_API,
                                      env="AZURE_OPENAI_ENDPOINT")
    azure_api_version: str | None = _opt(None, "Azure OpenAI api-version, e.g. 2025-03-01-preview (unset = "
                                         "OPENAI_API_VERSION).", G_API, env="OPENAI_API_VERSION")
    azure_api_key: SecretStr | None = _opt(None, "Azure OpenAI API key (prefer the environment variable).",
                                           G_API, env="AZURE_OPENAI_API_KEY")
    azure_price_model: str | None = _opt(None, "Price an Azure deployment as this OpenAI model (unset = the "
                                         "deployment name is looked up in the price table).", G_API)

    @field_validator("azure_api_key")
    @classmethod
    def _no_masked_azure_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() in (SECRET_MASK, ""):
            raise ValueError("azure_api_key is empty or the masked placeholder '**********'; pass the key through "
                             "the AZURE_OPENAI_API_KEY environment variable instead")
        return value

    # --- Weights & Biases
    no_wandb: bool = _opt(False, "Do not log to Weights & Biases (log to the console only).", G_WANDB)
    wandb_project: str = _opt("gbatch_flows", "W&B project to log runs to.", G_WANDB, min_length=1)
    wandb_name: str | None = _opt(None, "W&B run name (unset = W&B picks one).", G_WANDB)
    wandb_run_id: str | None = _opt(None, "W&B run ID, to resume logging into an existing run.", G_WANDB)
    wandb_entity: str | None = _opt(None, "W&B entity (user or team; unset = your default entity).", G_WANDB)

    # --- Run mode and direct API
    dryrun: bool = _opt(False, "Dry run: go through the stages but push no batch, send no direct request and "
                        "spend nothing.", G_RUN)
    force_direct: bool = _opt(False, "Send all requests through the direct (synchronous) API instead of "
                              "batches.", G_RUN)
    direct_verbose: Literal["never", "error", "warn", "always"] = _opt(
        "never", "When to log the full request and response of a direct API call.", G_RUN)
    direct_finish_requests: int = _opt(0, "When fewer than this many requests remain, finish them through the "
                                       "direct API instead of waiting for another batch (0 = off).", G_RUN, ge=0)
    max_direct_rpm: float | None = _opt(None, "Maximum direct API requests per minute (unset = no limit).",
                                        G_RUN, gt=0)
    max_direct_tpm: float | None = _opt(None, "Maximum direct API tokens per minute (unset = no limit).",
                                        G_RUN, gt=0)
    max_direct_concurrency: int = _opt(16, "Maximum direct API requests in flight at once.", G_RUN, ge=1)
    shared_direct_limit: str | None = _opt(
        None, "Share --max_direct_rpm / --max_direct_tpm with every flow run that gives the same NAME (one per API "
        "key) and model: each direct request also takes its slots from Prefect global concurrency limits used as rate "
        "limits, gbatch-direct-rpm-NAME-MODEL and gbatch-direct-tpm-NAME-MODEL, which the flow creates or sets to "
        "90% of these values. Only in the Prefect flow against a Prefect server (--no_prefect shares nothing this way; "
        "--quota_dir shares direct limits through its ledger instead).", G_RUN, pattern=r"^[A-Za-z0-9._-]+$")
    no_prefect: bool = _opt(False, "Run the stages in this process without Prefect (quicker start; no Prefect "
                            "UI, stage caching or artifacts).", G_RUN)

    # --- Per batch
    max_batch_requests: int = _opt(50_000, "Maximum requests in one batch (the Batch API allows at most "
                                   "50000).", G_BATCH, ge=1, le=API_MAX_BATCH_REQUESTS)
    max_batch_mb: float = _opt(100.0, "Maximum size of one batch input file in MB (the Batch API allows at "
                               "most 200).", G_BATCH, gt=0, le=API_MAX_BATCH_MB)
    max_batch_ktokens: float = _opt(20_000.0, "Maximum estimated tokens in one batch, in thousands.", G_BATCH,
                                    gt=0)
    max_batch_cost: float = _opt(10.0, "Maximum estimated cost of one batch in USD.", G_BATCH, gt=0)
    max_unpushed_batches: int = _opt(10, "Maximum batches assembled locally but not pushed yet.", G_BATCH,
                                     ge=1)

    # --- Remote queue
    max_remote_batches: int = _opt(15, "Maximum batches pending on the remote at once (0 = assemble batches "
                                   "locally and push none).", G_REMOTE, ge=0)
    max_remote_requests: int = _opt(5_000_000, "Maximum requests in the batches pending on the remote.",
                                    G_REMOTE, ge=1)
    max_remote_mb: float = _opt(10_000.0, "Maximum total size in MB of the batches pending on the remote.",
                                G_REMOTE, gt=0)
    max_remote_ktokens: float = _opt(50_000.0, "Maximum estimated tokens (thousands) in the batches pending "
                                     "on the remote (your organization's enqueued-token limit).", G_REMOTE,
                                     gt=0)
    max_remote_cost: float = _opt(50.0, "Maximum estimated cost in USD of the batches pending on the remote.",
                                  G_REMOTE, gt=0)

    # --- Session and task budgets
    max_session_requests: int | None = _opt(None, "Maximum requests sent in this session (unset = no limit).",
                                            G_BUDGET, ge=0)
    max_session_ktokens: float | None = _opt(None, "Maximum tokens (thousands) spent in this session "
                                             "(unset = no limit).", G_BUDGET, ge=0)
    max_session_cost: float | None = _opt(10.0, "Maximum cost in USD spent in this session ('none' = no "
                                          "limit).", G_BUDGET, ge=0)
    max_task_requests: int | None = _opt(None, "Maximum requests sent over the whole task, all sessions "
                                         "together (unset = no limit).", G_BUDGET, ge=0)
    max_task_ktokens: float | None = _opt(None, "Maximum tokens (thousands) spent over the whole task "
                                          "(unset = no limit).", G_BUDGET, ge=0)
    max_task_cost: float | None = _opt(None, "Maximum cost in USD spent over the whole task (unset = no "
                                       "limit).", G_BUDGET, ge=0)

    # --- Failures and retries
    max_retries: int = _opt(2, "How many times a failed request is retried (2 = up to 3 attempts).", G_RETRY,
                            ge=0)
    min_pass_ratio: float = _opt(0.8, "Minimum fraction of a batch's requests that must succeed for the batch "
                                 "to count as passed.", G_RETRY, ge=0, le=1)
    max_pass_failures: int = _opt(2, "Stop after this many batches in a row fall below min_pass_ratio.",
                                  G_RETRY, ge=1)
    process_failed_batches: int = _opt(0, "How many failed batches to process anyway, salvaging their "
                                       "results (0 = none, -1 = all).", G_RETRY, ge=-1)
    retry_fatal_requests: bool = _opt(False, "Also retry requests whose error is normally fatal (e.g. a "
                                      "rejected request).", G_RETRY)

    # --- Packing and polling
    token_safety_margin: float = _opt(0.02, "Fraction added to token estimates when packing batches and "
                                      "checking limits.", G_PACK, ge=0, le=1)
    size_safety_margin: float = _opt(0.02, "Fraction added to file size estimates when packing batches.",
                                     G_PACK, ge=0, le=1)
    poll_interval_min_s: float = _opt(1.0, "Shortest wait between two polls of the remote batches, in "
                                      "seconds.", G_PACK, gt=0)
    poll_interval_max_s: float = _opt(60.0, "Longest wait between two polls (the wait backs off up to "
                                      "this), in seconds.", G_PACK, gt=0)
    max_poll_wait_s: float | None = _opt(None, "Stop waiting for remote batches after this many seconds and "
                                         "return (a later run resumes; unset = wait until done).", G_PACK,
                                         ge=0)

    # --- Maintenance actions
    only_process: bool = _opt(False, "Only wait for and process the batches already pushed: generate and "
                              "push nothing new.", G_ACTIONS)
    no_run: bool = _opt(False, "Do the requested wipes / re-initialisation, print the task status (requests, "
                        "batches, spend, what remains and its estimated cost; remote batches of the task the manifest missed are "
                        "found, cancelled and counted first), then stop without running the task.",
                        G_ACTIONS)
    reinit_meta: bool = _opt(False, "Re-initialise the task's stored meta (model, temperature, task parameters, "
                             "...) from the current options: as in the original, ALL of it (a meta flag not given "
                             "returns to the task's default); new samples a wider parameter yields are generated.",
                             G_ACTIONS)
    wipe_requests: bool = _opt(False, "Delete the generated requests and unpushed batches (keeps results and "
                               "outputs).", G_ACTIONS)
    wipe_failed: bool = _opt(False, "Forget the failed requests so they are generated and sent again.",
                             G_ACTIONS)
    wipe_task: bool = _opt(False, "Delete the whole task state and outputs and start from scratch.", G_ACTIONS)

    # --- Task meta overrides
    max_completion_tokens: int | None = _opt(None, "Maximum completion tokens per request.", G_META, ge=1)
    completion_ratio: float | None = _opt(None, "For requests without max_completion_tokens: completion tokens "
                                          "assumed = prompt tokens x this ratio when reserving budget (set "
                                          "max_completion_tokens for a hard bound).", G_META, ge=0, le=100)
    temperature: float | None = _opt(None, "Sampling temperature (0 to 2).", G_META, ge=0, le=2)
    top_p: float | None = _opt(None, "Nucleus sampling probability mass (0 to 1).", G_META, ge=0, le=1)
    opinions_min: int | None = _opt(None, "Minimum number of answers (opinions) collected per item.", G_META,
                                    ge=1)
    opinions_max: int | None = _opt(None, "Maximum number of answers (opinions) collected per item.", G_META,
                                    ge=1)
    confidence: float | None = _opt(None, "Fraction of agreeing opinions needed to accept an answer "
                                    "(0 < c <= 1).", G_META, gt=0, le=1)

    # --- Price overrides
    cost_input_direct_mtoken: float | None = _opt(None, "Price of input tokens, direct API.", G_COST, ge=0)
    cost_input_cached_mtoken: float | None = _opt(None, "Price of cached input tokens.", G_COST, ge=0)
    cost_input_batch_mtoken: float | None = _opt(None, "Price of input tokens, Batch API.", G_COST, ge=0)
    cost_output_direct_mtoken: float | None = _opt(None, "Price of output tokens, direct API.", G_COST, ge=0)
    cost_output_batch_mtoken: float | None = _opt(None, "Price of output tokens, Batch API.", G_COST, ge=0)

    # --- Outages (issue 15: remote and storage errors)
    max_outage_s: float = _opt(180.0, "How long, in seconds, to keep retrying while the API or the task "
                               "folder's storage is unreachable or answers 429/5xx, before the run stops with "
                               "one line (its state stays as committed; run again to resume).", G_RETRY, gt=0)

    # --- Logging
    log_level: str = _opt("INFO", "Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.", G_LOG)

    # ------------------------------------------------------------------ field checks

    @field_validator("openai_api_key")
    @classmethod
    def _no_masked_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() in (SECRET_MASK, ""):
            raise ValueError(
                "openai_api_key is empty or the masked placeholder '**********' (a secret does not survive "
                "serialization); pass the key through the OPENAI_API_KEY environment variable instead")
        return value

    @field_validator("client_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"client_base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                             f"got {value!r}")
        return value

    @field_validator("chat_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"chat_endpoint must be a path starting with '/', such as /v1/chat/completions, "
                             f"got {value!r}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> str:
        name = str(value).strip().upper()
        name = "WARNING" if name == "WARN" else name
        if name not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
        return name

    @field_serializer("openai_api_key", when_used="always")
    def _dump_key(self, value: SecretStr | None, info: FieldSerializationInfo) -> Any:
        """Masked unless dumped with ``context={"reveal_secrets": True}``."""
        if value is None:
            return None
        if isinstance(info.context, Mapping) and info.context.get("reveal_secrets"):
            return value.get_secret_value()
        return SECRET_MASK if info.mode == "json" else value

    # ------------------------------------------------------------------ cross-field checks

    @model_validator(mode="after")
    def _check_consistency(self, info: ValidationInfo) -> Options:
        """Adapt the options the user did not give to those they gave, then refuse what still contradicts.

        "Given" = the names in the validation context's ``given`` (set by :func:`~gbatch_flows.cli_args.
        resolve_options`: CLI, --config, environment; a task's own defaults are not given), else the fields passed
        to the constructor. Afterwards ``model_fields_set`` is the given set and :attr:`adapted` says what moved.
        """
        given = _given_names(info, self.model_fields_set)
        self._adapted = _adapt_defaults(self, given)
        if isinstance(info.context, Mapping) and "given" in info.context:
            self.__pydantic_fields_set__ = set(given) & set(type(self).model_fields)
        problems = list(self._contradictions(given))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def adapted(self) -> list[str]:
        """One note per option the user did not give that was moved to agree with one they gave."""
        return list(self._adapted)

    def _contradictions(self, given: set[str]) -> Sequence[str]:
        """What still contradicts after :func:`_adapt_defaults`: only pairs of given options (a default that could
        not move, e.g. max_batch_cost under ``--max_session_cost 0``, gives way: that budget sends nothing)."""
        problems: list[str] = []
        for low, high, why in _ORDERED_PAIRS:
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is None or high_value is None or low_value <= high_value or not {low, high} <= given:
                continue
            if high in _UPPER_CAPS:
                problems.append(f"{low} ({_num(low_value)}) > {high} ({_num(high_value)}): {why}; lower --{low} "
                                f"or raise --{high}")
            elif high == "max_poll_wait_s":
                problems.append(f"{high} ({_num(high_value)}) < {low} ({_num(low_value)}): {why}; raise --{high} "
                                f"or lower --{low}")
            else:
                problems.append(f"{low} ({_num(low_value)}) > {high} ({_num(high_value)}); lower --{low} or raise "
                                f"--{high}")
        problems += [why for first, second, why in _EXCLUSIVE if why and _on(self, first) and _on(self, second)]
        if self.shared_direct_limit and self.max_direct_rpm is None and self.max_direct_tpm is None:
            problems.append("--shared_direct_limit without --max_direct_rpm or --max_direct_tpm: there is no limit to "
                            "share; give one of them")
        if self.emulator == "always" and self.client_base_url is not None:
            problems.append(f"--emulator always, but client_base_url is {self.client_base_url!r} (from "
                            f"--client_base_url or the OPENAI_BASE_URL environment variable): the emulator "
                            f"serves its own URL; drop the base URL or use --emulator auto")
        return problems

    # ------------------------------------------------------------------ helpers

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "storage_options" and isinstance(value, Mapping):
                value = redact_mapping(value)
            yield name, value

    def api_key(self) -> str | None:
        """The OpenAI API key in clear, or None when not set (the openai client then reads OPENAI_API_KEY)."""
        return self.openai_api_key.get_secret_value() if self.openai_api_key is not None else None

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready dict safe to log or store: secret fields left out, credential-like storage options
        redacted."""
        data = self.model_dump(mode="json", exclude=set(secret_fields(type(self))))
        data["storage_options"] = redact_mapping(data.get("storage_options") or {})
        return data

    @classmethod
    def from_sources(cls, argv: list[str] | None, env: Mapping[str, str] | None = None,
                     defaults: dict[str, Any] | None = None) -> Options:
        """Options from CLI args > ``--config`` YAML > environment > ``defaults`` > built-in defaults.

        ``argv=None`` reads ``sys.argv[1:]``, ``env=None`` reads ``os.environ``. Bad input exits with status 2
        and a one-line message, like argparse.
        """
        from gbatch_flows.cli_args import parse_options  # local: cli_args imports this module

        options = parse_options(argv, env=env, task_defaults=defaults, model=cls)
        assert isinstance(options, cls)
        return options

    def logging_level(self) -> int:
        """``log_level`` as a :mod:`logging` level number."""
        return logging.getLevelNamesMapping()[self.log_level]


_NEVER_PUSHED = "a batch could never be pushed"
#: (low, high, why): ``low`` must not exceed ``high``, in the order they are adapted (a batch cap falls to a
#: budget before the remote caps are compared with it).
_ORDERED_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("max_batch_cost", "max_task_cost", "a full batch could never fit in the task budget"),
    ("max_batch_cost", "max_session_cost", "a full batch could never fit in the session budget"),
    *((f"max_batch_{unit}", f"max_remote_{unit}", _NEVER_PUSHED) for unit in ("requests", "mb", "ktokens", "cost")),
    ("opinions_min", "opinions_max", ""),
    ("poll_interval_min_s", "max_poll_wait_s", "the wait would end before the first poll"),
    ("poll_interval_min_s", "poll_interval_max_s", ""),
)
_UPPER_CAPS = {high for _, high, why in _ORDERED_PAIRS if why and high != "max_poll_wait_s"}
#: Options that cannot both be on: (first, second, the one-line refusal).
_EXCLUSIVE: tuple[tuple[str, str, str], ...] = (
    ("wipe_task", "only_process", "--wipe_task with --only_process: wiping the task deletes the batches there "
     "would be to process; drop one of the two"),
    ("wipe_requests", "only_process", "--wipe_requests with --only_process: only_process keeps the task as it is; "
     "drop one of the two"),
    ("force_direct", "only_process", "--force_direct with --only_process: only_process sends no new requests, "
     "force_direct sends them all directly; drop one of the two"),
    ("direct_finish_requests", "only_process", "--direct_finish_requests with --only_process: only_process sends "
     "no new requests; set --direct_finish_requests 0 or drop --only_process"),
    ("only_process", "no_run", "--only_process with --no_run: no_run stops before processing anything; drop one "
     "of the two"),
    ("emulator", "client_base_url", ""),  # only adapted here; _contradictions words the refusal
)


def _on(model: BaseModel, name: str) -> bool:
    """Whether an option of an exclusive pair is in use (``emulator``: set to 'always')."""
    value = getattr(model, name)
    return value == "always" if name == "emulator" else value is not None and value is not False and value != 0


def _given_names(info: ValidationInfo, fields_set: set[str]) -> set[str]:
    """The options the user gave: the context's ``given`` when validation was told, else the fields passed."""
    if isinstance(info.context, Mapping) and info.context.get("given") is not None:
        return set(info.context["given"])
    return set(fields_set)


def _settable(model: BaseModel, name: str, value: Any) -> bool:
    """Whether ``value`` passes the constraints of field ``name`` (checked on a copy of the field alone)."""
    field = type(model).model_fields[name]
    for meta in field.metadata:
        for attr, ok in (("gt", lambda b: value > b), ("ge", lambda b: value >= b), ("lt", lambda b: value < b),
                         ("le", lambda b: value <= b)):
            bound = getattr(meta, attr, None)
            if bound is not None and not ok(bound):
                return False
    return True


def _move(model: BaseModel, name: str, value: Any, because: str, notes: list[str]) -> None:
    """Set a field without marking it as given (``model_fields_set`` stays as it was), and note it."""
    notes.append(f"{name} {_num(model.__dict__[name])} -> {_num(value)} ({because})")
    model.__dict__[name] = value


def _adapt_defaults(model: BaseModel, given: set[str]) -> list[str]:
    """Move each option the user did not give so that it agrees with the ones they gave; returns the notes.

    Ordered pairs: a ``low`` that was not given falls to ``high`` (when its constraints allow), else a ``high`` that
    was not given rises to ``low``. Exclusive flags: the one not given goes back to its default. Two given options
    are left as they are (the consistency check then refuses them).
    """
    notes: list[str] = []
    fields = type(model).model_fields
    for low, high, _why in _ORDERED_PAIRS:
        low_value, high_value = getattr(model, low), getattr(model, high)
        if low_value is None or high_value is None or low_value <= high_value:
            continue
        if low not in given and _settable(model, low, high_value):
            _move(model, low, high_value, f"not given; --{high} is {_num(high_value)}", notes)
        elif high not in given:
            _move(model, high, low_value, f"not given; --{low} is {_num(low_value)}", notes)
    for first, second, _why in _EXCLUSIVE:
        if _on(model, first) and _on(model, second):
            loser = first if first not in given else second if second not in given else None
            if loser is not None:
                _move(model, loser, fields[loser].default, "not given; it contradicts an option that was", notes)
    return notes


def _mentions(annotation: Any, target: type) -> bool:
    """Whether ``target`` appears in ``annotation`` (also inside Optional/Union/containers)."""
    return annotation is target or any(_mentions(arg, target) for arg in get_args(annotation))


def secret_fields(model: type[BaseModel]) -> list[str]:
    """Names of the fields whose annotation contains SecretStr."""
    return [name for name, field in model.model_fields.items() if _mentions(field.annotation, SecretStr)]


def env_vars(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> environment variable it is read from."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("env"), str):
            out[name] = str(extra["env"])
    return out


def _num(value: float) -> str:
    """Compact number for messages: 3000.0 -> '3000', 0.25 -> '0.25'."""
    return f"{value:g}" if isinstance(value, float) else str(value)
