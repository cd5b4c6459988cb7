"""`trafficlens baseline`, `evaluate`, `compare` and `cv`: scoring models on honest splits."""

from __future__ import annotations

import click

from trafficlens.training.cli import class_options
from trafficlens.training.config import BALANCES, DEVICES, LOSSES, SPLITS

BASELINES = "dt, rf, lr, nb, svm, knn, xgboost, lightgbm, knn-seq"  # the registry's names; a test keeps them in step
SPLIT_HELP = ("capture: grouped by capture file (honest default); random: stratified 60/20/20 by session (the papers); "
              "time: earlier sessions train, later test; packet-leak: random with identical tensors left on both sides "
              "(the papers' error, on purpose); column: the dataset's split column.")


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--model", "model_name", required=True, help=f"Baseline: {BASELINES}.")
@click.option("--features", type=click.Choice(("stats", "header", "sequence")), default=None,
              help="Feature set [default: stats; sequence for knn-seq].")
@click.option("--split", type=click.Choice(SPLITS), default="capture", show_default=True, help=SPLIT_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the estimator.")
@class_options()
@click.option("--class-weight", type=click.Choice(("balanced",)), default=None, help="Weight classes inversely to their training frequency.")
@click.option("--train-only", is_flag=True, help="Fit on the training side only (default: training + validation).")
@click.option("--tune", is_flag=True, help="Small grid search: fit on train, pick by validation macro-F1, refit on train + val.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Estimator setting, e.g. --set n_estimators=500 (JSON values).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None, help="Write the metrics as JSON here.")
def baseline(dataset, model_name, features, split, seed, min_class_sessions, min_class_captures, exclude_classes,
             class_weight, train_only, tune, settings, out):
    """Fit a classical baseline on a dataset's train (+val) split and score its test split."""
    import json
    from pathlib import Path

    from trafficlens.evaluation.baselines import train_baseline
    from trafficlens.training.config import parse_settings

    params = parse_settings(settings)
    m = train_baseline(dataset, model_name, features, split=split, seed=seed, min_class_sessions=min_class_sessions,
                       min_class_captures=min_class_captures, exclude_classes=tuple(exclude_classes),
                       include_val=not train_only, class_weight=class_weight, tune=tune,
                       log=lambda message: click.echo(message, err=True), **params)
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


def _shared_options(command):
    """Options `compare` and `cv` share (CompareConfig fields)."""
    options = [
        click.option("--split", type=click.Choice(SPLITS), default="capture", show_default=True, help=SPLIT_HELP),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, the estimators and the training."),
        click.option("--mask", type=click.Choice(("none", "paper", "strict")), default=None,
                     help="Refuse a dataset prepared with another mask [default: take the dataset's]."),
        click.option("--tune", is_flag=True, help="Baselines: small grid search on the validation side."),
        click.option("--class-weight", type=click.Choice(("balanced",)), default=None, help="Baselines: weight classes inversely to their frequency."),
        click.option("--balance", type=click.Choice(BALANCES), default="none", show_default=True, help="Deep models: class balancing of the training side only."),
        click.option("--loss", type=click.Choice(LOSSES), default="ce", show_default=True, help="Deep models: the loss."),
        click.option("--epochs", "max_epochs", type=click.IntRange(1), default=30, show_default=True, help="Deep models: most epochs."),
        click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None, help="Deep models: seconds per training."),
        click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option("--progress", is_flag=True, help="Show the deep models' progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return class_options()(command)


def _config(**kwargs):
    from trafficlens.evaluation.compare import CompareConfig

    kwargs["exclude_classes"] = tuple(kwargs.get("exclude_classes", ()))
    return CompareConfig(**kwargs)


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--models", required=True, help="Comma-separated deep models and baselines (baseline:features for "
              "header or sequence features), e.g. chen-cnn,chen-gru,chen-model-a,rf,xgboost,lightgbm,rf:header.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@_shared_options
def compare(dataset, models, out, **settings):
    """Train every model on the same split: one table (Markdown, CSV, JSON) and an offline HTML report."""
    from pathlib import Path

    from trafficlens.evaluation.compare import compare as run_compare, markdown_table

    result = run_compare(dataset, models, out, _config(**settings), log=lambda message: click.echo(message, err=True))
    click.echo(markdown_table(result["rows"]), nl=False)
    click.echo(f"wrote {Path(out) / 'comparison.md'}, comparison.csv, comparison.json and report.html")


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--model", "model_name", required=True, help="One deep model or baseline (baseline:features).")
@click.option("--folds", type=click.IntRange(2), default=4, show_default=True, help="k of the k-fold.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None, help="Report directory (cv.md, cv.csv, cv.json, report.html).")
@_shared_options
def cv(dataset, model_name, folds, out, **settings):
    """Stratified (group) k-fold cross-validation of one model: mean and spread per metric."""
    from trafficlens.evaluation.cv import cross_validate, markdown

    result = cross_validate(dataset, model_name, out, folds, _config(**settings), log=lambda message: click.echo(message, err=True))
    click.echo(markdown(result), nl=False)
    if out:
        click.echo(f"wrote {out}/cv.md, cv.csv, cv.json and report.html")
