"""`trafficlens predict`."""

from __future__ import annotations

import click

def run_argument(example: str):
    """RUN, a trained run, as the first positional argument (as predict, evaluate, explain take
    it); `--model RUN`, the older spelling of live and serve, still works with a deprecation note."""
    import functools

    def decorate(command_fn):
        @functools.wraps(command_fn)
        def wrapper(*args, run_arg=None, model_opt=None, **kwargs):
            if run_arg and model_opt and run_arg != model_opt:
                raise click.UsageError(f"two runs given ({run_arg} and --model {model_opt}): give RUN once, first")
            if model_opt:
                click.echo(f"note: --model RUN is deprecated here; give the run first: {example}", err=True)
            if not (run_arg or model_opt):
                raise click.UsageError(f"missing RUN (a trained run directory), e.g. {example}")
            return command_fn(*args, run=run_arg or model_opt, **kwargs)

        wrapper = click.option("--model", "model_opt", default=None, type=click.Path(), hidden=True)(wrapper)
        return click.argument("run_arg", metavar="RUN", required=False, type=click.Path())(wrapper)

    return decorate


# predict, serve and live load a bundle the same way: one option, one help text.
trusted_key_option = click.option(
    "--trusted-key", "trusted_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
    help="Ed25519 public key (PEM, from `trafficlens keygen`): load the run only if one of these keys signed it "
         "(`trafficlens sign`); repeatable.")


open_set_option = click.option(
    "--open-set", is_flag=True,
    help="With --by: call a group 'unknown' (status unknown_device) when its sessions fit no known class: their mean "
         "top probability is under the threshold `evaluate RUN --by capture|host` fitted on validation.")


@click.command()
@click.argument("run", type=click.Path())
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, allow_dash=True))
@click.option("-o", "--out", default="-", show_default=True, help="Output file: .csv, .jsonl, .parquet or .log (Zeek); '-' for CSV on stdout.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet", "zeek"]), default=None,
              help="Output format [default: from -o's extension]; zeek: a Zeek TSV log that zeek-cut reads.")
@click.option("--filter", "bpf", default=None, metavar="BPF", help="Read only the packets this BPF expression matches, as tcpdump would (e.g. 'tcp port 443').")
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True, help="Labels with probabilities per session.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Below this, the label is 'unknown'.")
@trusted_key_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--by", type=click.Choice(["session", "host", "capture", "host-window"]), default="session", show_default=True,
              help="One row per session, or one decision per host (the sessions it opened, within its capture file), "
                   "per capture file, or per host and time window.")
@click.option("--window", default="300s", show_default=True, help="With --by host-window: the window, e.g. 300s, 5m, 1h.")
@click.option("--host-key", type=click.Choice(["ip", "mac"]), default="ip", show_default=True,
              help="Name a host by its IP or by the MAC its frames came from (kept when DHCP changes the IP).")
@click.option("--aggregator", type=click.Choice(["auto", "pool", "vote", "learned"]), default="auto", show_default=True,
              help="pool: sum of calibrated session log-probabilities; vote: majority of session labels; learned: the "
                   "aggregator `evaluate --by` fitted on the validation split; auto: learned where it was fitted, "
                   "else pool.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=None,
              help="Calibration temperature of the pooled log-probabilities [default: RUN/calibration.json, "
                   "fitted on validation by `evaluate --by`; else 1].")
