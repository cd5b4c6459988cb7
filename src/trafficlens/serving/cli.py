"""`trafficlens predict`."""

from __future__ import annotations

import click


@click.command()
@click.argument("run", type=click.Path())
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", default="-", show_default=True, help="Output file: .csv, .jsonl or .parquet; '-' for CSV on stdout.")
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True, help="Labels with probabilities per session.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Below this, the label is 'unknown'.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def predict(run, captures, out, top_k, min_confidence, device):
    """Label every session of new captures with a trained run (model bundle)."""
    from trafficlens.serving.classifier import Classifier
    from trafficlens.serving.output import write_rows

    clf = Classifier.load(run, device=device)
    warn = (lambda message: click.secho(f"warning: {message}", fg="yellow", err=True))
    rows = write_rows(clf.iter_predictions(list(captures), top_k=top_k, min_confidence=min_confidence, on_warning=warn), out)
    if out != "-":
        click.echo(f"{rows} sessions -> {out}", err=True)
