"""`trafficlens audit`: how much of a dataset's score is leakage (see evaluation/audit.py)."""

from __future__ import annotations

import click

from trafficlens.training.cli import class_options, training_options, training_settings


@click.command(epilog="""\b
Example (the bundled sample, prepared to ds/lab as README shows):
  trafficlens audit ds/lab -o reports/lab-audit --batch-size 16 --epochs 40 --patience 8""")
@click.argument("dataset", type=click.Path())
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Report directory (tables, figure, runs, re-prepared datasets).")
@click.option("--model", default="chen-cnn", show_default=True, help="Deep model to audit ('none' for baselines only).")
@click.option("--baseline", default="rf", show_default=True, help="Fast baseline, run on header bytes and on flow statistics.")
@class_options()
@training_options(time_budget=180.0, scope="Deep model (three trainings): ")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splits, initialisation and batch order.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Prep workers for the re-prepared masks [default: cores].")
@click.option("--captures", multiple=True, type=click.Path(exists=True), help="Where the captures are, if the manifest does not say.")
def audit(dataset, out, model, baseline, min_class_sessions, min_class_captures, include_classes, exclude_classes,
          seed, workers, captures, **training):
    """Score a dataset's captures under the papers' protocol and under honest ones, side by side."""
    from pathlib import Path

    from trafficlens.evaluation.audit import AuditConfig, audit as run_audit, markdown_table

    settings = training_settings(training)
    own = {k: settings.pop(k) for k in ("time_budget", "max_epochs", "batch_size") if k in settings}
    cfg = AuditConfig(model="" if model == "none" else model, baseline=baseline, min_class_sessions=min_class_sessions,
                      min_class_captures=min_class_captures, include_classes=tuple(include_classes),
                      exclude_classes=tuple(exclude_classes), seed=seed, workers=workers, captures=tuple(captures),
                      training=settings, **own)
    result = run_audit(dataset, out, cfg, progress=True, log=lambda message: click.echo(message, err=True))
    click.echo(markdown_table(result))
    click.echo(f"{result['seconds']:.0f} s; wrote {Path(out) / 'audit.md'} and {Path(out) / 'report.html'}")
