"""A whole run of a task in this process, without Prefect: set-up, maintenance operations, stages, output."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from gbatch_flows import reporting, status
from gbatch_flows.engine.cleanup import clean_remote
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.output import write_output
from gbatch_flows.engine.reconcile import reconcile_at_end
from gbatch_flows.engine.runner import RunSummary, Stages, counts, run_engine
from gbatch_flows.launch import api_endpoint, open_engine, prepare
from gbatch_flows.monitor import make_monitor
from gbatch_flows.options import Options
from gbatch_flows.task import Task

log = logging.getLogger("gbatch_flows")

MONITOR_INTERVAL_S = 10.0


def finish_output(engine: Engine, task: Task) -> tuple[str, int]:
    """Write the task's output file from the committed results and collect garbage (files no commit references,
    left by crashes, older than an hour); returns the output URL and its number of records."""
    ref, count = write_output(engine.store, engine.state, task.output_name)
    try:
        removed = engine.store.gc()
        if removed:
            log.info("removed %d unreferenced files", len(removed))
    except Exception as exc:  # noqa: BLE001 - garbage collection must never fail a finished run
        log.warning("garbage collection skipped: %s", exc)
    return f"{engine.store.url.rstrip('/')}/{ref.path}", count


class ProgressBar:
    """A rich progress bar of requests done / generated (only on an interactive terminal)."""

    def __init__(self, enabled: bool):
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), transient=False)
            self.progress.start()
            self.bar = self.progress.add_task("requests", total=None, extra="")

    def update(self, figures: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(self.bar, total=figures["requests/total"] or None,
                                 completed=figures["requests/done"], extra=f"${figures['cost/session']:.4f}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class Reporter:
    """What a run shows while it runs and when it ends; the plain run prints, the flow makes artifacts and states.

    ``progress`` is called on every commit (throttle it), ``finish`` once at the end, whatever the outcome:
    ``summary`` is None when the run failed with ``error``; ``output`` is (URL, records) once written.
    """

    def start(self, engine: Engine) -> None:
        pass

    def progress(self, engine: Engine, figures: dict[str, Any]) -> None:
        pass

    def finish(self, engine: Engine, summary: RunSummary | None, output: tuple[str, int] | None,
               error: BaseException | None) -> None:
        pass


def run_task(task: Task, options: Options, session_id: str | None, *, reporter: Reporter,
             stages: Callable[[Engine], Stages] = Stages, api_key: str | None = None,
             on_commit: Callable[[Any], None] | None = None) -> RunSummary:
    """The run skeleton shared by the plain run and the Prefect flow: endpoint -> engine (lease) -> maintenance ->
    the stage loop (``Runner`` over ``stages(engine)``) -> output -> summary, with monitoring throughout.

    ``api_key`` (in memory, never in the environment) wins over the options' and the environment's key.
    A lease held by another run raises ``LeaseHeld``; a rule that stops the run returns an ``error`` summary.
    """
    with api_endpoint(options, task, api_key) as (base_url, key, local):
        with open_engine(task, options, session_id, base_url=base_url, api_key=key, local_server=local) as engine:
            if on_commit:
                engine.on_commit.append(on_commit)
            for note in options.adapted:
                log.info("option adapted: %s", note)
            prepare(engine, task)
            if options.no_run:
                reconcile_at_end(engine)  # the status shows what the remote holds that the manifest missed
                state = engine.refresh()
                print("\n".join(status.status_lines(engine)), flush=True)
                return RunSummary("stopped", "no_run: maintenance done, nothing run", state.generation, counts(state))
            monitor = make_monitor(options)
            monitor.start({"task": task.name, "session": engine.session_id, "task_dir": engine.store.url})
            throttle = reporting.Throttle(MONITOR_INTERVAL_S)

            def report(state: Any, force: bool = False) -> None:
                figures = reporting.metrics(state, engine.session_id)
                reporter.progress(engine, figures)
                if throttle.ready() or force:
                    monitor.log(figures)
                    monitor.log_batch_states(reporting.batch_states(state))

            engine.on_commit.append(report)
            summary: RunSummary | None = None
            output: tuple[str, int] | None = None
            error: BaseException | None = None
            reporter.start(engine)
            started = time.time()
            try:
                summary = run_engine(engine, stages=stages(engine))
                reconcile_at_end(engine)  # the remote is the truth for spend: count what the manifest missed
                clean_remote(engine, started)
                report(engine.refresh(), force=True)
                output = finish_output(engine, task)
                log.info("output: %d records in %s", output[1], output[0])
                log.info("%s: %s. %s", summary.status, summary.reason,
                         reporting.summary_line(engine.state, engine.session_id))
                print("\n".join(status.status_lines(engine)), flush=True)
                return summary
            except BaseException as exc:
                error = exc
                raise
            finally:
                try:
                    reporter.finish(engine, summary, output, error)
                finally:
                    monitor.finish()


class ConsoleReporter(Reporter):
    """A progress bar on an interactive terminal."""

    bar: ProgressBar | None = None

    def start(self, engine: Engine) -> None:
        self.bar = ProgressBar(sys.stdout.isatty())

    def progress(self, engine: Engine, figures: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(figures)

    def finish(self, engine: Engine, summary: RunSummary | None, output: tuple[str, int] | None,
               error: BaseException | None) -> None:
        if self.bar is not None:
            self.bar.close()


def run_plain(task: Task, options: Options, session_id: str | None = None,
              on_commit: Callable[[Any], None] | None = None) -> RunSummary:
    """Run the task to completion (or until a limit stops it) in this process, without Prefect."""
    if options.dryrun:
        from gbatch_flows.engine.dryrun import dry_run

        with api_endpoint(options, task) as (base_url, key, local):
            return dry_run(task, options, local_server=local)
    if options.shared_direct_limit and not options.no_run:
        log.warning("--shared_direct_limit %s is not used without Prefect (--no_prefect): this run's direct requests "
                    "are limited by its own --max_direct_rpm / --max_direct_tpm only", options.shared_direct_limit)
    return run_task(task, options, session_id, reporter=ConsoleReporter(), on_commit=on_commit)
