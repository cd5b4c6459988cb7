"""`trafficlens models` and `trafficlens train`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from trafficlens.training.config import BALANCES, DEVICES, LOSSES, SCHEDULES, SPLITS, TrainConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _d(name: str) -> str:
    """` [default: X]` from TrainConfig, for the help text (the options default to None: the
    dataclass alone decides)."""
    return f" [default: {_DEFAULTS[name]}]"


def _own(name: str) -> str:
    """`_d` for a setting a model may default to itself (`trafficlens models` lists them)."""
    return f" [default: {_DEFAULTS[name]}, or the model's own: `trafficlens models`]"


def _as_options(settings) -> str:
    """`batch-size 32, schedule cosine`: training settings as the options that would set them."""
    return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in dict(settings).items())


def _class_names(ctx, param, values):
    from trafficlens.errors import ConfigError
    from trafficlens.training.selection import expand_class_names

    try:
        return expand_class_names(values, "--" + param.name.replace("_classes", "-class"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def class_options(min_sessions: int = 0):
    """--min-class-sessions, --min-class-captures, --include-class, --exclude-class: which classes a command keeps."""
    options = [
        click.option("--min-class-sessions", type=click.IntRange(0), default=min_sessions, show_default=True,
                     help="Drop classes with fewer labelled sessions."),
        click.option("--min-class-captures", type=click.IntRange(0), default=0, show_default=True,
                     help="Drop classes seen in fewer capture files (a class in one file cannot be split by capture)."),
        click.option("--include-class", "include_classes", multiple=True, metavar="LABEL", callback=_class_names,
                     help="Only these labels (repeatable, or @FILE with one per line); unknown names are an error."),
        click.option("--exclude-class", "exclude_classes", multiple=True, metavar="LABEL", callback=_class_names,
                     help="Never train or score on this label (repeatable, or @FILE), e.g. --exclude-class Unknown."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@click.command(epilog="""\b
