"""Running the emulator: in process (`run_emulator`, a uvicorn thread) or blocking (`serve`, for the CLI)."""

from __future__ import annotations

import gc
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import uvicorn

from .app import create_app
from .config import EmulatorConfig, FaultConfig
from .runtime import Emulator
from .transport import tracking_protocol

START_TIMEOUT = 30.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn_server(emulator: Emulator, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(emulator),
        http=tracking_protocol(),
        proxy_headers=False,  # no proxy in front of the emulator: one ASGI layer less per call
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=3,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


class RunningEmulator:
    """A started emulator: its address, config, stats and faults."""

    def __init__(self, emulator: Emulator, host: str, port: int) -> None:
        self.emulator = emulator
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{port}"
        self.base_url = f"{self.url}/v1"

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    def stats(self) -> dict[str, Any]:
        """Counts so far (requests, statuses, 429s, faults by kind, batches per metadata gbatch_local_id...)."""
        return self.emulator.stats_snapshot()

    def reset_stats(self) -> None:
        self.emulator.stats.reset()

    def set_faults(self, faults: FaultConfig | Mapping[str, Any] | None = None, **fields: Any) -> FaultConfig:
        """Replace the fault config at run time (e.g. `set_faults(script=[{"op": ..., "nth": 1, ...}])`)."""
        return self.emulator.set_faults(faults, **fields)


@contextmanager
def run_emulator(config: EmulatorConfig | None = None, *, log_level: str = "warning",
                 **overrides: Any) -> Iterator[RunningEmulator]:
    """Start the emulator on a free port (or `config.port`) in a thread; stop it on exit.

    >>> with run_emulator(EmulatorConfig(batch_duration=0)) as emu:
    ...     client = openai.OpenAI(base_url=emu.base_url, api_key="sk-test-dummy")
    """
    config = config or EmulatorConfig()
    if overrides:
        config = EmulatorConfig.model_validate({**config.model_dump(), **overrides})
    emulator = Emulator(config)
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    server = _uvicorn_server(emulator, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"emulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the emulator did not start on {config.host}:{port}")
        time.sleep(0.005)
    try:
        yield RunningEmulator(emulator, config.host, port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        emulator.shutdown()
        sock.close()


def serve(config: EmulatorConfig, log_level: str = "info", on_ready: Any = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM). `on_ready(url)` is called once the port is bound (connections
    made from then on wait in the listen queue until the server answers)."""
    emulator = Emulator(config)
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    server = _uvicorn_server(emulator, log_level)
    if on_ready is not None:
        host = f"[{config.host}]" if ":" in config.host else config.host
        on_ready(f"http://{host}:{port}")
    gc.freeze()  # its own process: the modules and app built so far stay out of the collector's walks (pauses)
    try:
        server.run(sockets=[sock])
    finally:
        emulator.shutdown()
        sock.close()