@open_set_option
def predict(run, captures, out, fmt, bpf, top_k, min_confidence, trusted_keys, device, by, window, host_key, aggregator,
            temperature, open_set):
    """Label every session of new captures with a trained run (model bundle), or decide per host
    or capture (--by).

    \b
    Example:
      trafficlens predict runs/cnn captures/ -o flows.csv
      trafficlens predict runs/cnn x.pcap --format zeek | zeek-cut uid label confidence
      tcpdump -r big.pcap -w - 'port 443' | trafficlens predict runs/cnn - -o flows.jsonl
      trafficlens predict runs/cnn captures/ --by host --host-key mac -o hosts.csv

    A capture named `-` is read from standard input, as a stream.
    """
    from trafficlens.capture.bpf import PacketFilter
    from trafficlens.inference.classifier import Classifier
    from trafficlens.progress import counted, session_bar
    from trafficlens.serving.output import output_format, write_rows

    suffix = output_format(out, fmt)  # a bad -o or --filter fails before the model loads
    if bpf is not None:
        PacketFilter(bpf)
    if by != "session":
        from trafficlens.errors import ConfigError
        from trafficlens.inference.groups import GroupConfig, parse_window, read_open_set

        if suffix == ".log":
            raise ConfigError(f"--by {by}: a Zeek log holds one row per session; write group rows as .csv, .jsonl or .parquet")
        seconds = parse_window(window)
        unknown = read_open_set(run, by) if open_set else {}  # before the model loads
        if unknown:
            from trafficlens.inference.groups import describe_open_set

            click.echo(describe_open_set(run, by), err=True)
    elif open_set:
        from trafficlens.errors import ConfigError

        raise ConfigError("--open-set decides groups of sessions: give it with --by host, capture or host-window")
    clf = Classifier.load(run, device=device, trusted_keys=trusted_keys)
    warn = (lambda message: click.secho(f"warning: {message}", fg="yellow", err=True))
    if by == "session":
        with session_bar(desc="predict") as bar:
            rows = write_rows(counted(clf.iter_predictions(list(captures), top_k=top_k, min_confidence=min_confidence,
                                                           on_warning=warn, bpf=bpf), bar), out, fmt)
        if out != "-":
            click.echo(f"{rows} sessions -> {out}", err=True)
        return
    from trafficlens.inference.groups import GROUP_COLUMNS

    from trafficlens.inference.groups import read_calibration, resolve_aggregator

    fitted = read_calibration(run)
    chosen = resolve_aggregator(fitted, by, aggregator)  # decided again where the groups are built: said here
    if aggregator == "auto":
        why = "fitted by `evaluate --by`" if chosen == "learned" else "no learned aggregator in the run"
        click.echo(f"--aggregator auto: {chosen} ({why})", err=True)
    if temperature is None:
        temperature = fitted.get("temperature", 1.0)
        if not fitted and chosen == "pool":
            click.echo(f"note: {run} has no calibration.json; pooling uncalibrated probabilities "
                       f"(`trafficlens evaluate {run} --by capture` fits a temperature and an aggregator on its "
                       f"validation split)", err=True)
    config = GroupConfig(by=by, host_key=host_key, window=seconds, aggregator=aggregator, temperature=temperature,
                         top_k=top_k, min_confidence=min_confidence, **unknown)
    with session_bar(desc=f"predict --by {by}", unit="groups") as bar:
        rows = write_rows(counted(clf.iter_group_predictions(list(captures), config, on_warning=warn, bpf=bpf), bar),
                          out, fmt, GROUP_COLUMNS)
    if out != "-":
        click.echo(f"{rows} groups ({by}) -> {out}", err=True)


@click.command(epilog="""\b
Example:
  trafficlens serve examples/lab/model --port 8080
  curl --data-binary @capture.pcapng http://127.0.0.1:8080/v1/classify""")
@run_argument("trafficlens serve RUN --port 8080")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one other than loopback needs --token-file (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding a bearer token: requests need 'Authorization: Bearer <token>' (not /healthz).")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS certificate (PEM): serve HTTPS.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS private key (PEM), if not in --certfile.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without --token-file.")
@click.option("--docs", is_flag=True, help="Serve the interactive API docs at /docs and the schema at /openapi.json.")
@click.option("--max-upload-mb", type=click.FloatRange(0, min_open=True), default=64.0, show_default=True,
              help="Largest body, as sent (gzip counts compressed).")
@click.option("--max-capture-mb", type=click.FloatRange(0, min_open=True), default=512.0, show_default=True,
              help="Largest capture once decompressed.")
@click.option("--max-packets", type=click.IntRange(1), default=2_000_000, show_default=True,
              help="Most packets in one upload.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds of classification per upload (its worker is killed past it); "
                   "also the longest wait for a free worker.")
@click.option("--header-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds a client has to send its request headers.")
@click.option("--body-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds a client has to send its body, after the headers.")
@click.option("--write-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds an answer may wait for a client that stopped reading it; then the connection and "
                   "the rest of the answer are dropped.")
@click.option("--max-uploads", type=click.IntRange(1), default=64, show_default=True,
              help="Classify requests at once (uploading, waiting or running); more get 503.")