Example:
  trafficlens models --classes 7""")
@click.option("--classes", type=click.IntRange(2), default=10, show_default=True, help="Classes for the parameter count.")
def models(classes):
    """List the registered models, deep networks and classical baselines: name, paper, inputs,
    parameters, and the training settings a model defaults to where they differ from `train`'s."""
    from trafficlens.models import count_parameters, create_model, list_models, model_info

    rows = []
    for name in list_models("deep"):
        info = model_info(name)
        params = count_parameters(create_model(name, num_classes=classes))
        own = _as_options(info.training) or "-"
        rows.append((name, "deep", info.paper, ",".join(info.inputs), f"{params:,}", own, info.description))
    for name in list_models("baseline"):
        info = model_info(name)
        rows.append((name, "baseline", info.paper or "-", info.features, "-", "-", info.description))
    headers = ("model", "kind", "paper", "inputs", f"params ({classes} cl.)", "training defaults", "description")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for r in [headers, *rows]:
        click.echo("  ".join(cell.rjust(w) if i == 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip())


def training_options(time_budget: float | None = None, max_epochs: int | None = None, scope: str = ""):
    """The optimisation options of `train`, shared by `compare`, `cv` and `audit` so that one
    command line trains one way everywhere: --loss, --focal-gamma, --epochs/--max-epochs,
    --patience, --time-budget, --batch-size, --lr, --schedule, --balance, --device, --threads.

    They default to None (TrainConfig decides) unless a command passes its own default
    (`audit` bounds its three trainings with a time budget). `training_settings` turns the
    parsed values into TrainConfig keyword arguments.
    """
    def default(name, given):
        return f" [default: {given if given is not None else _DEFAULTS[name]}]"

    options = [
        click.option("--loss", type=click.Choice(LOSSES), default=None,
                     help=scope + "Loss; focal is Ge 2021's class-weighted focal loss." + _d("loss")),
        click.option("--focal-gamma", type=click.FloatRange(0), default=None, help=scope + "Gamma of the focal loss." + _d("focal_gamma")),
        click.option("--epochs", "--max-epochs", "max_epochs", type=click.IntRange(1), default=max_epochs,
                     help=scope + "Most epochs; early stopping may end sooner." + default("max_epochs", max_epochs)),
        click.option("--patience", type=click.IntRange(1), default=None,
                     help=scope + "Epochs without better validation macro-F1 before stopping." + _d("patience")),
        click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=time_budget,
                     help=scope + "Stop each training after this many seconds"
                     + (f". [default: {time_budget}]" if time_budget else " [default: no limit]")),
        click.option("--batch-size", type=click.IntRange(1), default=None,
                     help=scope + "Training batch size; on a small dataset keep several batches per epoch "
                          "(the bundled sample: 16)." + _own("batch_size")),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help=scope + "Adam learning rate." + _d("lr")),
        click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
                     help=scope + "Learning rate: plateau halves it when validation stalls; cosine anneals it "
                          "to 0 at the end of --time-budget (or --epochs), for short budgets." + _own("schedule")),
        click.option("--balance", type=click.Choice(BALANCES), default=None,
                     help="Class balancing of the training side only (baselines: balanced sample weights)." + _d("balance")),
        click.option("--device", type=click.Choice(DEVICES), default=None,
                     help=scope + "auto: CUDA (mixed precision) when present, else CPU on all cores." + _d("device")),
        click.option("--threads", type=click.IntRange(1), default=None, help=scope + "CPU threads [default: all cores]."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


class _ModelNameOption(click.Option):
    """--model whose help lists the registered names, looked up only when help is shown (the
    registry imports torch, which `trafficlens train --help` otherwise need not)."""

    def get_help_record(self, ctx):
        from trafficlens.models import list_models

        self.help = f"Registered model: {', '.join(list_models('deep'))} (details: `trafficlens models`)."
        return super().get_help_record(ctx)


TRAINING_OPTIONS = ("loss", "focal_gamma", "max_epochs", "patience", "time_budget", "batch_size", "lr", "schedule",
                    "balance", "device", "threads")


def training_settings(values: dict) -> dict:
    """The TrainConfig keyword arguments that `training_options` parsed (None: TrainConfig's default);
    the options' keys are removed from `values`."""
    out = {name: values.pop(name, None) for name in TRAINING_OPTIONS}
    out["num_threads"] = out.pop("threads")
    return {k: v for k, v in out.items() if v is not None}


def log_model_defaults(model_name: str, given: dict, log) -> None:
    """Say which of the model's own training defaults a run takes (those no option overrode)."""
    from trafficlens.models.registry import model_defaults

    own = {k: v for k, v in model_defaults(model_name).items() if given.get(k) is None}
    if own:
        log(f"{model_name} trains with its own defaults: {_as_options(own)} (options override them)")


@click.command(epilog="""\b
Example:
  trafficlens train ds/lab --model chen-cnn -o runs/cnn --batch-size 16 --epochs 40 --patience 8""")
@click.argument("dataset", type=click.Path(), required=False)
@click.option("--model", "model_name", default=None, cls=_ModelNameOption, help="Registered model name.")
@click.option("-o", "--out", default=None, type=click.Path(), help="Run directory to write (the model bundle).")
@click.option("--resume", "resume_run", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue RUN from its last checkpoint (RUN/checkpoint.pt, saved after every epoch) with its "
                   "settings; options given here override them (e.g. more --epochs).")
@click.option("--config", "replay_from", type=click.Path(exists=True), default=None,
              help="Train again as a run did: its RUN/config.json (or RUN) gives the dataset, model, model settings "
                   "and training settings; options given here override them.")
@training_options()
@click.option("--split", type=click.Choice(SPLITS), default=None, help="capture: grouped by capture file, no capture on two sides (honest default); random: stratified 60/20/20 by session (the papers, leaks); time: earlier sessions train, later test; packet-leak: random with identical tensors left on both sides (a demonstration of the papers' error); column: the dataset's split column; none: a deployment model fitted on every session (a 10% random slice for early stopping only, no test score)." + _d("split"))
@click.option("--seed", type=int, default=None, help="Seed of the split, initialisation and batch order." + _d("seed"))
@click.option("--from", "from_runs", default=None, help="For a model built on trained runs (chen-model-a: CNN_RUN,GRU_RUN): the runs, comma-separated.")
@class_options()
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Model setting, e.g. --set max_tokens=256 (JSON values).")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from an encoder of `trafficlens pretrain` (tl-fusion, or any model whose parameter names and "
                   "shapes fit; one that takes none is an error).")
@click.option("--freeze-init", is_flag=True, default=None,
              help="Keep the parameters loaded by --init fixed and train only the rest (the pooling, statistics and head).")
@click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Learn from this stratified share of the training sessions (few-labels curves); validation and "
                   "test stay whole. [default: 1]")
