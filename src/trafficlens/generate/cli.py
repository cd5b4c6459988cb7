"""`trafficlens generate`: real labelled traffic from real clients and servers, captured."""

from __future__ import annotations

import re

import click


def _range(text: str, unit: str, param: str) -> tuple[float, float]:
    """'10-80ms' or '20ms' -> seconds; '5-100' (Mbit/s) or '0-0.2%' for other units."""
    scale = {"ms": 1e-3, "s": 1.0, "mbit": 1.0, "%": 0.01, "": 1.0}
    match = re.fullmatch(r"\s*([\d.]+)\s*(?:-\s*([\d.]+))?\s*(ms|s|mbit|%)?\s*", text.lower())
    if not match:
        raise click.BadParameter(f"{text!r}: expected LOW-HIGH{unit} such as 10-80{unit}", param_hint=param)
    lo = float(match.group(1))
    hi = float(match.group(2)) if match.group(2) else lo
    k = scale[match.group(3) or unit]
    if lo > hi:
        raise click.BadParameter(f"{text!r}: low end above high end", param_hint=param)
    return lo * k, hi * k


@click.command()
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output directory: captures, labels.csv, manifest.json.")
@click.option("--classes", default="robot-mqtt,robot-https,robot-wss,robot-grpc,quic,ssh,dns", show_default=True,
              help="Comma-separated traffic classes (see --list).")
@click.option("--sessions", type=click.IntRange(1), default=20, show_default=True, help="Sessions per class.")
@click.option("--rtt", default="10-80ms", show_default=True, help="Round-trip time range, drawn per session.")
@click.option("--rate", default="5-100", show_default=True, help="Rate limit range in Mbit/s, drawn per session.")
@click.option("--loss", default="0-0.2%", show_default=True, help="Loss range, drawn per session.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the plan: sessions, addresses, impairments.")
@click.option("--per-capture", type=click.IntRange(1), default=50, show_default=True, help="Sessions per capture file.")
@click.option("--concurrency", type=click.IntRange(1), default=24, show_default=True, help="Sessions running at once.")
@click.option("--snaplen", type=click.IntRange(0), default=0, show_default=True, help="Bytes kept per frame (0: whole frames).")
@click.option("--gzip", "gzip_", is_flag=True, help="Write capture-NNN.pcap.gz (prep reads them as they are).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
@click.option("--cleanup", is_flag=True, help="Remove namespaces and links an interrupted run left behind, then exit.")
@click.option("--list", "list_classes", is_flag=True, help="List the classes, their commands and what each needs.")
def generate(out, classes, sessions, rtt, rate, loss, seed, per_capture, concurrency, snaplen, gzip_, overwrite,
             cleanup, list_classes):
    """Drive real clients against real servers in network namespaces and capture the packets.

    Needs root (network namespaces) and tcpdump. Example:

        sudo trafficlens generate -o lab --classes robot-mqtt,robot-https,dns --sessions 50 --seed 7
        trafficlens prep lab -o ds/lab --labels csv:lab/labels.csv [--label-column command]
    """
    import warnings

    from trafficlens.errors import ConfigError

    if list_classes:
        from trafficlens.generate.apps import CLASSES

        for c in CLASSES.values():
            missing = c.missing()
            state = f"missing {', '.join(missing)}: {c.install}" if missing else "ready"
            click.echo(f"{c.name:12} {c.transport} ports {','.join(map(str, c.ports)):10} "
                       f"commands {','.join(c.commands)}  [{state}]")
        return
    if cleanup:
        from trafficlens.generate.topology import check_support, cleanup as remove

        check_support()
        found = remove()
        click.echo(f"removed {len(found['namespaces'])} namespaces, {len(found['links'])} links, "
                   f"{len(found['work'])} work folders")
        return
    if not out:
        raise ConfigError("-o/--out is required")
    import os
    import sys

    from trafficlens.generate.topology import USERNS_ENV, unprivileged_argv

    if os.geteuid() != 0 and not os.environ.get(USERNS_ENV):
        # Not root: rerun inside a user namespace where we are (namespace-local) root.
        os.environ[USERNS_ENV] = "1"
        argv = unprivileged_argv([sys.executable, "-m", "trafficlens", *sys.argv[1:]])
        os.execvp(argv[0], argv)
    from trafficlens.generate.run import GenerateConfig, generate as run

    config = GenerateConfig(
        out=out, classes=tuple(c.strip() for c in classes.split(",") if c.strip()), sessions=sessions, seed=seed,
        rtt=_range(rtt, "ms", "--rtt"), rate_mbit=_range(rate, "mbit", "--rate"), loss=_range(loss, "%", "--loss"),
        per_capture=per_capture, concurrency=concurrency, snaplen=snaplen, gzip=gzip_, overwrite=overwrite,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: click.secho(f"warning: {msg}", fg="yellow", err=True)
        manifest = run(config, log=lambda line: click.echo(line, err=True))
    ok = sum(c["ok"] for c in manifest["sessions"].values())
    planned = sum(c["planned"] for c in manifest["sessions"].values())
    t = manifest["totals"]
    click.echo(f"{ok}/{planned} sessions in {len(manifest['captures'])} captures, {manifest['labels']} labelled flows, "
               f"{t['captured']} packets, {t['dropped']} dropped, {t['ip_bad'] + t['l4_bad']} bad checksums, "
               f"{manifest['seconds']} s -> {out}")
    for name, errs in manifest["errors"].items():
        click.secho(f"warning: {name}: failed sessions {errs}", fg="yellow", err=True)
