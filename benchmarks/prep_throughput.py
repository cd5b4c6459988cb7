"""prep throughput: trafficlens vs a raw read vs nfstream, on one large capture, in one run.

    python benchmarks/prep_throughput.py --size-mb 512 --repeat 3
    python benchmarks/prep_throughput.py --capture long --size-mb 400 --repeat 3
    python benchmarks/prep_throughput.py --size-mb 2048 --rss   # peak RSS of `trafficlens prep`

The capture is built from ../shared/data/iot-sentinel (Ethernet, real device traffic; `--capture
long`: iot-sentinel and the nDPI suite, whose downloads and streams are long flows): every
Ethernet packet of every capture, repeated with shifted times and rewritten client addresses until the
file reaches the size asked for, written by trafficlens' own pcap writer and cached.
Everything runs on one core (prep --workers 1, nfstream n_meters=1) and is reported side by
side, so the ratios hold even on a noisy machine. prep runs once per backend in a fresh process
(`--backend numba`, the compiled path, and `python`, the reference) after a first prep of a
one-packet capture in that process, whose time (imports, loading the numba kernels from the
disk cache) is printed apart: the steady state. The wall clock a user sees is measured too: the
`trafficlens prep` command, and nfstream in a fresh process, each start-up included. With
--repeat N, numba prep, the command and nfstream alternate N times and the best round of each
is reported, with every round printed.
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


# The two captures: short IoT set-up sessions, and every Ethernet packet of ../shared/data
# (iot-sentinel and the nDPI suite: downloads, streams and tunnels of thousands of packets beside
# one-packet flows), the mix where per-flow work on long flows shows.
CAPTURES = {"iot": ("iot-sentinel",), "long": ("iot-sentinel", "ndpi")}


def source_files(folders: tuple[str, ...]) -> list[Path]:
    files = []
    for folder in folders:
        found = sorted(p for p in (SHARED / folder).rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
        if not found:
            sys.exit(f"{SHARED / folder}: no captures (need ../shared/data)")
        files += found
    return files


def _staggered(packets: list, offset: float, max_gap: float = 600.0) -> list:
    """One file's packets moved to start at `offset` s, every pause over `max_gap` shortened to it.
    The nDPI captures were taken years apart and many join captures of different years, so on
    their own times they would never overlap; staggered, their flows interleave as on one busy
    link. A pause of `max_gap` still ends every flow (longer than prep's and nfstream's idle timeouts)."""
    packets = sorted(packets, key=lambda item: item[0])
    out, previous, now = [], packets[0][0], offset
    for ts, frame in packets:
        now += min(max(ts - previous, 0.0), max_gap)
        previous = ts
        out.append((now, frame))
    return out


def build_capture(path: Path, size_mb: int, folders: tuple[str, ...] = CAPTURES["iot"]) -> Path:
    from trafficlens.capture import CaptureReader, PcapWriter
    from trafficlens.errors import TrafficlensError

    if path.exists() and path.stat().st_size >= size_mb << 20:
        return path
    packets = []
    mixed = len(folders) > 1
    for index, file in enumerate(source_files(folders)):
        start = len(packets)
        try:
            packets.extend((raw.ts, raw.data) for raw in CaptureReader(file) if raw.linktype == 1)
        except TrafficlensError:  # a capture of the nDPI suite that is damaged on purpose
            pass
        if mixed and len(packets) > start:
            packets[start:] = _staggered(packets[start:], offset=float((index * 37) % 3600))
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


def nfstream_meter(path: Path, statistics: bool) -> int | None:
    """Flows nfstream meters on one core, without nDPI; `statistics`: its statistical features
    too (statistical_analysis=True), else its fastest setting."""
    try:
        from nfstream import NFStreamer
    except ImportError:
        return None
    flows = 0
    for _ in NFStreamer(source=str(path), n_meters=1, statistical_analysis=statistics, n_dissections=0):
        flows += 1
    return flows


def prep_command(path: Path, out: Path) -> float:
    """Wall clock of `trafficlens prep CAPTURE --workers 1` as a user runs it: a fresh process,
    start-up (imports, loading the compiled kernels) included."""
    cmd = [sys.executable, "-m", "trafficlens", "prep", str(path), "-o", str(out), "--workers", "1", "--overwrite",
           "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return time.perf_counter() - start


def nfstream_in_fresh_process(path: Path, statistics: bool) -> tuple[float, float, int] | None:
    """(wall clock s, metering s after the import, flows) of nfstream in a new Python process;
    None when nfstream is not installed."""
    code = ("import json, sys, time; t = time.perf_counter(); sys.path.insert(0, sys.argv[1]);"
            "from prep_throughput import nfstream_meter; import nfstream; t = time.perf_counter();"
            "n = nfstream_meter(sys.argv[2], sys.argv[3] == '1'); print(json.dumps([time.perf_counter() - t, n]))")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(path), "1" if statistics else "0"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        if "No module named 'nfstream'" in proc.stderr:
            return None
        sys.exit(proc.stderr[-2000:])
    seconds, flows = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, seconds, flows


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
    parser.add_argument("--capture", choices=sorted(CAPTURES), default="iot",
                        help="iot: short IoT set-up sessions; long: every Ethernet packet of ../shared/data, "
                             "long flows among short ones")
    parser.add_argument("--nfstream-statistics", action="store_true",
                        help="nfstream computes its statistical features (slower); default: its fastest setting")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trafficlens-bench")
    parser.add_argument("--rss", action="store_true", help="measure peak RSS of the prep command instead")
    parser.add_argument("--backends", default="numba,python", help="prep backends to time, in order (numba, python)")
    parser.add_argument("--skip-read", action="store_true", help="leave out the raw read and read + decode rows")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of (numba prep, nfstream), interleaved; each row reports its best round "
                             "(a shared machine's load swings between passes)")
    args = parser.parse_args()

    capture = build_capture(args.cache / f"{args.capture}-x{args.size_mb}MB.pcap", args.size_mb, CAPTURES[args.capture])
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
    startups, sessions = {}, {}
    walls: list[float] = []
    nf: list[tuple[float, float, int]] = []
    for round_ in range(max(1, args.repeat)):
        for backend in backends:
            if round_ and backend != "numba":  # the slow reference runs once
                continue
            start, t, sessions[backend] = prep_in_fresh_process(capture, out, backend)
            startups.setdefault(backend, start)
            prep_times.setdefault(backend, []).append(t)
        if "numba" in backends:
            walls.append(prep_command(capture, out))
        result = nfstream_in_fresh_process(capture, args.nfstream_statistics)
        if result is None:
            break
        nf.append(result)
    for backend, times in prep_times.items():
        rows.append((f"trafficlens prep, {backend} backend, 1 worker (capture -> dataset on disk)", min(times),
                     sessions[backend], "sessions written"))
    if walls:
        rows.append(("`trafficlens prep --workers 1`, wall clock (fresh process, start-up included)", min(walls),
                     sessions["numba"], "sessions written"))
    setting = f"n_meters=1, statistical_analysis={args.nfstream_statistics}"
    if nf:
        rows.append((f"nfstream, {setting}", min(r[1] for r in nf), nf[0][2], "flows"))
        rows.append((f"nfstream, {setting}, wall clock (fresh process, import included)", min(r[0] for r in nf),
                     nf[0][2], "flows"))
    else:
        rows.append(("nfstream (not installed)", float("nan"), 0, ""))
    shutil.rmtree(out, ignore_errors=True)

    print(f"capture: {capture} ({mb:.0f} MB, {packets} packets)")
    print()
    print("| pass | seconds | packets/s | MB/s | output |")
    print("|---|---|---|---|---|")
    for name, seconds, count, unit in rows:
        print(f"| {name} | {seconds:.2f} | {packets / seconds:,.0f} | {mb / seconds:.1f} | {count} {unit} |")
    numba_times = prep_times.get("numba", [])
    if nf and numba_times:
        print("rounds, seconds: numba prep " + ", ".join(f"{t:.2f}" for t in numba_times)
              + "; prep command " + ", ".join(f"{t:.2f}" for t in walls)
              + "; nfstream " + ", ".join(f"{r[1]:.2f}" for r in nf)
              + "; nfstream process " + ", ".join(f"{r[0]:.2f}" for r in nf))
        steady = [r[1] / t for r, t in zip(nf, numba_times)]
        wall = [r[0] / t for r, t in zip(nf, walls)]
        print("prep vs nfstream, steady state (both after start-up), round by round: "
              + ", ".join(f"{x:.2f}x" for x in steady) + f"; best rounds {min(r[1] for r in nf) / min(numba_times):.2f}x")
        print("prep vs nfstream, wall clock (fresh processes, start-up included), round by round: "
              + ", ".join(f"{x:.2f}x" for x in wall) + f"; best rounds {min(r[0] for r in nf) / min(walls):.2f}x")
    for backend, start in startups.items():
        print(f"start-up of a fresh process ({backend} backend; imports, first prep of a one-packet capture): {start:.2f} s, once per process")
    if len(prep_times) == 2:
        print(f"numba vs python backend: {min(prep_times['python']) / min(prep_times['numba']):.2f}x")

if __name__ == "__main__":
    main()
