"""Command line of a task: ``python flows/char_codes.py --help``.

Options keep the names of the original ``gpt_batch_api`` flags; a task's own parameters (``Task.Params``) are added
as further flags. The run goes through the Prefect flow unless ``--no_prefect`` is given.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import Any

from pydantic import ValidationError, create_model

from gbatch_flows.cli_args import parse_options
from gbatch_flows.failures import PREFECT_TIMEOUT_DEFAULT_S, PREFECT_TIMEOUT_ENV, describe
from gbatch_flows.options import Options
from gbatch_flows.startup import imports_loaded
from gbatch_flows.task import Task

log = logging.getLogger("gbatch_flows")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def options_model(task_cls: type[Task]) -> type[Options]:
    """Options plus the task's own parameters, as one pydantic model (one flag per field)."""
    if task_cls.Params is None:
        return Options
    fields: dict[str, Any] = {name: (f.annotation, f) for name, f in task_cls.Params.model_fields.items()}
    return create_model(f"{task_cls.__name__}Options", __base__=Options, **fields)


def split_options(task_cls: type[Task], combined: Options) -> tuple[Options, dict[str, Any]]:
    """The run's Options and the task's params: only the params that were given (the others are the task's stored
    metadata or its defaults); the Options keep which of them were given (``model_fields_set``)."""
    given = combined.model_fields_set
    params = {name: getattr(combined, name) for name in (task_cls.Params.model_fields if task_cls.Params else {})
              if name in given}
    options = Options.model_validate({name: getattr(combined, name) for name in Options.model_fields},
                                     context={"given": given & set(Options.model_fields)})
    options._adapted = combined.adapted  # the values moved when the command line was read (logged by the run)
    return options, params


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "httpx2", "openai", "botocore", "aiobotocore", "s3fs", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def lazy_flow(module_globals: dict[str, Any], task_cls: type[Task], attr: str):
    """A module ``__getattr__`` that makes ``attr`` the Prefect flow of ``task_cls`` on first access (a deployment
    entrypoint such as ``flows/char_codes.py:char_codes_flow``), so runs without Prefect never import it."""

    def __getattr__(name: str) -> Any:
        if name == attr:
            from gbatch_flows.flow import make_flow

            module_globals[name] = made = make_flow(task_cls)
            return made
        raise AttributeError(f"module {module_globals.get('__name__')!r} has no attribute {name!r}")

    return __getattr__


class _NoTraceback(logging.Filter):
    """Drops the traceback Prefect prints with a failed flow or task run (the CLI prints one line instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_prefect_tracebacks() -> None:
    """No tracebacks in what Prefect's run loggers log (a failed flow or task run): the CLI prints one line instead;
    they stay at --log_level DEBUG. Set on the loggers themselves, so every handler (ours, Prefect's) is covered."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTraceback) for f in logger.filters):
            logger.addFilter(_NoTraceback())


def make_task(task_cls: type[Task], params: dict[str, Any], prog: str) -> Task | None:
    """The task, or None after an argparse-style error line when a task parameter fails its own checks."""
    try:
        return task_cls(params)
    except ValidationError as exc:
        from gbatch_flows.cli_args import format_validation_error

        print(f"usage: {prog} [-h] [options]\n{prog}: error: {format_validation_error(exc, {}, task_cls.Params)}",
              file=sys.stderr)
        return None


def _run(task: Task, options: Options) -> Any:
    # a dry run changes nothing and --no_run runs no stage: no flow run to record either
    if options.no_prefect or options.dryrun or options.no_run:
        from gbatch_flows.runs import run_plain

        imports_loaded()  # the flows/*.py entry paused the garbage collector until the run's modules are loaded
        return run_plain(task, options)
    os.environ.setdefault(PREFECT_TIMEOUT_ENV, PREFECT_TIMEOUT_DEFAULT_S)  # read when Prefect is imported
    from gbatch_flows.flow import run_flow

    imports_loaded()
    if options.log_level.upper() != "DEBUG":
        quiet_prefect_tracebacks()
    return run_flow(task, options)


def main(task_cls: type[Task], argv: list[str] | None = None) -> int:
    """Parse options, run the task, return the process exit code. Every error is one line (exit code != 0); the
    traceback only with --log_level DEBUG."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the flows/*.py entry quieted it during imports
    debug = False
    try:
        combined = parse_options(argv, model=options_model(task_cls), prog=f"{task_cls.name}",
                                 description=(task_cls.__doc__ or "").strip() or None)
        options, params = split_options(task_cls, combined)
        debug = options.log_level.upper() == "DEBUG"
        setup_logging(options.log_level)
        task = make_task(task_cls, params, task_cls.name)
        if task is None:
            return EXIT_USAGE
        summary = _run(task, options)
    except KeyboardInterrupt:
        print("interrupted: every completed step is committed; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error ends as one line
        if debug:
            traceback.print_exc()
        code, line = describe(exc)
        print(f"error: {line}", file=sys.stderr)
        return code
    print(f"{task.name}: {summary.status}: {summary.reason}", flush=True)
    return EXIT_ERROR if summary.status == "error" else EXIT_OK
