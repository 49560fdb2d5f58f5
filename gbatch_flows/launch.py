"""From (task, options) to a ready Engine: the task folder, the lease, the API client (or the bundled emulator),
and the maintenance operations the options ask for. Shared by the plain CLI run and the Prefect flow."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from gbatch_flows import api, folder_checks
from gbatch_flows.engine import operations
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.generate import ensure_task
from gbatch_flows.options import Options
from gbatch_flows.remote_client import guard_client
from gbatch_flows.remote_errors import OutagePolicy
from gbatch_flows.store import Store, open_store
from gbatch_flows.store.retrying import RetryingBackend
from gbatch_flows.task import Task
from gbatch_flows.task_dir import check_task_dir

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
    return not resolved_key(options) and not options.client_base_url


LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


def is_private_host(host: str) -> bool:
    """Loopback, private-network and link-local addresses, ``localhost`` and single-label or ``.local`` names."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(LOCAL_SUFFIXES) or (host and "." not in host and ":" not in host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local


def is_local_server(base_url: str | None) -> bool:
    """A user-given base URL on this machine or a private network (Ollama, vLLM...): zero prices unless --cost_*
    flags say otherwise. A public host other than OpenAI's (a paid gateway, Azure) is not local: see
    ``needs_price_flags``."""
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    return host != OPENAI_HOST and is_private_host(host)


def needs_price_flags(base_url: str | None) -> bool:
    """A public server that is not OpenAI's: no price table is known for it, its prices must come from flags."""
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    return host != OPENAI_HOST and not is_private_host(host)


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
    key = resolved_key(options)
    if not key and not (is_local_server(options.client_base_url) or needs_price_flags(options.client_base_url)):
        raise SetupError(
            "no OpenAI API key: set OPENAI_API_KEY (or pass --openai_api_key), or point --client_base_url at a "
            "local server (Ollama, vLLM), or use --emulator always to try it on the bundled emulator"
        )
    yield options.client_base_url, key, is_local_server(options.client_base_url)


def outage_policy(options: Options, base_url: str | None) -> OutagePolicy:
    return OutagePolicy(max_outage_s=options.max_outage_s, base_url=base_url)


def open_task_store(options: Options, task: Task, policy: OutagePolicy | None = None) -> Store:
    """The task's store; on S3, storage errors that look like an outage are retried within --max_outage_s."""
    problem = check_task_dir(options.task_dir)
    if problem:
        raise SetupError(problem)
    url = task_url(options, task)
    try:
        store = open_store(url, storage_options=options.storage_options or None)
    except PermissionError as exc:
        raise SetupError(f"cannot use the task folder {url}: {exc}. Pick a --task_dir you can write to") from exc
    except (NotADirectoryError, FileExistsError) as exc:
        raise SetupError(f"cannot use the task folder {url}: a part of that path is a file, not a folder. Pick "
                         "another --task_dir") from exc
    if url.startswith("s3://"):
        store = Store(RetryingBackend(store.backend, policy or outage_policy(options, None)))
    return store


@contextlib.contextmanager
def open_engine(task: Task, options: Options, session_id: str | None = None, lease: bool = True,
                base_url: str | None = None, api_key: str | None = None, local_server: bool = False
                ) -> Iterator[Engine]:
    """An Engine holding the task's lease (released on exit, also on Ctrl+C)."""
    policy = outage_policy(options, base_url)
    store = open_task_store(options, task, policy)
    try:
        held = store.acquire_lease(ttl_s=60.0) if lease else None
    except PermissionError as exc:
        raise SetupError(f"cannot write to the task folder {store.url} ({exc.strerror or exc}): fix its "
                         "permissions or pick a --task_dir you can write to") from exc
    except IsADirectoryError as exc:
        raise SetupError(f"cannot take the lease of {store.url}: {exc.filename or 'lease.json'} is a folder, not "
                         "a file. Move it away (no run holds a lease stored as a folder), then run again") from exc
    try:
        engine = Engine(
            store=store,
            options=options,
            task=task,
            session_id=session_id or uuid.uuid4().hex[:12],
            client_factory=lambda: guard_client(api.make_client(api_key, base_url, options.openai_organization,
                                                                options.openai_project), policy),
            async_client_factory=lambda: api.make_async_client(api_key, base_url, options.openai_organization,
                                                               options.openai_project),
            local_server=local_server,
            lease=held,
            flags_only_prices=needs_price_flags(base_url),
            outage=policy,
        )
        yield engine
    finally:
        if held is not None:
            try:
                held.release()
            except Exception as exc:  # noqa: BLE001 - the error that ended the run matters more; the lease expires
                log.warning("could not release the lease of %s (it expires by itself): %s", store.url, exc)


def prepare(engine: Engine, task: Task) -> dict[str, Any]:
    """Apply the maintenance options (each one atomic commit) and create/check the task; returns what was done."""
    options = engine.options
    done: dict[str, Any] = {}
    if options.wipe_task:
        cleared = folder_checks.clear_orphan_files(engine.store, engine.state)
        operations.wipe_task(engine, task.output_name)
        done["wipe_task"] = True
        if cleared:
            log.info("wipe_task: removed %d data files left without a manifest", cleared)
        if options.no_run:
            return done
    folder_checks.check_orphan_files(engine.store, engine.state)
    folder_checks.check_output_parts(engine.store, engine.state)
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
