"""predict throughput, end to end (capture on disk -> labels on disk), deep models vs a random forest.

    python benchmarks/predict_throughput.py --repeat 3

Every model is trained briefly (1 epoch: throughput does not depend on accuracy) on
../shared/data/iot-sentinel prepared with default settings, then labels the same capture: the
iot-sentinel packets repeated to --size-mb with rewritten client addresses (the prep
benchmark's builder). The random forest runs the same path (capture -> sessions -> `stats`
features -> predict_proba -> rows on disk), so the comparison is end to end for all, and on
the same cores (torch and ONNX Runtime on 2 threads; the forest on `--rf-jobs`, 1 by default:
its fastest here, joblib's hand-off per chunk of 1,024 costs more than the second core gives). Each deep
model runs on each inference runtime asked for (`--runtimes`): ONNX Runtime, the default on a
CPU when installed, against PyTorch in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from prep_throughput import SHARED, build_capture

MODELS = ("chen-cnn", "ge-cnn-lstm", "chen-model-b")


def fit_rf(ds, jobs: int = 1):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=300, n_jobs=jobs, random_state=0).fit(
        np.asarray(ds.tensor("stats")), ds.labels.astype(str))


def rf_end_to_end(rf, ds, capture: Path, out: Path) -> tuple[int, int]:
    """Random forest on flow statistics through the same capture -> rows path; (sessions, packets).

    Sessions under the filters are written as not judged, as `predict` does.
    """
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prepare_capture
    from trafficlens.serving.output import write_rows

    classes = rf.classes_
    config = PrepConfig.from_dict(ds.config).for_prediction()
    examples, rejected = [], []
    report = prepare_capture(capture, capture.name, config, None, examples.append,
                             lambda meta, reason: rejected.append(dict(meta, label=None, confidence=None, top_k=[],
                                                                       status="not_judged", reason=reason)))

    def batches():
        for start in range(0, len(examples), 1024):
            chunk = examples[start : start + 1024]
            probs = rf.predict_proba(np.stack([e.stats for e in chunk]))
            for e, p in zip(chunk, probs):
                best = int(p.argmax())
                yield [dict({k: e.meta.get(k) for k in ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
                                                         "ts_start", "ts_end", "packets", "bytes")},
                            label=str(classes[best]), confidence=float(p[best]), top_k=[(str(classes[best]), float(p[best]))],
                            status="ok", reason=None)]
        yield [{k: row.get(k) for k in ("capture", "src_ip", "src_port", "dst_ip", "dst_port", "protocol", "ts_start",
                                        "ts_end", "packets", "bytes", "label", "confidence", "top_k", "status", "reason")}
               for row in rejected]

    rows = write_rows(batches(), str(out))
    return rows, report.packets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "trafficlens-bench")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each row reports its best round")
    parser.add_argument("--models", default=",".join(MODELS), help="deep models to time, comma-separated")
    parser.add_argument("--rf-jobs", type=int, default=1, help="the random forest's n_jobs at prediction")
    parser.add_argument("--runtimes", default="onnxruntime,torch", help="inference runtimes to time each model on")
    args = parser.parse_args()

    import torch

    from trafficlens.datasets import Dataset
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep
    from trafficlens.serving import Classifier
    from trafficlens.serving.output import write_rows
    from trafficlens.training import TrainConfig, train_run

    capture = build_capture(args.cache / f"iot-x{args.size_mb}MB.pcap", args.size_mb)
    work = args.cache / "predict"
    if (work / "ds").is_dir():
        ds = Dataset.open(work / "ds")
    else:
        ds = Dataset.open(prep([SHARED / "iot-sentinel"], work / "ds", PrepConfig(labels="dir")))
    names = args.models.split(",")
    classifiers = {}
    for name in names:
        run = work / f"run-{name}"
        if not (run / "config.json").is_file():  # reuse a run of an earlier benchmark
            train_run(ds.path, run, name, TrainConfig(max_epochs=1, split="random"), progress=False, overwrite=True,
                      log=lambda m: None)
        for runtime in args.runtimes.split(","):
            os.environ["TRAFFICLENS_INFERENCE"] = "torch" if runtime == "torch" else "auto"
            clf = Classifier.load(run, device="cpu")
            clf._model_for_inference()  # built now, under this runtime's setting
            if clf.runtime != runtime:
                raise SystemExit(f"{name}: asked for {runtime}, got {clf.runtime} (is onnxruntime installed?)")
            classifiers[f"{name} ({runtime})"] = clf
    os.environ.pop("TRAFFICLENS_INFERENCE", None)
    rf = fit_rf(ds, args.rf_jobs)  # fitting is not part of the timed path
    rounds: dict[str, list[tuple[float, int]]] = {}
    label_rf = f"random forest (stats, 300 trees, {args.rf_jobs} job{'s' if args.rf_jobs > 1 else ''})"
    for _ in range(args.repeat):  # models interleaved, so a slow spell of the machine hits all of them
        for name, clf in classifiers.items():
            start = time.perf_counter()
            rows = write_rows(clf.iter_predictions([capture]), str(work / f"{name}.parquet"))
            rounds.setdefault(name, []).append((time.perf_counter() - start, rows))
        start = time.perf_counter()
        rows, packets = rf_end_to_end(rf, ds, capture, work / "rf.parquet")
        rounds.setdefault(label_rf, []).append((time.perf_counter() - start, rows))
    results = [(name, *min(r)) for name, r in rounds.items()]  # best round of each

    print(f"capture: {capture.name} ({capture.stat().st_size / 2**20:.0f} MB, {packets} packets); "
          f"torch threads {torch.get_num_threads()}\n")
    print("| model | seconds | sessions/s | packets/s | sessions labelled | vs random forest |")
    print("|---|---|---|---|---|---|")
    rf_rate = results[-1][2] / results[-1][1]
    for name, seconds, rows in results:
        print(f"| {name} | {seconds:.1f} | {rows / seconds:,.0f} | {packets / seconds:,.0f} | {rows} | {rows / seconds / rf_rate:.2f}x |")
    if args.repeat > 1:
        print("\nrounds, seconds: " + "; ".join(f"{n} " + ", ".join(f"{t:.1f}" for t, _ in r) for n, r in rounds.items()))


if __name__ == "__main__":
    main()
