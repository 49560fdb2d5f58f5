"""``python -m gbatch_flows.quota set URL --model M --max_remote_ktokens K [--max_daily_cost C]
[--max_monthly_cost C]`` and ``python -m gbatch_flows.quota show URL``."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from gbatch_flows.quota.ledger import ModelLimits, QuotaError, QuotaLedger, format_report
from gbatch_flows.store import StoreError


def _limit(text: str) -> float | None:
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gbatch_flows.quota",
                                     description="The shared quota of every task run with --quota_dir URL.")
    sub = parser.add_subparsers(dest="command", required=True)
    set_cmd = sub.add_parser("set", help="set the limits of one model (replaces that model's limits)")
    set_cmd.add_argument("url", help="the quota folder: a local path or s3://bucket/prefix")
    set_cmd.add_argument("--model", required=True, help="model name as the tasks send it, e.g. gpt-4o-mini")
    set_cmd.add_argument("--max_remote_ktokens", type=_limit, default=None,
                         help="tokens (thousands) all tasks together may have in the remote queue of this model "
                              "(your organization's enqueued-token limit)")
    set_cmd.add_argument("--max_daily_cost", type=_limit, default=None, help="USD per UTC day, all tasks together")
    set_cmd.add_argument("--max_monthly_cost", type=_limit, default=None, help="USD per UTC month, all tasks together")
    set_cmd.add_argument("--max_direct_rpm", type=_limit, default=None,
                         help="direct-mode requests per minute, split between the tasks sending at the same time")
    set_cmd.add_argument("--max_direct_tpm", type=_limit, default=None,
                         help="direct-mode tokens per minute, split between the tasks sending at the same time")
    set_cmd.add_argument("--storage_options", type=json.loads, default=None, help="fsspec options as JSON")
    show = sub.add_parser("show", help="what each task holds now, today's and this month's spend")
    show.add_argument("url")
    show.add_argument("--json", action="store_true", help="print the report as JSON")
    show.add_argument("--storage_options", type=json.loads, default=None, help="fsspec options as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ledger = QuotaLedger(args.url, storage_options=args.storage_options)
        if args.command == "set":
            limits = ModelLimits(model=args.model, max_remote_ktokens=args.max_remote_ktokens,
                                 max_daily_cost=args.max_daily_cost, max_monthly_cost=args.max_monthly_cost, max_direct_rpm=args.max_direct_rpm,
                                 max_direct_tpm=args.max_direct_tpm)
            ledger.set_limits(limits)
            print(format_report(ledger.report()))
        else:
            report = ledger.report()
            print(json.dumps(report, indent=2) if args.json else format_report(report))
    except ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    except (QuotaError, StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
