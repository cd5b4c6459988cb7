"""`trafficlens prep` and `trafficlens info`."""

from __future__ import annotations

import os

import click

from trafficlens.datasets.config import LAYERS, MASKS, UNITS


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(), help="Dataset directory to create.")
@click.option("--labels", default=None, help="dir | file:REGEX (its first group, or the whole match, in the file name) | csv:PATH | ndpi:PATH | preset:iscx-vpn2016 | preset:ustc-tfc2016")
@click.option("--label-column", default=None, help="Column of a csv/ndpi label table to use (ndpi: app or master).")
@click.option("--unlabeled", default="drop", show_default=True, help="drop | keep | as:NAME for sessions without a label.")
@click.option("--unit", type=click.Choice(UNITS), default="session", show_default=True, help="session: both directions; flow: one direction.")
@click.option("--layer", type=click.Choice(LAYERS), default="all", show_default=True, help="Which bytes of each packet the tensors show.")
@click.option("--mask", type=click.Choice(MASKS), default="strict", show_default=True, help="Identifying fields zeroed before tensors are written.")
@click.option("--image-bytes", type=click.IntRange(1), default=784, show_default=True, help="K: first K bytes as an image (400, 784, 1225 are squares).")
@click.option("--packets", type=click.IntRange(1), default=6, show_default=True, help="M: packets in the packets tensor.")
@click.option("--packet-bytes", type=click.IntRange(1), default=96, show_default=True, help="N: bytes per packet in the packets tensor.")
@click.option("--sequence-length", type=click.IntRange(1), default=32, show_default=True, help="L: packets in the length/time sequence.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True, help="Seconds of silence that end a session.")
@click.option("--min-packets", type=click.IntRange(0), default=1, show_default=True, help="Drop sessions with fewer kept packets.")
@click.option("--min-bytes", type=click.IntRange(0), default=0, show_default=True, help="Drop sessions with fewer application payload bytes (Ge 2021: 400).")
@click.option("--max-per-class", type=click.IntRange(1), default=None, help="Undersample to at most N sessions per class (random, seed 0).")
@click.option("--keep-duplicates", is_flag=True, help="Keep sessions whose tensors duplicate an earlier session.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes over files [default: all cores]; with --engine dask and no --scheduler, LocalCluster workers.")
@click.option("--engine", type=click.Choice(("local", "dask")), default="local", show_default=True, help="local: processes on this machine; dask: tasks of whole files on a Dask cluster, a sharded dataset (pip install 'trafficlens[dask]').")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="--engine dask: scheduler address (tcp://host:8786) [default: a LocalCluster].")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True, help="--engine dask: resubmissions of a failed task before the run fails.")
@click.option("--task-mb", type=click.FloatRange(0, min_open=True), default=64, show_default=True, help="--engine dask: capture megabytes per task (whole files; one shard per task).")
@click.option("--backend", type=click.Choice(("python", "numba")), default=None, help="Per-packet code: numba (compiled, the default when installed) or python (the reference); same datasets. Also $TRAFFICLENS_BACKEND.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset directory (never anything but a trafficlens dataset or an empty directory).")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
def prep(inputs, out, labels, label_column, unlabeled, unit, layer, mask, image_bytes, packets, packet_bytes,
         sequence_length, idle_timeout, min_packets, min_bytes, max_per_class, keep_duplicates, workers, engine,
         scheduler, retries, task_mb, backend, overwrite, quiet):
    """Turn captures (files or folders of pcap/pcapng, gzip too) into a dataset directory.

    With --engine dask, INPUTS may also be fsspec URLs (s3://bucket/captures, ...).
    """
    from trafficlens.datasets.config import PrepConfig
    from trafficlens.datasets.prep import prep as run_prep
    from trafficlens.errors import ConfigError

    if scheduler and engine != "dask":
        raise ConfigError("--scheduler is for --engine dask")
    for item in inputs:
        if engine == "dask" and "://" in item:
            continue
        if not os.path.exists(item):
            raise ConfigError(f"{item}: no such file or directory")

    config = PrepConfig(
        unit=unit, layer=layer, mask=mask, image_bytes=image_bytes, packets=packets,
        packet_bytes=packet_bytes, sequence_length=sequence_length, idle_timeout=idle_timeout,
        min_packets=min_packets, min_bytes=min_bytes, labels=labels, label_column=label_column,
        unlabeled=unlabeled, max_per_class=max_per_class, deduplicate=not keep_duplicates,
    )
    warn = (lambda message: click.secho(f"warning: {message}", fg="yellow", err=True))
    if backend:
        os.environ["TRAFFICLENS_BACKEND"] = backend  # reaches every worker process, Dask's included
    if engine == "dask":
        from trafficlens.datasets.distributed import prep_dask

        path = prep_dask(list(inputs), out, config, scheduler=scheduler, workers=workers, retries=retries,
                         task_bytes=int(task_mb * (1 << 20)), overwrite=overwrite, progress=not quiet, on_warning=warn)
    else:
        path = run_prep(list(inputs), out, config, workers=workers, overwrite=overwrite, progress=not quiet,
                        on_warning=warn, backend=backend)
    if not quiet:
        from trafficlens.datasets import Dataset

        click.echo(summary(Dataset.open(path), brief=True))


