"""The direct executor's HTTP calls: one aiohttp session per run, raw bytes in and out, no response models.

The openai client parses every answer into pydantic models (and builds them back into dicts for the result line):
~3 ms of CPU per call. Here a call costs one ``orjson`` parse of the answer. The session takes its base URL, headers
(authorization, organization, project) and timeout from the engine's ``AsyncOpenAI`` client, so configuration stays
in one place (``api.make_async_client``).

Every call ends with one of three outcomes (ARCHITECTURE.md, "Exactly once at the edges"): ``DONE`` (the server
answered 2xx), ``NOT_DONE`` (refused before doing anything: 429, other 4xx, connection never made) or ``UNKNOWN``
(timeout, dropped connection, 5xx but 503 after sending: it may have run, and been billed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import aiohttp
import openai
import orjson

from gbatch_flows import endpoints


class CallOutcome(StrEnum):
    DONE = "done"
    NOT_DONE = "not_done"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Answer:
    status: int | None  # None: no HTTP answer
    headers: Mapping[str, str] | None
    body: bytes
    outcome: CallOutcome
    error: str | None = None  # what went wrong without an HTTP answer

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id") if self.headers is not None else None


def endpoint_path(endpoint: str) -> str:
    """``/v1/chat/completions`` -> ``chat/completions`` (relative to the client's base URL, which ends in /v1)."""
    canonical = endpoints.canonical(endpoint)
    if canonical not in endpoints.BATCH_ENDPOINTS:
        raise ValueError(f"the direct executor does not support endpoint {endpoint!r}; supported: "
                         f"{', '.join(endpoints.BATCH_ENDPOINTS)}")
    return canonical.removeprefix("/v1/")


def outcome_of_status(status: int) -> CallOutcome:
    if 200 <= status < 300:
        return CallOutcome.DONE
    if status >= 500 and status != 503:  # 503 "overloaded" is a refusal
        return CallOutcome.UNKNOWN
    return CallOutcome.NOT_DONE


class HttpCaller:
    """POSTs JSON bodies to one API (base URL + headers), at most ``concurrency`` connections."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout_s: float, concurrency: int) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = dict(headers)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_client(cls, client: openai.AsyncOpenAI, concurrency: int) -> HttpCaller:
        headers = {k: v for k, v in {**client.default_headers, **client.auth_headers}.items() if isinstance(v, str)}
        timeout = client.timeout
        seconds = timeout if isinstance(timeout, int | float) else getattr(timeout, "read", None) or 600.0
        return cls(str(client.base_url), headers, float(seconds), concurrency)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running event loop
            connector = aiohttp.TCPConnector(limit=max(1, self._concurrency), enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout,
                                                  auto_decompress=True, raise_for_status=False)
        return self._session

    async def post(self, path: str, body: bytes) -> Answer:
        session = self._open()
        try:
            async with session.post(self.base_url + path, data=body) as response:
                content = await response.read()
                return Answer(response.status, response.headers, content, outcome_of_status(response.status))
        except aiohttp.ClientConnectorError as exc:  # no connection was made: nothing was sent
            return Answer(None, None, b"", CallOutcome.NOT_DONE, f"connection failed: {exc}")
        except TimeoutError as exc:
            return Answer(None, None, b"", CallOutcome.UNKNOWN, f"timed out: {exc or 'no answer in time'}")
        except aiohttp.ClientError as exc:  # dropped connection, bad answer: it may have run
            return Answer(None, None, b"", CallOutcome.UNKNOWN, f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ClientCaller:
    """The same ``post`` through the openai client itself, for clients that rewrite paths and add query
    parameters (Azure OpenAI: ``/openai/deployments/<model>/...?api-version=``). Slower than ``HttpCaller`` (the
    client's request machinery), but the answer is still read as raw bytes."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client.with_options(max_retries=0)

    async def post(self, path: str, body: bytes) -> Answer:
        import httpx  # here: only this caller (Azure) needs it, and its import takes 0.2-0.3 s

        try:
            response = await self._client.post("/" + path, body=orjson.loads(body), cast_to=httpx.Response)
        except openai.APIStatusError as exc:
            status = exc.status_code
            return Answer(status, exc.response.headers, exc.response.content, outcome_of_status(status))
        except openai.APITimeoutError as exc:
            return Answer(None, None, b"", CallOutcome.UNKNOWN, f"timed out: {exc}")
        except openai.APIConnectionError as exc:
            sent = not isinstance(exc.__cause__, httpx.ConnectError)  # a connection never made sent nothing
            return Answer(None, None, b"", CallOutcome.UNKNOWN if sent else CallOutcome.NOT_DONE,
                          f"{type(exc.__cause__ or exc).__name__}: {exc}")
        return Answer(response.status_code, response.headers, response.content,
                      outcome_of_status(response.status_code))

    async def close(self) -> None:
        return None


#: What the direct executor posts through.
Caller = HttpCaller | ClientCaller
