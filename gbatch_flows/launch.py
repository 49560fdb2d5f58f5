"""From (task, options) to a ready Engine: the task folder, the lease, the API client (or the bundled emulator),
and the maintenance operations the options ask for. Shared by the plain CLI run and the Prefect flow."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from gbatch_flows import api
from gbatch_flows.engine import operations, quota_gate
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.generate import effective_meta, ensure_task
from gbatch_flows.options import Options
from gbatch_flows.quota import QuotaLedger
from gbatch_flows.store import Store, open_store
from gbatch_flows.task import Task

log = logging.getLogger("gbatch_flows")

OPENAI_HOST = "api.openai.com"


class SetupError(RuntimeError):
    """Bad configuration found before anything ran (missing key, unusable task folder...)."""


def task_url(options: Options, task: Task) -> str:
    return f"{options.task_dir.rstrip('/')}/{task.name}"


def resolved_key(options: Options) -> str | None:
    """The API key from the options or, as the openai client does, from OPENAI_API_KEY."""
    return options.api_key() or os.environ.get("OPENAI_API_KEY") or None


def wants_emulator(options: Options) -> bool:
    if options.emulator == "always":
        return True
    if options.emulator == "never":
        return False
    return not resolved_key(options) and not options.client_base_url and not options.azure_endpoint


def is_local_server(base_url: str | None) -> bool:
    """A user-given base URL that is not OpenAI's: Ollama, vLLM... (zero prices unless --cost_* flags say otherwise)."""
    return bool(base_url) and urlparse(base_url).hostname != OPENAI_HOST


@contextlib.contextmanager
def api_endpoint(options: Options, task: Task) -> Iterator[tuple[str | None, str | None, bool]]:
    """(base_url, api_key, local_server); starts the bundled emulator in this process when it is wanted."""
    if wants_emulator(options):
        from gbatch_flows.emulator import EmulatorConfig, run_emulator

        config = EmulatorConfig(responders=task.emulator_responders(), batch_duration=1.0)
        with run_emulator(config) as emu:
            print(f"gbatch_flows: no OPENAI_API_KEY and no --client_base_url: using the bundled OpenAI emulator at "
                  f"{emu.base_url} (answers are synthetic, costs are what OpenAI would charge)", flush=True)
            yield emu.base_url, "sk-emulator", False
        return
    if options.azure_endpoint:
        check_azure(options)
        yield None, azure_key(options), False  # Azure: OpenAI's prices (see docs/endpoints.md), never zero
        return
    key = resolved_key(options)
    if not key and not is_local_server(options.client_base_url):
        raise SetupError(
            "no OpenAI API key: set OPENAI_API_KEY (or pass --openai_api_key), or point --client_base_url at a "
            "local server (Ollama, vLLM), or use --emulator always to try it on the bundled emulator"
        )
    yield options.client_base_url, key, is_local_server(options.client_base_url)


def azure_key(options: Options) -> str | None:
    """The Azure OpenAI key from the options or AZURE_OPENAI_API_KEY (None: the client may use an Entra ID token
    from AZURE_OPENAI_AD_TOKEN)."""
    if options.azure_api_key is not None:
        return options.azure_api_key.get_secret_value()
    return os.environ.get("AZURE_OPENAI_API_KEY") or None


def check_azure(options: Options) -> None:
    """Refuse an Azure setup the client would refuse later (or that names two servers), with the fix."""
    if not str(options.azure_endpoint).startswith(("http://", "https://")):
        raise SetupError(f"--azure_endpoint must be an http(s) URL such as https://my-resource.openai.azure.com, "
                         f"got {options.azure_endpoint!r}")
    if options.client_base_url:
        raise SetupError(f"both --azure_endpoint ({options.azure_endpoint}) and --client_base_url "
                         f"({options.client_base_url}, maybe from OPENAI_BASE_URL) are set: keep one")
    if not azure_key(options) and not os.environ.get("AZURE_OPENAI_AD_TOKEN"):
        raise SetupError("--azure_endpoint is set but there is no Azure OpenAI key: set AZURE_OPENAI_API_KEY (or "
                         "AZURE_OPENAI_AD_TOKEN for an Entra ID token)")
    if not options.azure_api_version and not os.environ.get("OPENAI_API_VERSION"):
        raise SetupError("--azure_endpoint is set but no api-version: pass --azure_api_version (e.g. "
                         "2025-03-01-preview) or set OPENAI_API_VERSION")


