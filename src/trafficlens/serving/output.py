"""Write prediction rows as CSV, JSON lines, Parquet or a Zeek log, chosen by the file's
extension or by name (`--format`)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterable

from trafficlens.errors import ConfigError
from trafficlens.files import atomic_output
from trafficlens.inference.classifier import COLUMNS

FORMATS = (".csv", ".jsonl", ".parquet", ".log")
FORMAT_NAMES = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet", "zeek": ".log"}  # --format


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """top_k as `label:prob;label:prob` for CSV (a group's votes as `label:count;...`)."""
    out = dict(row)
    out["top_k"] = ";".join(f"{label}:{p:.4f}" for label, p in row["top_k"])
    if "votes" in row:
        out["votes"] = ";".join(f"{label}:{n}" for label, n in row["votes"].items())
    return out


def output_format(target: str, name: str | None = None) -> str:
    """The format `write_rows` writes: the one `name`d (csv, jsonl, parquet, zeek), else the one
    `target`'s extension says: ".csv", ".jsonl", ".parquet" or ".log" (a Zeek log); '-': CSV."""
    if not target:
        raise ConfigError("-o is empty: name the output file (.csv, .jsonl, .parquet or .log), or - for stdout")
    if name is not None:
        if name not in FORMAT_NAMES:
            raise ConfigError(f"--format {name}: unknown format; use {', '.join(FORMAT_NAMES)}")
        if name == "parquet" and target == "-":
            raise ConfigError("--format parquet needs a file: -o NAME.parquet")
        return FORMAT_NAMES[name]
    suffix = ".csv" if target == "-" else Path(target).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"-o {target}: unknown output format {suffix!r}; use .csv, .jsonl, .parquet, .log (Zeek) or -")
    return suffix


def write_rows(batches: Iterable[list[dict[str, Any]]], target: str, format: str | None = None,
               columns: tuple[str, ...] = COLUMNS) -> int:
    """Stream batches of rows to `target` ('-' is stdout, CSV unless `format` names another);
    returns the row count. `columns`: the session rows' `COLUMNS`, or
    `inference.groups.GROUP_COLUMNS` for group rows (which a Zeek log cannot hold).

    A file is written beside `target` and renamed over it at the end: an error on the way
    (a bad input, Ctrl-C) leaves an existing `target` as it was."""
    suffix = output_format(target, format)
    if suffix == ".log" and columns != COLUMNS:
        raise ConfigError(f"-o {target}: a Zeek log holds one row per session; write group rows as .csv, .jsonl or .parquet")
    if target == "-":
        return _write(batches, sys.stdout, suffix, columns)
    with atomic_output(target, "wb" if suffix == ".parquet" else "w", **({} if suffix == ".parquet" else {"newline": ""})) as fh:
        return _write(batches, fh, suffix, columns)


def _write(batches: Iterable[list[dict[str, Any]]], fh, suffix: str, columns: tuple[str, ...]) -> int:
    count = 0
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _group_schema(pa) if columns != COLUMNS else pa.schema([
            ("capture", pa.string()), ("uid", pa.string()), ("community_id", pa.string()), ("src_ip", pa.string()),
            ("src_port", pa.int32()), ("dst_ip", pa.string()), ("dst_port", pa.int32()), ("protocol", pa.string()),
            ("ts_start", pa.float64()), ("ts_end", pa.float64()), ("duration", pa.float64()), ("packets", pa.int64()),
            ("bytes", pa.int64()), ("orig_pkts", pa.int64()), ("orig_ip_bytes", pa.int64()), ("resp_pkts", pa.int64()),
            ("resp_ip_bytes", pa.int64()), ("label", pa.string()), ("confidence", pa.float64()),
            ("top_k", pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))),
            ("status", pa.string()), ("reason", pa.string()),
        ])
        with pq.ParquetWriter(fh, schema) as writer:
            for batch in batches:
                rows = [_structured(r) for r in batch]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
        return count
    if suffix == ".log":
        from trafficlens.serving.zeek_log import ZeekLog

        log = ZeekLog(fh)
        for batch in batches:
            for row in batch:
                log.write(row)
        log.close()
        return log.rows
    if suffix == ".jsonl":
        for batch in batches:
            for row in batch:
                fh.write(json.dumps(_structured(row)) + "\n")
                count += 1
    else:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for batch in batches:
            writer.writerows(_flat(row) for row in batch)
            count += len(batch)
    return count


def _structured(row: dict[str, Any]) -> dict[str, Any]:
    """top_k as a list of {label, probability} (JSON lines, Parquet); a group's votes stay a
    dict (a JSON object; Arrow takes it for the Parquet map)."""
    return dict(row, top_k=[{"label": l, "probability": p} for l, p in row["top_k"]])


def _group_schema(pa):
    return pa.schema([
        ("capture", pa.string()), ("host", pa.string()), ("window_start", pa.float64()), ("window_end", pa.float64()),
        ("sessions", pa.int64()), ("label", pa.string()), ("confidence", pa.float64()),
        ("top_k", pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))),
        ("votes", pa.map_(pa.string(), pa.int64())), ("status", pa.string()),
    ])
