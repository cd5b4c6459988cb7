"""The reader and decoder on the real captures of ../shared/data (skipped when absent).

Golden figures below come from this code on the 2024-10-21 nDPI snapshot; when a change to
`decode` moves them on purpose, rerun with `-s` and copy the printed counts.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from trafficlens.capture import CaptureReader, decode
from trafficlens.errors import CaptureError

pytestmark = pytest.mark.shared_data

# Only one of the 18 files is damaged at the record level; the others are packet-level fuzz
# (bad IP and TCP headers) inside well-formed files, which decode counts and skips.
DAMAGED = {"fuzz-2021-10-13.pcap": "record length 524501 beyond the snap length 0 at offset 24; kept 0 packets"}
NDPI_DECODE = {"ok": 102583, "other_protocol": 2398, "non_ip": 897, "ip_fragment": 127, "malformed": 7,
               "unsupported_link": 6, "truncated": 1}


def test_malformed_files_finish_fast_without_crashing(shared_data):
    files = sorted((shared_data / "malformed").iterdir())
    assert len(files) == 18
    for path in files:
        start = time.perf_counter()
        reader = CaptureReader(path)
        reasons = Counter(p if isinstance(p, str) else "ok" for p in map(decode, reader))
        assert time.perf_counter() - start < 10, path.name
        assert sum(reasons.values()) == reader.packets
        if path.name in DAMAGED:
            assert len(reader.warnings) == 1 and DAMAGED[path.name] in reader.warnings[0]
        else:
            assert reader.warnings == [] and reader.packets > 0, path.name


def test_every_real_capture_reads_entirely_without_warnings(shared_data):
    paths = sorted(p for d in ("ndpi/pcap", "iot-sentinel") for p in (shared_data / d).rglob("*") if p.is_file())
    readable, refused, packets = 0, [], 0
    for path in paths:
        try:
            reader = CaptureReader(path)
        except CaptureError:
            refused.append(path.name)
            continue
        packets += sum(1 for _ in reader)
        assert reader.warnings == [], reader.warnings
        readable += 1
    assert readable == 1075
    # what is refused is not a capture: device MAC lists, READMEs, the licence, Finder files
    assert set(refused) == {"_iotdevice-mac.txt", "README.txt", "LICENSE", ".DS_Store"}
    assert packets == 299_440  # 106,019 nDPI + 193,421 IoT Sentinel


def test_ndpi_decode_counts(shared_data):
    counts: Counter[str] = Counter()
    for path in sorted((shared_data / "ndpi" / "pcap").iterdir()):
        for raw in CaptureReader(path):
            p = decode(raw)
            counts[p if isinstance(p, str) else "ok"] += 1
    print("ndpi decode:", dict(counts.most_common()))
    assert dict(counts) == NDPI_DECODE
