"""Generate a JSON value that satisfies a JSON schema (the subset Structured Outputs uses), from a seeded RNG.

Supported: type (also lists of types), object/properties/required/additionalProperties, array/items/prefixItems/
minItems/maxItems/uniqueItems, string (minLength/maxLength, enum, const, common formats), integer/number
(minimum/maximum/exclusive*/multipleOf), boolean, null, enum, const, anyOf/oneOf, allOf, $ref into $defs/definitions.
Not supported: `pattern` (ignored), `not`, `if/then/else`.
"""

from __future__ import annotations

import math
import random
from typing import Any

WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
    "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
    "whiskey", "xray", "yankee", "zulu", "amber", "basil", "cedar", "dune", "ember", "fern", "grove",
    "harbor", "iris", "jade", "kelp", "lumen", "maple", "nectar", "orbit", "pebble", "quartz", "river",
    "sage", "tide", "umber", "vale", "willow", "yarrow", "zephyr",
)


class SchemaError(ValueError):
    """The schema cannot be used (bad $ref, wrong type...)."""


class InstanceGenerator:
    """Walks one schema document (`root`) and builds values for it."""

    def __init__(self, root: Any, rng: random.Random, max_depth: int = 8) -> None:
        self.root = root
        self.rng = rng
        self.max_depth = max_depth

    def generate(self, schema: Any = None, depth: int = 0) -> Any:
        schema = self.root if schema is None else schema
        if schema is True or schema == {}:
            return self._string({}, depth)
        if schema is False:
            raise SchemaError("a `false` schema accepts no value")
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object, got {type(schema).__name__}")
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise SchemaError("`enum` must be a non-empty array")
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._choose(schema[key], key, depth)
        if "allOf" in schema:
            return self.generate(self._merge(schema["allOf"]), depth)
        kind = self._type_of(schema, depth)
        make = getattr(self, f"_{kind}", None)
        if make is None:
            raise SchemaError(f"unsupported type {kind!r}")
        return make(schema, depth)

    # --- structure -----------------------------------------------------------------------------------------------

    def _resolve(self, schema: dict[str, Any], seen: int = 0) -> dict[str, Any]:
        ref = schema.get("$ref")
        if ref is None:
            return schema
        if seen > 32:
            raise SchemaError(f"$ref chain too deep at {ref!r}")
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local $ref ('#/...') is supported, got {ref!r}")
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaError(f"$ref {ref!r} points nowhere")
        if not isinstance(target, dict):
            raise SchemaError(f"$ref {ref!r} is not a schema object")
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        if "$ref" in target:
            merged["$ref"] = target["$ref"]
        return self._resolve(merged, seen + 1)

    def _merge(self, parts: Any) -> dict[str, Any]:
        if not isinstance(parts, list):
            raise SchemaError("`allOf` must be an array")
        merged: dict[str, Any] = {}
        for part in parts:
            part = self._resolve(part) if isinstance(part, dict) else {}
            for key, value in part.items():
                if key == "properties":
                    merged.setdefault("properties", {}).update(value)
                elif key == "required":
                    merged["required"] = sorted(set(merged.get("required", [])) | set(value))
                else:
                    merged.setdefault(key, value)
        return merged

    def _choose(self, options: Any, key: str, depth: int) -> Any:
        if not isinstance(options, list) or not options:
            raise SchemaError(f"`{key}` must be a non-empty array")
        if depth >= self.max_depth:
            for option in options:  # stop recursion: prefer a leaf
                resolved = self._resolve(option) if isinstance(option, dict) else {}
                if resolved.get("type") in ("null", "string", "integer", "number", "boolean"):
                    return self.generate(resolved, depth + 1)
        return self.generate(self.rng.choice(options), depth + 1)

    def _type_of(self, schema: dict[str, Any], depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise SchemaError("`type` must not be an empty array")
            non_null = [k for k in kind if k != "null"]
            if not non_null or (depth >= self.max_depth and "null" in kind):
                return "null"
            return self.rng.choice(non_null) if self.rng.random() < 0.9 or "null" not in kind else "null"
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                return "object"
            if "items" in schema or "prefixItems" in schema:
                return "array"
            return "string"
        if not isinstance(kind, str):
            raise SchemaError(f"`type` must be a string or an array, got {kind!r}")
        return kind

    # --- types ---------------------------------------------------------------------------------------------------

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        if not isinstance(properties, dict):
            raise SchemaError("`properties` must be an object")
        required = set(schema.get("required") or [])
        result: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or (depth < self.max_depth and self.rng.random() < 0.5):
                result[name] = self.generate(sub, depth + 1)
        extra = schema.get("additionalProperties")
        if not properties and isinstance(extra, dict) and depth < self.max_depth:
            for i in range(self.rng.randint(1, 3)):
                result[f"{self.rng.choice(WORDS)}_{i}"] = self.generate(extra, depth + 1)
        for name in required - result.keys():  # required but not described
            result[name] = self._string({}, depth)
        return result

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        high = low + 3 if high is None else int(high)
        if high < low:
            raise SchemaError(f"maxItems ({high}) < minItems ({low})")
        prefix = schema.get("prefixItems") or []
        low = max(low, min(len(prefix), high))
        count = low if depth >= self.max_depth else self.rng.randint(low, min(high, low + 4))
        items = schema.get("items", {})
        result: list[Any] = []
        attempts = 0
        while len(result) < count and attempts < count * 20 + 20:
            attempts += 1
            index = len(result)
            value = self.generate(prefix[index] if index < len(prefix) else items, depth + 1)
            if schema.get("uniqueItems") and value in result:
                continue
            result.append(value)
        return result

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        rng = self.rng
        if fmt == "date-time":
            text = f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T" \
                   f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        elif fmt == "date":
            text = f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        elif fmt == "email":
            text = f"{rng.choice(WORDS)}.{rng.choice(WORDS)}@example.com"
        elif fmt in ("uri", "url"):
            text = f"https://example.com/{rng.choice(WORDS)}/{rng.randint(1, 999)}"
        elif fmt == "uuid":
            text = (f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-"
                    f"8{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}")
        elif fmt == "ipv4":
            text = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        elif fmt == "hostname":
            text = f"{rng.choice(WORDS)}.example.com"
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        while len(text) < low:
            text += " " + rng.choice(WORDS)
        if high is not None:
            text = text[: int(high)]
        return text

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        low, high = self._bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if step:
            first, last = math.ceil(low / step), math.floor(high / step)
            if first > last:
                raise SchemaError("no multiple of `multipleOf` fits the bounds")
            return int(self.rng.randint(int(first), int(last)) * step)
        return self.rng.randint(int(low), int(high))

    def _number(self, schema: dict[str, Any], depth: int) -> float | int:
        if schema.get("multipleOf"):
            return self._integer(schema, depth)
        low, high = self._bounds(schema, integer=False)
        value = round(self.rng.uniform(low, high), 3)
        return min(max(value, low), high)

    def _bounds(self, schema: dict[str, Any], integer: bool) -> tuple[float, float]:
        nudge = 1 if integer else 1e-3
        low: float | None = schema.get("minimum")
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            low = schema["exclusiveMinimum"] + nudge
        high: float | None = schema.get("maximum")
        if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
            high = schema["exclusiveMaximum"] - nudge
        if low is None and high is None:
            low, high = 0, 100
        elif low is None:
            assert high is not None
            low = high - 100
        elif high is None:
            high = low + 100
        assert low is not None and high is not None
        if integer:
            low, high = math.ceil(low), math.floor(high)
        if low > high:
            raise SchemaError(f"empty range: minimum {low} > maximum {high}")
        return low, high

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return self.rng.random() < 0.5

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None


def generate_instance(schema: Any, rng: random.Random) -> Any:
    """A value valid against `schema`, chosen by `rng` (same rng state → same value)."""
    return InstanceGenerator(schema, rng).generate()
