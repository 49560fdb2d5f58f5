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
from gbatch_flows.engine import operations
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.generate import ensure_task
from gbatch_flows.options import Options
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


def wants_emulator(options: Options, api_key: str | None = None) -> bool:
    if options.emulator == "always":
        return True
    if options.emulator == "never":
        return False
    return not (api_key or resolved_key(options)) and not options.client_base_url


def is_local_server(base_url: str | None) -> bool:
    """A user-given base URL that is not OpenAI's: Ollama, vLLM... (zero prices unless --cost_* flags say otherwise)."""
    return bool(base_url) and urlparse(base_url).hostname != OPENAI_HOST


@contextlib.contextmanager
def api_endpoint(options: Options, task: Task, api_key: str | None = None
                 ) -> Iterator[tuple[str | None, str | None, bool]]:
    """(base_url, api_key, local_server); starts the bundled emulator in this process when it is wanted.

    ``api_key`` (handed over in memory, e.g. by ``run_flow``) wins over the options' key and OPENAI_API_KEY."""
    if wants_emulator(options, api_key):
        from gbatch_flows.emulator import EmulatorConfig, run_emulator

        config = EmulatorConfig(responders=task.emulator_responders(), batch_duration=1.0)
        with run_emulator(config) as emu:
            print(f"gbatch_flows: no OPENAI_API_KEY and no --client_base_url: using the bundled OpenAI emulator at "
                  f"{emu.base_url} (answers are synthetic, costs are what OpenAI would charge)", flush=True)
            yield emu.base_url, "sk-emulator", False
        return
    key = api_key or resolved_key(options)
    if not key and not is_local_server(options.client_base_url):
        raise SetupError(
            "no OpenAI API key: set OPENAI_API_KEY (or pass --openai_api_key), or point --client_base_url at a "
            "local server (Ollama, vLLM), or use --emulator always to try it on the bundled emulator"
        )
    yield options.client_base_url, key, is_local_server(options.client_base_url)


def open_task_store(options: Options, task: Task) -> Store:
    url = task_url(options, task)
    try:
        return open_store(url, storage_options=options.storage_options or None)
    except PermissionError as exc:
        raise SetupError(f"cannot use the task folder {url}: {exc}. Pick a --task_dir you can write to") from exc


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
            client_factory=lambda: api.make_client(api_key, base_url, options.openai_organization,
                                                   options.openai_project),
            async_client_factory=lambda: api.make_async_client(api_key, base_url, options.openai_organization,
                                                               options.openai_project),
            local_server=local_server,
            lease=held,
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
    meta = task.build_meta(options)
    engine.prices(meta["model"])  # an unknown model without --cost_* flags stops here, before anything is stored
    ensure_task(engine, task.name, meta, reinit_meta=options.reinit_meta)
    if options.wipe_requests:
        operations.wipe_requests(engine)
        done["wipe_requests"] = True
    if options.wipe_failed:
        done["wipe_failed"] = operations.wipe_failed(engine)
    return done


__all__ = ["EngineStop", "SetupError", "api_endpoint", "open_engine", "prepare", "task_url", "wants_emulator"]
