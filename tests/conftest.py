"""Fixtures shared by several test folders: one moto S3 server for the whole session, the figures."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gbatch_flows.testing import figures
from gbatch_flows.testing.moto import MotoS3, moto_s3_server

SLOW_FIXTURES = {"prefect_server"}  # a Prefect server (tests/flow): the test tier `-m "not slow"` leaves them out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a Prefect server are `slow`, wherever they are."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


FIGURES_ENV = "GBATCH_RELIABILITY_FIGURES"  # optional: append the figures of this run to this JSON-lines file


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A pytest-xdist worker hands its figures to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[figures.WORKER_KEY] = figures.dumps()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """The controller merges a finished worker's figures."""
    text = getattr(node, "workeroutput", {}).get(figures.WORKER_KEY)
    if text:
        figures.merge_json(text)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not figures.FIGURES or hasattr(terminalreporter.config, "workeroutput"):
        return
    terminalreporter.section("reliability figures")
    for name in sorted(figures.FIGURES):
        terminalreporter.write_line(f"{name}: {json.dumps(figures.FIGURES[name], sort_keys=True, default=str)}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), "figures": figures.FIGURES}, default=str) + "\n")


@pytest.fixture(scope="session", name="figures")
def figures_fixture() -> dict[str, Any]:
    """Tests record what they measured here (kills survived, faults injected, shares of a limit in use...); shown
    after the run (merged across pytest-xdist workers, see above)."""
    return figures.FIGURES


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """One moto S3 server (dummy credentials, free port) for the whole test session."""
    with moto_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: MotoS3) -> str:
    return s3_server.create_bucket()


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """A test that runs the CLI's ``main`` configures logging (``basicConfig(force=True)``) with a handler on the
    stream pytest captures for that test and closes after it: later tests must not log into it."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
