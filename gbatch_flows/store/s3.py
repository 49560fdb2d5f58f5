"""S3 backend (s3fs): conditional PUTs (If-None-Match / If-Match) give create-if-absent and compare-and-swap."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from fsspec.asyn import sync

from gbatch_flows.store.errors import CasConflict, StoreError
from gbatch_flows.store.fsspec_backend import FsspecBackend

log = logging.getLogger(__name__)

_PROBED: set[tuple[str, str]] = set()  # (endpoint, bucket) pairs known to honour If-None-Match

PART_SIZE = 16 << 20  # multipart part size for streamed blob uploads (S3 minimum is 5 MiB)


class S3Backend(FsspecBackend):
    """A task folder at s3://bucket/prefix. ``fs`` must be an s3fs.S3FileSystem with listings cache disabled."""

    def _split(self, path: str) -> tuple[str, str]:
        bucket, _, key = self._full(path).partition("/")
        return bucket, key

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, **kwargs)

    async def _get(self, path: str) -> tuple[bytes, str]:
        bucket, key = self._split(path)
        response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            return await body.read(), response["ETag"]
        finally:
            body.close()

    def read_bytes(self, path: str) -> bytes:
        return sync(self.fs.loop, self._get, path)[0]

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        async def gather() -> list[Any]:
            return await asyncio.gather(*(self._get(p) for p in paths), return_exceptions=True)

        results = sync(self.fs.loop, gather) if paths else []
        out: dict[str, bytes] = {}
        for path, result in zip(paths, results):
            if isinstance(result, FileNotFoundError):
                continue
            if isinstance(result, BaseException):
                raise result
            out[path] = result[0]
        return out

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        bucket, key = self._split(path)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = self._call("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
                    self._upload_part(bucket, key, upload_id, parts, bytes(buffer[:PART_SIZE]))
                    del buffer[:PART_SIZE]
            if upload_id is None:
                self._call("put_object", Bucket=bucket, Key=key, Body=bytes(buffer))
            else:
                if buffer:
                    self._upload_part(bucket, key, upload_id, parts, bytes(buffer))
                self._call(
                    "complete_multipart_upload",
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                try:
                    self._call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
                except Exception as exc:  # noqa: BLE001 - best effort; the original error matters more
                    log.warning("could not abort the multipart upload of %s: %s", path, exc)
            raise
        return size, digest.hexdigest()

    def _upload_part(
        self, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]], body: bytes
    ) -> None:
        number = len(parts) + 1
        out = self._call(
            "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def create_exclusive(self, path: str, data: bytes) -> None:
        bucket, key = self._split(path)
        # raises FileExistsError if the key exists
        self._call("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        self._probe_conditional_writes(bucket, key, data)

    def _probe_conditional_writes(self, bucket: str, key: str, data: bytes) -> None:
        """Once per endpoint and bucket: repeat the create; it must be refused or commits are not safe here.

        Rewriting the same bytes is harmless if the endpoint wrongly accepts it.
        """
        endpoint = str(getattr(self.fs, "client_kwargs", {}).get("endpoint_url", ""))
        if (endpoint, bucket) in _PROBED:
            return
        try:
            self._call("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except FileExistsError:
            _PROBED.add((endpoint, bucket))
            return
        self._call("delete_object", Bucket=bucket, Key=key)  # do not leave a commit the caller sees failing
        raise StoreError(
            f"the S3 endpoint {endpoint or '(AWS)'} ignored If-None-Match on s3://{bucket}: it does not support "
            "conditional writes, so concurrent commits could overwrite each other. Use AWS S3 or an "
            "S3-compatible store with conditional writes."
        )

    def cas_read(self, path: str) -> tuple[bytes | None, str | None]:
        try:
            return sync(self.fs.loop, self._get, path)
        except FileNotFoundError:
            return None, None

    def cas_write(self, path: str, data: bytes, expected: str | None) -> str:
        bucket, key = self._split(path)
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            out = self._call("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except (FileExistsError, FileNotFoundError) as exc:
            raise CasConflict(f"{path} changed since it was read") from exc
        except OSError as exc:
            if "PreconditionFailed" in repr(exc.__cause__) or "ConditionalRequestConflict" in repr(
                exc.__cause__
            ):
                raise CasConflict(f"{path} changed since it was read") from exc
            raise
        return out["ETag"]
