"""labels.csv from what was captured: one row per flow, labelled by the session that sent it.

Every session sends from an address of its own, so a flow belongs to the session whose address
it carries; the row holds the flow's 5-tuple as captured (client first), its first and last
packet times, the application and the command. This is the per-flow format that
`trafficlens prep --labels csv:labels.csv` reads; `--label-column command` picks the command.
"""

from __future__ import annotations

import csv
import os
import socket
from typing import Iterable

COLUMNS = ("file", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ts_start", "ts_end",
           "label", "application", "command", "session")


def flows(path: str, sessions_by_ip: dict[str, dict]) -> list[dict]:
    """The flows of one capture that belong to a planned session, as label rows."""
    from trafficlens.capture.decode import decode
    from trafficlens.capture.reader import CaptureReader

    by_addr = {socket.inet_aton(ip): s for ip, s in sessions_by_ip.items()}
    found: dict[tuple, list] = {}
    for raw in CaptureReader(path):
        pkt = decode(raw)
        if isinstance(pkt, str):
            continue
        if pkt.src in by_addr:
            key = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        elif pkt.dst in by_addr:
            key = (pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport)
        else:
            continue
        span = found.get(key)
        if span is None:
            found[key] = [pkt.ts, pkt.ts]
        else:
            span[1] = pkt.ts
    rows = []
    name = os.path.basename(path)
    for (proto, caddr, cport, saddr, sport), (start, end) in sorted(found.items(), key=lambda kv: kv[1][0]):
        session = by_addr[caddr]
        rows.append({
            "file": name, "src_ip": socket.inet_ntoa(caddr), "src_port": cport, "dst_ip": socket.inet_ntoa(saddr),
            "dst_port": sport, "protocol": "TCP" if proto == 6 else "UDP", "ts_start": f"{start:.6f}",
            "ts_end": f"{end:.6f}", "label": session["cls"], "application": session["cls"],
            "command": session["command"], "session": session["id"],
        })
    return rows


def write(path: str, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            n += 1
    return n
