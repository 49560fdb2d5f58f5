"""Per-model counting rules: encoding, chat-format overhead, tool constants and image rule."""

from __future__ import annotations

from dataclasses import dataclass

from gbatch_flows.tokenizing.encodings import lookup_encoding
from gbatch_flows.tokenizing.images import PatchRule, TileRule, image_rule
from gbatch_flows.tokenizing.names import base_model
from gbatch_flows.tokenizing.tools import CL100K_TOOLS, O200K_TOOLS, ToolConstants

# gpt-3.5-turbo-0301 wrote every message as <|start|>{role or name}\n{content}<|end|>\n: 4 tokens per message, and
# a name replaces the role (-1). Every later chat model: 3 per message, +1 per name. Replies are primed with 3.
_LEGACY_0301 = frozenset({"gpt-3.5-turbo-0301", "gpt-35-turbo-0301"})


@dataclass(frozen=True)
class ModelRules:
    """How one model's prompt tokens are counted (the published cookbook rules)."""

    model: str
    encoding: str
    known: bool  # False: unknown model, o200k fallback
    tokens_per_message: int
    tokens_per_name: int
    reply_priming: int
    tools: ToolConstants
    image: TileRule | PatchRule


def rules_for(model: str) -> tuple[ModelRules, str | None]:
    """The rules of ``model`` and, for unknown models, the reason the fallback is used (for a warning)."""
    encoding, problem = lookup_encoding(model)
    base = base_model(model)
    legacy = base in _LEGACY_0301
    rules = ModelRules(
        model=model,
        encoding=encoding,
        known=problem is None,
        tokens_per_message=4 if legacy else 3,
        tokens_per_name=-1 if legacy else 1,
        reply_priming=3,
        tools=CL100K_TOOLS if encoding == "cl100k_base" else O200K_TOOLS,
        image=image_rule(base),
    )
    return rules, problem
