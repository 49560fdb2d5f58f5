"""Curator (bespokelabs-curator, a third-party client) against the emulator, in batch or online mode.

Run in a subprocess by test_compat.py: ``python curator_client.py batch|online OPENAI_BASE_URL CACHE_DIR PROMPT...``.
Prints one JSON object: the responses in prompt order and, online, the limits Curator read from the
`x-ratelimit-*` headers of the 400 answer to its probe (a chat request with no messages). In batch mode Curator
uploads its input as raw bytes (named ``upload`` by the openai client) and polls the batch like any client of the
real API. Imports nothing from this project.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path


def _offline_tiktoken() -> None:
    """Curator's online mode loads cl100k_base; litellm ships the file, so point tiktoken's cache at it."""
    spec = importlib.util.find_spec("litellm")
    if "TIKTOKEN_CACHE_DIR" not in os.environ and spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
        if folder.is_dir():
            os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


def main() -> None:
    mode, base_url, cache_dir, *prompts = sys.argv[1:]
    os.environ.update({"CURATOR_CACHE_DIR": cache_dir, "TELEMETRY_ENABLED": "false", "CURATOR_VIEWER": "0",
                       "CURATOR_DISABLE_RICH_DISPLAY": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                       "OPENAI_API_KEY": "sk-test-dummy"})
    _offline_tiktoken()
    from bespokelabs import curator

    params = {"base_url": base_url, "api_key": "sk-test-dummy", "max_retries": 3}
    if mode == "batch":
        params.update({"batch_check_interval": 1, "max_retries": 1})
    llm = curator.LLM(model_name="gpt-4o-mini", backend="openai", batch=mode == "batch", backend_params=params)
    result = llm(prompts)
    dataset = getattr(result, "dataset", result)
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    processor = getattr(llm, "_request_processor", None)
    limits = [getattr(processor, "header_based_max_requests_per_minute", None),
              getattr(processor, "header_based_max_tokens_per_minute", None)]
    print(json.dumps({"responses": [row.get("response") for row in rows], "limits": limits}))


if __name__ == "__main__":
    main()
