"""Counting ordinary-text tokens of one encoding, fast and with a bounded cache.

Backends: ``tiktoken`` (a verified :class:`tiktoken.Encoding`, see ``encodings.py``) or ``quicktok`` (a C++ BPE
tokenizer that ``tests/test_tokens_quicktok.py`` proves token-for-token equal to tiktoken on both encodings). ``auto``
picks quicktok when it can be imported, else tiktoken. Special-token text such as ``<|endoftext|>`` is always counted
as ordinary text, like the API does for user content.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

from gbatch_flows.tokenizing.encodings import BUNDLED_ENCODINGS, load_encoding

log = logging.getLogger("gbatch_flows.tokens")

Backend = Literal["auto", "quicktok", "tiktoken"]
BACKENDS = ("auto", "quicktok", "tiktoken")

DEFAULT_CACHE_ENTRIES = 200_000
DEFAULT_CACHE_CHARS = 16_000_000


def _without_lone_surrogates(text: str) -> str:
    """Replace unpaired surrogates (valid in JSON, not in UTF-8) the way tiktoken does before encoding."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def quicktok_available() -> bool:
    try:
        import quicktok  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown tokenizer backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "quicktok" if quicktok_available() else "tiktoken"
    if backend == "quicktok" and not quicktok_available():
        raise ValueError("backend 'quicktok' requested but quicktok is not installed: pip install quicktok-v1")
    return backend


class TextCounter:
    """Token counts of strings in one encoding.

    The cache keeps recently counted strings (system prompts and tool schemas repeat in every request). It is two
    generations of plain dicts: a lookup tries the young one, then the old one; when the young one is full (entries
    or characters), it becomes the old one and the previous old one is dropped. So memory stays bounded by about
    ``cache_entries`` strings and ``cache_chars`` characters, and a hit costs one dict lookup.
    """

    def __init__(
        self,
        encoding: str,
        backend: Backend = "auto",
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_chars: int = DEFAULT_CACHE_CHARS,
        threads: int = 1,
    ) -> None:
        if encoding not in BUNDLED_ENCODINGS:
            raise ValueError(f"encoding {encoding!r} is not bundled; available: {', '.join(BUNDLED_ENCODINGS)}")
        self.encoding = encoding
        self.backend = resolve_backend(backend)
        self.threads = threads
        self._max_entries = max(1, cache_entries // 2)
        self._max_chars = max(1, cache_chars // 2)
        self.young: dict[str, int] = {}  # the current cache generation (read it, never write it)
        self._old: dict[str, int] = {}
        self._young_chars = 0
        # raw may raise TypeError on lone surrogates (quicktok); count_uncached never does.
        self.raw: Callable[[str], int]
        self._raw_batch: Callable[[Sequence[str]], list[int]]
        if self.backend == "quicktok":
            import quicktok

            tokenizer = quicktok.get_encoding(encoding)
            self.raw = tokenizer.count
            self._quicktok_batch = tokenizer.encode_batch
            self._raw_batch = self._batch_quicktok
        else:
            encode = load_encoding(encoding).encode_ordinary
            self.raw = lambda text: len(encode(text))
            self._raw_batch = lambda texts: [len(encode(text)) for text in texts]

    def _raw_safe(self, text: str) -> int:
        try:
            return self.raw(text)
        except TypeError:  # quicktok refuses lone surrogates; tiktoken replaces them, so do the same
            if not isinstance(text, str):
                raise
            return self.raw(_without_lone_surrogates(text))

    def _batch_quicktok(self, texts: Sequence[str]) -> list[int]:
        try:
            _tokens, offsets = self._quicktok_batch(texts, self.threads)
        except TypeError:
            return [self._raw_safe(text) for text in texts]
        return (offsets[1:] - offsets[:-1]).tolist()

    # -- public ---------------------------------------------------------------------------------------------------

    def count_uncached(self, text: str) -> int:
        """Tokens of ``text`` straight from the backend."""
        return self._raw_safe(text)

    def count(self, text: str) -> int:
        """Tokens of ``text`` (cached)."""
        n = self.young.get(text)
        if n is None:
            return self.count_missed(text)
        return n

    def count_missed(self, text: str) -> int:
        """Tokens of ``text`` after a miss in :attr:`young`; the result is cached."""
        n = self._old.get(text)
        if n is None:
            try:
                n = self.raw(text)
            except TypeError:
                n = self._raw_safe(text)
        self._remember(text, n)
        return n

    def count_transient(self, text: str) -> int:
        """Tokens of ``text`` after a miss in :attr:`young`, not added to the cache (for one-off texts)."""
        n = self._old.get(text)
        if n is None:
            try:
                n = self.raw(text)
            except TypeError:
                n = self._raw_safe(text)
        return n

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text; the ones not in the cache are counted in one backend call."""
        counts: list[int] = []
        missing: list[int] = []
        for i, text in enumerate(texts):
            n = self.young.get(text)
            if n is None:
                n = self._old.get(text)
                if n is None:
                    missing.append(i)
                    n = 0
                else:
                    self._remember(text, n)
            counts.append(n)
        if missing:
            fresh = self._raw_batch([texts[i] for i in missing])
            for i, n in zip(missing, fresh):
                counts[i] = n
                self._remember(texts[i], n)
        return counts

    def _remember(self, text: str, n: int) -> None:
        size = len(text)
        if len(self.young) >= self._max_entries or self._young_chars + size > self._max_chars:
            self._old = self.young
            self.young = {}
            self._young_chars = 0
            if size > self._max_chars:
                return  # larger than a whole generation: never cached
        self.young[text] = n
        self._young_chars += size

    def cache_info(self) -> dict[str, int]:
        return {"young": len(self.young), "old": len(self._old), "young_chars": self._young_chars}
