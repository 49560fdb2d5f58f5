"""Create a saved W&B workspace view for gbatch_flows runs.

    python -m gbatch_flows.wandb_view [--dst_entity E] [--dst_project P] [--name NAME] [--dry-run]

``--dst_entity`` / ``--dst_project`` are the original ``gpt_batch_api.wandb_configure_view`` flags (``--entity`` /
``--project`` work too); the project defaults to the one runs log to (``--wandb_project``'s default). The view is
first built as plain data (:func:`build_view_spec`, no wandb needed); it is applied through the ``wandb_workspaces``
package (``pip install "gbatch_flows[wandb_view]"``) only when that package is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import Any

from gbatch_flows import monitor as m
from gbatch_flows.options import Options

DEFAULT_VIEW_NAME = "gbatch_flows overview"
#: The project runs log to unless --wandb_project says otherwise (the Options default).
DEFAULT_PROJECT: str = Options.model_fields["wandb_project"].default
PANEL_TYPES = ("line", "bar", "scalar")
_INSTALL_HINT = 'pip install "gbatch_flows[wandb_view]"` (or `pip install "wandb[workspaces]"'


def _line(title: str, *metrics: str) -> dict[str, Any]:
    return {"type": "line", "title": title, "x": "Step", "metrics": list(metrics)}


def _scalar(title: str, metric: str) -> dict[str, Any]:
    return {"type": "scalar", "title": title, "metrics": [metric]}


def build_view_spec(project: str, entity: str | None = None, name: str = DEFAULT_VIEW_NAME) -> dict[str, Any]:
    """The view as plain data: sections of panels, each panel naming the metrics it charts."""
    batch_states = [m.batch_state_metric(state) for state in m.BATCH_STATES]
    sections = [
        {"name": "Progress", "panels": [
            _line("Requests done / total", m.REQUESTS_DONE, m.REQUESTS_TOTAL, m.REQUESTS_FAILED),
            _line("Progress (fraction done)", m.REQUESTS_PROGRESS),
            _scalar("Requests done", m.REQUESTS_DONE),
        ]},
        {"name": "Tokens", "panels": [
            _line("Tokens", m.TOKENS_INPUT, m.TOKENS_CACHED_INPUT, m.TOKENS_OUTPUT),
        ]},
        {"name": "Cost (USD)", "panels": [
            _line("Cost: session and task", m.COST_SESSION, m.COST_TASK, m.COST_RESERVED),
            _scalar("Cost this session", m.COST_SESSION),
            _scalar("Cost of the task", m.COST_TASK),
        ]},
        {"name": "Batches", "panels": [
            _line("Batches by state", *batch_states),
            {"type": "bar", "title": "Batches by state (latest)", "metrics": batch_states},
        ]},
        {"name": "API health", "panels": [
            _line("Rate limits (HTTP 429) and retries", m.API_HTTP_429, m.API_RETRIES),
            _line("Direct API requests", m.DIRECT_REQUESTS),
        ]},
    ]
    return {"name": name, "entity": entity, "project": project, "sections": sections}


def spec_metrics(spec: dict[str, Any]) -> set[str]:
    """Every metric name a view spec refers to."""
    return {metric for section in spec["sections"] for panel in section["panels"] for metric in panel["metrics"]}


def workspaces_available() -> bool:
    """Whether the optional ``wandb_workspaces`` package (W&B's workspace API) is installed."""
    return importlib.util.find_spec("wandb_workspaces") is not None


def to_workspace(spec: dict[str, Any], ws: Any, wr: Any) -> Any:
    """Build a ``ws.Workspace`` from the spec, given the ``wandb_workspaces.workspaces`` module (``ws``) and
    ``wandb_workspaces.reports.v2`` module (``wr``)."""

    def panel(p: dict[str, Any]) -> Any:
        if p["type"] == "line":
            return wr.LinePlot(title=p["title"], x=p["x"], y=list(p["metrics"]))
        if p["type"] == "bar":
            return wr.BarPlot(title=p["title"], metrics=list(p["metrics"]))
        if p["type"] == "scalar":
            return wr.ScalarChart(title=p["title"], metric=p["metrics"][0])
        raise ValueError(f"unknown panel type {p['type']!r}; expected one of {PANEL_TYPES}")

    sections = [ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True)
                for s in spec["sections"]]
    return ws.Workspace(name=spec["name"], entity=spec["entity"], project=spec["project"], sections=sections)


def apply_view_spec(spec: dict[str, Any]) -> str | None:
    """Save the view through wandb_workspaces; returns its URL when wandb reports one."""
    ws = importlib.import_module("wandb_workspaces.workspaces")
    wr = importlib.import_module("wandb_workspaces.reports.v2")
    workspace = to_workspace(spec, ws, wr)
    save = getattr(workspace, "save_as_new_view", None) or workspace.save
    saved = save()
    return getattr(saved, "url", None) or getattr(workspace, "url", None)


def _default_entity() -> str | None:
    import wandb  # lazy: slow import

    return wandb.Api().default_entity


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gbatch_flows.wandb_view",
                                     description="Create a saved W&B workspace view for gbatch_flows runs.")
    parser.add_argument("--dst_project", "--project", dest="project", default=DEFAULT_PROJECT,
                        help=f"W&B project holding the runs (default: {DEFAULT_PROJECT}, where runs log by default).")
    parser.add_argument("--dst_entity", "--entity", dest="entity", default=None,
                        help="W&B entity (user or team; default: your default entity).")
    parser.add_argument("--name", default=DEFAULT_VIEW_NAME, help="Name of the saved view.")
    parser.add_argument("--dry-run", action="store_true", help="Print the view as JSON; change nothing.")
    args = parser.parse_args(argv)

    spec = build_view_spec(args.project, args.entity, args.name)
    if args.dry_run:
        print(json.dumps(spec, indent=2))
        return 0
    if not workspaces_available():
        print(f"error: the W&B workspace API (package wandb_workspaces) is not installed, so the view was not "
              f"created; install it with `{_INSTALL_HINT}`, or use --dry-run to see the view.", file=sys.stderr)
        return 1
    if not m.wandb_logged_in():
        print("error: not logged in to W&B; run `wandb login` or set WANDB_API_KEY, then try again.",
              file=sys.stderr)
        return 1
    if spec["entity"] is None:
        spec["entity"] = _default_entity()
        if not spec["entity"]:
            print("error: could not find your default W&B entity; pass --dst_entity.", file=sys.stderr)
            return 1
    try:
        url = apply_view_spec(spec)
    except Exception as exc:  # noqa: BLE001 - report the API's complaint in one line
        print(f"error: W&B refused the view: {exc}", file=sys.stderr)
        return 1
    print(f"saved view {spec['name']!r} in {spec['entity']}/{spec['project']}" + (f": {url}" if url else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