@click.option("--max-connections-per-ip", type=click.IntRange(1), default=64, show_default=True,
              help="Open connections one client address may hold; the next is closed unread "
                   "(behind a reverse proxy every client has the proxy's address: raise it).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Classifier processes, each with the model loaded.")
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True)
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@trusted_key_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def serve(run, host, port, token_file, certfile, keyfile, insecure, docs, max_upload_mb, max_capture_mb, max_packets,
          timeout_s, header_timeout, body_timeout, write_timeout, max_uploads, max_connections_per_ip, workers, top_k,
          min_confidence, trusted_keys, device):
    """Serve a model over HTTP: POST a capture to /v1/classify, get per-session labels."""
    from trafficlens.errors import ConfigError

    try:
        import uvicorn  # noqa: F401  (only to say what is missing, before anything starts)
    except ImportError:
        raise ConfigError("serve needs FastAPI and uvicorn: pip install 'trafficlens[serve]'") from None
    from trafficlens.serving.http import ServeConfig, create_app, is_loopback, read_token, server

    token = read_token(token_file) if token_file else None
    if keyfile and not certfile:
        raise ConfigError("--keyfile needs --certfile")
    if not is_loopback(host):
        if token is None and not insecure:
            raise ConfigError(f"--host {host} is reachable from other machines: give --token-file (with "
                              "--certfile/--keyfile), or --insecure to serve it without authentication")
        if token is not None and not certfile:
            click.secho(f"warning: --host {host} without --certfile: the token crosses the network in clear",
                        fg="yellow", err=True)
    from trafficlens.inference.classifier import Classifier

    clf = Classifier.load(run, device=device, trusted_keys=trusted_keys)  # a bad bundle fails here, in one line, before any worker starts
    mb = 1 << 20
    config = ServeConfig(max_upload_bytes=int(max_upload_mb * mb), max_capture_bytes=int(max_capture_mb * mb),
                         max_packets=max_packets, timeout_s=timeout_s, header_timeout_s=header_timeout,
                         body_timeout_s=body_timeout, write_timeout_s=write_timeout, max_uploads=max_uploads,
                         max_connections_per_ip=max_connections_per_ip, workers=workers, token=token,
                         docs=docs, top_k=top_k, min_confidence=min_confidence)
    app = create_app(clf, config)
    server(app, host=host, port=port, certfile=certfile, keyfile=keyfile, log_level="info").run()


@click.command(epilog="""\b
Example:
  trafficlens live examples/lab/model -r examples/lab/capture-004.pcap.gz --speed 0
  sudo trafficlens live runs/cnn -i eth0 -o live.jsonl""")
@run_argument("trafficlens live RUN -r capture.pcap")
@click.option("-i", "--interface", "iface", default=None, help="Capture on this interface (root or CAP_NET_RAW).")
@click.option("-r", "--read", "replay_path", default=None, type=click.Path(exists=True, allow_dash=True),
              help="Replay a capture instead, at its recorded pace; '-' reads a pcap stream from stdin (tcpdump -w -).")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Replay speed factor; 0 replays as fast as possible.")
@click.option("--after", type=click.IntRange(1), default=6, show_default=True, help="Decide a session at its M-th kept packet.")
@click.option("--max-sessions", type=click.IntRange(1), default=100_000, show_default=True, help="Sessions tracked at once; the least recently active are evicted past it.")
@click.option("--filter", "bpf", default=None, metavar="BPF", help="BPF expression (tcpdump's) for -i or -r: only matching packets are read, e.g. 'tcp or udp'.")
@click.option("-o", "--out", default="-", show_default=True, help="Output file (in place when live stops), or '-' for stdout.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "zeek"]), default="jsonl", show_default=True,
              help="JSON lines, or a Zeek TSV log that zeek-cut reads.")
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True)
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=256, show_default=True, help="Hand ready sessions to the model once this many wait (more when it is behind).")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=1.0, show_default=True, help="How long a ready session may wait for others to share its batch while the model is idle.")
@click.option("--idle-exit", type=click.FloatRange(min=0, min_open=True), default=None, help="With -i: stop after this many seconds without packets.")
@click.option("--backend", type=click.Choice(["numba", "python"]), default=None,
              help="Session engine: compiled blocks (numba, the default when installed) or the Python reference.")
@trusted_key_option
@click.option("--by", type=click.Choice(["session", "host"]), default="session", show_default=True,
              help="host: a rolling decision per host, printed when its confidence first reaches --min-confidence, "
                   "whenever its label changes, when it is dropped, and for every host when live stops.")
