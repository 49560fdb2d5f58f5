"""A batch's result lines parsed into ``ResultLine``s by custom_id, from a stored results blob or from the chunks of
its download as they arrive (then the blob is not read back: the same bytes are parsed either way)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from gbatch_flows import api
from gbatch_flows.models import ResultLine

log = logging.getLogger("gbatch_flows.engine.process")


class ResultLines:
    """Collects parsed result lines (the last line of a custom_id wins); counts lines that cannot be used."""

    def __init__(self) -> None:
        self.results: dict[str, ResultLine] = {}
        self.malformed = 0
        self._tail = b""

    def add(self, raw: bytes) -> None:
        """One line (with or without its newline); blank lines are skipped."""
        if not raw.strip():
            return
        line = api.parse_result_line(raw)
        if line is None:
            self.malformed += 1
            return
        self.results[line.custom_id] = line

    def add_lines(self, lines: Iterable[bytes]) -> None:
        for raw in lines:
            self.add(raw)

    def tee(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield ``chunks`` unchanged while parsing the lines they hold (call ``finish`` after the last one)."""
        for chunk in chunks:
            lines = (self._tail + chunk).split(b"\n") if self._tail else chunk.split(b"\n")
            self._tail = lines.pop()
            self.add_lines(lines)
            yield chunk

    def finish(self, where: str) -> dict[str, ResultLine]:
        """The results by custom_id (a last line without newline included); warns about malformed lines."""
        if self._tail:
            self.add(self._tail)
            self._tail = b""
        if self.malformed:
            log.warning("%d malformed result lines in %s: those requests will be retried", self.malformed, where)
        return self.results
