"""Fixtures for the store tests: one suite over a local folder, S3 on moto, and memory://."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gbatch_flows.store import Store, open_store
from gbatch_flows.testing.moto import MotoS3


@dataclass(frozen=True)
class Target:
    """Where a test's task folder lives; ``open()`` gives a new Store object on it each time."""

    kind: str
    url: str
    storage_options: dict[str, Any] | None = None
    local_root: Path | None = None

    def open(self, **store_options: Any) -> Store:
        return open_store(self.url, self.storage_options, **store_options)


def _make_target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    name = f"task-{uuid.uuid4().hex[:12]}"
    if kind == "local":
        root = tmp_path / name
        return Target("local", str(root), None, root)
    if kind == "s3":
        server: MotoS3 = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        return Target("s3", server.url(bucket, name), server.storage_options)
    return Target("memory", f"memory://{name}")


@pytest.fixture(params=["local", "s3", "memory"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """All three backends."""
    return _make_target(request.param, request, tmp_path)


@pytest.fixture(params=["local", "s3"])
def durable_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """Backends shared between processes (memory:// lives in one process only)."""
    return _make_target(request.param, request, tmp_path)


@pytest.fixture
def local_target(tmp_path: Path) -> Target:
    root = tmp_path / "task"
    return Target("local", str(root), None, root)
