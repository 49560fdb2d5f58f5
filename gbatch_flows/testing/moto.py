"""Start a throwaway S3 emulator (moto_server) for tests: ``with moto_s3_server() as s3: ...``.

Nothing here touches ``os.environ``: the dummy credentials are in ``s3.storage_options`` (for s3fs /
``open_store``) and ``s3.env`` (for subprocesses and boto3).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gbatch_flows.testing.ports import free_port

DUMMY_KEY = "testing"
REGION = "us-east-1"
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server."""

    endpoint_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name if none given) and return its name."""
        return create_bucket(self.endpoint_url, name or f"test-{uuid.uuid4().hex[:16]}")

    def url(self, bucket: str, prefix: str = "") -> str:
        """``s3://bucket/prefix`` for ``open_store``."""
        return f"s3://{bucket}/{prefix}".rstrip("/")


def storage_options_for(endpoint_url: str) -> dict[str, Any]:
    """s3fs options that reach the emulator with dummy credentials."""
    return {
        "key": DUMMY_KEY,
        "secret": DUMMY_KEY,
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": REGION},
    }


def create_bucket(endpoint_url: str, name: str) -> str:
    """Create bucket ``name`` on the emulator (a plain HTTP PUT: moto does not check signatures)."""
    request = urllib.request.Request(f"{endpoint_url}/{name}", method="PUT", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"creating bucket {name} on {endpoint_url} failed: HTTP {response.status}")
    return name


def _wait_until_up(process: subprocess.Popen[bytes], endpoint_url: str) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=1):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    return False


@contextlib.contextmanager
def moto_s3_server(attempts: int = 3) -> Iterator[MotoS3]:
    """Run ``python -m moto.server`` on a free 127.0.0.1 port for the duration of the block."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": DUMMY_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }
    for _ in range(attempts):
        port = free_port()
        endpoint_url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_until_up(process, endpoint_url):
                continue  # port taken in between, or a slow start: try another port
            client_env = {
                "AWS_ACCESS_KEY_ID": DUMMY_KEY,
                "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": endpoint_url,
            }
            yield MotoS3(endpoint_url, storage_options_for(endpoint_url), client_env)
            return
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    raise RuntimeError(f"moto_server did not start after {attempts} attempts")
