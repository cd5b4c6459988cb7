"""Golden results on real captures, as nfstream keeps them: a fixed set of small captures from
../shared/data, prepared with every mask and layer, summarised into exact counts and digests.

`tests/golden/<combo>.json` holds, per prep setting (`COMBOS`): the dataset's session count,
drop and skip counts by reason, errors, per-class counts, a digest of every table column, and per
capture its session count and the digests of its rows of every tensor and of the table. A tensor
digest pins the masking byte for byte, so a bug made the same way in both prep engines still
changes it. `tests/golden/captures.json` pins the captures themselves (sha256): a changed data
file is reported as such, not as a changed result.

Regenerate on purpose (it prints what changed, for review): `python tests/golden/regenerate.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden"

# Both formats; Ethernet, Linux cooked (113), raw IP (101, 228), BSD NULL (0), PPP (9) links; IPv4 and
# IPv6 (extension headers, fragments); TCP and UDP; TLS 1.2/1.3 ClientHellos (ECH too) and QUIC v1/v2
# for the strict mask; IoT set-ups that duplicate each other across devices (label conflicts); and
# damaged captures; TCP retransmissions and STARTTLS. About 0.4 MB in all, so every prep takes well under a second.
CAPTURES = (
    "iot-sentinel/Aria/Setup-A-2-STA.pcap",
    "iot-sentinel/Aria/Setup-A-3-STA.pcap",
    "iot-sentinel/EdimaxPlug1101W/Setup-A-3-STA.pcap",
    "iot-sentinel/EdimaxPlug2101W/Setup-A-1-STA.pcap",
    "iot-sentinel/EdnetCam1/Setup-A-1-STA.pcap",
    "iot-sentinel/EdnetCam2/Setup-C-4-STA.pcap",
    "iot-sentinel/SmarterCoffee/Setup-C-5-STA.pcap",
    "iot-sentinel/TP-LinkPlugHS100/Setup-C-9-STA.pcap",
    "iot-sentinel/TP-LinkPlugHS110/Setup-A-1-STA.pcap",
    "iot-sentinel/iKettle2/Setup-C-5-STA.pcap",
    "malformed/badpackets.pcap",
    "malformed/fuzz-2021-06-07-c6c72a0a56.pcap",
    "malformed/ip_fragmented_garbage.pcap",
    "malformed/kerberos_fuzz.pcapng",
    "malformed/ossfuzz_seed_fake_traces_1.pcapng",
    "malformed/quic-fuzz-overflow.pcapng",
    "malformed/tls-esni-fuzzed.pcap",
    "ndpi/pcap/BGP_Cisco_hdlc_slarp.pcap",
    "ndpi/pcap/avast.pcap",
    "ndpi/pcap/dingtalk.pcap",
    "ndpi/pcap/dlt_ppp.pcap",
    "ndpi/pcap/dns2tcp_tunnel.pcap",
    "ndpi/pcap/dns_fragmented.pcap",
    "ndpi/pcap/edonkey.pcap",
    "ndpi/pcap/ftp-start-tls.pcap",
    "ndpi/pcap/hls.pcapng",
    "ndpi/pcap/kerberos.pcap",
    "ndpi/pcap/lru_ipv6_caches.pcapng",
    "ndpi/pcap/nats.pcap",
    "ndpi/pcap/pgsql2.pcapng",
    "ndpi/pcap/quic-v2.pcapng",
    "ndpi/pcap/quic_0RTT.pcap",
    "ndpi/pcap/tls_alert.pcap",
    "ndpi/pcap/tls_ech.pcapng",
    "ndpi/pcap/tls_heur__trojan-tcp-tls.pcapng",
    "ndpi/pcap/tls_malicious_sha1.pcapng",
)

# name -> prep settings (besides `labels="dir"`): every mask with every layer at the defaults, and
# one-way flows with a short idle timeout and the packet and byte filters, whose drops are counted.
COMBOS: dict[str, dict[str, Any]] = {
    f"{mask}-{layer}": {"mask": mask, "layer": layer}
    for mask in ("none", "paper", "strict") for layer in ("all", "network", "transport", "payload")
}
COMBOS["strict-all-flow-filtered"] = {"mask": "strict", "layer": "all", "unit": "flow", "idle_timeout": 5.0,
                                      "min_packets": 2, "min_bytes": 100}
TENSORS = ("image", "packets", "sequence", "stats")


def digest(data: bytes) -> str:
    """The first 16 hex digits of a sha256: enough to notice any change."""
    return hashlib.sha256(data).hexdigest()[:16]


def farm(shared: Path, root: Path) -> Path:
    """Links to the golden captures under `root`, at their paths relative to ../shared/data, so
    that the `capture` column names each one unambiguously and `--labels dir` gives its folder."""
    for name in CAPTURES:
        link = root / name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(shared / name, link)
    return root


def capture_hashes(shared: Path) -> dict[str, str]:
    return {name: hashlib.sha256((shared / name).read_bytes()).hexdigest() for name in CAPTURES}


def compute(shared: Path, work: Path, combo: str, backend: str) -> dict[str, Any]:
    """Prepare the golden captures with `COMBOS[combo]` on `backend` and summarise the dataset."""
    from trafficlens.datasets import Dataset
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep

    inputs = farm(shared, work / "captures")
    config = PrepConfig(labels="dir", **COMBOS[combo])
    out = prep([inputs], work / f"{combo}-{backend}", config, workers=1, backend=backend, overwrite=True,
               on_warning=lambda message: None)
    return summarize(Dataset.open(out), str(inputs))


def _json(values: list) -> bytes:
    return json.dumps(values, separators=(",", ":")).encode()


def summarize(ds, inputs: str) -> dict[str, Any]:
    m = ds.manifest
    table = ds.table
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    tensors = {name: np.asarray(ds.tensor(name)) for name in TENSORS}
    captures = np.array(columns["capture"], dtype=object)
    sessions: dict[str, dict[str, Any]] = {}
    for name in CAPTURES:
        rows = np.flatnonzero(captures == name)
        if not len(rows):
            continue
        entry: dict[str, Any] = {"n": int(len(rows))}
        for tensor in TENSORS:
            entry[tensor] = digest(np.ascontiguousarray(tensors[tensor][rows]).tobytes())
        entry["table"] = digest(_json([[values[i] for i in rows] for values in columns.values()]))
        sessions[name] = entry
    return {
        "config": {k: v for k, v in m["config"].items() if k != "labels"},
        "n_sessions": m["n_sessions"],
        "classes": m["classes"],
        "duplicates": m["duplicates"],
        "dropped": m["dropped"],
        "skipped_packets": m["skipped_packets"],
        "unmasked": m["unmasked"],
        "errors": [{**e, "message": e["message"].replace(inputs, "<captures>")} for e in m["errors"]],
        "packets_read": m["packets_read"],
        "inputs": {i["path"]: [i["format"], i["packets"]] for i in m["inputs"]},
        "columns": {name: digest(_json(values)) for name, values in columns.items()},
        "sessions": sessions,
    }


def golden_path(combo: str) -> Path:
    return GOLDEN / f"{combo}.json"


def load(combo: str) -> dict[str, Any]:
    return json.loads(golden_path(combo).read_text())


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True) + "\n"


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Every leaf that differs, as `path: expected -> actual` lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual), key=str):
            here = f"{where}/{key}"
            if key not in actual:
                out.append(f"{here}: {json.dumps(expected[key])[:200]} -> (absent)")
            elif key not in expected:
                out.append(f"{here}: (absent) -> {json.dumps(actual[key])[:200]}")
            else:
                out += differences(expected[key], actual[key], here)
        return out
    if expected != actual:
        return [f"{where}: {json.dumps(expected)[:200]} -> {json.dumps(actual)[:200]}"]
    return []
