"""Prices and costs: which price applies to a model, the worst case of a request, and what it actually cost.

All amounts are plain floats: prices in USD per 1M tokens, costs in USD, computed as ``tokens * price / 1e6`` and
never rounded here (round only for display; sums of many costs may differ from exact decimal arithmetic in the last
float digits, far below a cent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from gbatch_flows import endpoints
from gbatch_flows.models import Usage
from gbatch_flows.prices import ALIASES, BATCH_DISCOUNT, FINE_TUNED_PRICES, MODEL_PRICES, PriceRow
from gbatch_flows.tokenizing.names import base_model, is_fine_tuned, without_snapshot

Mode = Literal["batch", "direct"]
MODES = ("batch", "direct")
EMBEDDINGS_ENDPOINT = endpoints.EMBEDDINGS

# Worst-case completion of a request without max_completion_tokens/max_tokens: this many times its prompt tokens.
DEFAULT_COMPLETION_RATIO = 1.0

_FLAG = {
    "input_direct": "--cost_input_direct_mtoken",
    "input_cached": "--cost_input_cached_mtoken",
    "input_batch": "--cost_input_batch_mtoken",
    "output_direct": "--cost_output_direct_mtoken",
    "output_batch": "--cost_output_batch_mtoken",
}


class UnknownPriceError(ValueError):
    """No built-in price for a model and not enough ``--cost_*_mtoken`` flags to price it."""


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens. ``input_cached`` is the direct price of cached prompt tokens."""

    input_direct: float
    input_cached: float
    input_batch: float
    output_direct: float
    output_batch: float


