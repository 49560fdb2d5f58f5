"""Write the part of OpenAI's OpenAPI spec that the emulator tests use: `openai_subset.json` (this folder).

    python tests/emulator/openapi/extract.py [path/to/openapi.yml]     # default: ../shared/openapi/openapi.yml

Keeps `openapi`, `info` (with its license) and the component schemas named in SCHEMAS plus everything they
reference ($ref, transitively), unchanged. Add a name to SCHEMAS when a test checks a new object, and re-run.
The file is JSON with one schema per line (small, and a change shows as the lines of the schemas it touches).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_SPEC = HERE.parents[3] / "shared" / "openapi" / "openapi.yml"
OUTPUT = HERE / "openai_subset.json"
SOURCE = ("OpenAI's OpenAPI specification as published in the openai/openai-python repository "
          "(api_reference/openapi.transformed.yml, commit e43b4224, 2026-08-21); only the schemas the emulator "
          "tests validate against, unchanged. License: see info.license (MIT). Regenerate with "
          "tests/emulator/openapi/extract.py.")
SCHEMAS = (
    "Batch", "ListBatchesResponse",
    "OpenAIFile", "ListFilesResponse", "DeleteFileResponse",
    "CreateChatCompletionResponse", "CreateEmbeddingResponse",
    "Model", "ListModelsResponse",
    "ErrorResponse",
    "Response", "CreateCompletionResponse", "CreateModerationResponse",
)
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def subset(spec: dict[str, Any], names: tuple[str, ...] = SCHEMAS) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        for ref in refs(schemas[name]):
            if not ref.startswith(PREFIX):
                raise ValueError(f"{name}: reference outside components.schemas: {ref}")
            todo.append(ref.removeprefix(PREFIX))
    return {"openapi": spec["openapi"], "info": spec["info"], "x-gbatch-source": SOURCE,
            "components": {"schemas": dict(sorted(keep.items()))}}


def render(spec_path: Path) -> str:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(spec_path, encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=loader)
    data = subset(spec)
    schemas = data.pop("components")["schemas"]
    head = json.dumps(data, ensure_ascii=False, separators=(",", ":"))[:-1]
    lines = [f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False, separators=(',', ':'))}" for k, v in schemas.items()]
    return head + ',"components":{"schemas":{\n' + ",\n".join(lines) + "\n}}}\n"


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0]) if argv else DEFAULT_SPEC
    OUTPUT.write_text(render(spec_path), encoding="utf-8")
    print(f"wrote {OUTPUT} from {spec_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
