"""`trafficlens quickstart`: the whole pipeline on the bundled sample, in a few minutes on a CPU.

captures -> `prep` (strict mask) -> `train` (chen-cnn, split by capture file, time-boxed)
-> `evaluate` (metrics.json + report.html) -> `predict` (one row per session of one capture).
Every step is the same Python API the commands use; the printed lines say which command a
user would type to do the step alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trafficlens.errors import ConfigError

# The sample sits in the repository (examples/), next to the package's src/ folder.
REPO = Path(__file__).resolve().parents[2]
SAMPLES = (REPO / "examples" / "lab", REPO / "examples" / "sample")


@dataclass
class QuickstartConfig:
    model: str = "chen-cnn"
    time_budget: float = 90.0  # seconds of training
    max_epochs: int = 20
    batch_size: int = 32
    split: str = "capture"
    seed: int = 0


def find_sample(sample: str | os.PathLike | None = None) -> Path:
    """The bundled sample (a folder with captures and labels.csv), or the one given."""
    candidates = [Path(sample)] if sample else list(SAMPLES)
    for path in candidates:
        if (path / "labels.csv").is_file():
            return path
    if sample:
        raise ConfigError(f"{sample}: not a sample folder (it needs captures and a labels.csv)")
    raise ConfigError("the bundled sample was not found (it ships in the repository's examples/ folder: "
                      "install from a checkout with `pip install -e .`, or pass --sample DIR)")


def default_out(cwd: Path | None = None) -> Path:
    """`./trafficlens-quickstart`, unless the current folder is inside the checkout: the source
    tree stays clean, so then the user's cache folder ($XDG_CACHE_HOME or ~/.cache)."""
    cwd = (cwd or Path.cwd()).resolve()
    if cwd == REPO or REPO in cwd.parents:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return (cache / "trafficlens" / "quickstart").resolve()
    return cwd / "trafficlens-quickstart"


def held_out_capture(dataset, run_dir: Path, source: Path) -> Path:
    """A capture file whose sessions are all on the run's test side (the first by name)."""

    from trafficlens.training.bundle import read_split

    side = read_split(run_dir, len(dataset))  # per dataset row: 0 train, 1 validation, 2 test, -1 unused
    captures = dataset.column("capture").astype(str)
    test = sorted(set(captures[side == 2]) - set(captures[(side == 0) | (side == 1)]))
    if test:
        return source / test[0]
    return sorted(p for p in source.iterdir() if ".pcap" in p.name)[-1]


def quickstart(out: str | os.PathLike, sample: str | os.PathLike | None = None, cfg: QuickstartConfig | None = None,
               log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Run prep -> train -> evaluate -> predict into `out`; returns where everything went."""
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep
    from trafficlens.evaluation.evaluate import evaluate_run
    from trafficlens.inference.classifier import Classifier
    from trafficlens.serving.output import write_rows
    from trafficlens.training.config import TrainConfig
    from trafficlens.training.run import train_run

    cfg = cfg or QuickstartConfig()
    source = find_sample(sample)
    out = Path(out).resolve()  # every path printed is absolute
    out.mkdir(parents=True, exist_ok=True)
    ds_dir, run_dir, flows = out / "dataset", out / "run", out / "flows.csv"
    labels = source / "labels.csv"
    t0 = time.perf_counter()

    log(f"1/4 prep      trafficlens prep {source} -o {ds_dir} --labels csv:{labels}")
    ds = prep([source], ds_dir, PrepConfig(labels=f"csv:{labels}"), overwrite=True, progress=progress,
              on_warning=lambda message: log(f"    warning: {message}"))
    from trafficlens.datasets import Dataset

    dataset = Dataset.open(ds)
    classes = dataset.manifest["classes"]
    log(f"    {len(dataset)} sessions, {len(classes)} classes: " + ", ".join(f"{k} {v}" for k, v in classes.items()))

    log(f"2/4 train     trafficlens train {ds_dir} --model {cfg.model} -o {run_dir} --split {cfg.split}")
    train = TrainConfig(split=cfg.split, seed=cfg.seed, time_budget=cfg.time_budget, max_epochs=cfg.max_epochs,
                        batch_size=cfg.batch_size)
    summary = train_run(ds, run_dir, cfg.model, train, progress=progress, overwrite=True, log=lambda m: log(f"    {m}"))
    log(f"    {summary['epochs']} epochs in {summary['seconds']:.0f} s ({summary['stopped']}); "
        f"validation macro-F1 {summary['val_macro_f1']:.3f}")

    log(f"3/4 evaluate  trafficlens evaluate {run_dir}")
    metrics = evaluate_run(run_dir)
    report = run_dir / "evaluation" / "report.html"
    from trafficlens.training.card import chance, interval

    low, high = interval(metrics["accuracy"], metrics["n"])
    level = chance(metrics, len(metrics["per_class"]))
    log(f"    test accuracy {metrics['accuracy']:.3f} (95% interval {low:.2f}-{high:.2f} for {metrics['n']} sessions), "
        f"macro-F1 {metrics['macro']['f1']:.3f} ({metrics['split']} split, {metrics['mask']} mask)")
    log(f"    chance level: {level['majority']:.3f} (always the most common class), {level['uniform']:.3f} "
        f"(1/{len(metrics['per_class'])} classes)")

    target = held_out_capture(dataset, run_dir, source)
    log(f"4/4 predict   trafficlens predict {run_dir} {target} -o {flows}")
    log(f"    ({target.name} is on the test side of the split: the model never saw it)")
    clf = Classifier.load(run_dir)
    rows = [row for batch in clf.iter_predictions(target) for row in batch]
    write_rows([rows], str(flows))
    judged = [row for row in rows if row["status"] == "ok"]
    log(f"    {len(rows)} sessions, {len(judged)} judged; the first few:")
    for row in rows[:5]:
        where = f"{row['src_ip']}:{row['src_port']} -> {row['dst_ip']}:{row['dst_port']} {row['protocol']}"
        verdict = f"{row['label']} ({row['confidence']:.2f})" if row["status"] == "ok" else f"not judged: {row['reason']}"
        log(f"      {where}  {verdict}")
    log(f"done in {time.perf_counter() - t0:.0f} s. Report: {report.resolve()}")
    log(f"next: trafficlens explain {run_dir} --per-class   (which protocol fields each class relies on)")
    return {"dataset": str(ds_dir), "run": str(run_dir), "report": str(report), "flows": str(flows), "rows": len(rows),
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro"]["f1"]}


def _cli():
    import click

    @click.command(epilog="""\b
Example:
  trafficlens quickstart -o /tmp/tl-quickstart --time-budget 60""")
    @click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
                  help="Where the dataset, run, report and predictions go [default: ./trafficlens-quickstart, or "
                       "~/.cache/trafficlens/quickstart when run inside the source tree].")
    @click.option("--sample", type=click.Path(exists=True, file_okay=False), default=None,
                  help="A folder of captures with labels.csv [default: the bundled sample].")
    @click.option("--model", default="chen-cnn", show_default=True)
    @click.option("--time-budget", type=click.FloatRange(min=1), default=90.0, show_default=True, help="Seconds of training.")
    def quickstart_command(out, sample, model, time_budget):
        """prep -> train -> evaluate -> predict on the bundled sample, in a few minutes on a CPU."""
        quickstart(out or default_out(), sample, QuickstartConfig(model=model, time_budget=time_budget), log=click.echo)

    return quickstart_command


command = _cli()
