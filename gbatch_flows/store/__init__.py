"""Durable task state: immutable blobs, a chain of manifest generations committed create-if-absent, a lease.

See docs/store.md for the layout on disk/S3 and how to roll back by hand.
"""

from gbatch_flows.store.base import Store
from gbatch_flows.store.errors import (
    BlobNotFound,
    ChecksumMismatch,
    ConcurrentModification,
    CorruptManifest,
    InvalidPath,
    InvalidSection,
    LeaseHeld,
    StoreError,
    UnsupportedSchemaVersion,
)
from gbatch_flows.store.factory import open_store
from gbatch_flows.store.lease import Lease
from gbatch_flows.store.manifest import Manifest
from gbatch_flows.store.models import SCHEMA_VERSION, BlobRef

__all__ = [
    "SCHEMA_VERSION",
    "BlobNotFound",
    "BlobRef",
    "ChecksumMismatch",
    "ConcurrentModification",
    "CorruptManifest",
    "InvalidPath",
    "InvalidSection",
    "Lease",
    "LeaseHeld",
    "Manifest",
    "Store",
    "StoreError",
    "UnsupportedSchemaVersion",
    "open_store",
]
