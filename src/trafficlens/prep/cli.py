"""`trafficlens prep`: the command over `prep.local.prep` and `prep.dask.prep_dask`.

Options default to None so that `PrepConfig` alone decides every default (its values are shown
in the help).
"""

from __future__ import annotations

import dataclasses
import os

import click

from trafficlens.prep.config import LAYERS, MASKS, UNITS, PrepConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PrepConfig)}


def _d(name: str) -> str:
    """` [default: X]` from PrepConfig, for the help text."""
    return f" [default: {_DEFAULTS[name]}]"


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(), help="Dataset directory to create.")
@click.option("--labels", default=None, help="dir | file:REGEX (its first group, or the whole match, in the file name) | csv:PATH | ndpi:PATH | preset:iscx-vpn2016 | preset:ustc-tfc2016")
@click.option("--label", "label_name", default=None, metavar="NAME", help="One label for every session (e.g. for a capture read from stdin, `-`); the same as --labels name:NAME.")
@click.option("--label-column", default=None, help="Column of a csv/ndpi label table to use (ndpi: app or master).")
@click.option("--unlabeled", default=None, help="drop | keep | as:NAME for sessions without a label." + _d("unlabeled"))
@click.option("--unit", type=click.Choice(UNITS), default=None, help="session: both directions; flow: one direction." + _d("unit"))
@click.option("--layer", type=click.Choice(LAYERS), default=None, help="Which bytes of each packet the tensors show." + _d("layer"))
@click.option("--mask", type=click.Choice(MASKS), default=None, help="Identifying fields zeroed before tensors are written." + _d("mask"))
@click.option("--image-bytes", type=click.IntRange(1), default=None, help="K: first K bytes as an image (400, 784, 1225 are squares)." + _d("image_bytes"))
@click.option("--packets", type=click.IntRange(1), default=None, help="M: packets in the packets tensor." + _d("packets"))
@click.option("--packet-bytes", type=click.IntRange(1), default=None, help="N: bytes per packet in the packets tensor." + _d("packet_bytes"))
@click.option("--sequence-length", type=click.IntRange(1), default=None, help="L: packets in the length/time sequence." + _d("sequence_length"))
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Seconds of silence that end a session." + _d("idle_timeout"))
@click.option("--min-packets", type=click.IntRange(0), default=None, help="Drop sessions with fewer kept packets." + _d("min_packets"))
@click.option("--min-bytes", type=click.IntRange(0), default=None, help="Drop sessions with fewer application payload bytes (Ge 2021: 400)." + _d("min_bytes"))
@click.option("--max-per-class", type=click.IntRange(1), default=None, help="Undersample to at most N sessions per class (random, seed 0).")
@click.option("--filter", "bpf", default=None, metavar="BPF", help="Read only the packets this BPF expression matches, as tcpdump would (e.g. 'tcp port 443 and not host 10.0.0.1').")
@click.option("--keep-duplicates", is_flag=True, help="Keep sessions whose tensors duplicate an earlier session.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes over files [default: all cores]; with --engine dask and no --scheduler, LocalCluster workers.")
@click.option("--engine", type=click.Choice(("local", "dask")), default="local", show_default=True, help="local: processes on this machine; dask: tasks of whole files on a Dask cluster, a sharded dataset (pip install 'trafficlens[dask]').")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="--engine dask: scheduler address (tcp://host:8786) [default: a LocalCluster].")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True, help="--engine dask: resubmissions of a failed task before the run fails.")
@click.option("--task-mb", type=click.FloatRange(0, min_open=True), default=64, show_default=True, help="--engine dask: capture megabytes per task (whole files; one shard per task).")
@click.option("--backend", type=click.Choice(("python", "numba")), default=None, help="Session engine: numba (compiled, the default when installed, except for inputs under 16 MB) or python (the reference); same datasets. Also $TRAFFICLENS_BACKEND.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset directory (never anything but a trafficlens dataset or an empty directory).")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
def prep(inputs, out, labels, label_name, label_column, unlabeled, unit, layer, mask, image_bytes, packets, packet_bytes,
         sequence_length, idle_timeout, min_packets, min_bytes, max_per_class, bpf, keep_duplicates, workers, engine,
         scheduler, retries, task_mb, backend, overwrite, quiet):
    """Turn captures (files or folders of pcap/pcapng, gzip too) into a dataset directory.

    With --engine dask, INPUTS may also be fsspec URLs (s3://bucket/captures, ...). `-` reads one
    capture from standard input (streamed; with --engine local), its sessions labelled by --label.

    \b
    Example:
      trafficlens prep ../shared/data/iot-sentinel -o ds/iot --labels dir
      tcpdump -r cam.pcap -w - 'tcp port 443' | trafficlens prep - --label camera -o ds/cam
    """
    from trafficlens.capture.formats import is_stdin
    from trafficlens.errors import ConfigError

    if scheduler and engine != "dask":
        raise ConfigError("--scheduler is for --engine dask")
    if label_name is not None:
        if labels:
            raise ConfigError("--label NAME and --labels both say where labels come from: give one")
        labels = f"name:{label_name}"
    if bpf is not None and engine == "dask":
        raise ConfigError("--filter is for --engine local")
    if any(map(is_stdin, inputs)):
        if engine == "dask":
            raise ConfigError("- (standard input) is read by --engine local; Dask workers cannot read this stdin")
        if not labels:
            raise ConfigError("prep -: name the label of the sessions read from standard input with --label NAME")
    for item in inputs:
        if (engine == "dask" and "://" in item) or is_stdin(item):
            continue
        if not os.path.exists(item):
            raise ConfigError(f"{item}: no such file or directory")
    given = dict(unit=unit, layer=layer, mask=mask, image_bytes=image_bytes, packets=packets, packet_bytes=packet_bytes,
                 sequence_length=sequence_length, idle_timeout=idle_timeout, min_packets=min_packets, min_bytes=min_bytes,
                 labels=labels, label_column=label_column, unlabeled=unlabeled, max_per_class=max_per_class)
    config = PrepConfig(**{k: v for k, v in given.items() if v is not None}, deduplicate=not keep_duplicates)
    warn = (lambda message: click.secho(f"warning: {message}", fg="yellow", err=True))
    if engine == "dask":
        from trafficlens.prep.dask import prep_dask

        path = prep_dask(list(inputs), out, config, scheduler=scheduler, workers=workers, retries=retries,
                         task_bytes=int(task_mb * (1 << 20)), overwrite=overwrite, progress=not quiet,
                         on_warning=warn, backend=backend)
    else:
        from trafficlens.prep.local import prep as run_prep

        path = run_prep(list(inputs), out, config, workers=workers, overwrite=overwrite, progress=not quiet,
                        on_warning=warn, backend=backend, bpf=bpf)
    if not quiet:
        from trafficlens.datasets import Dataset
        from trafficlens.datasets.cli import summary

        click.echo(summary(Dataset.open(path), brief=True))
