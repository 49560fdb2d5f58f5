"""Checks of ``--task_dir`` before anything is written: refuse the values that would silently keep the state in the
wrong place (``s3://`` without a bucket became a local folder ``./s3:``) or keep nothing (``memory://``)."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def check_task_dir(task_dir: str) -> str | None:
    """The one-line problem with ``task_dir``, or None when it is usable."""
    text = task_dir.strip()
    if not text:
        return "--task_dir is empty: give a local folder or s3://bucket/prefix"
    match = _SCHEME.match(text)
    if match is None or len(match.group(1)) == 1:  # a plain path (or a Windows drive letter)
        return None
    scheme = match.group(1).lower()
    rest = text[match.end():]
    if scheme == "memory":
        return (f"--task_dir {task_dir} keeps the task state in memory only: everything is lost when the run ends. "
                "Use a local folder or s3://bucket/prefix")
    if not rest.startswith("//"):
        return f"--task_dir {task_dir} is not a URL ({scheme}: needs '{scheme}://'): write e.g. s3://bucket/prefix"
    if scheme == "s3" and not rest[2:].strip("/"):
        return f"--task_dir {task_dir} has no bucket: write s3://bucket/prefix"
    if scheme == "file" and not rest[2:].strip("/"):
        return f"--task_dir {task_dir} has no path: write file:///path/to/folder or a plain path"
    return None
