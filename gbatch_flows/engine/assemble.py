"""Stage 2: pack queued requests into batch files under every per-batch limit at once."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from gbatch_flows import costs, endpoints
from gbatch_flows.engine import limits
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.operations import to_direct
from gbatch_flows.engine.state import CURSOR, TASK, Changes, TaskState
from gbatch_flows.models import BatchRecord, Cursor
from gbatch_flows.store import BlobRef

log = logging.getLogger("gbatch_flows.engine.assemble")

SIDECAR_FIELDS = ("seq", "key", "endpoint", "meta", "retry", "part", "tokens", "max_out")
#: The keys of a queued request line, in the order the engine writes them (``generate.request_dict``, and
#: ``Request.model_dump`` for requeued requests).
QUEUE_FIELDS = ("seq", "key", "endpoint", "payload", "meta", "retry", "part", "tokens", "max_out")
_PAYLOAD_KEY = b',"payload":'


@dataclass
class QueuedLine:
    segment: int
    line: int
    request: dict  # the queued request; without "payload" when ``parts`` is set (see ``split_line``)
    model: str = ""  # the payload's "model" ("" without one)
    parts: tuple[bytes, bytes, bytes] | None = None  # (before the payload, the payload, after it): see split_line


_HEAD_FIELDS = QUEUE_FIELDS[:3]
_TAIL_FIELDS = QUEUE_FIELDS[4:]
_META_KEY = b',"meta":'
_MODEL_PREFIX = b'{"model":"'


def split_line(raw: bytes) -> tuple[dict, bytes, bytes, bytes] | None:
    """A queued line in the engine's own layout, read without parsing its payload: ``(request without payload,
    bytes before the payload's key, payload bytes, bytes after the payload's comma)``; None for any other layout.

    The engine writes a queued line as ``orjson.dumps`` of the request with the keys of ``QUEUE_FIELDS`` in that
    order. The first ``,"payload":`` of such a line is the top-level key (``"`` inside a JSON string is escaped,
    and seq, key and endpoint hold no objects); from a ``,"meta":`` on, the rest of the line parses as an object
    only when that key is at the top level (anywhere deeper its closing braces would not balance), and the
    top-level one is the last that does (later ones lie inside its value). Both
    sides must parse with exactly their fields and be exactly ``orjson.dumps`` of what they hold, so the bytes
    between are the payload as ``orjson.dumps`` wrote it (the blob's sha256 is checked as it is read).
    """
    end = len(raw) - 1 if raw.endswith(b"\n") else len(raw)
    i = raw.find(_PAYLOAD_KEY, 0, end)
    if i <= 0:
        return None
    head_raw = raw[:i] + b"}"
    try:
        head = orjson.loads(head_raw)
    except orjson.JSONDecodeError:
        return None
    if type(head) is not dict or tuple(head) != _HEAD_FIELDS or orjson.dumps(head) != head_raw:
        return None
    j = end
    while True:  # the last "meta" key that parses to the end is the top-level one (deeper ones are in meta)
        j = raw.rfind(_META_KEY, i + len(_PAYLOAD_KEY), j)
        if j < 0:
            return None
        tail_raw = b"{" + raw[j + 1:end]
        try:
            tail = orjson.loads(tail_raw)
        except orjson.JSONDecodeError:
            continue
        break
    if type(tail) is not dict or tuple(tail) != _TAIL_FIELDS or orjson.dumps(tail) != tail_raw:
        return None
    head.update(tail)
    return head, head_raw[:-1], raw[i + len(_PAYLOAD_KEY):j], tail_raw[1:]


def payload_model(payload: bytes) -> str:
    """The "model" of a payload as ``orjson.dumps`` wrote it ("" without one): read from its first key when that is
    a plain string (an ``orjson.dumps`` object has no duplicate keys), else parsed."""
    if payload.startswith(_MODEL_PREFIX):
        stop = payload.find(b'"', len(_MODEL_PREFIX))
        name = payload[len(_MODEL_PREFIX):stop]
        if stop > 0 and b"\\" not in name:
            return name.decode()
    return orjson.loads(payload).get("model", "")


def queued_line(segment: int, line: int, raw: bytes) -> QueuedLine:
    split = split_line(raw)
    if split is None:
        request = orjson.loads(raw)
        return QueuedLine(segment, line, request, request["payload"].get("model", ""))
    request, head, payload, tail = split
    return QueuedLine(segment, line, request, payload_model(payload), (head, payload, tail))


def iter_queue(engine: Engine, state: TaskState) -> Iterator[QueuedLine]:
    """Queued requests from the assembly cursor on, segment by segment (streamed)."""
    cursor = state.cursor
    for index, seg in state.segments.items():
        if index < cursor.segment:
            continue
        skip = cursor.line if index == cursor.segment else 0
        if skip >= seg.count:
            continue
        for n, raw in enumerate(engine.store.iter_lines(BlobRef.model_validate(seg.ref))):
            if n >= skip and raw.strip():
                yield queued_line(index, n, raw)


@dataclass
class Packer:
    """Accumulates requests into one batch while every cap holds.

    The batch file and its sidecar grow as two byte buffers: a list of 50,000 ``orjson.dumps`` results would hold
    about 4 kB each whatever their length (allocator slack), 400 MB for a full batch and its sidecar.
    """

    caps: limits.Caps
    spend_caps: limits.Caps
    token_margin: float
    size_margin: float
    model: str | None = None
    endpoint: str | None = None
    count: int = 0
    body: bytearray = field(default_factory=bytearray)  # the batch input file: one line per request
    sidecar: bytearray = field(default_factory=bytearray)  # the sidecar file, same order
    tokens: int = 0
    max_out: int = 0
    cost: float = 0.0
    size: int = 0

    def fits(self, tokens: int, max_out: int, cost: float, size: int) -> bool:
        n = self.count + 1
        t = (self.tokens + tokens) * (1 + self.token_margin)
        b = (self.size + size) * (1 + self.size_margin)
        c = self.cost + cost
        if n > self.caps.requests or t > self.caps.tokens or c > self.caps.cost + 1e-12 or b > self.caps.bytes:
            return False
        total = self.tokens + self.max_out + tokens + max_out
        return n <= self.spend_caps.requests and total <= self.spend_caps.tokens and c <= self.spend_caps.cost + 1e-12

    def add(self, line: bytes, sidecar: bytes, tokens: int, max_out: int, cost: float) -> None:
        self.body += line
        self.body += b"\n"
        self.sidecar += sidecar
        self.sidecar += b"\n"
        self.count += 1
        self.tokens += tokens
        self.max_out += max_out
        self.cost += cost
        self.size += len(line) + 1


def batch_line(request: dict, azure: bool = False) -> bytes:
    """One batch input line; Azure OpenAI wants its own path spelling (``/chat/completions``) as the url."""
    custom_id = f"{request['seq']}-{request['part']}-{request['retry']}"
    url = endpoints.azure_path(request["endpoint"]) if azure else request["endpoint"]
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": request["payload"]})


def sidecar_line(request: dict) -> bytes:
    return orjson.dumps({k: request[k] for k in SIDECAR_FIELDS})


def request_lines(item: QueuedLine, azure: bool = False) -> tuple[bytes, bytes]:
    """The batch input line and the sidecar line of a queued request: ``batch_line`` and ``sidecar_line``, byte for
    byte, from the queued line's own bytes when it has the engine's layout (``split_line``: its payload is neither
    parsed nor dumped again), else built from the parsed request."""
    req = item.request
    if item.parts is not None:
        head, payload, tail = item.parts
        custom_id = f"{req['seq']}-{req['part']}-{req['retry']}"
        url = endpoints.azure_path(req["endpoint"]) if azure else req["endpoint"]
        prefix = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url})[:-1]
        return b"".join((prefix, b',"body":', payload, b"}")), b"".join((head, b",", tail))
    return batch_line(req, azure), sidecar_line(req)


def _room(engine: Engine) -> int:
    return engine.options.max_unpushed_batches - len(engine.state.batches_in("assembled"))


def has_work(engine: Engine, mode: str) -> bool:
    """Whether ``assemble(engine, mode)`` would do anything (the runner skips the stage, and its Prefect task run,
    when it would not)."""
    if mode == "direct" and engine.options.force_direct:
        return True  # it also moves never-pushed Batch API batches to direct
    return _room(engine) > 0 and engine.state.queued_requests() > 0


def assemble(engine: Engine, mode: str = "batch", max_new: int | None = None) -> list[int]:
    """Assemble up to ``max_new`` batches (default: up to ``max_unpushed_batches`` waiting); returns their ids."""
    options = engine.options
    if mode == "direct" and options.force_direct:
        to_direct(engine)  # batches assembled for the Batch API but never pushed: sent directly too
    state = engine.state
    budget = _room(engine) if max_new is None else max_new
    created: list[int] = []
    if budget <= 0 or state.queued_requests() == 0:
        return created
    margin_t, margin_s = options.token_safety_margin, options.size_safety_margin
    caps = limits.batch_caps(options, mode)
    engine.budget_refusal = None
    queue = iter_queue(engine, state)
    pending: QueuedLine | None = None
    remaining = state.queued_requests()
    finish_direct = options.direct_finish_requests if state.task and state.task.generated else 0
    local_only = mode == "batch" and sends_nothing(options)
    azure = engine.azure
    prices: dict[tuple[str, str], costs.Prices] = {}
    while len(created) < budget:
        if mode == "batch" and remaining <= finish_direct:
            break  # the last few go through the direct API (choose_mode picks it next round)
        session_caps, task_caps = limits.spend_caps(options, engine.state, engine.session_id)
        spend_caps = limits.Caps() if local_only else session_caps.tighten(task_caps)
        packer = Packer(caps, spend_caps, margin_t, margin_s)
        last: QueuedLine | None = None
        for item in itertools.chain([pending] if pending else [], queue):  # (a generator would close `queue`)
            pending = None
            req = item.request
            model = item.model
            if packer.count and (model != packer.model or req["endpoint"] != packer.endpoint):
                pending = item
                break
            line, sidecar = request_lines(item, azure)
            price = prices.get((model, req["endpoint"]))
            if price is None:
                price = prices[(model, req["endpoint"])] = engine.prices(model, req["endpoint"])
            cost = costs.worst_case_cost(req["tokens"], req["max_out"], price, mode)
            if not packer.fits(req["tokens"], req["max_out"], cost, len(line) + 1):
                if not packer.count:
                    _refuse_single(req, caps, cost, len(line), mode)
                    engine.budget_refusal = limits.budget_refusal(
                        session_caps, task_caps, limits.Spend(requests=1, tokens=req["tokens"] + req["max_out"],
                                                              cost=cost))
                    log.info("the session or task budget cannot take request %s: assembly stops", req["key"])
                    return created
                pending = item
                break
            packer.model, packer.endpoint = model, req["endpoint"]
            packer.add(line, sidecar, req["tokens"], req["max_out"], cost)
            last = item
        if not packer.count or last is None:
            break
        created.append(_commit_batch(engine, packer, mode, last))
        remaining -= packer.count
        if pending is None:
            break
    return created


def sends_nothing(options) -> bool:
    """A budget of zero (e.g. the original's ``--max_session_requests 0``) or ``--max_remote_batches 0``: batches are
    only assembled, to inspect their files or to push in a later session, so they are packed under the per-batch
    limits alone (the budgets decide at push time)."""
    zero = (options.max_session_requests, options.max_session_ktokens, options.max_session_cost,
            options.max_task_requests, options.max_task_ktokens, options.max_task_cost)
    return options.max_remote_batches == 0 or any(limit == 0 for limit in zero if limit is not None)


def _refuse_single(req: dict, caps: limits.Caps, cost: float, size: int, mode: str) -> None:
    """A request that exceeds a per-batch cap on its own can never be sent: stop with its name."""
    problems = []
    if req["tokens"] > caps.tokens:
        problems.append(f"{req['tokens']} prompt tokens > max_batch_ktokens ({caps.tokens / 1000:g}k)")
    if cost > caps.cost:
        problems.append(f"worst-case cost ${cost:.4f} > max_batch_cost (${caps.cost:g})")
    if size > caps.bytes:
        problems.append(f"{size} bytes > max_batch_mb ({caps.bytes / limits.BYTES_PER_MB:g} MB)")
    if problems:
        raise EngineStop(
            f"request {req['key']!r} (custom_id {req['seq']}-{req['part']}-{req['retry']}) can never fit in a "
            f"{mode} batch: {'; '.join(problems)}. Raise the limit or shrink the request (e.g. max_completion_tokens)"
        )


def _commit_batch(engine: Engine, packer: Packer, mode: str, last: QueuedLine) -> int:
    task = engine.state.require_task()
    local_id = task.next_batch
    input_ref = engine.store.put_blob(f"batches/{local_id:06d}.jsonl", packer.body)
    sidecar_ref = engine.store.put_blob(f"batches/{local_id:06d}.requests.jsonl", packer.sidecar)
    record = BatchRecord(
        local_id=local_id,
        mode=mode,  # type: ignore[arg-type]
        model=packer.model or "",
        endpoint=packer.endpoint or "",
        input_ref=input_ref.model_dump(mode="json"),
        sidecar_ref=sidecar_ref.model_dump(mode="json"),
        requests=packer.count,
        tokens=packer.tokens,
        max_out=packer.max_out,
        mb=input_ref.size / limits.BYTES_PER_MB,
        worst_cost=packer.cost,
        created_at=time.time(),
    )
    changes = Changes()
    changes.batch(record)
    changes.set(CURSOR, Cursor(segment=last.segment, line=last.line + 1))
    changes.set(TASK, task.model_copy(update={"next_batch": local_id + 1}))
    engine.commit(changes, f"assemble {mode} batch {local_id}: {record.requests} requests, {record.tokens} tokens")
    log.info("assembled %s-mode batch %d: %d requests, %d tokens, worst $%.4f", mode, local_id, record.requests,
             record.tokens, record.worst_cost)
    return local_id
