"""Moderations (/v1/moderations): request checks and deterministic results.

Scores are small and seeded by (model, text, category), so the same input always gets the same result. A text that
contains the marker ``[flag:<category>]`` (e.g. ``[flag:violence]``) gets a high score in that category and is
flagged, so tests can ask for a flagged result. The response has no `usage`, like the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ApiError, invalid_type, missing_param, require_object
from .ids import stable_unit

DEFAULT_MODEL = "omni-moderation-latest"
CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
IMAGE_CATEGORIES = frozenset({"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence",
                              "violence/graphic"})
FLAG_THRESHOLD = 0.5


@dataclass(frozen=True)
class ModerationInput:
    """One item to classify: its text and whether an image came with it."""

    text: str
    image: bool = False


@dataclass(frozen=True)
class ModerationParams:
    model: str
    inputs: list[ModerationInput]


def _multimodal(items: list[Any]) -> ModerationInput:
    texts, image = [], False
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid_type(f"input[{i}]", "an object", item)
        kind = item.get("type")
        if kind == "text":
            if not isinstance(item.get("text"), str):
                raise missing_param(f"input[{i}].text")
            texts.append(item["text"])
        elif kind == "image_url":
            image = True
        else:
            raise ApiError(400, f"Invalid value for 'input[{i}].type': '{kind}'. Supported values are: "
                           "['image_url', 'text'].", param=f"input[{i}].type", code="invalid_value")
    return ModerationInput(" ".join(texts), image)


def check_moderation_request(body: Any) -> ModerationParams:
    """Validate a moderations body; `model` is optional (default omni-moderation-latest)."""
    body = require_object(body)
    model = body.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise invalid_type("model", "a non-empty string", model)
    raw = body.get("input")
    if raw is None:
        raise missing_param("input")
    if isinstance(raw, str):
        inputs = [ModerationInput(raw)]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = [ModerationInput(x) for x in raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw):
        inputs = [_multimodal(raw)]
    elif isinstance(raw, list) and not raw:
        raise ApiError(400, "Invalid 'input': empty array. Expected an array with minimum length 1.",
                       param="input", code="empty_array")
    else:
        raise invalid_type("input", "a string, an array of strings or an array of objects", raw)
    return ModerationParams(model=model, inputs=inputs)


def _result(model: str, item: ModerationInput) -> dict[str, Any]:
    scores: dict[str, float] = {}
    for category in CATEGORIES:
        if f"[flag:{category}]" in item.text:
            scores[category] = round(0.9 + 0.09 * stable_unit(model, item.text, category), 6)
        else:
            scores[category] = round(0.02 * stable_unit(model, item.text, category), 8)
    kinds = {c: ["text", "image"] if item.image and c in IMAGE_CATEGORIES else ["text"] for c in CATEGORIES}
    categories = {c: scores[c] >= FLAG_THRESHOLD for c in CATEGORIES}
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": kinds,
    }


def build_moderation(moderation_id: str, params: ModerationParams) -> dict[str, Any]:
    return {"id": moderation_id, "model": params.model,
            "results": [_result(params.model, item) for item in params.inputs]}
