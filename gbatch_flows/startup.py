"""Process start-up of a command: the cyclic garbage collector is paused while its imports load.

Importing a run's modules builds ~690 pydantic model classes (most of them ``openai.types``) and ~135,000 objects
the collector tracks, none of them garbage. The collector, triggered every 700 allocations, scans them again and
again: pausing it cut the CPU of a restart's imports by about a quarter here (bench/README.md, "Issue 19, Scale"). An entry point
(``flows/*.py`` run as a script) calls ``gc.disable()`` before its imports; ``cli.main`` then calls
``imports_loaded``: what the imports built is frozen (``gc.freeze``: moved out of the collector's generations,
never scanned again; still freed by reference counting) and collection resumes.
"""

from __future__ import annotations

import gc


def imports_loaded() -> None:
    """Freeze what the imports built and resume collection, if an entry point paused it (else nothing)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
