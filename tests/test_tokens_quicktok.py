"""quicktok may replace tiktoken only because these tests prove it token-for-token equal (outside the few guarded
code points, see gbatch_flows/tokenizing/guard.py and test_tokens_codepoints.py); fallback and cache tests."""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gbatch_flows.tokenizing.counter import TextCounter, resolve_backend
from gbatch_flows.tokenizing.encodings import load_encoding
from gbatch_flows.tokenizing.guard import PRINTABLE_IS_SAFE, needs_reference
from gbatch_flows.tokens import TokenEstimator

ENCODINGS = ["o200k_base", "cl100k_base"]

FRAGMENTS = [
    "Hello", " world", "don't", "I'M", "we'll", "'s", "'ve", "Describe the Unicode character U+1F600 '😀'.",
    "Привет, мир! Съешь же ещё этих мягких французских булок", "Ѐ", "日本語のテキスト", "中文字符", "한국어",
    "😀", "👩‍👩‍👧‍👦", "🇩🇪", "🏳️‍🌈", "e\u0301", "\u00a0", "\u2028", "\u3000", "\ufeff", "\u200b",
    "   ", "\n", "\n\n", "\r\n", "\t\t", " \n \n", "        code", "\n\n\n\n", "12345678901234567890", "3.14159",
    "1,000,000", "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>",
    "<|im_start|>", "<|", "|>", "def f(x):\n    return x**2\n", "{\"key\": [1, 2, {\"a\": null}]}", "ÄÖÜäöüß",
    "ﬁ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0010fffd", "\x00", "\x7f", "ٱلْعَرَبِيَّة", "עברית", "हिन्दी", "ภาษาไทย", "...", "!!!", "?!",
    "https://example.com/a?b=c&d=e", "CamelCaseWord", "snake_case_word", "ALLCAPS", "x" * 300, " " * 50,
]  # fmt: skip

text_strategy = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(max_size=30),
        st.text(alphabet=st.characters(min_codepoint=0x400, max_codepoint=0x4FF), max_size=20),  # Cyrillic
        st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=20),  # CJK
        st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=10),  # emoji
        st.text(alphabet=" \t\n\r\u00a0\u3000", max_size=12),  # whitespace runs
        st.text(alphabet="0123456789", max_size=25),  # digit runs
    ),
    max_size=12,
).map("".join)


