"""File expiration policies (`expires_after` on upload, `output_expires_after` on batch create), as in the spec."""

from __future__ import annotations

from typing import Any

from .errors import invalid_type, invalid_value, missing_param

MIN_SECONDS = 3600
MAX_SECONDS = 2_592_000
#: The spec: "By default, files with purpose=batch expire after 30 days".
BATCH_FILE_DEFAULT_SECONDS = 2_592_000


def expiry_seconds(policy: Any, param: str) -> int | None:
    """Seconds after creation from a policy {"anchor": "created_at", "seconds": N} (None = no policy given).

    Form fields arrive as strings, so "3600" is accepted as 3600; anything else is a 400 naming the parameter.
    """
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise invalid_type(param, "an object", policy)
    anchor = policy.get("anchor")
    if anchor is None:
        raise missing_param(f"{param}.anchor")
    if anchor != "created_at":
        raise invalid_value(f"{param}.anchor", f"'{anchor}'. Supported values are: ['created_at'].")
    raw = policy.get("seconds")
    if raw is None:
        raise missing_param(f"{param}.seconds")
    try:
        seconds = int(raw)
    except (TypeError, ValueError):
        raise invalid_type(f"{param}.seconds", "an integer", raw) from None
    if isinstance(raw, bool) or (isinstance(raw, float) and raw != seconds):
        raise invalid_type(f"{param}.seconds", "an integer", raw)
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise invalid_value(f"{param}.seconds", f"must be between {MIN_SECONDS} and {MAX_SECONDS}, got {seconds}.")
    return seconds
