"""A batch run of Curator (bespokelabs-curator, a third-party batch client) against the emulator.

Run in a subprocess by test_compat.py: ``python curator_client.py OPENAI_BASE_URL CACHE_DIR PROMPT...``. Prints one
JSON object: the responses in prompt order. Curator uploads its batch input as raw bytes (named ``upload`` by the
openai client) and polls the batch like any client of the real API. Imports nothing from this project.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    base_url, cache_dir, *prompts = sys.argv[1:]
    os.environ.update({"CURATOR_CACHE_DIR": cache_dir, "TELEMETRY_ENABLED": "false", "CURATOR_VIEWER": "0",
                       "CURATOR_DISABLE_RICH_DISPLAY": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                       "OPENAI_API_KEY": "sk-test-dummy"})
    from bespokelabs import curator

    llm = curator.LLM(model_name="gpt-4o-mini", backend="openai", batch=True,
                      backend_params={"base_url": base_url, "api_key": "sk-test-dummy", "batch_check_interval": 1,
                                      "max_retries": 1, "require_all_responses": True})
    result = llm(prompts)
    dataset = getattr(result, "dataset", result)
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    print(json.dumps({"responses": [row.get("response") for row in rows],
                      "prompts": [row.get("prompt") for row in rows]}))


if __name__ == "__main__":
    main()
