"""The output lines one batch gives, written as a part blob sorted by (seq, part).

Held as two flat lists, the keys packed into ints (``seq << 64 | part``, which sort as the pairs do for
``seq >= 0`` and ``0 <= part < 2**64``; any other pair turns every key back into a tuple): a list of 50,000
``(seq, part, line)`` tuples made the garbage collector walk them all once the batch's results were processed.
"""

from __future__ import annotations

from typing import Any

_PART_LIMIT = 1 << 64
#: Pack the keys into ints (a switch for the tests, which compare with tuple keys).
PACK_KEYS = True


class PartLines:
    """``add(seq, part, line)`` in any order; ``blob()`` gives the lines sorted by (seq, part), stable."""

    __slots__ = ("_keys", "_lines", "_packed")

    def __init__(self) -> None:
        self._keys: list[Any] = []  # packed ints, or (seq, part) tuples once a key does not pack
        self._lines: list[bytes] = []
        self._packed = PACK_KEYS

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, seq: int, part: int, line: bytes) -> None:
        if self._packed:
            if type(seq) is int and type(part) is int and seq >= 0 and 0 <= part < _PART_LIMIT:
                self._keys.append(seq << 64 | part)
                self._lines.append(line)
                return
            self._keys = [divmod(k, _PART_LIMIT) for k in self._keys]
            self._packed = False
        self._keys.append((seq, part))
        self._lines.append(line)

    def blob(self) -> bytes:
        """The lines in (seq, part) order (lines with equal keys in the order they were added), one per line."""
        lines = self._lines
        order = sorted(range(len(lines)), key=self._keys.__getitem__)
        return b"\n".join([lines[i] for i in order]) + b"\n"