@dataclass(frozen=True)
class PriceOverrides:
    """The five ``--cost_*_mtoken`` flags (USD per 1M tokens); None = not given."""

    cost_input_direct_mtoken: float | None = None
    cost_input_cached_mtoken: float | None = None
    cost_input_batch_mtoken: float | None = None
    cost_output_direct_mtoken: float | None = None
    cost_output_batch_mtoken: float | None = None

    def given(self) -> dict[str, float]:
        """The flags that were given, keyed by :class:`Prices` field; raises ValueError for a negative price."""
        out: dict[str, float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            key = f.name.removeprefix("cost_").removesuffix("_mtoken")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{_FLAG[key]} must be a finite number >= 0 (USD per 1M tokens), got {value!r}")
            out[key] = float(value)
        return out


ZERO_PRICES = Prices(0.0, 0.0, 0.0, 0.0, 0.0)


def _from_row(row: PriceRow) -> Prices:
    input_direct, input_cached, output_direct = row
    return Prices(
        input_direct=input_direct,
        input_cached=input_direct if input_cached is None else input_cached,
        input_batch=input_direct * BATCH_DISCOUNT,
        output_direct=output_direct,
        output_batch=output_direct * BATCH_DISCOUNT,
    )


def _table_key(name: str) -> str | None:
    if name in MODEL_PRICES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    base = without_snapshot(name)
    if base != name and base in MODEL_PRICES:
        return base
    return ALIASES.get(base)


def table_prices(model: str) -> Prices | None:
    """Built-in prices of ``model``: exact name, alias, or the name without its date suffix; ``ft:<base>:...`` names
    resolve to their base model and get its fine-tuned inference prices. None when the table has no entry."""
    key = _table_key(base_model(model))
    if key is None:
        return None
    if is_fine_tuned(model):
        row = FINE_TUNED_PRICES.get(key) or FINE_TUNED_PRICES.get(without_snapshot(key))
        return None if row is None else _from_row(row)
    return _from_row(MODEL_PRICES[key])


def _derived(model: str, given: dict[str, float]) -> Prices:
    """Prices of a model missing from the table, from the flags given (batch = 50% of direct and back; cached
    tokens cost the direct input price unless given)."""
    half = BATCH_DISCOUNT
    input_direct = given.get("input_direct", given["input_batch"] / half if "input_batch" in given else None)
    output_direct = given.get("output_direct", given["output_batch"] / half if "output_batch" in given else None)
    missing = [flag for flag, value in (("input", input_direct), ("output", output_direct)) if value is None]
    if missing:
        raise UnknownPriceError(
            f"no built-in price for model {model!r} and no {' or '.join(missing)} price given: pass "
            + " and ".join(f"{_FLAG[m + '_direct']} (or {_FLAG[m + '_batch']})" for m in missing)
            + " in USD per 1M tokens (0 is allowed)"
        )
    assert input_direct is not None and output_direct is not None
    return Prices(
        input_direct=input_direct,
        input_cached=given.get("input_cached", input_direct),
        input_batch=given.get("input_batch", input_direct * half),
        output_direct=output_direct,
        output_batch=given.get("output_batch", output_direct * half),
    )


def prices_for(model: str, overrides: PriceOverrides | None = None, local_server: bool = False) -> Prices:
    """The prices used for ``model``.

    - ``local_server``: zero cost, except for the flags given.
    - A model in the built-in table (see :func:`table_prices`): the table, each given flag replacing its one price.
    - Any other model: derived from the flags (see ``_derived``); with no flags, :class:`UnknownPriceError`.
    """
    given = (overrides or PriceOverrides()).given()
    if local_server:
        return replace(ZERO_PRICES, **given)
    table = table_prices(model)
    if table is not None:
        return replace(table, **given)
    if not given:
        raise UnknownPriceError(
            f"no built-in price for model {model!r}: pass its prices in USD per 1M tokens with "
            f"{_FLAG['input_direct']} and {_FLAG['output_direct']} (optionally {_FLAG['input_cached']}, "
            f"{_FLAG['input_batch']}, {_FLAG['output_batch']}; batch defaults to 50% of direct)"
        )
    return _derived(model, given)


def _positive_int(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ValueError(f"payload field {key!r} must be a positive integer, got {value!r}")
    return value


def max_output_tokens(
    payload: Mapping[str, Any], prompt_tokens: int, completion_ratio: float, endpoint: str | None = None
) -> int:
    """Worst-case completion tokens of one request (reasoning tokens included, as the API bills them).

    Rule, per choice: the payload's limit if set (chat: ``max_completion_tokens``, else ``max_tokens``; responses:
    ``max_output_tokens``; completions: ``max_tokens``, default 16 as in the API), else
    ``ceil(prompt_tokens * completion_ratio)``. Times the choices: chat ``n``; completions ``max(n, best_of)`` (the
    API bills every ``best_of`` candidate) for each prompt of a list of prompts. Embeddings and moderations produce
    no output: 0. Without ``endpoint`` (older callers) the chat rule applies, with 0 for ``text-embedding-*``
    models.
    """
    if completion_ratio < 0 or not math.isfinite(completion_ratio):
        raise ValueError(f"completion_ratio must be a finite number >= 0, got {completion_ratio!r}")
    model = payload.get("model")
    if endpoint is None:
        if isinstance(model, str) and base_model(model).startswith("text-embedding-"):
            return 0
        spec = endpoints.spec(endpoints.CHAT)
        limit_fields: tuple[str, ...] = (*spec.limit_fields, "max_output_tokens")
    else:
        spec = endpoints.spec(endpoint)
        limit_fields = spec.limit_fields
    if not spec.output:
        return 0
    choices = (_positive_int(payload, spec.choices_field) or 1) if spec.choices_field else 1
    limit = None
    for name in limit_fields:
        limit = _positive_int(payload, name)
        if limit is not None:
            break
    if spec.path == endpoints.COMPLETIONS:
        choices = max(choices, _positive_int(payload, "best_of") or 1) * _prompt_count(payload.get("prompt"))
        limit = limit or spec.default_limit
    if limit is None:
        # round() first so float noise (100 * 0.07 = 7.000000000000001) cannot add a token
        limit = math.ceil(round(prompt_tokens * completion_ratio, 6))
    return limit * choices


def _prompt_count(prompt: Any) -> int:
    """Prompts in a completions ``prompt``: a string or a token list is one, a list of either is one each."""
    if isinstance(prompt, list) and prompt and not all(type(t) is int for t in prompt):
        return len(prompt)
    return 1


def is_free(endpoint: str) -> bool:
    """Whether ``endpoint`` is billed at 0 whatever the token counts (moderations)."""
    return endpoints.is_supported(endpoint) and endpoints.spec(endpoint).free


def endpoint_prices(prices: Prices, endpoint: str | None) -> Prices:
    """``prices``, or zero prices for an endpoint that is free (moderations), whatever the flags say."""
    return ZERO_PRICES if endpoint is not None and is_free(endpoint) else prices


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'batch' or 'direct', got {mode!r}")


def worst_case_cost(prompt_tokens: int, output_tokens: int, prices: Prices, mode: Mode) -> float:
    """USD of a request if nothing is cached and every allowed output token is produced."""
    _check_mode(mode)
    if mode == "batch":
        return (prompt_tokens * prices.input_batch + output_tokens * prices.output_batch) / 1e6
    return (prompt_tokens * prices.input_direct + output_tokens * prices.output_direct) / 1e6


def actual_cost(usage: Mapping[str, Any], prices: Prices, mode: Mode) -> float:
    """USD of a finished request from its ``usage`` object (chat/completions/embeddings or responses field names,
    read by :func:`gbatch_flows.endpoints.read_usage`); see :func:`usage_cost`."""
    _check_mode(mode)
    return usage_cost(endpoints.read_usage(usage), prices, mode)


def usage_cost(usage: Usage, prices: Prices, mode: Mode) -> float:
    """USD of normalised token usage.

    Cached prompt tokens cost ``input_cached`` in direct mode and half of it in batch mode (the batch discount
    applies on top of the caching discount); the other prompt tokens cost ``input_direct`` / ``input_batch``.
    Reasoning tokens are already inside the completion (output) tokens.
    """
    _check_mode(mode)
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    uncached = usage.prompt_tokens - cached
    completion = usage.completion_tokens
    if mode == "batch":
        cost = uncached * prices.input_batch + cached * prices.input_cached * BATCH_DISCOUNT
        return (cost + completion * prices.output_batch) / 1e6
    cost = uncached * prices.input_direct + cached * prices.input_cached
    return (cost + completion * prices.output_direct) / 1e6
