"""`trafficlens explain`: which bytes and which protocol fields a trained run relies on."""

from __future__ import annotations

import click


@click.command(epilog="""\b
Example:
  trafficlens explain examples/lab/model --per-class --dataset ds/lab -o reports/lab-explain
  trafficlens explain runs/cnn --session 12""")
@click.argument("run", type=click.Path())
@click.option("--session", type=click.IntRange(0), default=None, help="Dataset row (its `id`) to explain.")
@click.option("--per-class", "per_class", is_flag=True, help="Summarise the fields carrying each class's weight (the shortcut detector).")
@click.option("-n", "sessions", type=click.IntRange(1), default=50, show_default=True, help="Sessions per class for --per-class.")
@click.option("--rows", type=click.Choice(("test", "all")), default="test", show_default=True,
              help="Rows --per-class draws from: the run's test split, or every row.")
@click.option("--target", default=None, help="Class to explain [default: predicted for --session, true class for --per-class].")
@click.option("--cam", type=click.Choice(("grad-cam", "hires-cam")), default="grad-cam", show_default=True,
              help="Image map: Grad-CAM (the papers'), or HiResCAM, faithful when the head flattens the map (chen-cnn, wang-*).")
@click.option("--top", type=click.IntRange(1), default=15, show_default=True, help="Fields listed.")
@click.option("--dataset", type=click.Path(), default=None, help="The dataset the run was trained on [default: the path in its config].")
@click.option("--captures", multiple=True, type=click.Path(exists=True),
              help="Where the dataset's captures are, when moved since prep (field names are rebuilt from them).")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None, help="Output directory [default: RUN/explain].")
def explain(run, session, per_class, sessions, rows, target, cam, top, dataset, captures, out):
    """Explain a run: Grad-CAM / attention maps mapped to protocol fields, as JSON and an offline HTML page."""
    from pathlib import Path

    from trafficlens.errors import ConfigError
    from trafficlens.explain.maps import ExplainConfig, explain_per_class, explain_session, write_per_class, write_session

    if (session is None) == (not per_class):
        raise ConfigError("give either --session ID or --per-class")
    cfg = ExplainConfig(target=target, cam=cam, top=top, per_class=sessions, split=rows, captures=tuple(captures))
    target_dir = Path(out) if out else Path(run) / "explain"
    if per_class:
        result = explain_per_class(run, dataset, cfg, log=lambda message: click.echo(message, err=True), progress=None)
        json_path, html_path = write_per_class(target_dir, result)
        for label, c in result["classes"].items():
            fields = ", ".join(f"{r['field']} {r['weight']:.2f}" for r in c["top_fields"][:5])
            groups = ", ".join(f"{k} {v:.2f}" for k, v in list(c["groups"].items())[:4])
            click.echo(f"{label} ({c['sessions']}, {c['empty_maps']} empty): {groups} | {fields}; identifying {c['identifying_weight']:.2f}")
    else:
        result = explain_session(run, session, dataset, cfg)
        json_path, html_path = write_session(target_dir, result)
        fields = ", ".join(f"{r['field']} {r['weight']:.2f}" for r in result["top_fields"][:8])
        click.echo(f"session {session}: label {result['label']}, predicted {result['predicted']} "
                   f"({result['probabilities'][result['predicted']]:.3f}); {fields}")
        if result["empty_map"]:
            click.echo(f"warning: {result['empty_reason']}", err=True)
    if result["fields_from"] != "capture":
        click.echo(f"warning: field names from {result['fields_from']}; pass --captures DIR", err=True)
    click.echo(f"wrote {json_path} and {html_path}")
