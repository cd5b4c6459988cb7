"""Start-up of small jobs (issue 18): the wall clock a user sees for `trafficlens predict` of a
30-session capture with the bundled model and for `trafficlens prep` of it, with the compiled or
the Python session engine and the ONNX export cache off or warm. Rounds alternate, so load on the
machine hits every case alike; the table gives medians and the ratio to the old defaults.

    python benchmarks/startup.py --rounds 5
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "examples" / "lab"


def wall(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trafficlens", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


STAGES = """
import json, sys, time
t0 = time.perf_counter()
from trafficlens.inference.classifier import Classifier
t1 = time.perf_counter()
c = Classifier.load(sys.argv[1], device="cpu")
t2 = time.perf_counter()
c.warm_up()
t3 = time.perf_counter()
print(json.dumps({"import trafficlens": t1 - t0, "load bundle (PyTorch imported here unless the cache is warm)": t2 - t1,
                  "build inference model": t3 - t2, "PyTorch imported (1 = yes)": float("torch" in sys.modules)}))
"""


def stages(env: dict[str, str]) -> dict[str, float]:
    import json

    out = subprocess.run([sys.executable, "-c", STAGES, str(LAB / "model")], check=True, env=env,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    capture = LAB / "capture-002.pcap.gz"
    # An installed package has its bytecode compiled (pip does it); an editable install under
    # PYTHONDONTWRITEBYTECODE (set on this project's machines) would compile trafficlens from
    # source in every process and time that instead.
    compileall.compile_dir(str(ROOT / "src" / "trafficlens"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        env = {k: v for k, v in os.environ.items() if k != "TRAFFICLENS_BACKEND"}
        cold = dict(env, TRAFFICLENS_CACHE="off")
        warm = dict(env, TRAFFICLENS_CACHE=str(cache))
        predict = ["predict", str(LAB / "model"), str(capture), "-o", str(Path(tmp) / "out.csv")]
        prep = ["prep", str(capture), "-o", str(Path(tmp) / "ds"), "--label", "x", "--overwrite", "--quiet"]
        numba = {"TRAFFICLENS_BACKEND": "numba"}
        # (name, command, environment): the defaults before this change (compiled engine, no export
        # cache) first, as the baseline of the ratios
        cases = [
            ("predict, before: compiled engine, no export cache", predict, {**cold, **numba}),
            ("predict, compiled engine, export cache warm", predict, {**warm, **numba}),
            ("predict, Python engine (small input), no export cache", predict, cold),
            ("predict, now: Python engine, export cache warm (no PyTorch import)", predict, warm),
            ("prep, before: compiled engine", prep, {**warm, **numba}),
            ("prep, now: Python engine (small input)", prep, warm),
        ]
        wall(predict, warm)  # fills the cache (and the OS file cache for every case)
        times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        parts: dict[str, list[dict[str, float]]] = {"cache off": [], "cache warm": []}
        for _ in range(args.rounds):
            for name, command, env in cases:
                times[name].append(wall(command, env))
            parts["cache off"].append(stages(cold))
            parts["cache warm"].append(stages(warm))
    base = statistics.median(times[cases[0][0]])
    print(f"| job (30 sessions, {args.rounds} alternating rounds) | median s | min s | ratio to the first row |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {statistics.median(values) / base:.2f} |")
    print("\n| inside `Classifier.load` + `warm_up` (median s) | " + " | ".join(parts) + " |")
    print("|---|" + "---:|" * len(parts))
    for stage in parts["cache off"][0]:
        print(f"| {stage} | " + " | ".join(f"{statistics.median(p[stage] for p in v):.2f}" for v in parts.values()) + " |")


if __name__ == "__main__":
    main()