@click.option("--group", "group_by", type=click.Choice(("capture", "host")), multiple=True,
              help="After training, fit decisions over each capture's (or host's) sessions on the validation side "
                   "and score them on test, as `evaluate RUN --by` does: the temperature and learned aggregator that "
                   "`predict --by`, `live --by host` and `serve` then use, and RUN/evaluation/metrics-by-BY.json. "
                   "Repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True, help="Data-parallel processes on this machine (torchrun; one per GPU, or sharing the CPU cores).")
@click.pass_context
def train(ctx, dataset, model_name, out, resume_run, replay_from, split, seed, from_runs, min_class_sessions, min_class_captures,
          include_classes, exclude_classes, settings, init, freeze_init, train_fraction, group_by, overwrite, quiet,
          nproc, **training):
    """Train a model on a dataset directory and write a run directory (model bundle).

    Under torchrun (`torchrun --nproc-per-node N -m trafficlens train ...`) or with --nproc N,
    the processes train one model with DistributedDataParallel.
    """
    import os
    import sys

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from trafficlens.training.torchrun import launch

        argv = sys.argv[1:]
        if "train" not in argv:
            raise click.UsageError("--nproc: run as `trafficlens train ...` (or launch torchrun yourself)")
        args = argv[argv.index("train"):]
        args = [a for i, a in enumerate(args) if not (a == "--nproc" or a.startswith("--nproc=") or (i and args[i - 1] == "--nproc"))]
        sys.exit(launch(nproc, args))
    from trafficlens.training.config import parse_settings, with_model_defaults
    from trafficlens.training.run import train_run

    model_kwargs = parse_settings(settings)
    given = dict(training_settings(training), split=split, seed=seed, init=init, freeze_init=freeze_init,
                 train_fraction=train_fraction)
    for name, value in (("min_class_sessions", min_class_sessions), ("min_class_captures", min_class_captures),
                        ("include_classes", include_classes), ("exclude_classes", exclude_classes)):
        if not replay_from or ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            given[name] = value  # a replay keeps the run's classes unless told otherwise
    runs = [p.strip() for p in from_runs.split(",") if p.strip()] if from_runs else []
    if replay_from:
        from trafficlens.training.run import replay

        r = replay(replay_from)
        dataset, model_name = dataset or r.dataset, model_name or r.model
        given = {**r.train, **{k: v for k, v in given.items() if v is not None}}
        model_kwargs, runs = {**r.model_kwargs, **model_kwargs}, runs or r.from_runs
    if resume_run:
        from trafficlens.training.run import load_checkpoint

        if replay_from:
            raise click.UsageError("--resume continues a run with its own settings; --config is for a new run")
        saved = load_checkpoint(resume_run)["settings"]
        if model_name and model_name != saved["model"]:
            raise click.UsageError(f"{resume_run} trains {saved['model']}, not {model_name}")
        if out and Path(out).resolve() != Path(resume_run).resolve():
            raise click.UsageError("--resume continues RUN in place; leave out -o")
        dataset, model_name, out = dataset or saved["dataset"], saved["model"], resume_run
        given = {**saved["train"], **{k: v for k, v in given.items()
                                     if v is not None and ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}}
        model_kwargs, runs = {**saved["model_kwargs"], **model_kwargs}, runs or saved["from_runs"]
    if not dataset or not model_name or not out:
        raise click.UsageError("give DATASET, --model NAME and -o RUN (or --config RUN/config.json, or --resume RUN)")
    log = (lambda message: click.echo(message, err=True))
    cfg = TrainConfig.from_dict(with_model_defaults(model_name, given))
    log_model_defaults(model_name, given, log)
    if group_by and cfg.split == "none":
        raise click.UsageError("--group scores decisions on the test side: --split none has none")
    s = train_run(dataset, out, model_name, cfg, model_kwargs, runs, progress=not quiet, overwrite=overwrite, log=log,
                  resume=bool(resume_run))
    if os.environ.get("RANK", "0") != "0":
        return
    if s["test_accuracy"] is not None:
        test = f"accuracy {s['test_accuracy']:.4f}, macro-F1 {s['test_macro_f1']:.4f}"
    else:
        test = "none (--split none: score it with `trafficlens evaluate RUN --on DATASET`)" if cfg.split == "none" else "n/a"
    click.echo(f"{s['model']}: best epoch {s['best_epoch']} of {s['epochs']} ({s['stopped']}, {s['seconds']:.1f} s); "
               f"test {test}; wrote {s['out']}")
    for by in group_by:
        from trafficlens.evaluation.by_group import evaluate_groups, group_summary

        click.echo(group_summary(evaluate_groups(s["out"], by), by))


@click.command()
@click.option("-o", "--out", "prefix", required=True, type=click.Path(dir_okay=False),
              help="Key pair prefix: writes PREFIX.key (private, mode 0600) and PREFIX.pub.")
def keygen(prefix):
    """Make an Ed25519 key pair for signing model bundles.

    \b
    Example:
      trafficlens keygen -o keys/lab && trafficlens sign runs/cnn --key keys/lab.key
    """
    from trafficlens.training.signing import generate_keys

    private, public = generate_keys(prefix)
    click.echo(f"wrote {private} (keep it secret) and {public} (give it to whoever runs your models)")


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 private key (PEM) from `trafficlens keygen`.")
def sign(run, key):
    """Sign a run directory (deep or baseline bundle): RUN/signature.json covers every file in it.

    `predict`, `serve` and `live` with `--trusted-key PUB` then refuse the run if it was not
    signed by that key or a file changed since.

    \b
    Example:
      trafficlens sign runs/cnn --key keys/lab.key
      trafficlens predict runs/cnn x.pcap --trusted-key keys/lab.pub
    """
    from trafficlens.training.signing import sign_bundle

    click.echo(f"wrote {sign_bundle(run, key)}")


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", type=click.Path(exists=True, file_okay=False), default=None,
              help="The dataset the run was trained on, for sessions per class on every side [default: the path in config.json, when it is there].")
