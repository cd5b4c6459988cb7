"""Which files are captures: the formats' magic numbers, and finding captures under folders.

The format is taken from the first bytes, never the name (real data has `.pcap` files that are
pcapng and the reverse); a gzip file is taken too, its contents told when it is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from trafficlens.errors import ConfigError

PCAP_MAGICS = {  # magic -> (byte order, seconds per fraction tick, record header bytes)
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9, 16),
    # "modified" pcap (Kuznetzov's patched libpcap): each record header adds a 4-byte interface
    # index, a 2-byte protocol, a 1-byte packet type and a pad byte; microseconds
    b"\x34\xcd\xb2\xa1": ("<", 1e-6, 24),
    b"\xa1\xb2\xcd\x34": (">", 1e-6, 24),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
CAPTURE_MAGICS = (*PCAP_MAGICS, PCAPNG_MAGIC)
STDIN = "-"  # the capture name that means standard input, as for tcpdump -r -


def is_stdin(path: str | os.PathLike) -> bool:
    """Whether `path` names standard input ("-")."""
    return os.fspath(path) == STDIN


def sniff(head: bytes) -> str:
    """"pcap", "pcapng", "gzip" or "" from a file's first four bytes."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head in PCAP_MAGICS:
        return "pcap"
    return "pcapng" if head == PCAPNG_MAGIC else ""


def looks_like_capture(path: str | os.PathLike) -> bool:
    """Whether the first bytes are a pcap, pcapng or gzip magic."""
    try:
        with open(path, "rb") as fh:
            return sniff(fh.read(4)) != ""
    except OSError:
        return False


def discover(inputs: Iterable[str | os.PathLike]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Capture files under the inputs as (path, name relative to its input root), and skipped names.

    An explicitly named file is always taken; in directories, hidden entries are ignored and
    files that do not start like a capture (READMEs, label lists) are skipped and listed. "-" is
    standard input (`Path("-")`, named "-"), at most once.
    """
    files: list[tuple[Path, str]] = []
    skipped: list[str] = []
    inputs = list(inputs)
    if sum(map(is_stdin, inputs)) > 1:
        raise ConfigError("- (standard input) is given more than once; it can be read only once")
    for item in inputs:
        root = Path(item)
        if is_stdin(item):
            files.append((root, STDIN))
        elif root.is_file():
            files.append((root, root.name))
        elif root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                relative = path.relative_to(root)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                (files.append((path, relative.as_posix())) if looks_like_capture(path)
                 else skipped.append(relative.as_posix()))
        else:
            raise ConfigError(f"{root}: no such file or directory")
    return files, skipped