@click.command()
@click.argument("dataset", type=click.Path())
def info(dataset):
    """Summarise a dataset: classes, settings, what was dropped and why."""
    from trafficlens.datasets import Dataset

    click.echo(summary(Dataset.open(dataset)))


def summary(ds, brief: bool = False) -> str:
    """A plain-text summary of a dataset's manifest."""
    m = ds.manifest
    cfg = m["config"]
    lines = [
        f"dataset   {ds.path}  ({m['n_sessions']} sessions from {len(m.get('inputs', []))} captures, "
        f"{m.get('packets_read', 0)} packets read)",
        f"settings  unit={cfg['unit']} layer={cfg['layer']} mask={cfg['mask']} mask_version={cfg.get('mask_version', 1)} "
        f"image={cfg['image_bytes']} "
        f"packets={cfg['packets']}x{cfg['packet_bytes']} sequence={cfg['sequence_length']} "
        f"idle_timeout={cfg['idle_timeout']}s labels={cfg['labels']}",
    ]
    if ds.sharded:
        engine = m.get("engine", {})
        lines.append(f"shards    {len(ds.shards)} (format version {m['format_version']}; made by {engine.get('name', '?')} "
                     f"with {engine.get('workers', '?')} workers, {len(engine.get('retried', []))} task(s) retried)")
    classes = m["classes"]
    lines.append(f"classes   {len(classes)}")
    if not brief or len(classes) <= 40:
        width = max((len(k) for k in classes), default=5)
        for name, count in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {name:<{width}}  {count:>8}")
    dropped = {k: v for k, v in m.get("dropped", {}).items() if v}
    if dropped:
        lines.append("dropped   " + ", ".join(f"{k}={v}" for k, v in dropped.items()))
    skipped = {k: v for k, v in m.get("skipped_packets", {}).items() if v}
    if skipped:
        lines.append("skipped   " + ", ".join(f"{k}={v}" for k, v in skipped.items()) + " (packets)")
    unmasked = {k: v for k, v in m.get("unmasked", {}).items() if v}
    if unmasked:
        lines.append("unmasked  " + ", ".join(f"{k}={v}" for k, v in unmasked.items()) + " (values the mask could not reach)")
    dup = m.get("duplicates", {})
    if dup.get("conflicting_labels"):
        lines.append(f"conflicts {dup['conflicting_labels']} duplicate sessions carried another label")
    errors = m.get("errors", [])
    if errors:
        lines.append(f"errors    {len(errors)} file(s) damaged or unreadable")
        for err in errors[: (5 if brief else len(errors))]:
            lines.append(f"  {err['message']}")
    return "\n".join(lines)
