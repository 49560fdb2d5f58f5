"""Image input tokens, following OpenAI's published vision cost rules.

Two published rules exist, chosen by model:

- Tile rule (gpt-4o, gpt-4.1, gpt-4.5, gpt-4-turbo, gpt-5, o1/o3, gpt-4o-mini, computer-use): ``detail: low`` costs
  the model's base tokens. ``high``: scale the image to fit in 2048 x 2048, then (only if its shortest side is longer)
  scale it so the shortest side is 768 px; count the 512 px tiles that cover it; cost = base + tiles * tile tokens.
  Base/tile tokens: gpt-4o, gpt-4.1, gpt-4.5, gpt-4-turbo 85/170; gpt-4o-mini 2833/5667; o1, o1-pro, o3 75/150;
  gpt-5 70/140; computer-use-preview 65/129. Published examples: 1024 x 1024 high = 765, 2048 x 4096 high = 1105,
  any low = 85 (gpt-4o).
- Patch rule (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): count the 32 px patches covering the
  image; above 1536 patches, shrink it by ``sqrt(32*32*1536 / (w*h))``, then shrink further so its width is a whole
  number of patches (as in the published 1800 x 2400 -> 1452 example), and cap at 1536; multiply by the model's
  multiplier (1.62 for the -mini models, 2.46 for the -nano models, 1.72 for o4-mini) and round UP (our choice: the
  estimate is used for budgets). ``detail`` does not change the patch rule (the published rule has no low variant).

``detail: auto`` (and no detail) is estimated as ``high``. The size comes from the image header of a ``data:`` URL
(Pillow reads only the header; no pixel data is decoded). Remote URLs and file ids cannot be inspected offline: they
get :data:`REMOTE_IMAGE_SIZE`, 768 x 2048, the size with the most tokens under both rules (8 tiles; exactly 1536
patches), so a budget is never under-reserved because an image was remote.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import urllib.parse
from dataclasses import dataclass
from fractions import Fraction

from PIL import Image, UnidentifiedImageError

REMOTE_IMAGE_SIZE: tuple[int, int] = (768, 2048)
DETAILS = ("auto", "low", "high")

# Base64 prefixes tried before decoding the whole data URL (most headers fit in the first; EXIF-heavy JPEGs may need
# the second). Multiples of 4 so every prefix decodes on its own.
_HEADER_PREFIXES = (8192, 131072)


@dataclass(frozen=True)
class TileRule:
    """512 px tiles: ``base`` tokens per image plus ``tile`` tokens per tile (``high``), ``base`` alone (``low``)."""

    base: int
    tile: int


@dataclass(frozen=True)
class PatchRule:
    """32 px patches capped at ``max_patches``, times ``multiplier`` (rounded up)."""

    multiplier: float
    max_patches: int = 1536


DEFAULT_RULE = TileRule(85, 170)

# Longest matching prefix of the base model name wins.
_RULES: dict[str, TileRule | PatchRule] = {
    "gpt-4o-mini": TileRule(2833, 5667),
    "gpt-4.1-mini": PatchRule(1.62),
    "gpt-4.1-nano": PatchRule(2.46),
    "gpt-5-mini": PatchRule(1.62),
    "gpt-5-nano": PatchRule(2.46),
    "o4-mini": PatchRule(1.72),
    "gpt-5": TileRule(70, 140),
    "o1": TileRule(75, 150),
    "o3": TileRule(75, 150),
    "computer-use-preview": TileRule(65, 129),
    "gpt-4o": DEFAULT_RULE,
    "gpt-4.1": DEFAULT_RULE,
    "gpt-4.5": DEFAULT_RULE,
    "gpt-4-turbo": DEFAULT_RULE,
}
_PREFIXES = sorted(_RULES, key=len, reverse=True)


def image_rule(base_model: str) -> TileRule | PatchRule:
    """The published image rule of a (base) model name; unknown models get the gpt-4o tile rule."""
    for prefix in _PREFIXES:
        if base_model == prefix or base_model.startswith(prefix + "-"):
            return _RULES[prefix]
    return DEFAULT_RULE


def _ceil_div(value: Fraction, size: int) -> int:
    return math.ceil(value / size)


def tile_tokens(rule: TileRule, width: int, height: int, detail: str) -> int:
    """Tokens of one image under the tile rule (exact rational arithmetic, so no float rounding decides a tile)."""
    if detail == "low":
        return rule.base
    long_side, short_side = Fraction(max(width, height)), Fraction(min(width, height))
    if long_side > 2048:
        short_side = short_side * 2048 / long_side
        long_side = Fraction(2048)
    if short_side > 768:
        long_side = long_side * 768 / short_side
        short_side = Fraction(768)
    tiles = _ceil_div(long_side, 512) * _ceil_div(short_side, 512)
    return rule.base + rule.tile * tiles


def patch_count(width: int, height: int, max_patches: int = 1536) -> int:
    """32 px patches of an image after the published downscaling, capped at ``max_patches``."""
    raw = math.ceil(width / 32) * math.ceil(height / 32)
    if raw <= max_patches:
        return raw
    shrink = math.sqrt(32 * 32 * max_patches / (width * height))
    patches_wide = width * shrink / 32
    shrink *= math.floor(patches_wide) / patches_wide
    # round() guards the ceilings against float noise such as 44.00000000000001 patches.
    patches = math.ceil(round(width * shrink / 32, 6)) * math.ceil(round(height * shrink / 32, 6))
    return min(patches, max_patches)


def image_tokens(rule: TileRule | PatchRule, width: int, height: int, detail: str) -> int:
    """Tokens of one ``width`` x ``height`` image; ``detail`` is one of :data:`DETAILS` (``auto`` = ``high``)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if isinstance(rule, PatchRule):
        return math.ceil(round(patch_count(width, height, rule.max_patches) * rule.multiplier, 6))
    return tile_tokens(rule, width, height, detail)


class ImageTooLargeError(ValueError):
    """Pillow refuses to open the image (decompression-bomb guard)."""


def _size_of(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large to inspect: {exc}") from None


def data_url_size(url: str) -> tuple[int, int]:
    """Pixel size of the image in a ``data:`` URL, reading only its header; ValueError if it is not an image."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise ValueError("not a data URL (expected 'data:<mime>;base64,<data>')")
    if not header.endswith(";base64"):
        return _decoded_size(urllib.parse.unquote_to_bytes(payload))
    for prefix in _HEADER_PREFIXES:
        if prefix >= len(payload):
            break
        try:
            return _size_of(base64.b64decode(payload[:prefix]))
        except ImageTooLargeError:
            raise
        except (binascii.Error, UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue  # header not complete in this prefix (or whitespace in the base64): try more
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64 in data URL: {exc}") from None
    return _decoded_size(data)


def _decoded_size(data: bytes) -> tuple[int, int]:
    try:
        return _size_of(data)
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"data URL does not hold an image Pillow can read ({type(exc).__name__}: {exc})") from None


def url_image_tokens(
    rule: TileRule | PatchRule, url: str | None, detail: str, remote_size: tuple[int, int] = REMOTE_IMAGE_SIZE
) -> int:
    """Tokens of an image given by URL: ``data:`` URLs are measured, anything else (or no URL) uses ``remote_size``."""
    if url is not None and url.startswith("data:"):
        width, height = data_url_size(url)
    else:
        width, height = remote_size
    return image_tokens(rule, width, height, detail)
