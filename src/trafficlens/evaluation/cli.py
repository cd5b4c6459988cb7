"""`trafficlens baseline`: one classical baseline on a dataset, on the deep trainer's split."""

from __future__ import annotations

import click

from trafficlens.training.config import SPLITS

BASELINES = "dt, rf, lr, nb, svm, knn, xgboost, knn-seq"  # the registry's names; a test keeps them in step


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--model", "model_name", required=True, help=f"Baseline: {BASELINES}.")
@click.option("--features", type=click.Choice(("stats", "header", "sequence")), default=None,
              help="Feature set [default: stats; sequence for knn-seq].")
@click.option("--split", type=click.Choice(SPLITS), default="capture", show_default=True,
              help="The same splits as `trafficlens train`: capture (no capture on two sides), random, column.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the estimator.")
@click.option("--min-class-sessions", type=click.IntRange(0), default=0, show_default=True, help="Drop classes with fewer labelled sessions.")
@click.option("--class-weight", type=click.Choice(("balanced",)), default=None, help="Weight classes inversely to their training frequency.")
@click.option("--train-only", is_flag=True, help="Fit on the training side only (default: training + validation).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Estimator setting, e.g. --set n_estimators=500 (JSON values).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="Write the metrics as JSON here.")
def baseline(dataset, model_name, features, split, seed, min_class_sessions, class_weight, train_only, settings, out):
    """Fit a classical baseline on a dataset's train (+val) split and score its test split."""
    import json
    from pathlib import Path

    from trafficlens.errors import ConfigError
    from trafficlens.evaluation.baselines import train_baseline

    params = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    m = train_baseline(dataset, model_name, features, split=split, seed=seed, min_class_sessions=min_class_sessions,
                       include_val=not train_only, class_weight=class_weight, log=lambda message: click.echo(message, err=True),
                       **params)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(m, indent=2) + "\n")
    test = "n/a (no test sessions)" if "accuracy" not in m else \
        f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, weighted-F1 {m['weighted_f1']:.4f}"
    click.echo(f"{m['model']} on {m['features']}: test {test}; fit {m['fit_seconds']:.1f} s, "
               f"predict {m['predict_seconds']:.2f} s" + (f"; wrote {out}" if out else ""))


@click.command()
@click.argument("run", type=click.Path())
@click.option("--dataset", type=click.Path(), default=None, help="The dataset the run was trained on [default: the path in its config].")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None, help="Report directory [default: RUN/evaluation].")
def evaluate(run, dataset, out):
    """Score a trained run on its test split: metrics.json and a self-contained report.html."""
    from pathlib import Path

    from trafficlens.evaluation.evaluate import evaluate_run

    m = evaluate_run(run, out, dataset)
    target = Path(out) if out else Path(run) / "evaluation"
    click.echo(f"{m['model']}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro']['f1']:.4f} on {m['n']} test sessions "
               f"({m['split']} split, {m['mask']} mask); report {target / 'report.html'}")
