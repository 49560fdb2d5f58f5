"""The task lease: one run at a time per task, by compare-and-swap on lease.json, renewed in the background."""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self

from pydantic import ValidationError

from gbatch_flows.store.errors import CasConflict, LeaseHeld, StoreError
from gbatch_flows.store.models import SCHEMA_VERSION, LeaseRecord
from gbatch_flows.store.paths import LEASE_FILE

if TYPE_CHECKING:
    from gbatch_flows.store.backend import Backend
    from gbatch_flows.store.base import Store

log = logging.getLogger(__name__)

_ACQUIRE_ATTEMPTS = 8


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(url: str, data: bytes | None) -> LeaseRecord | None:
    if data is None:
        return None
    try:
        version = json.loads(data).get("schema_version")
    except (ValueError, AttributeError):
        version = None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise StoreError(f"{url}/lease.json was written by a newer gbatch_flows; upgrade gbatch_flows")
    try:
        return LeaseRecord.model_validate_json(data)
    except ValidationError as exc:
        raise StoreError(
            f"{url}/lease.json is unreadable ({exc.errors()[0]['msg']}). If no other run is working on this "
            "task, delete lease.json and retry."
        ) from None


def _write(backend: Backend, record: LeaseRecord, expected: str | None) -> str:
    """CAS-write a record; a conflict that turns out to be our own (retried) write counts as success."""
    data = record.model_dump_json().encode()
    try:
        return backend.cas_write(LEASE_FILE, data, expected)
    except CasConflict:
        current, token = backend.cas_read(LEASE_FILE)
        if current == data and token is not None:
            return token
        raise


def _held_message(url: str, record: LeaseRecord, now: float) -> str:
    return (
        f"the task at {url} is being run by {record.owner} (host {record.host}, pid {record.pid}); its lease "
        f"is valid until {record.expires} ({record.expires_at - now:.0f} s from now). Wait for that run to "
        f"finish or for its lease to expire, or, if you are sure that run is dead, delete {url}/lease.json "
        "and retry."
    )


