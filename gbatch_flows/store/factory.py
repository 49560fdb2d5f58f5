"""``open_store(url)``: pick the backend from the URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gbatch_flows.store.base import Store
from gbatch_flows.store.errors import StoreError


def _s3_backend(url: str, storage_options: dict[str, Any]) -> Any:
    import s3fs

    from gbatch_flows.store.s3 import S3Backend

    root = url[len("s3://") :].strip("/")
    if not root:
        raise StoreError(f"{url!r} has no bucket: use s3://bucket/prefix")
    # Listings must never come from a cache: the newest manifest is found by listing.
    options = {**storage_options, "use_listings_cache": False}
    fs = s3fs.S3FileSystem(**options)
    return S3Backend(fs, root, f"s3://{root}")


def open_store(url: str, storage_options: dict[str, Any] | None = None, **store_options: Any) -> Store:
    """Open (creating if needed) the task folder at ``url``.

    ``url``: a local path ("/data/task", "file:///data/task"), "s3://bucket/prefix" or "memory://name".
    ``storage_options``: passed to s3fs for s3:// URLs (key, secret, client_kwargs={"endpoint_url": ...}).
    ``store_options``: tuning passed to ``Store`` (max_chain, min_checkpoint_bytes, auto_keep_generations).
    """
    if not isinstance(url, str) or not url.strip():
        raise StoreError(f"the store URL must be a non-empty string, got {url!r}")
    options = dict(storage_options or {})
    if url.startswith("s3://"):
        return Store(_s3_backend(url, options), **store_options)
    if url.startswith("memory://"):
        from gbatch_flows.store.memory import MemoryBackend

        name = url[len("memory://") :].strip("/")
        if not name:
            raise StoreError("memory:// URLs need a name, e.g. memory://my-task")
        return Store(MemoryBackend(name), **store_options)
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url:
        scheme = url.split("://", 1)[0]
        raise StoreError(
            f"unsupported store URL scheme {scheme!r} in {url!r}: use a local path, file://, s3:// or memory://"
        )
    from gbatch_flows.store.local import LocalBackend

    return Store(LocalBackend(Path(url).expanduser().absolute()), **store_options)
