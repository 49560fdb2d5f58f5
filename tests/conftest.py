"""Fixtures shared by several test folders: one moto S3 server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gbatch_flows.testing.moto import MotoS3, moto_s3_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """One moto S3 server (dummy credentials, free port) for the whole test session."""
    with moto_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: MotoS3) -> str:
    return s3_server.create_bucket()
