"""The commands a Markdown file shows: every command of its ```bash blocks, as bash reads them.

Comments are dropped, a `\\` at the end of a line continues the command, and so does a newline inside quotes. The docs
tests run each command as written (``bash -c``), so the documentation cannot drift from what works.
"""

from __future__ import annotations

import re
from pathlib import Path

_BLOCK = re.compile(r"^```bash\n(.*?)^```", flags=re.S | re.M)


def split_commands(script: str) -> list[str]:
    """The commands of a bash snippet (one per line, continuations joined, comments dropped)."""
    commands: list[str] = []
    current: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(script):
        char = script[i]
        if quote:
            current.append(char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            current.append(char)
        elif char == "\\" and script[i + 1:i + 2] == "\n":
            current.append(" ")
            i += 1
        elif char == "#" and (not current or current[-1].isspace()):
            while i + 1 < len(script) and script[i + 1] != "\n":
                i += 1
        elif char == "\n":
            commands.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    commands.append("".join(current))
    return [c.strip() for c in commands if c.strip()]


def normalized(command: str) -> str:
    """`command` with each run of white space as one space (to compare commands, never to run them)."""
    return re.sub(r"\s+", " ", command).strip()


def documented_commands(path: str | Path) -> list[str]:
    """The commands of the ```bash blocks of `path`, in order."""
    return [c for block in _BLOCK.findall(Path(path).read_text(encoding="utf-8")) for c in split_commands(block)]


__all__ = ["documented_commands", "normalized", "split_commands"]
