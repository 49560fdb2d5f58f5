"""Prices and costs; every expected amount is worked out by hand from the table (USD per 1M tokens)."""

from __future__ import annotations

import pytest

from gbatch_flows.costs import (
    DEFAULT_COMPLETION_RATIO,
    PriceOverrides,
    Prices,
    UnknownPriceError,
    actual_cost,
    max_output_tokens,
    prices_for,
    worst_case_cost,
)

GPT_4O = Prices(input_direct=2.50, input_cached=1.25, input_batch=1.25, output_direct=10.00, output_batch=5.00)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", GPT_4O),
        ("gpt-4o-2024-08-06", GPT_4O),
        ("gpt-4o-2024-11-20", GPT_4O),
        ("gpt-4o-2024-05-13", Prices(5.00, 5.00, 2.50, 15.00, 7.50)),  # listed snapshot with its own price
        ("gpt-4o-mini-2024-07-18", Prices(0.15, 0.075, 0.075, 0.60, 0.30)),
        ("gpt-4.1-nano-2025-04-14", Prices(0.10, 0.025, 0.05, 0.40, 0.20)),
        ("gpt-5-mini-2025-08-07", Prices(0.25, 0.025, 0.125, 2.00, 1.00)),
        ("o3-mini-2025-01-31", Prices(1.10, 0.55, 0.55, 4.40, 2.20)),
        ("gpt-4-0613", Prices(30.00, 30.00, 15.00, 60.00, 30.00)),  # no caching discount: cached = input
        ("gpt-3.5-turbo-0125", Prices(0.50, 0.50, 0.25, 1.50, 0.75)),
        ("gpt-4-1106-preview", Prices(10.00, 10.00, 5.00, 30.00, 15.00)),
        ("text-embedding-3-small", Prices(0.02, 0.02, 0.01, 0.0, 0.0)),
        # fine-tuned models resolve to their base and cost its fine-tuned inference price
        ("ft:gpt-4o-mini-2024-07-18:my-org::abc123", Prices(0.30, 0.15, 0.15, 1.20, 0.60)),
        ("ft:gpt-4.1-2025-04-14:org:custom:x9", Prices(3.00, 0.75, 1.50, 12.00, 6.00)),
    ],
)
def test_table_lookups(model: str, expected: Prices) -> None:
    assert prices_for(model) == expected


@pytest.mark.parametrize("model", ["llama3.1:8b", "gpt-4o-audio-preview", "ft:gpt-5:org::x", "gpt-5-chat-latest"])
def test_unknown_model_needs_the_flags(model: str) -> None:
    with pytest.raises(UnknownPriceError, match="--cost_input_direct_mtoken") as info:
        prices_for(model)
    assert "--cost_output_direct_mtoken" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_overrides_replace_single_table_prices() -> None:
    prices = prices_for("gpt-4o", PriceOverrides(cost_output_batch_mtoken=4.0, cost_input_cached_mtoken=1.0))
    assert prices == Prices(2.50, 1.0, 1.25, 10.00, 4.0)


def test_unknown_model_prices_derived_from_flags() -> None:
    direct = PriceOverrides(cost_input_direct_mtoken=1.0, cost_output_direct_mtoken=3.0)
    assert prices_for("my-model", direct) == Prices(1.0, 1.0, 0.5, 3.0, 1.5)
    batch_only = PriceOverrides(cost_input_batch_mtoken=0.5, cost_output_batch_mtoken=2.0)
    assert prices_for("my-model", batch_only) == Prices(1.0, 1.0, 0.5, 4.0, 2.0)
    with pytest.raises(UnknownPriceError, match="output price") as info:
        prices_for("my-model", PriceOverrides(cost_input_direct_mtoken=1.0))
    assert "--cost_output_direct_mtoken" in str(info.value) and "--cost_input" not in str(info.value)


def test_invalid_override_values() -> None:
    with pytest.raises(ValueError, match="--cost_input_batch_mtoken"):
        prices_for("gpt-4o", PriceOverrides(cost_input_batch_mtoken=-1.0))
    with pytest.raises(ValueError, match="finite"):
        prices_for("gpt-4o", PriceOverrides(cost_output_direct_mtoken=float("nan")))


def test_local_server_is_free_unless_overridden() -> None:
    assert prices_for("llama3.1:8b", local_server=True) == Prices(0.0, 0.0, 0.0, 0.0, 0.0)
    assert prices_for("gpt-4o", local_server=True) == Prices(0.0, 0.0, 0.0, 0.0, 0.0)
    priced = prices_for("llama3.1:8b", PriceOverrides(cost_output_direct_mtoken=0.2), local_server=True)
    assert priced == Prices(0.0, 0.0, 0.0, 0.2, 0.0)