def corpus(seed: int, documents: int) -> list[str]:
    """A deterministic varied corpus: fragments mixed with random code points from every plane."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        pieces = []
        for _ in range(rng.randint(1, 40)):
            roll = rng.random()
            if roll < 0.5:
                pieces.append(rng.choice(FRAGMENTS))
            elif roll < 0.8:
                cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xD7FF),
                                 rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x10FFFF)])  # fmt: skip
                pieces.append(chr(cp) * rng.randint(1, 3))
            else:
                pieces.append(rng.choice([" ", "\n", "  ", "\t", "'", "’"]) * rng.randint(1, 6))
        docs.append("".join(pieces))
    return docs


@pytest.fixture(scope="module", params=ENCODINGS)
def pair(request: pytest.FixtureRequest):  # noqa: ANN201
    quicktok = pytest.importorskip("quicktok")
    return load_encoding(request.param), quicktok.get_encoding(request.param)


def test_quicktok_equals_tiktoken_on_a_large_corpus(pair) -> None:  # noqa: ANN001
    tik, quick = pair
    docs = corpus(seed=20250807, documents=4000)
    assert sum(map(len, docs)) > 200_000
    checked = [doc for doc in docs if not needs_reference(doc)]
    assert len(checked) > 3900
    for doc in checked:
        assert quick.encode_ordinary(doc) == tik.encode_ordinary(doc), doc
    # the batch path (used by TextCounter.count_many) gives the same counts
    _tokens, offsets = quick.encode_batch(checked, 1)
    assert (offsets[1:] - offsets[:-1]).tolist() == [len(tik.encode_ordinary(d)) for d in checked]
    # and the guarded counter equals tiktoken on every document, guarded ones included
    counter = TextCounter(tik.name, "quicktok")
    assert counter.count_many(docs) == [len(tik.encode_ordinary(d)) for d in docs]


@settings(max_examples=400, deadline=None)
@given(text=text_strategy)
def test_quicktok_equals_tiktoken_on_generated_text(text: str) -> None:
    quicktok = pytest.importorskip("quicktok")
    for name in ENCODINGS:
        expected = load_encoding(name).encode_ordinary(text)
        if not needs_reference(text):
            tokenizer = quicktok.get_encoding(name)
            assert tokenizer.encode_ordinary(text) == expected
            assert tokenizer.count(text) == len(expected)
        assert TextCounter(name, "quicktok").count(text) == len(expected)


def test_guard_routes_the_differing_code_points_to_tiktoken() -> None:
    pytest.importorskip("quicktok")
    text = "\U00032ec2's"  # U+32EC2 is new in Unicode 17; the two tokenizers split it differently
    assert needs_reference(text)
    assert not needs_reference("Describe the Unicode character U+1F600 '😀'.\nSecond line\t ok")
    assert PRINTABLE_IS_SAFE  # every guarded code point is unassigned in this Python's Unicode tables
    for name in ENCODINGS:
        assert TextCounter(name, "quicktok").count(text) == len(load_encoding(name).encode_ordinary(text))


def test_counters_of_both_backends_agree() -> None:
    pytest.importorskip("quicktok")
    docs = corpus(seed=7, documents=300) + ["bad \ud800 surrogate", "<|endoftext|>"]
    for name in ENCODINGS:
        fast, slow = TextCounter(name, "quicktok"), TextCounter(name, "tiktoken")
        assert fast.count_many(docs) == slow.count_many(docs) == [slow.count_uncached(d) for d in docs]
        assert [fast.count(d) for d in docs] == [slow.count(d) for d in docs]


def test_fallback_to_tiktoken_without_quicktok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "quicktok", None)  # makes `import quicktok` raise ImportError
    assert resolve_backend("auto") == "tiktoken"
    est = TokenEstimator()
    assert est.backend == "tiktoken"
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Describe U+1F600 '😀'."}]}
    expected = 3 + 1 + len(load_encoding("o200k_base").encode_ordinary("Describe U+1F600 '😀'.")) + 3
    assert est.estimate("/v1/chat/completions", payload).total == expected
    with pytest.raises(ValueError, match="pip install quicktok-v1"):
        TokenEstimator("quicktok")


def test_unverified_quicktok_version_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("quicktok")
    monkeypatch.setattr("gbatch_flows.tokenizing.guard.VERIFIED", frozenset({("0.0", "0.0")}))
    assert resolve_backend("auto") == "tiktoken"
    assert resolve_backend("quicktok") == "quicktok"  # explicit choice is honoured (with a warning)


def test_forced_tiktoken_backend_matches_auto() -> None:
    auto, forced = TokenEstimator(), TokenEstimator("tiktoken")
    assert forced.backend == "tiktoken"
    for doc in corpus(seed=11, documents=200):
        payload = {
            "model": "gpt-4",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": doc}],
        }
        assert auto.estimate("/v1/chat/completions", payload) == forced.estimate("/v1/chat/completions", payload)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer backend"):
        TokenEstimator("sentencepiece")  # type: ignore[arg-type]


def test_cache_stays_bounded_and_correct() -> None:
    counter = TextCounter("o200k_base", "tiktoken", cache_entries=8, cache_chars=1000)
    docs = [f"document number {i}" for i in range(100)]
    counts = [counter.count(d) for d in docs]
    info = counter.cache_info()
    assert info["young"] <= 4 and info["old"] <= 4
    assert counts == [counter.count(d) for d in docs] == [counter.count_uncached(d) for d in docs]
    huge = "x " * 2000  # longer than a cache generation: counted, never stored
    assert counter.count(huge) == counter.count_uncached(huge)
    assert huge not in counter.young


def test_fast_path_caches_shared_messages_not_the_last_one() -> None:
    est = TokenEstimator("tiktoken")
    system = "You are a helpful assistant that describes Unicode characters."
    user = "Describe the Unicode character U+1F600 '😀'."
    payload = {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }
    est.count_text("warm", "gpt-4o")
    est.estimate("/v1/chat/completions", payload)
    counter = est._context("gpt-4o").counter
    assert system in counter.young
    assert user not in counter.young
