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


@click.command()
@click.option("--model", "run", required=True, type=click.Path(), help="Run directory (model bundle) to serve.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--max-upload-mb", type=click.FloatRange(0, min_open=True), default=64.0, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True, help="Seconds per request.")
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True)
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def serve(run, host, port, max_upload_mb, timeout_s, top_k, min_confidence, device):
    """Serve a model over HTTP: POST a capture to /v1/classify, get per-session labels."""
    try:
        import uvicorn
    except ImportError:
        from trafficlens.errors import ConfigError

        raise ConfigError("serve needs FastAPI and uvicorn: pip install 'trafficlens[serve]'") from None
    from trafficlens.serving.classifier import Classifier
    from trafficlens.serving.http import create_app

    clf = Classifier.load(run, device=device)
    app = create_app(clf, max_upload_bytes=int(max_upload_mb * (1 << 20)), timeout_s=timeout_s,
                     top_k=top_k, min_confidence=min_confidence)
    uvicorn.run(app, host=host, port=port, log_level="info")
