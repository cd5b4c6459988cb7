"""Names, file layout and table schema of the dataset format (docs/dataset-format.md)."""

from __future__ import annotations

import pyarrow as pa

FORMAT = "trafficlens-dataset"
FORMAT_VERSION = 1
# Version 2 = version 1 plus the sharded layout (docs/dataset-format.md, "Sharded datasets"); only
# sharded datasets carry it, so single-directory datasets stay readable by version-1 readers.
FORMAT_VERSION_SHARDED = 2
READABLE_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_SHARDED)
MANIFEST = "manifest.json"
TABLE = "sessions.parquet"
PARTIAL_SUFFIX = ".partial"
PARTIAL_MARKER = ".trafficlens-partial"  # dropped into <out>.partial at creation: ours to delete
KEYS = "keys.npy"  # per-row duplicate key (16 bytes) kept in shards for the cross-shard merge
SHARDS_DIR = "shards"

# tensor name -> (file, dtype)
TENSORS: dict[str, tuple[str, str]] = {
    "image": ("image.npy", "uint8"),
    "packets": ("packets.npy", "uint8"),
    "sequence": ("sequence.npy", "float32"),
    "stats": ("stats.npy", "float32"),
}

SESSION_FIELDS: list[tuple[str, pa.DataType]] = [
    ("id", pa.int64()),
    ("capture", pa.string()),
    ("src_ip", pa.string()),
    ("dst_ip", pa.string()),
    ("src_port", pa.int32()),
    ("dst_port", pa.int32()),
    ("protocol", pa.string()),
    ("ts_start", pa.float64()),
    ("ts_end", pa.float64()),
    ("start_time", pa.float64()),
    ("packets", pa.int64()),
    ("bytes", pa.int64()),
    ("payload_bytes", pa.int64()),
    ("packets_fwd", pa.int64()),
    ("packets_bwd", pa.int64()),
    ("label", pa.string()),
]


def session_schema(extra_columns: tuple[str, ...] = ()) -> pa.Schema:
    """The table schema; `extra_columns` are further string label columns (service, vpn, ...)."""
    return pa.schema(SESSION_FIELDS + [(name, pa.string()) for name in extra_columns])