def azure_factories(options: Options, api_key: str | None) -> dict[str, Any]:
    """Engine client factories for Azure OpenAI (none when --azure_endpoint is not set)."""
    endpoint = options.azure_endpoint
    if not endpoint:
        return {}
    version = options.azure_api_version
    return {
        "client_factory": lambda: api.make_azure_client(api_key, endpoint, version),
        "async_client_factory": lambda: api.make_azure_client(api_key, endpoint, version, asynchronous=True),
    }


def open_task_store(options: Options, task: Task) -> Store:
    url = task_url(options, task)
    try:
        return open_store(url, storage_options=options.storage_options or None)
    except PermissionError as exc:
        raise SetupError(f"cannot use the task folder {url}: {exc}. Pick a --task_dir you can write to") from exc


def open_quota(options: Options) -> QuotaLedger | None:
    """The shared quota ledger named by --quota_dir (same storage options as the task folder), or None."""
    if not options.quota_dir:
        return None
    try:
        return QuotaLedger(options.quota_dir, storage_options=options.storage_options or None)
    except PermissionError as exc:
        raise SetupError(f"cannot use the quota folder {options.quota_dir}: {exc}. Pick a --quota_dir you can "
                         "write to") from exc


@contextlib.contextmanager
def open_engine(task: Task, options: Options, session_id: str | None = None, lease: bool = True,
                base_url: str | None = None, api_key: str | None = None, local_server: bool = False
                ) -> Iterator[Engine]:
    """An Engine holding the task's lease (released on exit, also on Ctrl+C)."""
    store = open_task_store(options, task)
    try:
        held = store.acquire_lease(ttl_s=60.0) if lease else None
    except PermissionError as exc:
        raise SetupError(f"cannot write to the task folder {store.url} ({exc.strerror or exc}): fix its "
                         "permissions or pick a --task_dir you can write to") from exc
    try:
        engine = Engine(
            store=store,
            options=options,
            task=task,
            session_id=session_id or uuid.uuid4().hex[:12],
            **(azure_factories(options, api_key) or {
                "client_factory": lambda: api.make_client(api_key, base_url, options.openai_organization,
                                                          options.openai_project),
                "async_client_factory": lambda: api.make_async_client(api_key, base_url,
                                                                      options.openai_organization,
                                                                      options.openai_project),
            }),
            local_server=local_server,
            lease=held,
            quota=open_quota(options),
        )
        yield engine
    finally:
        if held is not None:
            held.release()


def prepare(engine: Engine, task: Task) -> dict[str, Any]:
    """Apply the maintenance options (each one atomic commit) and create/check the task; returns what was done."""
    options = engine.options
    done: dict[str, Any] = {}
    if options.wipe_task:
        operations.wipe_task(engine, task.output_name)
        done["wipe_task"] = True
        if options.no_run:
            return done
    meta, given = task.build_meta(options), task.given_meta(options)
    model = effective_meta(engine.state.task, meta, given, options.reinit_meta)["model"]
    engine.prices(model)  # an unknown model without --cost_* flags stops here, before anything is stored
    ensure_task(engine, task.name, meta, reinit_meta=options.reinit_meta, given=given)
    quota_gate.start(engine)
    if options.wipe_requests:
        operations.wipe_requests(engine)
        done["wipe_requests"] = True
    if options.wipe_failed:
        done["wipe_failed"] = operations.wipe_failed(engine)
    return done


__all__ = ["EngineStop", "SetupError", "api_endpoint", "open_engine", "prepare", "task_url", "wants_emulator"]
