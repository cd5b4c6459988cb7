"""`trafficlens live` on a real interface: packets dropped and decision delay at a replay rate.

    sudo python benchmarks/live_latency.py --rates 25000,50000,100000

A veth pair (tlbench0 <-> tlbench1) is created; `tcpreplay` (Debian package `tcpreplay`)
sends the iot-sentinel packets, repeated with rewritten client addresses (the prep
benchmark's builder), into tlbench0 at each rate, and `trafficlens live -i tlbench1` decides
every session at its 6th kept packet with each model (trained for one epoch: accuracy does
not change the cost) and each session engine (`--backend numba`, compiled blocks, against
`python`, the per-packet reference). Reported per rate: the rate tcpreplay achieved, packets
the live process read, packets libpcap dropped (kernel buffer full), decisions, and the delay
from the 6th packet's kernel timestamp to its decision written (median, p99). Baseline in the
same run: `tcpdump -w /dev/null` on the same pair at the same rate, which shows what the
replay and the kernel alone lose. Needs root (veth, raw capture); the pair is removed at exit.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prep_throughput import SHARED, build_capture

PAIR = ("tlbench0", "tlbench1")
# Named variants of registered models: chen-cnn with a smaller head (its convolutions have
# had these widths by default since issue 18), and chen-cnn with the widths it had before
# issue 18 (twice the convolution widths), the baseline of the default (RESULTS.md, live).
VARIANTS = {"chen-cnn-small": ("chen-cnn", {"channels": [8, 16, 32, 64], "dense": [64, 32]}),
            "chen-cnn-before": ("chen-cnn", {"channels": [8, 32, 64, 128]})}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def make_pair() -> None:
    sh("ip", "link", "del", PAIR[0], check=False)
    sh("ip", "link", "add", PAIR[0], "type", "veth", "peer", "name", PAIR[1])
    for name in PAIR:
        # no IPv6 on the pair: its router solicitations would be the only traffic before the replay
        sh("sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", name, "mtu", "9000", "up")


def replay(capture: Path, pps: int) -> float:
    """Send the capture into the pair at `pps`; returns the rate tcpreplay reports."""
    # nanosleep pacing: tcpreplay's default busy-waits on the clock, a whole core of the two this
    # machine has (96% CPU at 100 k packets/s, measured) taken from the process under test;
    # with --timer=nano it uses 38% (mostly the kernel's sending) at the same achieved rate.
    proc = sh("tcpreplay", "-i", PAIR[0], f"--pps={pps}", "--timer=nano", str(capture))
    match = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", proc.stdout)
    return float(match.group(1)) if match else float("nan")


def wait_capturing(proc: subprocess.Popen, seconds: float = 1.5) -> None:
    time.sleep(seconds)  # the process opens the interface within its start-up time
    if proc.poll() is not None:
        sys.exit(f"capture process exited early: {proc.stderr.read() if proc.stderr else ''}")


def wait_ready(proc: subprocess.Popen, seconds: float = 60.0) -> list[str]:
    """Lines of stderr up to `live`'s "ready" line (model, kernels and a rehearsal loaded)."""
    lines, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            sys.exit(f"capture process exited early: {''.join(lines)}")
        lines.append(line)
        if line.startswith("live: ready"):
            return lines
    sys.exit("capture process not ready in time")


def live_run(run: Path, capture: Path, pps: int, out: Path, backend: str, start: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "trafficlens", "live", "--model", str(run), "-i", PAIR[1],
                             "--idle-exit", "10", "-o", str(out), "--device", "cpu", "--backend", backend],
                            stderr=subprocess.PIPE, text=True)
    # "fixed": replay 6 s after start (imports, model and kernels load first; the process then idles, and a
    # vCPU that slept seconds makes the first decisions 30-40 ms slower, measured). "ready": replay as soon
    # as live says it is ready, as traffic that never pauses would find it.
    head = wait_ready(proc) if start == "ready" else wait_capturing(proc, 6.0) or []
    achieved = replay(capture, pps)
    _, err = proc.communicate(timeout=600)
    summary = json.loads((("".join(head)) + err).strip().splitlines()[-1])
    return {"achieved_pps": achieved, **summary}