@click.option("--force", is_flag=True, help="Rewrite the card of a signed run (then sign it again).")
def card(run, dataset, force):
    """Write the model card RUN/README.md from the run's own files: data, protocol, test metrics
    beside chance level, intended use and known limits. `train` and `baseline -o` write it already.

    \b
    Example:
      trafficlens card examples/lab/model --dataset ds/lab
    """
    from trafficlens.errors import ConfigError
    from trafficlens.training.card import card_is_signed, write_card

    ds = None
    if dataset:
        from trafficlens.datasets import Dataset

        ds = Dataset.open(dataset)
    if card_is_signed(run) and not force:
        raise ConfigError(f"{run}: signed, and the signature covers README.md; rewriting it breaks the signature "
                          f"(pass --force, then `trafficlens sign {run} --key KEY` again)")
    click.echo(f"wrote {write_card(run, ds)}")


@click.command(epilog="""\b
Example:
  trafficlens pretrain ds/ndpi ds/lab ds/iot -o encoder.safetensors --holdout ds/iot --epochs 5
  trafficlens train ds/iot --model tl-fusion --init encoder.safetensors -o runs/fusion-pt""")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Encoder file to write (safetensors).")
@click.option("--holdout", type=click.Path(exists=True, file_okay=False), default=None,
              help="The dataset that will be scored: the test side of its split (--split, --seed and the class "
                   "options, as `train` will use them), and every session of its test captures, are never read.")
@click.option("--split", type=click.Choice(SPLITS), default="capture", show_default=True, help="Split of --holdout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --holdout split and of pre-training.")
@class_options()
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--objective", type=click.Choice(("masked", "contrastive", "both")), default="masked", show_default=True,
              help="masked: predict hidden bytes and packet sizes; contrastive: two views of a session (a third of it "
                   "hidden) must find each other in the batch; both: the losses add.")
@click.option("--byte-rate", type=click.FloatRange(0, 1, max_open=True), default=0.15, show_default=True,
              help="Share of byte positions hidden and predicted.")
@click.option("--size-rate", type=click.FloatRange(0, 1, max_open=True), default=0.15, show_default=True,
              help="Share of packets whose size, direction and timing are hidden and predicted.")
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None, help="Stop after this many seconds.")
@click.option("--max-sessions", type=click.IntRange(1), default=None, help="Sessions per epoch (a random subset).")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads [default: all cores].")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="tl-fusion setting of the encoder (dim, layers, encoder, ...): `train --init` needs the same.")
@click.option("--overwrite", is_flag=True, help="Replace an existing encoder file.")
def pretrain(datasets, out, holdout, split, seed, min_class_sessions, min_class_captures, include_classes,
             exclude_classes, epochs, batch_size, lr, objective, byte_rate, size_rate, time_budget, max_sessions, threads,
             settings, overwrite):
    """Pre-train tl-fusion's packet encoder on unlabeled sessions (masked bytes and masked packet
    sizes) and write it for `train --init`. Labels are never read; the file records the SHA-256
    of every capture read, and runs started from it say whether their test captures are among them."""
    from trafficlens.training.config import parse_settings
    from trafficlens.training.pretrain import Holdout, PretrainConfig, pretrain as run_pretrain

    cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, objective=objective, byte_rate=byte_rate,
                         size_rate=size_rate,
                         time_budget=time_budget, seed=seed, max_sessions=max_sessions,
                         model_settings=parse_settings(settings), num_threads=threads)
    held = None
    if holdout:
        held = Holdout(holdout, TrainConfig(split=split, seed=seed, min_class_sessions=min_class_sessions,
                                            min_class_captures=min_class_captures, include_classes=include_classes,
                                            exclude_classes=exclude_classes))
    run_pretrain(list(datasets), out, cfg, holdout=held, overwrite=overwrite,
                 log=lambda message: click.echo(message, err=True))
