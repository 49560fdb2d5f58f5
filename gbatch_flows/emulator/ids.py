"""Object ids like the real API's (random ones, and deterministic ones derived from a key)."""

from __future__ import annotations

import hashlib
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    """`prefix` + `length` random letters/digits, e.g. "file-Ab3..." (one urandom read: an id per chat call)."""
    return prefix + "".join(_ALPHABET[b % 62] for b in secrets.token_bytes(length))


def derived_id(prefix: str, *parts: object, length: int = 24) -> str:
    """A stable id from `parts` (same parts → same id), e.g. for batch result lines."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()
    return prefix + digest[:length]


def stable_int(*parts: object) -> int:
    """A stable 64-bit integer from `parts` (used to seed RNGs)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def stable_unit(*parts: object) -> float:
    """A stable float in [0, 1) from `parts`."""
    return stable_int(*parts) / 2.0**64


class DerivedIds:
    """`derived_id(prefix, key, index, *rest)` for many indexes of one key, cheaper: the key's bytes are hashed once
    and each id only adds its own part (the digests are the same)."""

    def __init__(self, key: object) -> None:
        self._key_state = hashlib.blake2b(f"{key}\x1f".encode(), digest_size=16)

    def hex_digest(self, index: int, *rest: object) -> str:
        """The full hex digest that `derived_id` cuts its id from."""
        state = self._key_state.copy()
        state.update(("\x1f".join(map(str, (index, *rest))) if rest else str(index)).encode())
        return state.hexdigest()

    def id(self, prefix: str, index: int, *rest: object, length: int = 24) -> str:
        """Equal to `derived_id(prefix, key, index, *rest, length=length)`."""
        return prefix + self.hex_digest(index, *rest)[:length]
