"""Embeddings: request checks and deterministic unit vectors (same model + input + size → same vector)."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, invalid_type, invalid_value, missing_param, require_model, require_object

MODEL_DIMENSIONS = {"text-embedding-3-large": 3072, "text-embedding-3-small": 1536, "text-embedding-ada-002": 1536}
DEFAULT_DIMENSIONS = 1536
MAX_INPUTS = 2048


@dataclass(frozen=True)
class EmbeddingParams:
    model: str
    inputs: list[str]
    dimensions: int
    base64: bool


def check_embedding_request(body: Any, default_dimensions: int | None = None) -> EmbeddingParams:
    """Validate an embeddings body; inputs are strings or token arrays (kept as text keys)."""
    body = require_object(body)
    model = require_model(body)
    raw = body.get("input")
    if raw is None:
        raise missing_param("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        inputs = [" ".join(map(str, raw))]
    elif isinstance(raw, list) and raw:
        inputs = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                inputs.append(item)
            elif isinstance(item, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in item):
                inputs.append(" ".join(map(str, item)))
            else:
                raise invalid_type(f"input[{i}]", "a string or an array of integers", item)
    elif isinstance(raw, list):
        raise ApiError(400, "Invalid 'input': empty array. Expected an array with minimum length 1.",
                       param="input", code="empty_array")
    else:
        raise invalid_type("input", "a string or an array", raw)
    if len(inputs) > MAX_INPUTS:
        raise invalid_value("input", f"at most {MAX_INPUTS} inputs per request, got {len(inputs)}.")
    if any(not text for text in inputs):
        raise invalid_value("input", "inputs must not be empty strings.")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise invalid_value("dimensions", f"expected a positive integer, got {dims!r}.")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise invalid_value("encoding_format", f"'{fmt}'. Supported values are: ['base64', 'float'].")
    size = dims or default_dimensions or MODEL_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    return EmbeddingParams(model=model, inputs=inputs, dimensions=size, base64=fmt == "base64")


def embedding_vector(model: str, text: str, dimensions: int) -> list[float]:
    """A unit-length vector seeded by (model, text)."""
    seed = int.from_bytes(hashlib.blake2b(f"{model}\x1f{text}".encode(), digest_size=8).digest(), "big")
    raw = random.Random(seed).randbytes(4 * dimensions)
    values = [v / 2147483648.0 - 1.0 for v in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def build_embedding_response(params: EmbeddingParams, prompt_tokens: int) -> dict[str, Any]:
    data = []
    for index, text in enumerate(params.inputs):
        vector = embedding_vector(params.model, text, params.dimensions)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if params.base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": params.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
