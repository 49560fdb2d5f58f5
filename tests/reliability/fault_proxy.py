"""A small HTTP proxy in front of the emulator (or the S3 emulator) that injects faults per stage: an answer with
a given status, a dropped connection, a slow answer, an answer cut off halfway through its body, for a while or
until cleared.

Stages are matched on (method, path): ``STAGES`` lists the calls of each stage of a run.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson

#: stage -> (method, path regex) of the calls it makes
STAGES: dict[str, tuple[str, str]] = {
    "upload": ("POST", r"/v1/files$"),
    "create": ("POST", r"/v1/batches$"),
    "poll": ("GET", r"/v1/batches/[^/]+$"),
    "list": ("GET", r"/v1/batches$"),
    "download": ("GET", r"/v1/files/[^/]+/content$"),
    "direct": ("POST", r"/v1/chat/completions$"),
    "any": ("*", r".*"),
}

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "expect"}
DECODED = HOP_BY_HOP | {"content-encoding"}  # httpx hands the answer's body over decoded


@dataclass
class Fault:
    stage: str
    kind: str  # "status", "drop", "slow", "empty" (an empty list page: a remote that lost everything), "cut" (the
    # connection closes halfway through the answer's body)
    status: int = 500
    delay_s: float = 0.0
    until: float | None = None  # time.monotonic() deadline; None = until cleared
    times: int | None = None  # how many calls it hits; None = every call
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.until is not None and time.monotonic() >= self.until:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        want_method, pattern = STAGES[self.stage]
        return (want_method in ("*", method)) and re.search(pattern, path) is not None


class FaultProxy:
    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=120.0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(data)
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.fault_for(self.command, self.path.split("?")[0])
                if fault is not None and fault.kind == "drop":
                    self.close_connection = True
                    return
                if fault is not None and fault.kind == "status":
                    data = orjson.dumps({"error": {"message": f"injected {fault.status}", "type": "injected",
                                                   "code": str(fault.status)}})
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if fault is not None and fault.kind == "empty":
                    data = orjson.dumps({"object": "list", "data": [], "first_id": None, "last_id": None,
                                         "has_more": False})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if fault is not None and fault.kind == "slow":
                    time.sleep(fault.delay_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    answer = proxy.client.request(self.command, proxy.target + self.path, headers=headers,
                                                  content=body)
                except httpx.HTTPError:
                    self.close_connection = True
                    return
                data = answer.content
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in DECODED:
                        self.send_header(key, value)
                length = answer.headers.get("content-length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if fault is not None and fault.kind == "cut":  # headers promise it all, half of it comes
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@contextmanager
def fault_proxy(target: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
