"""Where session labels come from: `--labels dir | file:REGEX | csv:PATH | ndpi:PATH | preset:NAME |
name:LABEL` (`--label LABEL`: one label for every session, as for a capture read from stdin).

A `Labeler` is built once per run and bound to one capture file at a time; it maps a session's
metadata (capture, 5-tuple, start time) to a label, or None when it has none.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from trafficlens.errors import ConfigError

PRESETS = ("iscx-vpn2016", "ustc-tfc2016")

# ISCX VPN-nonVPN 2016 file names -> the 17 application classes of Chen 2023 Table 5.
# Order matters: "torrent" must win over "tor", "gmail" over "email".
_ISCX_APPS = [
    (r"torrent", "Torrent"),
    (r"^(vpn_)?tor", "tor"),
    (r"aim", "AIMchat"),
    (r"gmail", "Gmail"),
    (r"email", "E-mail"),
    (r"facebook", "Facebook"),
    (r"ftps", "ftps"),
    (r"hangout", "Hangouts"),
    (r"icq", "icq"),
    (r"netflix", "Netflix"),
    (r"sftp", "Sftp"),
    (r"scp", "Scp"),
    (r"skype", "Skype"),
    (r"spotify", "Spotify"),
    (r"vimeo", "Vimeo"),
    (r"voipbuster", "Voipbuster"),
    (r"youtube", "Youtube"),
]
# ISCX service categories (the paper's "service" level).
_ISCX_SERVICES = [
    (r"torrent", "p2p"),
    (r"chat", "chat"),
    (r"email|gmail", "email"),
    (r"ftps|sftp|scp|_file", "file-transfer"),
    (r"audio|voipbuster|video", "voip"),
    (r"netflix|spotify|vimeo|youtube", "streaming"),
    (r"^(vpn_)?tor", "browsing"),
]
# USTC-TFC2016: 10 benign and 10 malware classes, named by file.
_USTC = {
    "bittorrent": ("BitTorrent", "benign"), "facetime": ("Facetime", "benign"),
    "ftp": ("FTP", "benign"), "gmail": ("Gmail", "benign"), "mysql": ("MySQL", "benign"),
    "outlook": ("Outlook", "benign"), "skype": ("Skype", "benign"), "smb": ("SMB", "benign"),
    "weibo": ("Weibo", "benign"), "worldofwarcraft": ("WorldOfWarcraft", "benign"),
    "cridex": ("Cridex", "malware"), "geodo": ("Geodo", "malware"), "htbot": ("Htbot", "malware"),
    "miuref": ("Miuref", "malware"), "neris": ("Neris", "malware"), "nsis-ay": ("Nsis-ay", "malware"),
    "shifu": ("Shifu", "malware"), "tinba": ("Tinba", "malware"), "virut": ("Virut", "malware"),
    "zeus": ("Zeus", "malware"),
}


def _first_match(rules: list[tuple[str, str]], name: str) -> str | None:
    for pattern, value in rules:
        if re.search(pattern, name):
            return value
    return None


def _endpoints_key(proto: str, a: tuple[str, int], b: tuple[str, int]) -> tuple:
    return (proto.upper(), *sorted([(a[0], int(a[1])), (b[0], int(b[1]))]))


class Labeler:
    """Maps session metadata to a label for one `--labels` specification."""

    extra_columns: tuple[str, ...] = ()

    def __init__(self, spec: str, column: str | None = None):
        self.spec = spec
        self.column = column
        kind, colon, arg = spec.partition(":")
        self.kind = kind
        self._file: Path | None = None
        if kind == "dir":
            if colon:
                raise ConfigError(f"--labels dir takes nothing after it (got {spec!r}): the label is the folder "
                                  "each capture lies in")
        elif kind == "file":
            if not arg:
                raise ConfigError("--labels file:REGEX needs a regular expression, e.g. 'file:^([a-z]+)_': a "
                                  "capture's label is its first group (or the whole match) in the file name")
            try:
                self._regex = re.compile(arg)
            except re.error as exc:
                raise ConfigError(f"--labels file:REGEX: bad regular expression {arg!r} ({exc})") from None
        elif kind in ("csv", "ndpi"):
            self._load_table(kind, arg)
        elif kind == "name":
            if not arg.strip():
                raise ConfigError("--label needs a name: every session read gets it (e.g. --label camera)")
        elif kind == "preset":
            if arg not in PRESETS:
                raise ConfigError(f"--labels preset:NAME: unknown preset {arg!r}; choose from {', '.join(PRESETS)}")
            self.extra_columns = ("service", "vpn") if arg == "iscx-vpn2016" else ("kind",)
        else:
            raise ConfigError(
                f"--labels: unknown source {spec!r}; use dir, file:REGEX, csv:PATH, ndpi:PATH, preset:NAME or name:LABEL"
            )

    # -- tables ------------------------------------------------------------------------------
    def _load_table(self, kind: str, path: str) -> None:
        if not os.path.isfile(path):
            raise ConfigError(f"--labels {kind}:PATH: no such file {path!r}")
        delimiter = "\t" if kind == "ndpi" or path.endswith(".tsv") else ","
        raw = Path(path).read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                              "save the label table as UTF-8") from None
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
        except csv.Error as exc:
            raise ConfigError(f"{path}: not a readable label table ({exc})") from None
        if not rows:
            raise ConfigError(f"{path}: no label rows")
        fields = set(rows[0])
        column = self.column or ("app" if kind == "ndpi" else "label")
        if column not in fields:
            raise ConfigError(f"{path}: no column {column!r} (have {', '.join(sorted(fields))}); choose one with --label-column")
        self.column = column
        self._by_file: dict[str, str] = {}
        self._by_flow: dict[tuple, list[tuple[float, float, str]]] = {}
        try:
            self._index(kind, path, rows, fields, column)
        except (ValueError, TypeError, AttributeError) as exc:  # a short row, a port or time that is no number
            raise ConfigError(f"{path}: a row that is not a label row ({type(exc).__name__}: {exc})") from None

    def _index(self, kind: str, path: str, rows: list[dict[str, str]], fields: set[str], column: str) -> None:
        if kind == "ndpi":
            for row in rows:
                key = (os.path.basename(row["file"]), _endpoints_key(row["l4"], (row["addr_a"], row["port_a"]), (row["addr_b"], row["port_b"])))
                self._by_flow.setdefault(key, []).append((float("-inf"), float("inf"), row[column]))
            return
        flow_fields = {"src_ip", "src_port", "dst_ip", "dst_port", "protocol"}
        if flow_fields <= fields:
            timed = {"ts_start", "ts_end"} <= fields
            for row in rows:
                key = (
                    os.path.basename(row["file"]) if row.get("file") else None,
                    _endpoints_key(row["protocol"], (row["src_ip"], row["src_port"]), (row["dst_ip"], row["dst_port"])),
                )
                span = (float(row["ts_start"]), float(row["ts_end"])) if timed else (float("-inf"), float("inf"))
                self._by_flow.setdefault(key, []).append((*span, row[column]))
        elif "file" in fields:
            self._by_file = {row["file"]: row[column] for row in rows}
        else:
            raise ConfigError(f"{path}: needs a 'file' column, or the columns {', '.join(sorted(flow_fields))}")

    # -- binding and lookup ------------------------------------------------------------------
    def bind(self, path: str | os.PathLike, relative: str) -> "Labeler":
        """Point the labeler at the capture file being read."""
        self._file = Path(path)
        self._relative = relative
        return self

    def check(self, files: Sequence[tuple[str | os.PathLike, str]], inputs: Sequence[str | os.PathLike]) -> list[str]:
        """Warnings about what this spec makes of these captures ((path, name relative to its input)
        as `prep.discover` gives them), before any is read: for `dir`, captures lying directly in
        an input folder (labelled after that folder); for `file:` and presets, names that get no label."""
        if self.kind == "dir":
            named = {os.path.abspath(item) for item in inputs}  # files given by name keep their folder's label
            flat: dict[str, list[str]] = {}
            for path, relative in files:
                if "/" not in relative and os.path.abspath(path) not in named:
                    flat.setdefault(os.fspath(Path(path).parent), []).append(relative)
            return [f"--labels dir: {len(names)} capture(s) lie directly in {folder}, not in a folder per class, so "
                    f"all their sessions are labelled {Path(folder).name!r} (e.g. {names[0]})"
                    for folder, names in flat.items()]
        if self.kind in ("file", "preset"):
            missed = [relative for _, relative in files if self._by_name(PurePosixPath(relative).name) is None]
            if missed:
                share = f"any of the {len(files)}" if len(missed) == len(files) else f"{len(missed)} of {len(files)}"
                return [f"--labels {self.spec} gives no label to {share} capture names (e.g. {missed[0]}): their "
                        "sessions are unlabeled (dropped, unless --unlabeled keep or as:NAME)"]
        return []

    def _by_name(self, name: str) -> str | None:
        """The label of a `file:` or preset spec for a file name; None for none (an empty match too)."""
        if self.kind == "preset":
            return self._preset(name)[0]
        match = self._regex.search(name)
        if not match:
            return None
        return (match.group(1) if match.groups() else match.group(0)) or None

    def __call__(self, meta: dict[str, Any]) -> str | None:
        if self.kind == "name":
            return self.spec.partition(":")[2]
        name = self._file.name
        if self.kind == "dir":
            return self._file.parent.name or None
        if self.kind in ("file", "preset"):
            return self._by_name(name)
        if self._by_file:
            return self._by_file.get(self._relative, self._by_file.get(name))
        key = _endpoints_key(meta["protocol"], (meta["src_ip"], meta["src_port"]), (meta["dst_ip"], meta["dst_port"]))
        candidates = self._by_flow.get((name, key)) or self._by_flow.get((None, key))
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0][2]
        start = meta["ts_start"]
        for lo, hi, label in candidates:
            if lo - 1.0 <= start <= hi + 1.0:
                return label
        return None

    def extra(self, meta: dict[str, Any]) -> dict[str, str | None]:
        """Further label columns (presets only)."""
        if self.kind != "preset":
            return {}
        _, extra = self._preset(self._file.name)
        return extra

    def _preset(self, name: str) -> tuple[str | None, dict[str, str | None]]:
        lower = name.lower()
        if self.spec == "preset:iscx-vpn2016":
            vpn = "tor" if re.match(r"(vpn_)?tor(?!rent)", lower) else ("vpn" if lower.startswith("vpn") else "non-vpn")
            return _first_match(_ISCX_APPS, lower), {"service": _first_match(_ISCX_SERVICES, lower), "vpn": vpn}
        stem = re.sub(r"[-_ ]?\d*\.(pcap|pcapng)(\.gz)?$", "", lower).replace(" ", "")
        label, kind = _USTC.get(stem, (None, None))
        return label, {"kind": kind}
