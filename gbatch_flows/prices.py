"""Built-in OpenAI prices in USD per 1M tokens (standard tier): ``(input, cached input, output)``.

Table date: 2025-08-07 (OpenAI's pricing page after the GPT-5 launch). Prices change: check
https://openai.com/api/pricing and override with the ``--cost_*_mtoken`` flags when they differ. The Batch API costs
50% of the direct price for input and output (derived in ``costs.py``, not listed here). ``None`` as the cached price:
the model has no prompt-caching discount (cached tokens cost the full input price).
"""

from __future__ import annotations

PriceRow = tuple[float, float | None, float]

# Base models. Dated snapshots resolve to these (``gpt-4o-2024-08-06`` -> ``gpt-4o``) unless listed themselves.
MODEL_PRICES: dict[str, PriceRow] = {
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": (5.00, None, 15.00),  # the first gpt-4o snapshot kept its launch price
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "o1": (15.00, 7.50, 60.00),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o4-mini": (1.10, 0.275, 4.40),
    "gpt-4-turbo": (10.00, None, 30.00),
    "gpt-4": (30.00, None, 60.00),
    "gpt-3.5-turbo": (0.50, None, 1.50),
    "text-embedding-3-small": (0.02, None, 0.0),
    "text-embedding-3-large": (0.13, None, 0.0),
    "text-embedding-ada-002": (0.10, None, 0.0),
    # legacy /v1/completions models
    "gpt-3.5-turbo-instruct": (1.50, None, 2.00),
    "davinci-002": (2.00, None, 2.00),
    "babbage-002": (0.40, None, 0.40),
    # /v1/moderations is free (its responses carry no usage; costs.endpoint_prices also zeroes any flag)
    "omni-moderation-latest": (0.0, None, 0.0),
    "omni-moderation": (0.0, None, 0.0),  # dated snapshots, e.g. omni-moderation-2024-09-26
    "text-moderation-latest": (0.0, None, 0.0),
    "text-moderation-stable": (0.0, None, 0.0),
}

# Other names of the same models.
ALIASES: dict[str, str] = {
    "gpt-4-turbo-preview": "gpt-4-turbo",
    "gpt-4-1106-preview": "gpt-4-turbo",
    "gpt-4-0125-preview": "gpt-4-turbo",
}

# Inference prices of fine-tuned models (``ft:<base>:...``), keyed by base model; higher than the base model's.
FINE_TUNED_PRICES: dict[str, PriceRow] = {
    "gpt-4.1": (3.00, 0.75, 12.00),
    "gpt-4.1-mini": (0.80, 0.20, 3.20),
    "gpt-4.1-nano": (0.20, 0.05, 0.80),
    "gpt-4o": (3.75, 1.875, 15.00),
    "gpt-4o-mini": (0.30, 0.15, 1.20),
    "o4-mini": (4.00, 1.00, 16.00),
    "gpt-3.5-turbo": (3.00, None, 6.00),
}

BATCH_DISCOUNT = 0.5  # Batch API price = 50% of the direct price