def tcpdump_run(capture: Path, pps: int) -> dict:
    proc = subprocess.Popen(["tcpdump", "-i", PAIR[1], "-B", str(64 << 10), "-w", "/dev/null"],
                            stderr=subprocess.PIPE, text=True)
    wait_capturing(proc)
    achieved = replay(capture, pps)
    time.sleep(1.0)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    got = re.search(r"(\d+) packets captured", err)
    dropped = re.search(r"(\d+) packets dropped by kernel", err)
    return {"achieved_pps": achieved, "packets": int(got.group(1)) if got else None,
            "dropped": int(dropped.group(1)) if dropped else None}


def train_model(work: Path, model: str) -> Path:
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep
    from trafficlens.training.config import TrainConfig
    from trafficlens.training.run import train_run

    run = work / f"run-{model}"
    if not (run / "config.json").exists():
        ds = work / "ds"
        if not (ds / "manifest.json").exists():
            prep([SHARED / "iot-sentinel"], ds, PrepConfig(labels="dir"), overwrite=True)
        name, settings = VARIANTS.get(model, (model, None))
        train_run(ds, run, name, TrainConfig(max_epochs=1, split="random"), model_kwargs=settings, progress=False,
                  overwrite=True, log=lambda m: None)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="25000,50000,100000", help="Replay rates in packets/s.")
    parser.add_argument("--size-mb", type=int, default=200, help="Capture size to replay (about 1 M packets per 180 MB).")
    parser.add_argument("--models", default="chen-cnn,ge-elmo-lstm-attention", help="Registered models (or VARIANTS) to decide with.")
    parser.add_argument("--backends", default="numba,python", help="Session engines to compare.")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trafficlens-bench")
    parser.add_argument("--start", choices=("fixed", "ready"), default="ready",
                        help="Start the replay 6 s after live starts, or when it prints that it is ready.")
    args = parser.parse_args()
    for tool in ("ip", "tcpreplay", "tcpdump"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install iproute2 tcpreplay tcpdump")
    work = args.cache / "live"
    work.mkdir(parents=True, exist_ok=True)
    capture = build_capture(args.cache / f"iot-{args.size_mb}mb.pcap", args.size_mb)
    models = args.models.split(",")
    runs = {model: train_model(work, model) for model in models}
    backends = args.backends.split(",")
    make_pair()
    rows = []
    try:
        for pps in (int(r) for r in args.rates.split(",")):
            base = tcpdump_run(capture, pps)
            for model in models:
                for backend in backends:
                    live = live_run(runs[model], capture, pps, work / f"live-{pps}-{model}.jsonl", backend, args.start)
                    rows.append((pps, model, backend, base, live))
                    print(f"{pps} {model} {backend}: tcpdump {base}; live {live}", file=sys.stderr)
    finally:
        sh("ip", "link", "del", PAIR[0], check=False)
    print(f"\ncapture: {capture.name}, {capture.stat().st_size / 2**20:.0f} MB; models trained 1 epoch, --after 6, CPU, "
          f"replay started: {args.start}")
    print("| target pps | model | engine | achieved pps | tcpdump dropped | live packets read | live dropped (libpcap) "
          "| decisions | delay median ms | delay p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pps, model, backend, base, live in rows:
        cap = live.get("capture", {})
        print(f"| {pps:,} | {model} | {backend} | {live['achieved_pps']:,.0f} | {base['dropped']} | {live['packets']:,} "
              f"| {cap.get('dropped')} | {live['decisions']:,} | {live['delay_ms_median']:.2f} "
              f"| {live['delay_ms_p99']:.2f} |")

if __name__ == "__main__":
    main()
