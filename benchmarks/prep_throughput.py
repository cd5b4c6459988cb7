"""prep throughput: trafficlens vs a raw read vs nfstream, on one large capture, in one run.

    python benchmarks/prep_throughput.py --size-mb 512
    python benchmarks/prep_throughput.py --size-mb 2048 --rss   # peak RSS of `trafficlens prep`

The capture is built from ../shared/data/iot-sentinel (Ethernet, real device traffic): every
packet of every capture, repeated with shifted times and rewritten client addresses until the
file reaches the size asked for, written by trafficlens' own pcap writer and cached.
Everything runs on one core (prep --workers 1, nfstream n_meters=1) and is reported side by
side, so the ratios hold even on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def build_capture(path: Path, size_mb: int) -> Path:
    from trafficlens.capture import CaptureReader, PcapWriter

    if path.exists() and path.stat().st_size >= size_mb << 20:
        return path
    source = sorted((SHARED / "iot-sentinel").rglob("*.pcap"))
    if not source:
        sys.exit(f"{SHARED / 'iot-sentinel'}: no captures (need ../shared/data)")
    packets = []
    for file in source:
        reader = CaptureReader(file)
        packets.extend((raw.ts, raw.data) for raw in reader if raw.linktype == 1)
    packets.sort(key=lambda item: item[0])
    t0 = packets[0][0]
    span = packets[-1][0] - t0 + 1000.0
    target = size_mb << 20
    written = 0
    copy = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with PcapWriter(str(path) + ".tmp", linktype=1) as writer:
        while written < target:
            for ts, frame in packets:
                if copy and len(frame) >= 34 and frame[12:14] == b"\x08\x00":
                    # Rewrite the IPv4 source's last byte so copies are distinct sessions.
                    frame = frame[:29] + bytes([(frame[29] + copy) % 256]) + frame[30:]
                writer.write(frame, ts - t0 + 1.6e9 + copy * span)
                written += 16 + len(frame)
                if written >= target:
                    break
            copy += 1
    os.replace(str(path) + ".tmp", path)
    return path


def count_packets(path: Path) -> int:
    from trafficlens.capture import CaptureReader

    return sum(1 for _ in CaptureReader(path))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def raw_read(path: Path) -> int:
    from trafficlens.capture import CaptureReader

    n = 0
    for _ in CaptureReader(path):
        n += 1
    return n


def read_decode(path: Path) -> int:
    from trafficlens.capture import CaptureReader, decode

    n = 0
    for raw in CaptureReader(path):
        decode(raw)
        n += 1
    return n


def trafficlens_prep(path: Path, out: Path) -> int:
    from trafficlens.datasets import Dataset
    from trafficlens.datasets.config import PrepConfig
    from trafficlens.datasets.prep import prep

    prep([path], out, PrepConfig(), workers=1, overwrite=True)
    return len(Dataset.open(out))


def nfstream_meter(path: Path) -> int | None:
    try:
        from nfstream import NFStreamer
    except ImportError:
        return None
    flows = 0
    for _ in NFStreamer(source=str(path), n_meters=1, statistical_analysis=True, n_dissections=0):
        flows += 1
    return flows


def peak_rss(path: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of the `trafficlens prep` command under /usr/bin/time -v."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "trafficlens", "prep", str(path), "-o", str(out),
           "--workers", "1", "--overwrite", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return seconds, kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trafficlens-bench")
    parser.add_argument("--rss", action="store_true", help="measure peak RSS of the prep command instead")
    args = parser.parse_args()

    capture = build_capture(args.cache / f"iot-x{args.size_mb}MB.pcap", args.size_mb)
    mb = capture.stat().st_size / 2**20
    out = args.cache / "ds"
    if args.rss:
        seconds, rss = peak_rss(capture, out)
        print(f"| capture | MB | seconds | peak RSS MiB |\n|---|---|---|---|\n| {capture.name} | {mb:.0f} | {seconds:.1f} | {rss:.0f} |")
        shutil.rmtree(out, ignore_errors=True)
        return

    rows = []
    t, n = timed(lambda: raw_read(capture))
    packets = n
    rows.append(("raw sequential read (trafficlens reader)", t, n, "records"))
    t, _ = timed(lambda: read_decode(capture))
    rows.append(("read + decode", t, packets, "records"))
    t, sessions = timed(lambda: trafficlens_prep(capture, out))
    rows.append(("trafficlens prep, 1 worker (capture -> dataset on disk)", t, sessions, "sessions written"))
    prep_time = t
    t, flows = timed(lambda: nfstream_meter(capture))
    if flows is None:
        rows.append(("nfstream (not installed)", float("nan"), 0, ""))
        nf_time = float("nan")
    else:
        rows.append(("nfstream, n_meters=1, statistical_analysis=True", t, flows, "flows"))
        nf_time = t
    shutil.rmtree(out, ignore_errors=True)

    print(f"capture: {capture} ({mb:.0f} MB, {packets} packets)\n")
    print("| pass | seconds | packets/s | MB/s | output |")
    print("|---|---|---|---|---|")
    for name, seconds, count, unit in rows:
        print(f"| {name} | {seconds:.1f} | {packets / seconds:,.0f} | {mb / seconds:.1f} | {count} {unit} |")
    if nf_time == nf_time:
        print(f"\nprep vs nfstream packets/s: {nf_time / prep_time:.2f}x")


if __name__ == "__main__":
    main()
