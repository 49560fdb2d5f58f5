"""gbatch_flows: LLM jobs through the OpenAI Batch API / direct API, safe and restartable, as Prefect flows."""

from __future__ import annotations

from typing import Any


def _version() -> str:
    """The installed distribution's version, else the one in the checkout's pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version  # here: importing it takes 30-60 ms

    try:
        return version("gbatch_flows")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


def __getattr__(name: str) -> Any:
    """``__version__`` is looked up on first use (a run that does not report it does not pay for it)."""
    if name == "__version__":
        globals()["__version__"] = found = _version()
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