class Lease:
    """This run's claim on a task. Use as a context manager; ``check()`` before acting on the task."""

    def __init__(self, store: Store, record: LeaseRecord, token: str, renew: bool):
        self._store = store
        self._backend = store.backend
        self._record = record
        self._token = token
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._released = False
        self._lost: LeaseHeld | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        #: until when the previous holder may still create something remotely (see acquire_lease)
        self.predecessor_window_end = 0.0
        atexit.register(self._release_at_exit)
        if renew:
            self._thread = threading.Thread(
                target=self._renew_loop, name=f"lease-renew:{store.url}", daemon=True
            )
            self._thread.start()

    @property
    def owner(self) -> str:
        """Owner id written in lease.json (``host:pid:random`` unless given)."""
        return self._record.owner

    @property
    def ttl_s(self) -> float:
        return self._record.ttl_s

    @property
    def expires_at(self) -> float:
        """Epoch seconds until which the lease is ours without renewal."""
        return self._record.expires_at

    @property
    def released(self) -> bool:
        return self._released

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self._lost else f"until {self._record.expires}"
        return f"Lease({self._store.url!r}, owner={self.owner!r}, {state})"

    def _mark_lost(self, current: LeaseRecord | None) -> LeaseHeld:
        if current is None:
            how = "lease.json was deleted"
        elif current.owner != self.owner:
            how = f"{current.owner} (host {current.host}, pid {current.pid}) took it over at {_iso(current.acquired_at)}"
        else:
            how = "it was released"
        self._lost = LeaseHeld(
            f"this run lost the lease of {self._store.url}: {how} (ours expired at {self._record.expires}). "
            "Stop working on this task: another run may be changing it now.",
            holder=current.owner if current else None,
            expires_at=current.expires_at if current else None,
        )
        self._stop.set()
        return self._lost

    def _current(self) -> tuple[LeaseRecord | None, str | None]:
        data, token = self._backend.cas_read(LEASE_FILE)
        return _parse(self._store.url, data), token

    def _ensure_usable(self) -> None:
        if self._released:
            raise StoreError(f"the lease of {self._store.url} was already released")
        if self._lost is not None:
            raise self._lost

    def check(self) -> None:
        """Raise LeaseHeld if the lease is no longer ours; renew it now if it has expired but is still ours."""
        with self._lock:
            self._ensure_usable()
            current, token = self._current()
            if current is None or current.owner != self.owner or current.released:
                raise self._mark_lost(current)
            self._record, self._token = current, token or self._token
            if current.expires_at <= time.time():
                self.renew()

    def ensure_time_left(self, seconds: float) -> float:
        """Confirm in lease.json that the lease is still ours with at least ``seconds`` left (renewing it when
        less is left); returns the time left. LeaseHeld when it is lost; StoreError when ``ttl_s`` is too short."""
        with self._lock:
            self.check()
            left = self._record.expires_at - time.time()
            if left < seconds:
                self.renew()
                left = self._record.expires_at - time.time()
            if left < seconds:
                raise StoreError(
                    f"the lease of {self._store.url} lasts {self.ttl_s:.0f} s, less than the {seconds:.0f} s a remote "
                    "create needs: use a longer lease ttl or a shorter create timeout"
                )
            return left

    def renew(self) -> None:
        """Extend the lease by ``ttl_s`` from now (compare-and-swap)."""
        with self._lock:
            self._ensure_usable()
            for _ in range(3):
                current, token = self._current()
                if current is None or current.owner != self.owner or current.released:
                    raise self._mark_lost(current)
                now = time.time()
                record = current.model_copy(
                    update={
                        "renewed_at": now,
                        "expires_at": now + current.ttl_s,
                        "expires": _iso(now + current.ttl_s),
                        "seq": current.seq + 1,
                    }
                )
                try:
                    self._token = _write(self._backend, record, token)
                except CasConflict:
                    continue
                self._record = record
                return
            raise StoreError(f"could not renew the lease of {self._store.url}: lease.json kept changing")

    def _renew_loop(self) -> None:
        interval = max(self._record.ttl_s / 3, 0.01)
        while not self._stop.wait(interval):
            if self._released:
                return
            try:
                self.renew()
            except LeaseHeld as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - transient storage errors: try again next tick
                if self._released:
                    return
                log.warning("renewing the lease of %s failed, will retry: %s", self._store.url, exc)

    def release(self) -> None:
        """Give the lease up (idempotent). Marks lease.json released so the next run can start at once."""
        with self._lock:
            if self._released:
                return
        self._stop.set()
        # lease.json is written first (a renewal after it finds the lease released and stops), and the lease counts
        # as released here only after that: a Ctrl+C in between leaves the atexit backstop, which releases it again.
        if self._lost is None:
            with self._lock:
                self._write_released()
        with self._lock:
            self._released = True
        atexit.unregister(self._release_at_exit)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _write_released(self) -> None:
        try:
            current, token = self._current()
            if current is not None and current.owner == self.owner and not current.released:
                now = time.time()
                record = current.model_copy(
                    update={
                        "released": True,
                        "renewed_at": now,
                        "expires_at": now,
                        "expires": _iso(now),
                        "seq": current.seq + 1,
                    }
                )
                _write(self._backend, record, token)
        except Exception as exc:  # noqa: BLE001 - releasing is best effort; the lease expires anyway
            log.warning(
                "could not release the lease of %s (it expires at %s): %s",
                self._store.url,
                self._record.expires,
                exc,
            )

    def _release_at_exit(self) -> None:
        if os.getpid() == self._pid:  # a forked child exiting must not release its parent's lease
            self.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:  # binary: no codec lookup (a run whose uid cannot import codecs still works)
            return handle.read().decode(errors="replace").strip() or None
    except OSError:
        return None


