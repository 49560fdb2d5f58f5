"""The W&B workspace view: pure spec, mapping onto the workspace API, and the command's messages."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from gbatch_flows import monitor as m
from gbatch_flows import wandb_view as wv


def test_spec_charts_only_metrics_the_monitor_logs() -> None:
    spec = wv.build_view_spec("proj", "ent")
    assert (spec["project"], spec["entity"], spec["name"]) == ("proj", "ent", wv.DEFAULT_VIEW_NAME)
    metrics = wv.spec_metrics(spec)
    assert metrics and metrics <= m.KNOWN_METRICS, metrics - m.KNOWN_METRICS


def test_spec_has_the_required_panels() -> None:
    spec = wv.build_view_spec("proj", None)
    panels = [p for s in spec["sections"] for p in s["panels"]]
    by_metrics = [set(p["metrics"]) for p in panels]
    assert {m.REQUESTS_DONE, m.REQUESTS_TOTAL} <= by_metrics[0]  # progress first
    assert any({m.TOKENS_INPUT, m.TOKENS_OUTPUT} <= s for s in by_metrics)
    assert any({m.COST_SESSION, m.COST_TASK} <= s for s in by_metrics)
    assert any({m.batch_state_metric(st) for st in m.BATCH_STATES} <= s for s in by_metrics)
    assert any(m.API_HTTP_429 in s for s in by_metrics)
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles))
    assert all(p["type"] in wv.PANEL_TYPES for p in panels)
    assert all(len(p["metrics"]) == 1 for p in panels if p["type"] == "scalar")
    json.dumps(spec)  # plain data


def _fake_api() -> tuple[Any, Any]:
    def recorder(kind: str) -> Any:
        return lambda **kw: {"kind": kind, **kw}

    ws = SimpleNamespace(Workspace=recorder("Workspace"), Section=recorder("Section"))
    wr = SimpleNamespace(LinePlot=recorder("LinePlot"), BarPlot=recorder("BarPlot"),
                         ScalarChart=recorder("ScalarChart"))
    return ws, wr


def test_to_workspace_maps_every_panel() -> None:
    spec = wv.build_view_spec("proj", "ent", "my view")
    workspace = wv.to_workspace(spec, *_fake_api())
    assert (workspace["kind"], workspace["name"], workspace["entity"], workspace["project"]) == \
           ("Workspace", "my view", "ent", "proj")
    assert [s["name"] for s in workspace["sections"]] == [s["name"] for s in spec["sections"]]
    for built, section in zip(workspace["sections"], spec["sections"], strict=True):
        for panel, wanted in zip(built["panels"], section["panels"], strict=True):
            assert panel["title"] == wanted["title"]
            if wanted["type"] == "line":
                assert panel["kind"] == "LinePlot" and panel["y"] == wanted["metrics"]
            elif wanted["type"] == "bar":
                assert panel["kind"] == "BarPlot" and panel["metrics"] == wanted["metrics"]
            else:
                assert panel["kind"] == "ScalarChart" and panel["metric"] == wanted["metrics"][0]


def test_dry_run_prints_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert wv.main(["--project", "P", "--entity", "E", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == wv.build_view_spec("P", "E")


def test_without_workspace_package_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(wv, "workspaces_available", lambda: False)
    assert wv.main(["--project", "P"]) == 1
    err = capsys.readouterr().err
    assert "wandb[workspaces]" in err and "--dry-run" in err


def test_not_logged_in_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(wv, "workspaces_available", lambda: True)
    monkeypatch.setattr(m, "wandb_logged_in", lambda env=None: False)
    assert wv.main(["--project", "P"]) == 1
    assert "wandb login" in capsys.readouterr().err


def test_applies_with_default_entity(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    applied: list[dict] = []
    monkeypatch.setattr(wv, "workspaces_available", lambda: True)
    monkeypatch.setattr(m, "wandb_logged_in", lambda env=None: True)
    monkeypatch.setattr(wv, "_default_entity", lambda: "me")
    monkeypatch.setattr(wv, "apply_view_spec", lambda spec: applied.append(spec) or "https://wandb.test/v")
    assert wv.main(["--project", "P"]) == 0
    assert applied[0]["entity"] == "me" and applied[0]["project"] == "P"
    assert "https://wandb.test/v" in capsys.readouterr().out


def test_module_runs_as_a_command_without_importing_wandb() -> None:
    code = ("import runpy, sys\n"
            "sys.argv = ['wandb_view', '--project', 'P', '--dry-run']\n"
            "try:\n    runpy.run_module('gbatch_flows.wandb_view', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'wandb' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["project"] == "P"


def test_original_dst_flags_and_default_project(capsys: pytest.CaptureFixture[str]) -> None:
    """``--dst_entity`` / ``--dst_project`` as in gpt_batch_api's wandb_configure_view; the project defaults to the
    one runs log to (the --wandb_project default)."""
    from gbatch_flows.options import Options

    assert wv.main(["--dst_entity", "E", "--dry-run"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert (spec["entity"], spec["project"]) == ("E", Options().wandb_project)
    assert wv.main(["--dst_entity", "E", "--dst_project", "Q", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["project"] == "Q"


def test_extra_installs_the_workspace_api_and_version_exists() -> None:
    import tomllib
    from pathlib import Path

    import gbatch_flows

    pyproject = tomllib.loads((Path(gbatch_flows.__file__).parent.parent / "pyproject.toml").read_text())
    assert any(req.startswith("wandb-workspaces") for req in pyproject["project"]["optional-dependencies"]["wandb_view"])
    assert gbatch_flows.__version__ == pyproject["project"]["version"]
    assert "gbatch_flows[wandb_view]" in wv._INSTALL_HINT