# -- worst case ---------------------------------------------------------------------------------------------------------


def test_max_output_tokens_rules() -> None:
    assert max_output_tokens({"model": "gpt-4o", "max_completion_tokens": 100, "n": 3}, 50, 1.0) == 300
    assert max_output_tokens({"model": "gpt-4o", "max_tokens": 64}, 50, 1.0) == 64
    assert max_output_tokens({"max_completion_tokens": 10, "max_tokens": 99}, 50, 1.0) == 10
    assert max_output_tokens({"model": "gpt-4o", "max_output_tokens": 256}, 50, 1.0, endpoint="/v1/responses") == 256
    # no limit: ceil(prompt * ratio), times n
    assert max_output_tokens({"model": "gpt-4o"}, 101, 0.5) == 51
    assert max_output_tokens({"model": "gpt-4o", "n": 2}, 101, 0.5) == 102
    assert max_output_tokens({"model": "gpt-4o"}, 100, 0.07) == 7  # 100 * 0.07 = 7.000000000000001 in floats
    assert max_output_tokens({"model": "gpt-4o"}, 30, DEFAULT_COMPLETION_RATIO) == 30 * DEFAULT_COMPLETION_RATIO
    # embeddings produce no completion
    assert max_output_tokens({"model": "text-embedding-3-small", "input": "x"}, 5, 1.0) == 0
    assert max_output_tokens({"model": "my-embedder", "input": "x"}, 5, 1.0, endpoint="/v1/embeddings") == 0


@pytest.mark.parametrize(
    ("payload", "ratio", "match"),
    [({"n": 0}, 1.0, "'n'"), ({"max_tokens": "100"}, 1.0, "'max_tokens'"), ({}, -1.0, "completion_ratio")],
)
def test_max_output_tokens_errors(payload: dict, ratio: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        max_output_tokens({"model": "gpt-4o", **payload}, 10, ratio)


def test_worst_case_cost() -> None:
    # batch: 1000 * 1.25 + 500 * 5.00 = 3750 USD per 1M -> 0.00375; direct: 1000 * 2.5 + 500 * 10 = 7500 -> 0.0075
    assert worst_case_cost(1000, 500, GPT_4O, "batch") == pytest.approx(0.00375, rel=1e-12)
    assert worst_case_cost(1000, 500, GPT_4O, "direct") == pytest.approx(0.0075, rel=1e-12)
    with pytest.raises(ValueError, match="mode"):
        worst_case_cost(1, 1, GPT_4O, "flex")  # type: ignore[arg-type]


# -- actual cost --------------------------------------------------------------------------------------------------------

CHAT_USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 300,
    "total_tokens": 2300,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 100},  # already inside completion_tokens
}


def test_actual_cost_direct_with_cached_tokens() -> None:
    # 976 uncached * 2.50 + 1024 cached * 1.25 + 300 * 10.00 = 2440 + 1280 + 3000 = 6720 per 1M
    assert actual_cost(CHAT_USAGE, GPT_4O, "direct") == pytest.approx(0.00672, rel=1e-12)


def test_actual_cost_batch_halves_the_cached_price() -> None:
    # 976 * 1.25 + 1024 * (1.25 / 2) + 300 * 5.00 = 1220 + 640 + 1500 = 3360 per 1M
    assert actual_cost(CHAT_USAGE, GPT_4O, "batch") == pytest.approx(0.00336, rel=1e-12)


def test_actual_cost_other_usage_shapes() -> None:
    responses = {"input_tokens": 2000, "output_tokens": 300, "input_tokens_details": {"cached_tokens": 1024}}
    assert actual_cost(responses, GPT_4O, "direct") == pytest.approx(0.00672, rel=1e-12)
    embeddings = {"prompt_tokens": 8, "total_tokens": 8}
    # 8 * 0.01 per 1M (text-embedding-3-small, batch)
    assert actual_cost(embeddings, prices_for("text-embedding-3-small"), "batch") == pytest.approx(8e-8, rel=1e-12)
    assert actual_cost(
        {"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": None}, GPT_4O, "direct"
    ) == (pytest.approx(25e-6, rel=1e-12))


def test_actual_cost_rejects_bad_usage() -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        actual_cost({"prompt_tokens": -5}, GPT_4O, "direct")
    with pytest.raises(TypeError):
        actual_cost([1, 2], GPT_4O, "direct")  # type: ignore[arg-type]