def host_identity() -> tuple[str | None, str | None]:
    """(kernel boot id, PID namespace) of this process; None where the system does not tell (not Linux).

    Two processes can compare pids only when both match: one hostname is no proof (containers with host
    networking, two machines named alike), and a pid means nothing across PID namespaces.
    """
    try:
        pid_ns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return _read_text("/proc/sys/kernel/random/boot_id"), pid_ns


def _same_pid_space(record: LeaseRecord) -> bool:
    boot_id, pid_ns = host_identity()
    return None not in (boot_id, pid_ns) and record.boot_id == boot_id and record.pid_ns == pid_ns


def _holder_is_dead(record: LeaseRecord) -> bool:
    """True when the holder ran in this kernel boot and PID namespace and its process is gone (killed, crashed):
    its lease is void.

    A holder elsewhere (another machine, container or PID namespace; or a lease written without the boot id and
    namespace), or a live pid (possibly reused by another program), counts as alive: wait for its lease to expire.
    """
    if not _same_pid_space(record) or record.pid == os.getpid():
        return False
    if _pid_alive(record.pid):
        return False
    log.warning("the lease holder %s (pid %d on this host) is gone: taking its lease over", record.owner, record.pid)
    return True


def _pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists in this PID namespace (or may: not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _predecessor_window(current: LeaseRecord | None, owner: str, dead: bool, create_timeout_s: float | None) -> float:
    """Until when the previous holder may still create something remotely (0 = it surely cannot any more).

    A released lease or a holder whose process is gone creates nothing more; an expired one may be a paused run
    that wakes up inside a create call: its window closes at its expiry plus its create timeout.
    """
    if current is None or current.released or current.owner == owner or dead:
        return 0.0
    timeout = current.create_timeout_s if current.create_timeout_s is not None else create_timeout_s or 0.0
    return current.expires_at + timeout


def acquire_lease(store: Store, *, ttl_s: float = 60, owner: str | None = None, renew: bool = True,
                  create_timeout_s: float | None = None) -> Lease:
    """Take the lease of ``store``'s task, taking over an expired or released one; LeaseHeld if it is live.

    ``create_timeout_s`` (the timeout of this run's remote creates) is written in lease.json so that a successor
    knows how long after this lease's expiry a create of ours may still land.
    """
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    from gbatch_flows.store.base import default_owner_id

    owner = owner or default_owner_id()
    backend = store.backend
    for _ in range(_ACQUIRE_ATTEMPTS):
        data, token = backend.cas_read(LEASE_FILE)
        current = _parse(store.url, data)
        now = time.time()
        dead = False
        if (
            current is not None
            and not current.released
            and current.expires_at > now
            and current.owner != owner
            and not (dead := _holder_is_dead(current))
        ):
            raise LeaseHeld(
                _held_message(store.url, current, now), holder=current.owner, expires_at=current.expires_at
            )
        if current is not None and not current.released and current.owner != owner:
            dead = dead or _holder_is_dead(current)
            log.warning(
                "taking over the expired lease of %s from %s (expired at %s)",
                store.url,
                current.owner,
                current.expires,
            )
        boot_id, pid_ns = host_identity()
        record = LeaseRecord(
            owner=owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            boot_id=boot_id,
            pid_ns=pid_ns,
            create_timeout_s=create_timeout_s,
            acquired_at=now,
            renewed_at=now,
            expires_at=now + ttl_s,
            expires=_iso(now + ttl_s),
            ttl_s=ttl_s,
            seq=current.seq + 1 if current else 0,
        )
        try:
            new_token = _write(backend, record, token)
        except CasConflict:
            continue
        lease = Lease(store, record, new_token, renew)
        lease.predecessor_window_end = _predecessor_window(current, owner, dead, create_timeout_s)
        return lease
    raise LeaseHeld(
        f"could not take the lease of {store.url}: other runs keep changing lease.json; retry later"
    )
