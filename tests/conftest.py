"""Fixtures shared by several test folders: one moto S3 server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gbatch_flows.testing.moto import MotoS3, moto_s3_server

SLOW_FIXTURES = {"prefect_server"}  # a Prefect server (tests/flow): the test tier `-m "not slow"` leaves them out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a Prefect server are `slow`, wherever they are."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
