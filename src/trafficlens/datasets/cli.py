"""`trafficlens info`."""

from __future__ import annotations

import click


@click.command(epilog="""\b
Example:
  trafficlens info ds/lab""")
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
