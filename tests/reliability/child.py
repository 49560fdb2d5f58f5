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
import signal
import sys
import threading
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class StopPlan:
    """When a forked run stops itself: ``delay`` seconds after the (skip+1)-th matching marker, with ``sig``.

    The child signals itself (from a timer thread; SIGINT goes to the main thread, as a terminal's Ctrl+C does),
    so the moment does not depend on how fast the parent reacts.
    """

    kind: str  # "stage" (a stage was entered) or "commit" (a commit whose message starts with ``text``)
    text: str
    skip: int = 0
    delay: float = 0.0
    sig: int = signal.SIGKILL

    def matches(self, item: tuple) -> bool:
        kind, _, _, text = item
        if self.kind == "stage":
            return kind == "stage" and text == self.text
        return kind == "commit" and text.startswith(self.text) and not text.startswith("poll: 0 ")


class Stopper:
    """Passes markers on and arms the stop when the plan's marker shows up."""

    def __init__(self, plan: StopPlan | None, send: Any):
        self.plan = plan
        self.send = send
        self.seen = 0
        self.armed = False
        self.main = threading.main_thread().ident

    def __call__(self, item: tuple) -> None:
        self.send(item)
        plan = self.plan
        if plan is None or self.armed or not plan.matches(item):
            return
        self.seen += 1
        if self.seen > plan.skip:
            self.armed = True
            timer = threading.Timer(plan.delay, self._fire)
            timer.daemon = True
            timer.start()

    def _fire(self) -> None:
        assert self.plan is not None
        self.send(("signal", time.monotonic(), self.plan.sig, ""))
        if self.plan.sig == signal.SIGKILL:
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            signal.pthread_kill(self.main, self.plan.sig)  # type: ignore[arg-type]


class MarkerHandler(logging.Handler):
    """Forwards the engine's commit log lines (and nothing else) to the parent."""

    def __init__(self, send: Any):
        super().__init__(level=logging.DEBUG)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == COMMIT_LOGGER and record.msg == "commit %d: %s":
            generation, message = record.args  # type: ignore[misc]
            self.send(("commit", time.monotonic(), int(generation), str(message)))


def _stage_marker(name: str, fn: Any, send: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        send(("stage", time.monotonic(), 0, name))
        return fn(*args, **kwargs)

    return wrapper


def _install_markers(send: Any) -> None:
    """Commit markers from the engine's log; stage markers by wrapping the stage functions where the run loop
    looks them up (test instrumentation only: the functions themselves are unchanged)."""
    logger = logging.getLogger(COMMIT_LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(MarkerHandler(send))
    from gbatch_flows import runs
    from gbatch_flows.engine import process, push, runner

    for name in ("generate", "process", "assemble", "push", "poll", "run_direct"):
        setattr(runner, name, _stage_marker(name, getattr(runner, name), send))
    runs.finish_output = _stage_marker("output", runs.finish_output, send)
    # the narrowest windows: the remote batch exists but "pushed" is not committed yet; the results are downloaded
    # and processed but not committed yet
    push.commit_pushed = _stage_marker("push-created", push.commit_pushed, send)
    process._commit_processed = _stage_marker("process-downloaded", process._commit_processed, send)


def run_cli(argv: list[str], env: dict[str, str | None], log_path: str, conn: Any = None,
            plan: StopPlan | None = None, uid: int | None = None) -> None:
    """Forked child: output to ``log_path``, markers to ``conn``, stop as ``plan`` says, exit with the CLI's code.

    ``uid``: run as this user (the parent is root; permission checks do not apply to root).
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if uid is not None:
        os.setgid(uid)
        os.setuid(uid)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    send = Stopper(plan, conn.send if conn is not None else (lambda item: None))
    _install_markers(send)
    send(("started", time.monotonic(), os.getpid(), ""))
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
        kind, _, number, text = item
        marker_out.write(f"{kind} {text} {number}\n")

    _install_markers(send)
    send(("started", time.monotonic(), os.getpid(), ""))
    code = cli.main(RelTask, argv)
    send(("exit", time.monotonic(), code, ""))
    return code


warm_up()

if __name__ == "__main__":
    sys.exit(_script_main())
