"""Image tokens by OpenAI's published vision rules; every expectation is worked out by hand in the comments."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from gbatch_flows.tokenizing.images import (
    REMOTE_IMAGE_SIZE,
    PatchRule,
    TileRule,
    data_url_size,
    image_rule,
    image_tokens,
    patch_count,
)
from gbatch_flows.tokens import EstimateError, TokenEstimator

GPT_4O = TileRule(85, 170)


def png_data_url(width: int, height: int, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format=fmt)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("size", "detail", "expected"),
    [
        # published: 1024x1024 high -> 768x768 -> 2x2 tiles -> 85 + 4*170 = 765
        ((1024, 1024), "high", 765),
        # published: 2048x4096 high -> fit 2048: 1024x2048 -> short side 768: 768x1536 -> 2x3 tiles -> 85 + 6*170
        ((2048, 4096), "high", 1105),
        ((2048, 4096), "low", 85),
        ((4000, 3000), "low", 85),
        # auto is estimated as high
        ((1024, 1024), "auto", 765),
        # small images are not scaled up: 100x100 -> 1 tile -> 85 + 170
        ((100, 100), "high", 255),
        # 3000x1000 -> fit 2048: 2048x682.67 (short side < 768, kept) -> 4x2 tiles -> 85 + 8*170 = 1445
        ((3000, 1000), "high", 1445),
        # 512x513 -> 1x2 tiles -> 85 + 2*170 = 425
        ((512, 513), "high", 425),
    ],
)
def test_tile_rule_gpt_4o(size: tuple[int, int], detail: str, expected: int) -> None:
    assert image_tokens(GPT_4O, *size, detail) == expected


def test_model_rules() -> None:
    assert image_rule("gpt-4o") == image_rule("gpt-4o-2024-08-06") == image_rule("gpt-4.1") == TileRule(85, 170)
    assert image_rule("gpt-4o-mini") == image_rule("gpt-4o-mini-2024-07-18") == TileRule(2833, 5667)
    assert image_rule("o1") == image_rule("o3") == TileRule(75, 150)
    assert image_rule("gpt-5") == TileRule(70, 140)
    assert image_rule("gpt-4.1-mini") == image_rule("gpt-5-mini") == PatchRule(1.62)
    assert image_rule("gpt-4.1-nano") == image_rule("gpt-5-nano") == PatchRule(2.46)
    assert image_rule("o4-mini") == image_rule("o4-mini-2025-04-16") == PatchRule(1.72)
    assert image_rule("some-local-vlm") == TileRule(85, 170)


def test_gpt_4o_mini_tile_costs() -> None:
    # 1024x1024 high -> 4 tiles -> 2833 + 4*5667 = 25501; low -> 2833
    assert image_tokens(TileRule(2833, 5667), 1024, 1024, "high") == 25501
    assert image_tokens(TileRule(2833, 5667), 1024, 1024, "low") == 2833


@pytest.mark.parametrize(
    ("size", "patches"),
    [
        # published: 1024x1024 -> 32x32 patches = 1024
        ((1024, 1024), 1024),
        # published: 1800x2400 -> 57x75 = 4275 > 1536 -> shrink sqrt(32*32*1536/(1800*2400)) = 0.6034
        # -> width 1086.1 = 33.94 patches -> fit to 33 patches -> 1056x1408 -> 33x44 = 1452
        ((1800, 2400), 1452),
        # 33x33 px -> 2x2 patches
        ((33, 33), 4),
        # 768x2048 -> 24x64 = 1536 exactly (no shrink)
        ((768, 2048), 1536),
    ],
)
def test_patch_count(size: tuple[int, int], patches: int) -> None:
    assert patch_count(*size) == patches


def test_patch_rule_multipliers_round_up() -> None:
    # 1024 patches * 1.62 = 1658.88 -> 1659; 1452 * 1.62 = 2352.24 -> 2353; 1024 * 1.72 = 1761.28 -> 1762
    assert image_tokens(PatchRule(1.62), 1024, 1024, "high") == 1659
    assert image_tokens(PatchRule(1.62), 1800, 2400, "auto") == 2353
    assert image_tokens(PatchRule(1.72), 1024, 1024, "low") == 1762  # detail does not change the patch rule
    # 100x100 -> 4x4 = 16 patches * 2.46 = 39.36 -> 40
    assert image_tokens(PatchRule(2.46), 100, 100, "high") == 40


def test_size_is_read_from_the_header_only() -> None:
    url = png_data_url(2048, 4096)
    assert data_url_size(url) == (2048, 4096)
    # Keep only the first 4 KiB of base64: the pixel data is gone, the header is enough.
    header, payload = url.split(",", 1)
    truncated = header + "," + payload[:4096]
    assert data_url_size(truncated) == (2048, 4096)
    assert data_url_size(png_data_url(640, 480, "JPEG")) == (640, 480)
    assert data_url_size(png_data_url(31, 17, "GIF")) == (31, 17)


def test_bad_data_urls() -> None:
    with pytest.raises(ValueError, match="Pillow"):
        data_url_size("data:image/png;base64," + base64.b64encode(b"not an image at all").decode())
    with pytest.raises(ValueError, match="base64"):
        data_url_size("data:image/png;base64,@@@@")
    with pytest.raises(ValueError, match="not a data URL"):
        data_url_size("https://example.com/x.png")


@pytest.fixture(scope="module")
def est() -> TokenEstimator:
    return TokenEstimator("tiktoken")


def image_message(url: str, detail: str | None = None, text: str = "What is in this image?") -> dict:
    image: dict = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": image}]}


def test_chat_images(est: TokenEstimator) -> None:
    payload = {"model": "gpt-4o", "messages": [image_message(png_data_url(1024, 1024), "high")]}
    b = est.estimate("/v1/chat/completions", payload)
    assert b.images == 765
    no_image = est.estimate(
        "/v1/chat/completions",
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"}]}],
        },
    )
    assert b.total == no_image.total + 765
    low = {"model": "gpt-4o", "messages": [image_message(png_data_url(2048, 4096), "low")]}
    assert est.estimate("/v1/chat/completions", low).images == 85
    mini = {"model": "gpt-4.1-mini", "messages": [image_message(png_data_url(1024, 1024))]}
    assert est.estimate("/v1/chat/completions", mini).images == 1659


def test_remote_images_use_the_stated_default_size(est: TokenEstimator) -> None:
    assert REMOTE_IMAGE_SIZE == (768, 2048)
    payload = {"model": "gpt-4o", "messages": [image_message("https://example.com/cat.jpg")]}
    # 768x2048: no scaling -> 2x4 tiles -> 85 + 8*170 = 1445
    assert est.estimate("/v1/chat/completions", payload).images == 1445
    # patch models: 24x64 = 1536 patches * 1.62 = 2488.32 -> 2489
    payload["model"] = "gpt-5-mini"
    assert est.estimate("/v1/chat/completions", payload).images == 2489
    small = TokenEstimator("tiktoken", remote_image_size=(512, 512))
    payload["model"] = "gpt-4o"
    assert small.estimate("/v1/chat/completions", payload).images == 255


def test_responses_input_image(est: TokenEstimator) -> None:
    item = {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Describe."},
            {"type": "input_image", "image_url": png_data_url(1024, 1024), "detail": "high"},
            {"type": "input_image", "file_id": "file-abc", "detail": "low"},
        ],
    }
    b = est.estimate("/v1/responses", {"model": "gpt-4o", "input": [item]})
    assert b.images == 765 + 85


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (image_message("data:image/png;base64," + base64.b64encode(b"garbage").decode()), "messages[0].content[1].image_url.url"),
        (image_message("https://example.com/a.png", detail="ultra"), "messages[0].content[1].image_url.detail"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}, "messages[0].content[0].image_url"),
    ],
)  # fmt: skip
def test_image_errors_name_the_field(est: TokenEstimator, message: dict, field: str) -> None:
    with pytest.raises(EstimateError) as info:
        est.estimate("/v1/chat/completions", {"model": "gpt-4o", "messages": [message]}, custom_id="img-1")
    assert info.value.field == field
    assert "img-1" in str(info.value)
