"""The estimator's result type and error."""

from __future__ import annotations

from dataclasses import dataclass


class EstimateError(ValueError):
    """A payload the estimator cannot count; the message names the field (and the request's custom_id)."""

    def __init__(self, field: str, problem: str, custom_id: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.custom_id = custom_id
        where = f"request {custom_id!r}: " if custom_id is not None else ""
        super().__init__(f"{where}cannot estimate tokens: field {field!r}: {problem}")


@dataclass(frozen=True, slots=True)
class TokenBreakdown:
    """Prompt tokens of one request, split by where they come from (``total`` is the sum of the others).

    - ``text``: message contents (text parts, tool-call arguments, tool results, embedding inputs).
    - ``names``: the ``name`` fields of messages, including their per-name adjustment.
    - ``tools``: tool/function definitions and structured-output schemas (``response_format``/``text.format``).
    - ``images``: image inputs.
    - ``overhead``: the chat format itself: per-message tokens, role tokens and the reply priming.
    """

    text: int
    names: int
    tools: int
    images: int
    overhead: int
    total: int

    @classmethod
    def of(cls, text: int = 0, names: int = 0, tools: int = 0, images: int = 0, overhead: int = 0) -> TokenBreakdown:
        """A breakdown whose total is the sum of its parts."""
        return cls(text, names, tools, images, overhead, text + names + tools + images + overhead)
