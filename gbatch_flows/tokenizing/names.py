"""Model-name helpers shared by the token rules and the price table."""

from __future__ import annotations

import re

# Dated snapshot suffixes: -2024-08-06 (current style) and -0613 / -0125 (older style).
SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


def base_model(model: str) -> str:
    """The model a fine-tuned name refers to: ``ft:gpt-4o-mini-2024-07-18:org::id`` -> ``gpt-4o-mini-2024-07-18``."""
    if model.startswith("ft:"):
        return model[3:].split(":", 1)[0]
    return model


def is_fine_tuned(model: str) -> bool:
    return model.startswith("ft:")


def without_snapshot(model: str) -> str:
    """``gpt-4o-2024-08-06`` -> ``gpt-4o``; ``gpt-4-0613`` -> ``gpt-4``; other names unchanged."""
    return SNAPSHOT_SUFFIX.sub("", model)
