"""Prediction rows as a Zeek-style TSV log, the format `zeek-cut` and Zeek's own readers take.

The header says how to read the rows (`#separator`, `#set_separator`, `#empty_field`,
`#unset_field`, `#path`, `#open`, `#fields`, `#types`); each row is one line of tab-separated
values, `-` where a value is unset and `(empty)` for an empty list; `#close` ends the log. The
connection fields carry Zeek's conn.log names (`id.orig_h`, `orig_pkts`, ...), so a log joins
conn.log on `uid` or `community_id`.

    with open("predictions.log", "w") as fh:
        log = ZeekLog(fh)
        log.write(row)
        log.close()
"""

from __future__ import annotations

import time
from typing import IO, Any

# (Zeek field name, Zeek type, row column)
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("ts", "time", "ts_start"), ("uid", "string", "uid"), ("id.orig_h", "addr", "src_ip"),
    ("id.orig_p", "port", "src_port"), ("id.resp_h", "addr", "dst_ip"), ("id.resp_p", "port", "dst_port"),
    ("proto", "enum", "protocol"), ("duration", "interval", "duration"), ("orig_pkts", "count", "orig_pkts"),
    ("orig_ip_bytes", "count", "orig_ip_bytes"), ("resp_pkts", "count", "resp_pkts"),
    ("resp_ip_bytes", "count", "resp_ip_bytes"), ("community_id", "string", "community_id"),
    ("capture", "string", "capture"), ("label", "string", "label"), ("confidence", "double", "confidence"),
    ("top_k", "vector[string]", "top_k"), ("status", "string", "status"), ("reason", "string", "reason"),
)
SEPARATOR, SET_SEPARATOR, EMPTY, UNSET = "\t", ",", "(empty)", "-"


def _escape(text: str, in_set: bool = False) -> str:
    """Zeek's escaping: separators, backslashes and unprintable characters as \\xHH; a value that
    reads like the unset or empty marker is escaped too, so it cannot be taken for one."""
    if text in (UNSET, EMPTY) or not text:
        return "".join(f"\\x{ord(c):02x}" for c in text) if text else EMPTY
    out = []
    for c in text:
        if c == "\\" or c == SEPARATOR or (in_set and c == SET_SEPARATOR) or not c.isprintable():
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8"))
        else:
            out.append(c)
    return "".join(out)


def _value(kind: str, value: Any) -> str:
    if value is None:
        return UNSET
    if kind in ("time", "interval"):
        return f"{value:.6f}"
    if kind == "double":
        return f"{value:.4f}"
    if kind.startswith("vector"):
        items = [(v["label"], v["probability"]) if isinstance(v, dict) else v for v in value]
        return SET_SEPARATOR.join(_escape(f"{label}:{p:.4f}", in_set=True) for label, p in items) or EMPTY
    if kind == "string":
        return _escape(str(value))
    return str(value)


class ZeekLog:
    """Writes a Zeek TSV log to an open text file, row by row (`path`: the log's `#path` name)."""

    def __init__(self, fh: IO[str], path: str = "trafficlens"):
        self.fh = fh
        self.rows = 0
        stamp = _stamp()
        fh.write(f"#separator \\x{ord(SEPARATOR):02x}\n")
        for key, value in (("set_separator", SET_SEPARATOR), ("empty_field", EMPTY), ("unset_field", UNSET),
                           ("path", path), ("open", stamp)):
            fh.write(f"#{key}{SEPARATOR}{value}\n")
        fh.write("#fields" + "".join(SEPARATOR + name for name, _, _ in FIELDS) + "\n")
        fh.write("#types" + "".join(SEPARATOR + kind for _, kind, _ in FIELDS) + "\n")

    def write(self, row: dict[str, Any]) -> None:
        """One prediction row (its top_k as (label, p) pairs or {"label", "probability"} dicts)."""
        self.fh.write(SEPARATOR.join(_value(kind, row.get(column)) for _, kind, column in FIELDS) + "\n")
        self.rows += 1

    def close(self) -> None:
        """The `#close` line: a log without it was cut short (Zeek's readers tell them apart)."""
        self.fh.write(f"#close{SEPARATOR}{_stamp()}\n")


def _stamp() -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
