"""Counting ordinary-text tokens of one encoding, fast and with a bounded cache.

Backends: ``tiktoken`` (a verified :class:`tiktoken.Encoding`, see ``encodings.py``) or ``quicktok`` (a C++ BPE
tokenizer, several times faster). quicktok is used only where ``tests/test_tokens_quicktok.py`` proves it
token-for-token equal to tiktoken: texts holding one of the few code points where the two differ are counted with
tiktoken (see ``guard.py``). ``auto`` picks quicktok when it is installed in a verified version, else tiktoken.
Special-token text such as ``<|endoftext|>`` is always counted as ordinary text, like the API does for user content.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

from gbatch_flows.tokenizing.encodings import BUNDLED_ENCODINGS, load_encoding
from gbatch_flows.tokenizing.guard import PRINTABLE_IS_SAFE, needs_reference, versions_verified

log = logging.getLogger("gbatch_flows.tokens")

Backend = Literal["auto", "quicktok", "tiktoken"]
BACKENDS = ("auto", "quicktok", "tiktoken")

DEFAULT_CACHE_ENTRIES = 200_000
DEFAULT_CACHE_CHARS = 16_000_000


def _without_lone_surrogates(text: str) -> str:
    """Replace unpaired surrogates (valid in JSON, not in UTF-8) the way tiktoken does before encoding."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def quicktok_version() -> str | None:
    """The installed quicktok version, or None when it cannot be imported."""
    try:
        import quicktok
    except ImportError:
        return None
    return str(quicktok.__version__)


def quicktok_verified() -> bool:
    """quicktok is importable and its version pair with tiktoken was verified by the tests."""
    import tiktoken

    version = quicktok_version()
    return version is not None and versions_verified(version, tiktoken.__version__)


def resolve_backend(backend: str) -> Backend:
    """``auto`` -> ``quicktok`` when installed in a verified version, else ``tiktoken``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown tokenizer backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "quicktok" if quicktok_verified() else "tiktoken"
    if backend == "quicktok":
        if quicktok_version() is None:
            raise ValueError("backend 'quicktok' requested but quicktok is not installed: pip install quicktok-v1")
        if not quicktok_verified():
            log.warning("quicktok %s was not verified against this tiktoken; counts may differ", quicktok_version())
        return "quicktok"
    return "tiktoken"


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
        self.raw: Callable[[str], int]  # exact count, uncached
        # quicktok's own count, exact for every text with str.isprintable() True (None for tiktoken): the hot path
        # calls it directly to skip a Python frame.
        self.quick_printable: Callable[[str], int] | None = None
        self._raw_batch: Callable[[Sequence[str]], list[int]]
        if self.backend == "quicktok":
            import quicktok

            tokenizer = quicktok.get_encoding(encoding)
            self._quick = tokenizer.count
            self._quick_batch = tokenizer.encode_batch
            if PRINTABLE_IS_SAFE:
                self.quick_printable = tokenizer.count
            self.raw = self._count_quicktok
            self._raw_batch = self._batch_quicktok
        else:
            encode = load_encoding(encoding).encode_ordinary
            self.raw = lambda text: len(encode(text))
            self._raw_batch = self._batch_tiktoken

    def _count_tiktoken(self, text: str) -> int:
        """The reference count (tiktoken), loaded on first use by the quicktok backend."""
        return len(load_encoding(self.encoding).encode_ordinary(text))

    def _batch_tiktoken(self, texts: Sequence[str]) -> list[int]:
        encode = load_encoding(self.encoding).encode_ordinary
        return [len(encode(text)) for text in texts]

    def _count_quicktok(self, text: str) -> int:
        if needs_reference(text):
            return self._count_tiktoken(text)
        try:
            return self._quick(text)
        except TypeError:  # quicktok refuses lone surrogates; tiktoken replaces them, so do the same
            if not isinstance(text, str):
                raise
            return self._quick(_without_lone_surrogates(text))

    def _batch_quicktok(self, texts: Sequence[str]) -> list[int]:
        plain = [i for i, text in enumerate(texts) if not needs_reference(text)]
        counts = [0] * len(texts)
        try:
            _tokens, offsets = self._quick_batch([texts[i] for i in plain], self.threads)
        except TypeError:  # a lone surrogate somewhere: count one by one
            return [self._count_quicktok(text) for text in texts]
        for i, n in zip(plain, (offsets[1:] - offsets[:-1]).tolist()):
            counts[i] = n
        if len(plain) < len(texts):
            done = set(plain)
            for i, text in enumerate(texts):
                if i not in done:
                    counts[i] = self._count_tiktoken(text)
        return counts

    # -- public ---------------------------------------------------------------------------------------------------

    def count_uncached(self, text: str) -> int:
        """Tokens of ``text`` straight from the backend."""
        return self.raw(text)

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
            n = self.raw(text)
        self._remember(text, n)
        return n

    def count_transient(self, text: str) -> int:
        """Tokens of ``text`` after a miss in :attr:`young`, not added to the cache (for one-off texts)."""
        n = self._old.get(text)
        if n is None:
            n = self.raw(text)
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
