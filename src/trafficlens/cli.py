"""The `trafficlens` command line: a thin layer over the Python API.

Subcommands live beside the code they drive and are imported only when invoked, so that
`trafficlens --help` does not pay for NumPy, PyArrow or PyTorch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# name -> "module:attribute" of a click command, imported on first use.
COMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("trafficlens.prep.cli:prep", "Turn captures into a dataset directory."),
    "audit": ("trafficlens.evaluation.audit_cli:audit", "How much of a score is leakage: papers' protocol vs honest splits and masks."),
    "baseline": ("trafficlens.evaluation.cli:baseline", "Fit a classical baseline (rf, xgboost, ...) on the same splits."),
    "evaluate": ("trafficlens.evaluation.cli:evaluate", "Score a trained run on its test split: metrics and an HTML report."),
    "export": ("trafficlens.inference.cli:export", "Write a trained run's model as ONNX (the model predict runs)."),
    "explain": ("trafficlens.explain.cli:explain", "Which bytes and protocol fields a run relies on: Grad-CAM, attention, per class."),
    "card": ("trafficlens.training.cli:card", "Write a run's model card (README.md): data, protocol, metrics, limits."),
    "compare": ("trafficlens.evaluation.cli:compare", "Train deep models and baselines on one split: a table and an HTML report."),
    "cv": ("trafficlens.evaluation.cli:cv", "Stratified group k-fold cross-validation of one model: mean and spread."),
    "generate": ("trafficlens.generate.cli:generate", "Capture labelled traffic of real clients and servers in network namespaces."),
    "info": ("trafficlens.datasets.cli:info", "Summarise a dataset: classes, settings, drops."),
    "live": ("trafficlens.serving.cli:live", "Classify live traffic or a replayed capture as sessions arrive."),
    "models": ("trafficlens.training.cli:models", "List the registered models: name, paper, inputs, parameters."),
    "pretrain": ("trafficlens.training.cli:pretrain", "Pre-train tl-fusion's packet encoder on unlabeled sessions."),
    "predict": ("trafficlens.serving.cli:predict", "Label every session of new captures with a trained run."),
    "quickstart": ("trafficlens.quickstart:command", "Run prep -> train -> evaluate -> predict on the bundled sample."),
    "serve": ("trafficlens.serving.cli:serve", "Serve a model over HTTP: POST a capture, get per-session labels."),
    "sign": ("trafficlens.training.cli:sign", "Sign a run directory with an Ed25519 key (checked with --trusted-key)."),
    "keygen": ("trafficlens.training.cli:keygen", "Make an Ed25519 key pair for signing runs."),
    "train": ("trafficlens.training.cli:train", "Train a model on a dataset and write a run directory."),
}


_VERBOSE = {"on": False}  # --verbose: an error's traceback follows its one-line message


def with_common_options(command: click.Command) -> click.Command:
    """--quiet and --verbose on every command, the same everywhere. --quiet: no progress bars or
    log lines on stderr (what this process writes there; an error's line still comes) unless the
    command has a --quiet of its own (prep, train: no progress bars). --verbose: an error is
    followed by its traceback."""
    import contextlib
    import functools
    import io

    if getattr(command, "_common_options", False) or command.callback is None:
        return command
    own = {p.name for p in command.params}
    if "quiet" not in own:
        command.params.append(click.Option(["--quiet"], is_flag=True,
                                           help="No progress or log lines on stderr (errors still)."))
    if "verbose" not in own:
        command.params.append(click.Option(["--verbose"], is_flag=True, help="Print an error's traceback too."))
    callback = command.callback

    @functools.wraps(callback)
    def run(*args, **kwargs):
        quiet = kwargs.get("quiet", False) if "quiet" in own else kwargs.pop("quiet", False)
        _VERBOSE["on"] = kwargs.get("verbose", False) if "verbose" in own else kwargs.pop("verbose", False)
        with contextlib.redirect_stderr(io.StringIO()) if quiet and "quiet" not in own else contextlib.nullcontext():
            return callback(*args, **kwargs)

    command.callback = run
    command._common_options = True
    return command


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module_name, attr = target.split(":")
        return with_common_options(getattr(importlib.import_module(module_name), attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table above, so listing commands imports none of them.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


_COLOR = {"on": True}  # --no-color turns it off for the process (the NO_COLOR variable too)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Example: trafficlens quickstart, then trafficlens predict examples/lab/model examples/lab/capture-004.pcap.gz -o -")
@click.version_option(package_name="trafficlens")
@click.option("--no-color", is_flag=True, help="No colour in messages (also when NO_COLOR is set).")
@click.pass_context
def cli(ctx: click.Context, no_color: bool) -> None:
    """trafficlens: which application made this traffic?"""
    if no_color or os.environ.get("NO_COLOR"):
        _COLOR["on"] = False
        ctx.color = False


def fail(message: str) -> None:
    """Print one red line to stderr and exit 2: the one way commands report user errors."""
    message = " ".join(str(message).split())  # a library's message may run over lines
    color = _COLOR["on"] and not os.environ.get("NO_COLOR")
    click.secho(f"error: {message}", fg="red" if color else None, err=True, color=None if color else False)
    sys.exit(2)


def main() -> None:
    from trafficlens.errors import TrafficlensError

    try:
        cli(standalone_mode=True)
    except TrafficlensError as exc:
        if _VERBOSE["on"]:
            import traceback

            traceback.print_exc()
        fail(str(exc))
    except OSError as exc:
        # A file or folder the system refused (an -o that cannot be written, a missing input):
        # the user's to fix, so one line naming it. An OSError about no path is a bug or the
        # system's, and keeps its traceback.
        if exc.filename is None:
            raise
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        fail(f"{where or repr(where)}: {exc.strerror or exc}")
