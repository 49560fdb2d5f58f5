"""What the Files API checks in an upload of purpose `batch`: the content, never the file name.

Like the real API, an upload is refused when its bytes are not UTF-8 ("Must be utf-8 encoded") or are not JSONL (its
first non-blank line is not a JSON object: "Must be .jsonl"); raw bytes the official client names `upload` are fine.
The request lines themselves (custom_id, method, url, body, unique custom_ids, one url per file, one model) are
checked when a batch is created from the file, and reported in `batch.errors` with their line numbers, which is
where the real API reports them (see batch_input.py).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from . import jsonutil
from .errors import ApiError, bad_request


def check_batch_upload(lines: Iterable[bytes]) -> ApiError | None:
    """The 400 to answer for the upload's lines (read once, streaming), or None when the content is acceptable."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    first: bytes | None = None
    try:
        for raw in lines:
            decoder.decode(raw)
            if first is None and raw.strip():
                first = raw
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return bad_request("Invalid file for Batch API. Must be utf-8 encoded", param="file",
                           code="invalid_file_encoding")
    if first is None:
        return None  # an empty file is accepted; a batch made from it fails with `empty_file`
    try:
        value = jsonutil.loads(first)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return bad_request("Invalid file format for Batch API. Must be .jsonl (the first line is not a JSON "
                           "object).", param="file", code="invalid_file_format")
    return None
