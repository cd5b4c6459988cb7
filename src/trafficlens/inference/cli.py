"""`trafficlens export`: a trained run's model in a format other runtimes load."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="onnx: the model predict runs on ONNX Runtime (batch norms folded, logits out).")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False),
              help="File to write [default: RUN's name + .onnx, in the current directory].")
def export(run, fmt, out):
    """Write a trained run's model as ONNX, for ONNX Runtime, Triton or any ONNX tool.

    Inputs are the dataset tensors the model reads (`image`, `packets`: uint8; `sequence`,
    `stats`: float32; batch first); the output is `logits`. The file's metadata holds the
    labels in logit order and the prep settings that make the inputs.

    \b
    Example:
      trafficlens export runs/cnn --format onnx -o cnn.onnx
    """
    from trafficlens.inference.classifier import Classifier

    target = out or f"{Path(run).resolve().name}.onnx"
    Classifier.load(run, device="cpu").export_onnx(target)
    click.echo(f"{fmt} model -> {target}", err=True)
