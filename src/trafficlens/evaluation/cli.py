"""`trafficlens baseline`, `evaluate`, `compare` and `cv`: scoring models on honest splits."""

from __future__ import annotations

import click

from trafficlens.training.cli import class_options, training_options, training_settings
from trafficlens.training.config import BALANCES, SPLITS

BASELINES = "dt, rf, lr, nb, svm, knn, xgboost, lightgbm, knn-seq"  # the registry's names; a test keeps them in step
SPLIT_HELP = ("capture: grouped by capture file, dealt at random per seed (honest default); random: stratified "
              "60/20/20 by session (the papers); time: earlier sessions train, later test; packet-leak: random with "
              "identical tensors left on both sides (the papers' error, on purpose); column: the dataset's split "
              "column; none (train and baseline only): fit on every session, no test score.")


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--model", "model_name", required=True, help=f"Baseline: {BASELINES}.")
@click.option("--features", type=click.Choice(("stats", "header", "sequence")), default=None,
              help="Feature set [default: stats; sequence for knn-seq].")
@click.option("--split", type=click.Choice(SPLITS), default="capture", show_default=True, help=SPLIT_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the estimator.")
@class_options()
@click.option("--balance", type=click.Choice(BALANCES), default="none", show_default=True,
              help="undersample: draw every class down to the smallest on the training side; weights: weigh classes "
                   "inversely to their training frequency.")
@click.option("--tune", is_flag=True, help="Small grid search: fit each point on train, keep the best by validation macro-F1.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Estimator setting, e.g. --set n_estimators=500 (JSON values).")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Run directory: the fitted model as a bundle (predict, serve, live and evaluate take it), config.json, "
                   "metrics.json, split.npy.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def baseline(dataset, model_name, features, split, seed, min_class_sessions, min_class_captures, include_classes,
             exclude_classes, balance, tune, settings, out, overwrite):
    """Fit a classical baseline on a dataset's training split and score its test split.

    It follows the protocol of every model: fit on the training side, select on validation
    (--tune), score on test, no refit on training + validation.

    \b
    Example:
      trafficlens baseline ds/iot --model xgboost --tune --min-class-sessions 50 -o runs/xgb
    """
    from trafficlens.training.baselines import train_baseline
    from trafficlens.training.config import TrainConfig, parse_settings

    params = parse_settings(settings)
    cfg = TrainConfig(split=split, seed=seed, balance=balance, min_class_sessions=min_class_sessions,
                      min_class_captures=min_class_captures, include_classes=include_classes,
                      exclude_classes=exclude_classes)
    m = train_baseline(dataset, model_name, features, cfg, tune=tune, out=out, overwrite=overwrite,
                       log=lambda message: click.echo(message, err=True), **params)
    test = "none (--split none)" if "accuracy" not in m else \
        f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, weighted-F1 {m['weighted_f1']:.4f}"
    click.echo(f"{m['model']} on {m['features']}: test {test}; fit on {m['n_fit']} sessions in {m['fit_seconds']:.1f} s, "
               f"predict {m['predict_seconds']:.2f} s" + (f"; wrote {out}" if out else ""))


@click.command()
@click.argument("run", type=click.Path())
@click.option("--on", "on", type=click.Path(), default=None,
              help="Score every labelled session of this other dataset (prepared with the run's unit, layer, mask and "
                   "tensor sizes) instead of the run's own test split.")
@click.option("--unseen", type=click.Choice(("ignore", "error")), default="ignore", show_default=True,
              help="With --on: sessions whose label the run never learned are counted apart (ignore) or also scored "
                   "as errors (error).")
@click.option("--dataset", type=click.Path(), default=None, help="The dataset the run was trained on [default: the path in its config].")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Report directory [default: RUN/evaluation, or RUN/evaluation-<dataset> with --on].")
@click.option("--by", type=click.Choice(["session", "capture", "host"]), default="session", show_default=True,
              help="Score one decision per capture file or per host (pooled calibrated log-probabilities, and the "
                   "vote beside it): metrics-by-capture.json / metrics-by-host.json. Fits the pooling temperature on "
                   "the validation split and stores it in RUN/calibration.json.")
@click.option("--window", default=None, help="With --by host: one decision per host and time window, e.g. 300s.")
@click.option("--unknown-rate", type=click.FloatRange(0.0, 0.5, min_open=True), default=0.05, show_default=True,
              help="With --by: the share of known validation groups the open-set threshold calls unknown (the false "
                   "alarms it allows on devices the model knows).")
def evaluate(run, on, unseen, dataset, out, by, window, unknown_rate):
    """Score a trained run (deep or baseline): metrics.json and a self-contained report.html.

    \b
    Examples:
      trafficlens evaluate runs/cnn                       # its own test split
      trafficlens evaluate runs/cnn --by capture          # one decision per test capture
      trafficlens evaluate runs/cnn --on ds/other         # trained on one dataset, tested on another
    """
    if by != "session":
        from trafficlens.errors import ConfigError
        from trafficlens.evaluation.by_group import evaluate_groups, group_summary
        from trafficlens.inference.groups import parse_window

        if on is not None:
            raise ConfigError("--by scores the run's own test split; it does not combine with --on")
        m = evaluate_groups(run, by, parse_window(window) if window is not None else None, out, dataset,
                            unknown_rate=unknown_rate)
        click.echo(group_summary(m, by))
        return
    from trafficlens.evaluation.evaluate import evaluate_run

    m = evaluate_run(run, out, dataset, on=on, unseen=unseen)
    where = (f"trained on {m['trained_on']['name']}, tested on {m['dataset']['name']}" if m.get("trained_on")
             else f"{m['split']} split")
    extra = ""
    if m.get("unseen", {}).get("sessions"):
        extra += f"; {m['unseen']['sessions']} sessions of unseen labels ({m['unseen']['policy']})"
    if m.get("identical_to_training"):
        extra += f"; {m['identical_to_training']['sessions']} identical to training sessions"
    if (m.get("pretraining") or {}).get("test_captures_read"):
        p = m["pretraining"]
        click.secho(f"warning: pre-training ({p['encoder']}) read {p['test_captures_read']} of the {p['test_captures']} "
                    f"captures scored here ({p['test_sessions_read']} sessions): this score is not independent of it",
                    fg="yellow", err=True)
    click.echo(f"{m['model']}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro']['f1']:.4f} on {m['n']} sessions "
               f"({where}, {m['mask']} mask){extra}; report {m['out']}/report.html")


