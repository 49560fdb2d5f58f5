"""One run of the reliability task through the real command line (``gbatch_flows.cli.main``), in a child process.

Used two ways:

* forked from a multiprocessing *forkserver* that imported this module (and warmed the tokenizer) once, so a run
  starts in milliseconds and can be killed hundreds of times per test (``harness.Forkserver``);
* as a script, ``python tests/reliability/child.py LOG_PATH -- CLI ARGS...``, for the few checks that want a fresh
  interpreter (real Ctrl+C handling, exit codes).

The child reports progress markers to the parent: every manifest commit (``commit <gen>: <message>``, from the
engine's own debug log line) and the exit code. Over a pipe when forked; on stdout when run as a script.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tasks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tasks import RelTask  # type: ignore[import-not-found,no-redef]
else:
    from .tasks import RelTask

from gbatch_flows import cli
from gbatch_flows.tokens import get_estimator

COMMIT_LOGGER = "gbatch_flows.engine"


def warm_up() -> None:
    """Import and load what every run needs once (in the forkserver), so forked children start in milliseconds.

    Nothing here may start a thread or open a connection: the forkserver forks from this state.
    """
    import openai
    import s3fs  # noqa: F401

    import gbatch_flows.runs  # noqa: F401

    get_estimator().estimate("/v1/chat/completions",
                             {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "warm up"}]})
    client = openai.OpenAI(api_key="sk-warm-up", base_url="http://127.0.0.1:9/v1")
    for resource in (client.files, client.batches, client.chat.completions):
        assert resource is not None
    client.close()


class MarkerHandler(logging.Handler):
    """Forwards the engine's commit log lines (and nothing else) to the parent."""

    def __init__(self, send: Any):
        super().__init__(level=logging.DEBUG)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == COMMIT_LOGGER and record.msg == "commit %d: %s":
            generation, message = record.args  # type: ignore[misc]
            self.send(("commit", time.monotonic(), int(generation), str(message)))


def _install_markers(send: Any) -> None:
    logger = logging.getLogger(COMMIT_LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(MarkerHandler(send))


def run_cli(argv: list[str], env: dict[str, str | None], log_path: str, conn: Any = None) -> None:
    """Forked child: output to ``log_path``, markers to ``conn``, exit with the CLI's exit code."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    send = conn.send if conn is not None else (lambda item: None)
    _install_markers(send)
    send(("started", time.monotonic(), os.getpid(), f"imported {time.monotonic() - IMPORTED_AT:.3f}s ago {os.getppid()}"))
    code = cli.main(RelTask, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    send(("exit", time.monotonic(), code, ""))
    sys.exit(code)


def _script_main() -> int:
    """``child.py LOG_PATH -- ARGS``: markers as lines on stdout, everything else to LOG_PATH."""
    log_path, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: child.py LOG_PATH -- CLI ARGS..."
    marker_out = os.fdopen(os.dup(1), "w", buffering=1)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)

    def send(item: tuple) -> None:
        marker_out.write(" ".join(str(part) for part in item) + "\n")

    _install_markers(send)
    send(("started", time.monotonic(), os.getpid(), ""))
    code = cli.main(RelTask, argv)
    send(("exit", time.monotonic(), code, ""))
    return code


warm_up()
IMPORTED_AT = time.monotonic()

if __name__ == "__main__":
    sys.exit(_script_main())
