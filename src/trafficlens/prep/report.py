"""What happened to each capture file, and the manifest's totals over all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FileReport:
    """What happened to one capture file."""

    path: str
    relative: str
    size: int
    sha256: str = ""
    format: str = ""
    packets: int = 0
    sessions: int = 0
    skipped_packets: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    unmasked: dict[str, int] = field(default_factory=dict)  # values the mask could not reach, counted
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def file_warnings(path: Path, warnings: list[str], skipped: dict[str, int]) -> list[str]:
    """One line per damaged file: the reader's (record damage) with the packet-level count."""
    warnings = list(warnings)
    bad = {k: skipped[k] for k in ("malformed", "truncated") if skipped.get(k)}
    if bad:
        detail = " and ".join(f"{v} {k}" for k, v in bad.items()) + " packets skipped"
        if warnings:
            warnings[-1] += f"; {detail}"
        else:
            warnings.append(f"{path}: {detail}")
    return warnings


def summarize(reports: list[FileReport], duplicates: int, sampled_out: int, not_captures: list[str]) -> dict[str, Any]:
    """The manifest keys that total the files: inputs, counts by reason, errors."""
    dropped: dict[str, int] = {}
    skipped: dict[str, int] = {}
    unmasked: dict[str, int] = {}
    for report in reports:
        for total, counts in ((dropped, report.dropped), (skipped, report.skipped_packets), (unmasked, report.unmasked)):
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
    dropped["duplicate_sessions"] = duplicates
    if sampled_out:
        dropped["max_per_class"] = sampled_out
    errors = [{"file": r.relative, "kind": "unreadable", "message": r.error} for r in reports if r.error]
    errors += [{"file": r.relative, "kind": "damaged", "message": message} for r in reports for message in r.warnings]
    return {
        "inputs": [{"path": r.relative, "bytes": r.size, "sha256": r.sha256, "format": r.format, "packets": r.packets}
                   for r in reports],
        "packets_read": sum(r.packets for r in reports),
        "dropped": dict(sorted(dropped.items())),
        "skipped_packets": dict(sorted(skipped.items())),
        "unmasked": dict(sorted(unmasked.items())),
        "errors": errors,
        "not_captures": not_captures,
    }