def _shared_options(command):
    """Options `compare` and `cv` share (CompareConfig fields)."""
    options = [
        click.option("--split", type=click.Choice(tuple(s for s in SPLITS if s != "none")), default=None,
                     help=SPLIT_HELP + _d("split")),
        click.option("--mask", type=click.Choice(("none", "paper", "strict")), default=None,
                     help="Refuse a dataset prepared with another mask [default: take the dataset's]."),
        click.option("--tune", is_flag=True, help="Baselines: small grid search on the validation side."),
        click.option("--progress", is_flag=True, help="Show the deep models' progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return training_options(scope="Deep models: ")(class_options()(command))


def _config(**kwargs):
    from trafficlens.evaluation.compare import CompareConfig

    kwargs.update(training_settings(kwargs))
    kwargs["include_classes"] = tuple(kwargs.get("include_classes", ()))
    kwargs["exclude_classes"] = tuple(kwargs.get("exclude_classes", ()))
    return CompareConfig(**{k: v for k, v in kwargs.items() if v is not None})


def _d(name: str) -> str:
    """` [default: X]` from CompareConfig (options default to None: the dataclass decides)."""
    import dataclasses

    from trafficlens.evaluation.compare import CompareConfig

    return f" [default: {next(f.default for f in dataclasses.fields(CompareConfig) if f.name == name)}]"


def _seeds(ctx, param, value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise click.BadParameter("name at least one seed, e.g. 0,1,2")
    return seeds


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--models", required=True, help="Comma-separated deep models and baselines (baseline:features for "
              "header or sequence features), e.g. chen-cnn,chen-gru,chen-model-a,rf,xgboost,lightgbm,rf:header; "
              "a deep model's variant takes its settings in brackets, e.g. 'tl-fusion[use_bytes=false]' (ablations).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--seeds", default="0", show_default=True, callback=_seeds,
              help="Comma-separated seeds: one split and one training per model and seed; the report gives mean ± std.")
@click.option("--save-models", is_flag=True, help="Keep every fitted model as a bundle under OUT/runs/seed-S/MODEL.")
@click.option("--stack", "stacks", multiple=True, metavar="A+B",
              help="Add a stacked model of compared models (e.g. tl-fusion+xgboost): a logistic regression over their "
                   "probabilities, fitted on the validation side only. Repeatable.")
@_shared_options
def compare(dataset, models, out, seeds, save_models, stacks, **settings):
    """Train every model on the same splits: one table (Markdown, CSV, JSON) and an offline HTML report.

    Every model fits on the same training sessions, selects on validation and is scored on the
    test side of each seed's split (n_fit and n_select are in every row).

    \b
    Example:
      trafficlens compare ds/iot --models chen-cnn,rf,xgboost --seeds 0,1,2 -o reports/iot
      trafficlens compare ds/iot --models tl-fusion,xgboost --stack tl-fusion+xgboost --tune -o reports/stack
      trafficlens compare ds/iot --models 'tl-fusion,tl-fusion[use_bytes=false]' --seeds 0,1,2 -o reports/ablation
    """
    from pathlib import Path

    from trafficlens.evaluation.compare import compare as run_compare, summary_markdown

    result = run_compare(dataset, models, out, _config(save_models=save_models, **settings), seeds=seeds, stack=stacks,
                         log=lambda message: click.echo(message, err=True))
    click.echo(summary_markdown(result), nl=False)
    click.echo(f"wrote {Path(out) / 'comparison.md'}, comparison.csv (one row per model and seed), comparison.json "
               "and report.html")


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("--model", "model_name", required=True, help="One deep model or baseline (baseline:features).")
@click.option("--folds", type=click.IntRange(2), default=4, show_default=True, help="k of the k-fold.")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Repeated k-fold: R deals of the folds with seeds SEED..SEED+R-1; mean, std and a 95% interval.")
@click.option("--seed", type=int, default=None, help="Seed of the first repeat's folds and training. [default: 0]")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None, help="Report directory (cv.md, cv.csv, cv.json, report.html).")
@_shared_options
def cv(dataset, model_name, folds, repeats, seed, out, **settings):
    """Stratified (group) k-fold cross-validation of one model: mean, spread and a 95% interval per metric.

    \b
    Example:
      trafficlens cv ds/iot --model rf --folds 4 --repeats 3 -o reports/cv-rf
    """
    from trafficlens.evaluation.cv import cross_validate, markdown

    result = cross_validate(dataset, model_name, out, folds, _config(seed=seed, **settings), repeats=repeats,
                            log=lambda message: click.echo(message, err=True))
    click.echo(markdown(result), nl=False)
    if out:
        click.echo(f"wrote {out}/cv.md, cv.csv, cv.json and report.html")
