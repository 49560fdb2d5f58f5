"""The task the reliability tests run: one short chat request per item, with retries and follow-ups mixed in.

Every answer is a pure function of the request (the emulator's default responder is deterministic), and every
decision below is a pure function of the request, so an interrupted run must give exactly the output of an
uninterrupted one: one ``answer`` record per item, one more ``followup`` record for every FOLLOWUP_EVERY-th item.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from gbatch_flows.engine.protocol import Processed, Result
from gbatch_flows.task import Task

REJECT_EVERY = 37  # these items' first answer is rejected by the task (a retry segment is requeued)
FOLLOWUP_EVERY = 53  # these items ask one follow-up question (a new part for the same sample)


class RelParams(BaseModel):
    n_requests: int = Field(2000, ge=1, description="Number of items (one request each, plus retries/follow-ups)")


def item_key(i: int) -> str:
    return f"item-{i:06d}"


def item_index(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


class RelTask(Task):
    """Reliability test task (flag --n_requests)."""

    name = "rel"
    default_meta = {**Task.default_meta, "model": "gpt-4o-mini", "max_completion_tokens": 24}
    Params = RelParams

    def generate_requests(self, meta: dict[str, Any]):
        for i in range(meta["n_requests"]):
            yield self.chat_request(item_key(i), [{"role": "user", "content": f"Tell me about item {i}."}], meta)

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        request = result.request
        i = item_index(request.key)
        answer = self.contents(result)[0]
        if request.part == 0 and request.retry == 0 and i % REJECT_EVERY == 0:
            return Processed(retry="rejected once by the reliability task")
        if request.part == 0:
            followups = []
            if i % FOLLOWUP_EVERY == 0:
                followups.append(self.chat_request(
                    request.key, [{"role": "user", "content": f"And one more fact about item {i}?"}], meta))
            return Processed(records=[{"key": request.key, "answer": answer}], followups=followups)
        return Processed(records=[{"key": request.key, "followup": answer}])

    def process_failure(self, request, reason: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"key": request.key, "part": "followup" if request.part else "main", "failed": reason}]


def expected_record_count(n: int) -> int:
    """Records in a complete output without failures: one per item plus one per follow-up."""
    return n + len(range(0, n, FOLLOWUP_EVERY))
