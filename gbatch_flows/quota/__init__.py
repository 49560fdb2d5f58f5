"""One quota for many tasks and workers: a ledger on fsspec storage (``--quota_dir``). See ``ledger.py``."""

from gbatch_flows.quota.ledger import Decision, Hold, ModelLimits, QuotaError, QuotaLedger, format_report, hold_key

__all__ = ["Decision", "Hold", "ModelLimits", "QuotaError", "QuotaLedger", "format_report", "hold_key"]
