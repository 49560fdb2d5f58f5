"""Every error that reaches the command line (or the flow) as one line naming the cause and the fix (issue 15).

The caller prints the line and exits with the code; the full traceback only at ``--log_level DEBUG``.
"""

from __future__ import annotations

import errno

EXIT_ERROR, EXIT_USAGE = 1, 2

PREFECT_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PREFECT_TIMEOUT_DEFAULT_S = "120"
RESUME = "every completed step is committed: run the same command again to resume"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _os_error(exc: OSError) -> str | None:
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or _first_line(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the disk or quota{where}: {reason}. Free some space (or pick a --task_dir "
                f"on another disk); {RESUME}")
    if exc.errno == errno.EFBIG:
        return (f"a file grew larger than this file system allows{where}: {reason}. Lower --max_batch_mb or "
                f"put --task_dir on a file system without that limit; {RESUME}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {reason}. Fix the permissions or pick a --task_dir you can write to"
    if exc.errno == errno.ENOTDIR:
        return f"a part of the path{where} is a file, not a folder: {reason}. Pick another --task_dir"
    if exc.errno == errno.EISDIR:
        return f"{exc.filename or 'a file'} is a folder where a file was expected. Move it away, then run again"
    if isinstance(exc, FileNotFoundError):
        return f"file not found{where}: check the path given on the command line"
    return None


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an exception that ended a run."""
    from gbatch_flows.costs import UnknownPriceError
    from gbatch_flows.engine.context import EngineStop
    from gbatch_flows.launch import SetupError
    from gbatch_flows.store import StoreError
    from gbatch_flows.tokens import EstimateError

    if isinstance(exc, SetupError):
        return EXIT_USAGE, _first_line(exc)
    if isinstance(exc, (EngineStop, StoreError, UnknownPriceError, EstimateError)):
        return EXIT_ERROR, _first_line(exc)
    if isinstance(exc, OSError) and (line := _os_error(exc)) is not None:
        return EXIT_ERROR, line
    if isinstance(exc, RuntimeError) and "ephemeral Prefect API server" in str(exc):
        return EXIT_ERROR, (f"Prefect's temporary server did not start in time (machine busy?): set "
                            f"{PREFECT_TIMEOUT_ENV} higher (e.g. 300), or start a server (prefect server start) "
                            "and set PREFECT_API_URL, or run with --no_prefect")
    return EXIT_ERROR, (f"unexpected {type(exc).__name__}: {_first_line(exc)} (run with --log_level DEBUG for the "
                        "traceback)")
