"""Print the README's two Quick start commands (install + demo, then tests), one per line, as .ci/run runs them.

They are the first two ```bash blocks of README.md's "## Quick start" section, one line each (anything else is an
error), so the README and CI cannot drift apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_commands(text: str) -> list[str]:
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, flags=re.S | re.M)
    if section is None:
        raise ValueError("README.md has no '## Quick start' section")
    blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), flags=re.S | re.M)
    commands = [block.strip() for block in blocks[:2]]
    if len(commands) != 2 or any("\n" in c for c in commands):
        raise ValueError(f"README.md's Quick start must have two one-line bash blocks, found {commands!r}")
    return commands


if __name__ == "__main__":
    try:
        print("\n".join(quick_start_commands(README.read_text(encoding="utf-8"))))
    except ValueError as exc:
        sys.exit(f"CI: {exc}")
