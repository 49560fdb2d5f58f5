"""A whole run of a task in this process, without Prefect: set-up, maintenance operations, stages, output."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from gbatch_flows import reporting, status
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.output import write_output
from gbatch_flows.engine.runner import RunSummary, counts, run_engine
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


def run_plain(task: Task, options: Options, session_id: str | None = None,
              on_commit: Callable[[Any], None] | None = None) -> RunSummary:
    """Run the task to completion (or until a limit stops it) in this process."""
    if options.dryrun:
        from gbatch_flows.engine.dryrun import dry_run

        with api_endpoint(options, task) as (base_url, key, local):
            return dry_run(task, options, local_server=local)
    with api_endpoint(options, task) as (base_url, key, local):
        with open_engine(task, options, session_id, base_url=base_url, api_key=key, local_server=local) as engine:
            if on_commit:
                engine.on_commit.append(on_commit)
            for note in options.adapted:
                log.info("option adapted: %s", note)
            prepare(engine, task)
            if options.no_run:
                state = engine.refresh()
                print("\n".join(status.status_lines(engine)), flush=True)
                return RunSummary("stopped", "no_run: maintenance done, nothing run", state.generation, counts(state))
            monitor = make_monitor(options)
            monitor.start({"task": task.name, "session": engine.session_id, "task_dir": engine.store.url})
            bar = ProgressBar(sys.stdout.isatty())

            throttle = reporting.Throttle(MONITOR_INTERVAL_S)

            def report(state, force: bool = False) -> None:
                figures = reporting.metrics(state, engine.session_id)
                bar.update(figures)
                if throttle.ready() or force:
                    monitor.log(figures)
                    monitor.log_batch_states(reporting.batch_states(state))

            engine.on_commit.append(report)
            try:
                summary = run_engine(engine)
                report(engine.state, force=True)
                url, n = finish_output(engine, task)
                log.info("output: %d records in %s", n, url)
                log.info("%s: %s. %s", summary.status, summary.reason,
                         reporting.summary_line(engine.state, engine.session_id))
                print("\n".join(status.status_lines(engine)), flush=True)
                return summary
            finally:
                bar.close()
                monitor.finish()
