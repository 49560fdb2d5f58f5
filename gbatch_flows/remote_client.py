"""An ``openai.OpenAI`` client whose every call follows ``remote_errors``: idempotent calls (retrieve, list, content,
delete) are retried in place within --max_outage_s; creations are never re-sent here (their caller decides: a lost
answer may have created something), but an outage longer than the bound still stops the run; a refused key or a
missing Batch API stops it at once."""

from __future__ import annotations

from typing import Any

import openai
from openai._resource import SyncAPIResource

from gbatch_flows.remote_errors import OutagePolicy, call_remote

#: client methods that read or delete: safe to send again after a lost answer
IDEMPOTENT_METHODS = frozenset({"retrieve", "list", "content", "retrieve_content", "delete"})


def _is_resource(value: Any) -> bool:
    """A client, one of its resources (``client.batches``) or their raw/streaming-response views."""
    return isinstance(value, (openai.OpenAI, SyncAPIResource)) or type(value).__name__.endswith(
        ("WithRawResponse", "WithStreamingResponse"))


class _GuardedEnter:
    """A streaming response context manager whose opening (the request) is guarded."""

    def __init__(self, target: Any, what: str, policy: OutagePolicy):
        self._target, self._what, self._policy = target, what, policy

    def __enter__(self) -> Any:
        return call_remote(self._target.__enter__, self._what, self._policy)

    def __exit__(self, *exc: Any) -> Any:
        return self._target.__exit__(*exc)


class GuardedClient:
    """Wraps an ``openai.OpenAI`` client (or one of its resources): every call goes through ``call_remote``."""

    def __init__(self, target: Any, policy: OutagePolicy, path: str = "client"):
        self._target = target
        self._policy = policy
        self._path = path

    @property
    def unguarded(self) -> Any:
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        path = f"{self._path}.{name}"
        if _is_resource(value):
            return GuardedClient(value, self._policy, path)
        if not callable(value) or isinstance(value, type):
            return value
        policy = self._policy

        def guarded(*args: Any, **kwargs: Any) -> Any:
            what = path.removeprefix("client.").replace("with_streaming_response.", "").replace(
                "with_raw_response.", "")
            if name == "with_options" or name == "copy":
                return GuardedClient(value(*args, **kwargs), policy, self._path)
            result = call_remote(lambda: value(*args, **kwargs), what, policy, retry=name in IDEMPOTENT_METHODS)
            if hasattr(result, "__enter__") and "with_streaming_response" in path:
                return _GuardedEnter(result, what, policy)
            if _is_resource(result):
                return GuardedClient(result, policy, path)
            return result

        return guarded


def guard_client(client: openai.OpenAI, policy: OutagePolicy) -> Any:
    return GuardedClient(client, policy)
