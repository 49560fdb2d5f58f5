"""CLI: `python -m gbatch_flows.emulator --port 8000 [knobs]` (also installed as `gbatch-emulator`)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import EmulatorConfig, FaultRates
from .responders import default_responder
from .server import serve

# The default responder of the standalone emulator answers like the demos in flows/, so one emulator serves both:
# a request's response_format schema name picks the demo whose `emulator_answer` replies (any other request gets
# the generic answer). `--responder '*=...'` replaces it.
DEMO_SCHEMAS = {"CharInfo": "char_codes", "EmotionAnswer": "utterance_emotion"}
DEMO_RESPONDER = "gbatch_flows.emulator.__main__:demo_responder"


@cache
def _demo_answer(demo: str) -> Any:
    """`emulator_answer` of flows/<demo>.py (a checkout's, or the working directory's), or None."""
    for folder in (Path(__file__).resolve().parents[2] / "flows", Path.cwd() / "flows"):
        path = folder / f"{demo}.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location(f"gbatch_demo_{demo}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # pydantic resolves the demo models' annotations through sys.modules
            spec.loader.exec_module(module)
            return module.emulator_answer
    return None


def demo_responder(body: dict[str, Any], ctx: Any) -> str:
    """The answer of the demo whose schema the request asks for (`response_format.json_schema.name`)."""
    response_format = body.get("response_format")
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    demo = DEMO_SCHEMAS.get(spec.get("name")) if isinstance(spec, dict) else None
    answer = _demo_answer(demo) if demo else None
    return answer(body, ctx) if answer else default_responder(body, ctx)


def _pairs(values: list[str] | None, flag: str, convert: Any = str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            result[key] = convert(value)
        except ValueError:
            raise SystemExit(f"{flag} {item!r}: {value!r} is not a valid {convert.__name__}") from None
    return result


def _json_arg(text: str, flag: str) -> Any:
    """JSON given inline, or a path to a JSON file (optionally prefixed with @)."""
    path = Path(text.removeprefix("@"))
    if text.startswith("@") or (path.suffix == ".json" and path.exists()):
        text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{flag}: not valid JSON ({exc})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gbatch_flows.emulator",
        description="OpenAI-compatible emulator (files, batches, chat completions, embeddings, models) for tests "
                    "and demos. Control endpoints: GET /_emulator/stats, GET|POST /_emulator/faults.",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="JSON file with EmulatorConfig fields (flags override it)")
    add("--host", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, help="port (default 0 = a free port; the URL is printed)")
    add("--api-key", help="required bearer key (default: accept any key)")
    add("--no-batch-api", dest="batch_api", action="store_false",
        help="answer 404 on /v1/files and /v1/batches, like Ollama")
    add("--batch-duration", type=float, metavar="SECONDS",
        help="seconds from batch creation to completion (default 2; 0 = done at the next retrieve)")
    add("--immediate-wait", dest="immediate_wait_seconds", type=float, metavar="SECONDS",
        help="with --batch-duration 0: longest wait of a retrieve for the batch to finish (default 120)")
    add("--expire-after", type=float, metavar="SECONDS",
        help="completion window: unfinished batches expire after this (default 86400)")
    add("--max-file-bytes", type=int, help="largest upload (default 512 MiB)")
    add("--max-batch-input-bytes", type=int, help="largest batch input file (default 200 MiB)")
    add("--max-requests-per-batch", type=int, help="default 50000")
    add("--max-embedding-inputs-per-batch", type=int, help="default 50000")
    add("--enqueued-token-limit", type=int, help="enqueued input tokens per model (default: unlimited)")
    add("--model-token-limit", action="append", metavar="MODEL=N",
        help="enqueued-token limit for one model (repeatable)")
    add("--rpm", type=int, help="requests per minute per model on direct endpoints (default: unlimited)")
    add("--tpm", type=int, help="tokens per minute per model on direct endpoints (default: unlimited)")
    add("--rate-limit-burst-seconds", type=float, metavar="SECONDS",
        help="rpm/tpm buckets hold this many seconds of the per-minute allowance (default 1: a burst gets 429s; "
             "60: a whole minute's worth at once)")
    add("--azure", action="store_true",
        help="also serve Azure OpenAI paths: /openai/deployments/{deployment}/chat/completions, /openai/files, "
             "/openai/batches... (api-version query parameter required, api-key header)")
    add("--azure-deployments", metavar="NAME,NAME",
        help="Azure mode: the deployment names that exist (default: any name)")
    add("--state-dir", type=Path, help="keep files and batches in this folder across restarts (default: memory)")
    add("--models", help="comma-separated model ids listed by /v1/models")
    add("--strict-models", action="store_true", help="answer 404 model_not_found for models not listed")
    add("--embedding-dimensions", type=int, help="vector size for all embedding models")
    add("--no-prompt-cache", dest="prompt_cache", action="store_false",
        help="never report cached prompt tokens")
    add("--responder", action="append", metavar="MODEL=MODULE:FUNCTION",
        help="responder for a model ('*' = all), e.g. '*=mypkg.fake:answer' (repeatable). Default: the demos' "
             "answers (flows/char_codes.py, flows/utterance_emotion.py, chosen by the response_format schema name), "
             "else schema-valid synthetic JSON or text")
    add("--fault-seed", type=int, help="seed of the fault RNG (default 0)")
    add("--fault-rate", action="append", metavar="KIND=RATE",
        help=f"fault probability, KIND one of {sorted(k for k in FaultRates.model_fields if k != 'ops')} "
             "(repeatable)")
    add("--fault-ops", metavar="OP,OP", help="ops the http_* fault rates apply to (default: all)")
    add("--fault-script", metavar="JSON|@FILE",
        help='scripted faults, e.g. \'[{"op": "batches.create", "nth": 1, "fault": "batch_expired"}]\'')
    add("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    options = vars(args).copy()
    options.pop("log_level", None)
    data: dict[str, Any] = {}
    if "config" in options:
        data.update(_json_arg("@" + options.pop("config"), "--config"))
    faults: dict[str, Any] = dict(data.pop("faults", {}) or {})
    rates: dict[str, Any] = dict(faults.get("rates", {}) or {})
    if "fault_seed" in options:
        faults["seed"] = options.pop("fault_seed")
    rates.update(_pairs(options.pop("fault_rate", None), "--fault-rate", float))
    if "fault_ops" in options:
        rates["ops"] = [op.strip() for op in options.pop("fault_ops").split(",") if op.strip()]
    if "fault_script" in options:
        faults["script"] = _json_arg(options.pop("fault_script"), "--fault-script")
    if rates:
        faults["rates"] = rates
    if faults:
        data["faults"] = faults
    if "models" in options:
        data["models"] = [m.strip() for m in options.pop("models").split(",") if m.strip()]
    if "azure_deployments" in options:
        data["azure_deployments"] = [d.strip() for d in options.pop("azure_deployments").split(",") if d.strip()]
    if "model_token_limit" in options:
        data["enqueued_token_limits"] = _pairs(options.pop("model_token_limit"), "--model-token-limit", int)
    if "responder" in options:
        data["responders"] = _pairs(options.pop("responder"), "--responder")
    data.update(options)
    data["responders"] = {"*": DEMO_RESPONDER, **(data.get("responders") or {})}
    return EmulatorConfig.model_validate(data)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        raise SystemExit(f"invalid emulator options:\n{exc}") from None

    def announce(url: str) -> None:
        print(f"gbatch emulator listening on {url}/v1", flush=True)

    try:
        serve(config, log_level=args.log_level, on_ready=announce)
    except ValueError as exc:  # e.g. a responder that cannot be imported
        raise SystemExit(f"cannot start the emulator: {exc}") from None
    except OSError as exc:  # e.g. the port is taken
        raise SystemExit(f"cannot listen on {config.host}:{config.port}: {exc}") from None


if __name__ == "__main__":
    main()
