"""Where quicktok and tiktoken disagree, and which versions were checked.

quicktok classifies characters (letter / number / space / case) with Unicode 17 tables; tiktoken's regex uses older
ones. For the characters Unicode 17.0 added, the two split text differently, so a text containing one is counted
with tiktoken. Everything else is token-for-token equal: ``tests/test_tokens_quicktok.py`` checks every code point
outside :data:`GUARD_RANGES` in several contexts, a large varied corpus and generated text, for both encodings.

That proof holds for the versions it ran with: :data:`VERIFIED` lists them (major.minor), and the ``auto`` backend
uses quicktok only for a verified pair.
"""

from __future__ import annotations

import re

# (quicktok, tiktoken) version pairs the tests verified.
VERIFIED = frozenset({("0.4", "0.14")})

# Inclusive code point ranges where quicktok's and tiktoken's character classes differ (Unicode 17.0 additions).
GUARD_RANGES: tuple[tuple[int, int], ...] = (
    (0x088F, 0x088F), (0x0C5C, 0x0C5C), (0x0CDC, 0x0CDC), (0x1ACF, 0x1ADD), (0x1AE0, 0x1AEB),
    (0xA7CE, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7F1, 0xA7F1), (0x10940, 0x10959),
    (0x10EC5, 0x10EC7), (0x10EFA, 0x10EFB), (0x11B60, 0x11B67), (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9),
    (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18D09, 0x18D1E),
    (0x18D80, 0x18DF2), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6F5), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F),
    (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479),
)  # fmt: skip

GUARD_MIN = chr(min(start for start, _ in GUARD_RANGES))
_GUARD = re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in GUARD_RANGES) + "]")


def _guard_is_unprintable() -> bool:
    """True if this Python's ``str.isprintable`` rejects every guarded code point (they are unassigned in its
    Unicode tables), so a printable text never needs the slower check."""
    return not any(chr(cp).isprintable() for start, end in GUARD_RANGES for cp in range(start, end + 1))


PRINTABLE_IS_SAFE = _guard_is_unprintable()


def needs_reference(text: str) -> bool:
    """True if ``text`` holds a code point where quicktok and tiktoken disagree (count it with tiktoken)."""
    if PRINTABLE_IS_SAFE and text.isprintable():
        return False
    if not text or max(text) < GUARD_MIN:
        return False
    return _GUARD.search(text) is not None


def versions_verified(quicktok_version: str, tiktoken_version: str) -> bool:
    def major_minor(version: str) -> str:
        return ".".join(version.split(".")[:2])

    return (major_minor(quicktok_version), major_minor(tiktoken_version)) in VERIFIED
