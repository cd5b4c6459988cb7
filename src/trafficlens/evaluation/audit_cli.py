"""`trafficlens audit`: how much of a dataset's score is leakage (see evaluation/audit.py)."""

from __future__ import annotations

import click

from trafficlens.training.cli import class_options


@click.command()
@click.argument("dataset", type=click.Path())
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Report directory (tables, figure, runs, re-prepared datasets).")
@click.option("--model", default="chen-cnn", show_default=True, help="Deep model to audit ('none' for baselines only).")
@click.option("--baseline", default="rf", show_default=True, help="Fast baseline, run on header bytes and on flow statistics.")
@class_options(min_sessions=50)
@click.option("--time-budget", type=click.FloatRange(min=1), default=180.0, show_default=True, help="Seconds per deep training (three per audit).")
@click.option("--max-epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="Prep workers for the re-prepared masks [default: cores].")
@click.option("--captures", multiple=True, type=click.Path(exists=True), help="Where the captures are, if the manifest does not say.")
def audit(dataset, out, model, baseline, min_class_sessions, min_class_captures, include_classes, exclude_classes,
          time_budget, max_epochs, seed, workers, captures):
    """Score a dataset's captures under the papers' protocol and under honest ones, side by side."""
    from pathlib import Path

    from trafficlens.evaluation.audit import AuditConfig, audit as run_audit, markdown_table

    cfg = AuditConfig(model="" if model == "none" else model, baseline=baseline, min_class_sessions=min_class_sessions,
                      min_class_captures=min_class_captures, include_classes=tuple(include_classes),
                      exclude_classes=tuple(exclude_classes),
                      time_budget=time_budget, max_epochs=max_epochs, seed=seed, workers=workers, captures=tuple(captures))
    result = run_audit(dataset, out, cfg, progress=True, log=lambda message: click.echo(message, err=True))
    click.echo(markdown_table(result))
    click.echo(f"{result['seconds']:.0f} s; wrote {Path(out) / 'audit.md'} and {Path(out) / 'report.html'}")