@click.option("--host-key", type=click.Choice(["ip", "mac"]), default="ip", show_default=True,
              help="With --by host: name a host by its IP or by the MAC its frames came from.")
@click.option("--aggregator", type=click.Choice(["auto", "pool", "vote", "learned"]), default="auto", show_default=True,
              help="With --by host: pooled calibrated log-probabilities, the majority of session labels, the "
                   "aggregator `evaluate --by host` fitted on the validation split, or auto: that one where it "
                   "was fitted, else pooling.")
@click.option("--max-hosts", type=click.IntRange(1), default=10_000, show_default=True,
              help="With --by host: hosts held at once; the least recently active is dropped past it.")
@click.option("--host-idle", type=click.FloatRange(0, min_open=True), default=600.0, show_default=True,
              help="With --by host: drop a host after this many seconds (capture time) without a session.")
@open_set_option
def live(run, iface, replay_path, speed, after, max_sessions, bpf, out, fmt, top_k, min_confidence, device, max_batch,
         max_wait_ms, idle_exit, backend, trusted_keys, by, host_key, aggregator, max_hosts, host_idle, open_set):
    """Classify live traffic (or a replayed capture) session by session, as packets arrive, or per host (--by host).

    A file given with -o is written beside its name and takes it when live stops (at the end of
    a replay, on Ctrl-C or SIGTERM): until then an earlier file of that name stays as it was."""
    import contextlib
    import json
    import signal
    import sys

    from trafficlens.errors import ConfigError
    from trafficlens.files import atomic_output
    from trafficlens.serving import live as live_mod
    from trafficlens.inference.classifier import Classifier

    if (iface is None) == (replay_path is None):
        raise ConfigError("live needs exactly one source: -i INTERFACE or -r CAPTURE")
    if by == "host" and fmt == "zeek":
        raise ConfigError("--by host: a Zeek log holds one row per session; use --format jsonl")
    if open_set and by != "host":
        raise ConfigError("--open-set decides hosts: give it with --by host")
    from trafficlens.inference.groups import describe_open_set, read_open_set

    unknown = read_open_set(run, "host") if open_set else {}  # before the model loads
    if unknown:
        click.echo(describe_open_set(run, "host"), err=True)
    with contextlib.nullcontext(sys.stdout) if out == "-" else atomic_output(out) as fh:
        if iface:
            source = live_mod.Interface(iface, bpf=bpf, idle_exit=idle_exit)
        else:
            from trafficlens.capture.bpf import PacketFilter

            source = live_mod.replay(replay_path, speed or None, heartbeats=True,
                                     packet_filter=PacketFilter(bpf) if bpf is not None else None)
        clf = Classifier.load(run, device=device, trusted_keys=trusted_keys)
        if clf.device.type == "cpu":
            clf.set_cpu_threads(1)  # small batches: one intra-op thread is fastest, the other core reads packets

        if fmt == "zeek":
            from trafficlens.serving.zeek_log import ZeekLog

            log = ZeekLog(fh, path="trafficlens_live")
            sink = log.write
        else:
            def sink(row):
                fh.write(json.dumps(row) + "\n")

        def stop(signum, frame):  # SIGTERM ends live as Ctrl-C does: what was decided is kept
            raise KeyboardInterrupt

        groups = None
        if by == "host":
            from trafficlens.inference.groups import GroupConfig

            groups = GroupConfig(by="host", host_key=host_key, aggregator=aggregator, temperature=clf.temperature,
                                 top_k=top_k, min_confidence=min_confidence, max_groups=max_hosts,
                                 **unknown)
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            stats = live_mod.LiveClassifier(clf, sink, after=after, max_sessions=max_sessions, top_k=top_k,
                                            min_confidence=min_confidence, name=iface or replay_path,
                                            max_batch=max_batch, max_wait_ms=max_wait_ms,
                                            clock="capture" if iface else "arrival", backend=backend,
                                            flush=fh.flush, groups=groups, host_idle=host_idle).run(
                source, on_ready=lambda: click.echo(f"live: ready, reading {iface or replay_path}", err=True))
        finally:
            signal.signal(signal.SIGTERM, previous)
        if fmt == "zeek":
            log.close()
    summary = stats.summary()
    if iface:
        summary["capture"] = source.stats()  # libpcap: received, dropped (buffer full), if_dropped
    click.echo(json.dumps(summary), err=True)
