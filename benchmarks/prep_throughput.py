"""prep throughput: trafficlens vs a raw read vs nfstream, on one large capture, in one run.

    python benchmarks/prep_throughput.py --size-mb 512 --repeat 3
    python benchmarks/prep_throughput.py --size-mb 2048 --rss   # peak RSS of `trafficlens prep`

The capture is built from ../shared/data/iot-sentinel (Ethernet, real device traffic): every
packet of every capture, repeated with shifted times and rewritten client addresses until the
file reaches the size asked for, written by trafficlens' own pcap writer and cached.
Everything runs on one core (prep --workers 1, nfstream n_meters=1) and is reported side by
side, so the ratios hold even on a noisy machine. prep runs once per backend in a fresh process
(`--backend numba`, the compiled path, and `python`, the reference) after a first prep of a
one-packet capture in that process, whose time (imports, loading the numba kernels from the
disk cache) is printed apart. With --repeat N, numba prep and nfstream alternate N times and
the best round of each is reported, with every round printed.
"""

from __future__ import annotations

import argparse
import json
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


def trafficlens_prep(path: Path, out: Path, backend: str) -> int:
    from trafficlens.datasets import Dataset
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep

    prep([path], out, PrepConfig(), workers=1, overwrite=True, backend=backend)
    return len(Dataset.open(out))


def tiny_capture(path: Path) -> Path:
    from trafficlens.capture import PcapWriter, build

    with PcapWriter(path) as writer:
        writer.write(build.ethernet(build.tcp_packet(b"warm", flags="PA")), 1.0)
    return path


def prep_in_fresh_process(path: Path, out: Path, backend: str) -> tuple[float, float, int]:
    """(start-up s, prep s, sessions) from a new Python process: start-up is a first prep of a
    one-packet capture (imports; for numba, loading the compiled kernels from numba's disk cache),
    paid once per process; then the timed prep of the big capture."""
    tiny = tiny_capture(out.with_name("one-packet.pcap"))
    code = (
        "import json, sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[4]);"
        "from prep_throughput import trafficlens_prep;"
        "t = time.perf_counter(); trafficlens_prep(Path(sys.argv[5]), Path(sys.argv[2]), sys.argv[3]);"
        "start = time.perf_counter() - t; t = time.perf_counter();"
        "n = trafficlens_prep(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]);"
        "print(json.dumps([start, time.perf_counter() - t, n]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(out), backend, str(Path(__file__).parent), str(tiny)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    start, seconds, sessions = json.loads(proc.stdout.strip().splitlines()[-1])
    return start, seconds, sessions


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
    parser.add_argument("--backends", default="numba,python", help="prep backends to time, in order (numba, python)")
    parser.add_argument("--skip-read", action="store_true", help="leave out the raw read and read + decode rows")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of (numba prep, nfstream), interleaved; each row reports its best round "
                             "(a shared machine's load swings between passes)")
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
    backends = [b for b in args.backends.split(",") if b]
    if "numba" in backends:  # compile the kernels into numba's disk cache: once per install
        prep_in_fresh_process(tiny_capture(out.with_name("one-packet.pcap")), out, "numba")
    packets = count_packets(capture) if args.skip_read else None
    if not args.skip_read:
        t, n = timed(lambda: raw_read(capture))
        packets = n
        rows.append(("raw sequential read (trafficlens reader)", t, n, "records"))
        t, _ = timed(lambda: read_decode(capture))
        rows.append(("read + decode (Python)", t, packets, "records"))
    prep_times: dict[str, list[float]] = {}
    startups = {}
    sessions = {}
    nf_times: list[float] = []
    flows = None
    for round_ in range(max(1, args.repeat)):
        for backend in backends:
            if round_ and backend != "numba":  # the slow reference runs once
                continue
            start, t, sessions[backend] = prep_in_fresh_process(capture, out, backend)
            startups.setdefault(backend, start)
            prep_times.setdefault(backend, []).append(t)
        t, flows = timed(lambda: nfstream_meter(capture))
        if flows is None:
            break
        nf_times.append(t)
    for backend, times in prep_times.items():
        rows.append((f"trafficlens prep, {backend} backend, 1 worker (capture -> dataset on disk)", min(times),
                     sessions[backend], "sessions written"))
    if flows is None:
        rows.append(("nfstream (not installed)", float("nan"), 0, ""))
        nf_time = float("nan")
    else:
        rows.append(("nfstream, n_meters=1, statistical_analysis=True", min(nf_times), flows, "flows"))
        nf_time = min(nf_times)
    shutil.rmtree(out, ignore_errors=True)

    print(f"capture: {capture} ({mb:.0f} MB, {packets} packets)")
    print()
    print("| pass | seconds | packets/s | MB/s | output |")
    print("|---|---|---|---|---|")
    for name, seconds, count, unit in rows:
        print(f"| {name} | {seconds:.1f} | {packets / seconds:,.0f} | {mb / seconds:.1f} | {count} {unit} |")
    if len(nf_times) > 1:
        print("rounds, seconds: numba prep " + ", ".join(f"{t:.1f}" for t in prep_times.get("numba", []))
              + "; nfstream " + ", ".join(f"{t:.1f}" for t in nf_times))
        pairs = [nf / pt for nf, pt in zip(nf_times, prep_times.get("numba", []))]
        if pairs:
            print("prep (numba backend) vs nfstream, round by round: " + ", ".join(f"{r:.2f}x" for r in pairs))
    if nf_time == nf_time:
        for backend, times in prep_times.items():
            print(f"prep ({backend} backend) vs nfstream packets/s: {nf_time / min(times):.2f}x"
                  + (" (best rounds)" if len(nf_times) > 1 else ""))
    for backend, start in startups.items():
        print(f"start-up of a fresh process ({backend} backend; imports, first prep of a one-packet capture): {start:.2f} s, once per process")
    if len(prep_times) == 2:
        print(f"numba vs python backend: {min(prep_times['python']) / min(prep_times['numba']):.2f}x")


if __name__ == "__main__":
    main()
