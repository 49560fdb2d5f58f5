"""Command line of a task: ``python flows/char_codes.py --help``.

Options keep the names of the original ``gpt_batch_api`` flags; a task's own parameters (``Task.Params``) are added
as further flags. The run goes through the Prefect flow unless ``--no_prefect`` is given.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pydantic import create_model

from gbatch_flows.cli_args import parse_options
from gbatch_flows.costs import UnknownPriceError
from gbatch_flows.engine.context import EngineStop
from gbatch_flows.options import Options
from gbatch_flows.store import StoreError
from gbatch_flows.task import Task
from gbatch_flows.tokens import EstimateError

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


def main(task_cls: type[Task], argv: list[str] | None = None) -> int:
    """Parse options, run the task, return the process exit code."""
    combined = parse_options(argv, model=options_model(task_cls), prog=f"{task_cls.name}",
                             description=(task_cls.__doc__ or "").strip() or None)
    options, params = split_options(task_cls, combined)
    setup_logging(options.log_level)
    task = task_cls(params)
    try:
        # a dry run changes nothing and --no_run runs no stage: no flow run to record either
        if options.no_prefect or options.dryrun or options.no_run:
            from gbatch_flows.runs import run_plain

            summary = run_plain(task, options)
        else:
            from gbatch_flows.flow import run_flow

            summary = run_flow(task, options)
    except KeyboardInterrupt:
        print("interrupted: every completed step is committed; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (EngineStop, StoreError, UnknownPriceError, EstimateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # setup problems carry their own message
        from gbatch_flows.launch import SetupError

        if isinstance(exc, SetupError):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
    print(f"{task.name}: {summary.status}: {summary.reason}", flush=True)
    return EXIT_ERROR if summary.status == "error" else EXIT_OK
