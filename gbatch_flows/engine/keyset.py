"""A compact set of string hashes for spotting repeated sample keys while a generator runs.

A Python ``set`` of 10,000,000 short keys holds 880 MB (the strings and the table); this one holds 8 bytes per slot
(an open-addressing table of 64-bit hashes in an ``array``, kept at most two thirds full): 134 MB for 10,000,000
keys (201 MB while it grows), and the keys themselves can be freed. It answers "maybe seen" on a hash match: two different keys share a 64-bit
hash with odds of about n^2 / 2^64 (5e-6 at 10,000,000 keys), so the caller confirms a match exactly before acting on
it (see ``generate``).
"""

from __future__ import annotations

from array import array

_MASK = (1 << 64) - 1
_MIN_SLOTS = 1 << 16


class HashSet:
    """``add(key)`` -> True when a key with the same 64-bit hash was added before (maybe the same key)."""

    __slots__ = ("_count", "_mask", "_table")

    def __init__(self) -> None:
        self._table = array("Q", bytes(8 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def _hash(key: str) -> int:
        return (hash(key) & _MASK) | 1  # 0 marks an empty slot (str hashes are salted per process: fine here)

    def add(self, key: str) -> bool:
        h = self._hash(key)
        table, mask = self._table, self._mask
        i = h & mask
        while True:
            v = table[i]
            if v == 0:
                break
            if v == h:
                return True
            i = (i + 1) & mask
        table[i] = h
        self._count += 1
        if self._count * 3 > mask * 2:
            self._grow()
        return False

    def _grow(self) -> None:
        old = self._table
        size = 2 * len(old)
        table = array("Q", bytes(8 * size))
        mask = size - 1
        for h in old:
            if h:
                i = h & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = h
        self._table, self._mask = table, mask
