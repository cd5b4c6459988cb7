"""Decisions per host and per capture: grouping, pooling, MAC keys, predict --by and live --by host."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from captures import tcp_session, write_pcap
from trafficlens.cli import cli
from trafficlens.errors import BundleError, ConfigError
from trafficlens.inference.groups import (GroupConfig, GroupDecisions, calibrated_log_probs, fit_temperature,
                                          group_probabilities, parse_window)
from trafficlens.prep.hosts import HostAddresses

GATEWAY_MAC = bytes.fromhex("020000000001")
SERVER = "172.16.0.1"
# Three device types that differ in what they send: what the tiny model learns.
KINDS = {"camera": (b"\x00\x01CAM" * 8, 8554), "plug": (b"\xfe\xffPLG" * 8, 9999), "bulb": (b'{"bulb":1}' * 3, 5683)}


def _with_macs(frames, client: str, client_mac: bytes):
    """Ethernet addresses of each frame: from the client's MAC when it sent it, else from the gateway's."""
    sender = bytes(int(x) for x in client.split("."))
    out = []
    for ts, frame in frames:
        macs = GATEWAY_MAC + client_mac if frame[26:30] == sender else client_mac + GATEWAY_MAC  # destination, source
        out.append((ts, macs + frame[12:]))
    return out


def device_sessions(kind: str, client: str, mac: bytes, t0: float, n: int, seed: int, sport: int = 40000):
    """`n` TCP sessions of one device type, each with its own random bytes after the type's marker."""
    marker, port = KINDS[kind]
    rng = random.Random(seed)
    frames = []
    for i in range(n):
        noise = bytes(rng.randrange(256) for _ in range(40))
        request = marker + noise + marker
        frames += _with_macs(tcp_session(client, SERVER, sport=sport + i, dport=port, t0=t0 + 7.0 * i,
                                         isn_c=1000 + i, requests=(request, request[::-1]),
                                         responses=(b"OK " + noise[:8], b"OK")), client, mac)
    return frames


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0x10, n])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """chen-cnn trained on three device types, one capture per device."""
    from trafficlens.prep.config import PrepConfig
    from trafficlens.prep.local import prep
    from trafficlens.training import TrainConfig, train_run

    tmp = tmp_path_factory.mktemp("groups")
    for k, kind in enumerate(KINDS):
        for part in range(3):  # three captures per type: a capture split has one for each side
            write_pcap(tmp / "train" / kind / f"{part}.pcap",
                       device_sessions(kind, f"10.0.{k}.{part + 1}", mac(16 * k + part), 1.7e9, 14, seed=100 * k + part))
    ds = prep([tmp / "train"], tmp / "ds", PrepConfig(labels="dir"), workers=1)
    train_run(ds, tmp / "run", "chen-cnn", TrainConfig(batch_size=16, max_epochs=10), progress=False, log=lambda m: None)
    return tmp / "run"


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """One capture of three hosts of known types: the camera changes its IP (a DHCP renewal) half way."""
    tmp = tmp_path_factory.mktemp("network")
    t0 = 1.8e9
    frames = (device_sessions("camera", "192.168.1.10", mac(1), t0, 4, seed=1)
              + device_sessions("camera", "192.168.1.50", mac(1), t0 + 40, 4, seed=2)
              + device_sessions("plug", "192.168.1.11", mac(2), t0 + 1, 8, seed=3)
              + device_sessions("bulb", "192.168.1.12", mac(3), t0 + 2, 8, seed=4))
    return write_pcap(tmp / "home.pcap", frames)


EXPECTED_BY_MAC = {"02:00:00:00:10:01": "camera", "02:00:00:00:10:02": "plug", "02:00:00:00:10:03": "bulb"}
EXPECTED_BY_IP = {"192.168.1.10": "camera", "192.168.1.50": "camera", "192.168.1.11": "plug", "192.168.1.12": "bulb"}


# -- the pieces ------------------------------------------------------------------------------
def test_pooling_outvotes_a_confident_minority_and_vote_counts_heads():
    labels = ["a", "b"]
    # two sessions barely for a, one very sure of b: the vote says a, pooled evidence says b
    proba = np.array([[0.55, 0.45], [0.55, 0.45], [0.01, 0.99]])
    metas = [{"capture": "x", "src_ip": "1.1.1.1", "ts_start": float(i), "ts_end": i + 0.5} for i in range(3)]
    for aggregator, label in (("vote", "a"), ("pool", "b")):
        groups = GroupDecisions(labels, GroupConfig(aggregator=aggregator))
        assert groups.add(metas, proba) == [("x", "1.1.1.1", None)]
        (row,) = groups.rows()
        assert row["label"] == label and row["sessions"] == 3 and row["votes"] == {"a": 2, "b": 1}
        assert (row["window_start"], row["window_end"]) == (0.0, 2.5)
    vote = GroupDecisions(labels, GroupConfig(aggregator="vote"))
    vote.add(metas, proba)
    assert vote.rows()[0]["confidence"] == pytest.approx(2 / 3)
    pooled = np.log([0.55 * 0.55 * 0.01, 0.45 * 0.45 * 0.99])
    assert group_probabilities(np.zeros(2), pooled, "pool")[1] == pytest.approx(0.45**2 * 0.99 / (0.55**2 * 0.01 + 0.45**2 * 0.99))


def test_a_group_of_one_session_is_the_session_model():
    proba = np.array([[0.2, 0.5, 0.3]])
    for aggregator in ("vote", "pool"):
        groups = GroupDecisions(["a", "b", "c"], GroupConfig(aggregator=aggregator, top_k=3))
        groups.add([{"capture": "x", "src_ip": "h", "ts_start": 0.0, "ts_end": 1.0}], proba)
        (row,) = groups.rows()
        assert row["label"] == "b" and [label for label, _ in row["top_k"]] == ["b", "c", "a"]
    assert row["top_k"][0][1] == pytest.approx(0.5)  # pool of one at temperature 1: the session's own probability


def test_vote_ties_go_to_the_better_pooled_score():
    groups = GroupDecisions(["a", "b"], GroupConfig(aggregator="vote"))
    groups.add([{"capture": "x", "src_ip": "h", "ts_start": 0.0, "ts_end": 1.0}] * 2, np.array([[0.6, 0.4], [0.1, 0.9]]))
    assert groups.rows()[0]["label"] == "b"


def test_keys_windows_and_bounded_groups():
    proba = np.array([[0.9, 0.1]] * 4)
    metas = [{"capture": "c", "src_ip": ip, "ts_start": t, "ts_end": t + 1} for ip, t in
             (("h1", 10.0), ("h1", 299.0), ("h1", 301.0), ("h2", 5.0))]
    windows = GroupDecisions(["a", "b"], GroupConfig(by="host-window", window=300))
    windows.add(metas, proba)
    assert [(r["host"], r["window_start"], r["window_end"], r["sessions"]) for r in windows.rows()] == \
        [("h1", 0.0, 300.0, 2), ("h1", 300.0, 600.0, 1), ("h2", 0.0, 300.0, 1)]
    captures = GroupDecisions(["a", "b"], GroupConfig(by="capture"))
    captures.add(metas, proba)
    assert [(r["capture"], r["host"], r["sessions"]) for r in captures.rows()] == [("c", None, 4)]
    capped = GroupDecisions(["a", "b"], GroupConfig(max_groups=1))
    capped.add(metas, proba)
    assert [(r["host"], r["sessions"]) for r in capped.pop_evicted()] == [("h1", 3)]
    assert len(capped) == 1 and capped.evicted_count == 1 and capped.rows()[0]["host"] == "h2"
    assert [r["host"] for r in capped.expire(now=100.0, idle=60.0)] == ["h2"] and len(capped) == 0


def test_temperature_fit_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 4)) * 2
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=p) for p in true_p])
    overconfident = np.exp(logits * 3) / np.exp(logits * 3).sum(1, keepdims=True)
    assert fit_temperature(overconfident, y) == pytest.approx(3.0, rel=0.15)
    # exact but for the floor under probabilities (a tree's zero must not veto a class for ever)
    assert np.allclose(np.exp(calibrated_log_probs(overconfident, 3.0)), true_p, atol=2e-3)
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0)) == 1.0


def test_bad_settings_are_one_line_errors():
    assert parse_window("5m") == 300.0 and parse_window("300s") == 300.0 and parse_window("2") == 2.0
    for bad in ("", "soon", "-5s", "0"):
        with pytest.raises(ConfigError, match="--window"):
            parse_window(bad)
    with pytest.raises(ConfigError, match="by must be one of"):
        GroupConfig(by="subnet")
    with pytest.raises(ConfigError, match="host_key"):
        GroupConfig(host_key="name")


def test_host_addresses_name_a_session_by_its_initiators_mac(network):
    from trafficlens.capture import CaptureReader
    from trafficlens.prep.engines.blocks import packet_blocks

    hosts = HostAddresses()
    for block in packet_blocks(CaptureReader(network)):
        hosts.watch(block)
    meta = {"src_ip": "192.168.1.50", "dst_ip": SERVER, "src_port": 40000, "dst_port": 8554, "protocol": "TCP",
            "ts_start": 1.8e9 + 40}
    assert hosts.mac_of(meta) == "02:00:00:00:10:01"
    # the responder's frames carry the gateway's MAC: the session is still named by its initiator
    assert hosts.mac_of(dict(meta, src_port=40001)) == "02:00:00:00:10:01"
    assert hosts.mac_of(dict(meta, src_ip="192.168.1.11", src_port=55555)) == "02:00:00:00:10:02"  # by its IP
    assert hosts.mac_of(dict(meta, src_ip="8.8.8.8")) is None
    small = HostAddresses(max_entries=3)
    for block in packet_blocks(CaptureReader(network)):
        small.watch(block)
    assert len(small) == 3


# -- end to end --------------------------------------------------------------------------------
@pytest.mark.parametrize("host_key, expected", [("mac", EXPECTED_BY_MAC), ("ip", EXPECTED_BY_IP)])
def test_predict_by_host_names_every_device(run, network, tmp_path, host_key, expected):
    out = tmp_path / "hosts.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(run), str(network), "--by", "host", "--host-key", host_key,
                                      "--top-k", "2", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["host"]: r["label"] for r in rows} == expected
    sessions = {r["host"]: r["sessions"] for r in rows}
    assert sum(sessions.values()) == 24 and sum(sum(r["votes"].values()) for r in rows) == 24
    if host_key == "mac":
        assert sessions["02:00:00:00:10:01"] == 8  # both of the camera's addresses
    assert all(r["capture"] == "home.pcap" and len(r["top_k"]) == 2 and r["status"] == "ok" for r in rows)
    assert all(r["window_start"] <= r["window_end"] for r in rows)


def test_predict_by_capture_and_by_window_through_the_api(run, network):
    from trafficlens.inference.classifier import Classifier

    clf = Classifier.load(run, device="cpu")
    (row,) = clf.predict_hosts(network, by="capture").to_dict("records")
    assert row["sessions"] == 24 and row["host"] is None and row["capture"] == "home.pcap"
    assert set(row["votes"]) <= {"camera", "plug", "bulb"} and sum(row["votes"].values()) == 24
    windows = clf.predict_hosts(network, by="host-window", window=30.0, aggregator="vote")
    assert (windows.window_end - windows.window_start == 30.0).all()
    assert windows.sessions.sum() == 24 and len(windows) > 4
    assert dict(zip(windows.host, windows.label)) == EXPECTED_BY_IP


def test_predict_by_host_writes_csv_and_parquet(run, network, tmp_path):
    import pandas as pd

    for name in ("hosts.csv", "hosts.parquet"):
        result = CliRunner().invoke(cli, ["predict", str(run), str(network), "--by", "host", "-o", str(tmp_path / name),
                                          "--device", "cpu"])
        assert result.exit_code == 0, result.output
    csv = pd.read_csv(tmp_path / "hosts.csv")
    parquet = pd.read_parquet(tmp_path / "hosts.parquet")
    assert list(csv.columns) == list(parquet.columns)
    assert dict(zip(csv.host, csv.label)) == dict(zip(parquet.host, parquet.label)) == EXPECTED_BY_IP
    assert csv.votes.str.fullmatch(r"(\w+:\d+;?)+").all()


def test_predict_bad_window_is_a_one_line_error(run, network):
    """Raised as a ConfigError before the model loads: `trafficlens.cli.main` prints it as one line."""
    result = CliRunner().invoke(cli, ["predict", str(run), str(network), "--by", "host-window", "--window", "soon"])
    assert isinstance(result.exception, ConfigError) and str(result.exception) == \
        "--window 'soon': give seconds, e.g. 300s, 5m or 1h"


def test_open_set_needs_groups_and_a_fitted_threshold(run, network, tmp_path):
    import shutil

    bare = tmp_path / "bare"  # a copy of the run without calibration.json
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("calibration.json"))
    for args, message in (
            (["predict", str(run), str(network), "--open-set"], "--open-set decides groups of sessions"),
            (["predict", str(bare), str(network), "--by", "host", "--open-set"],
             f"{bare} has no open-set threshold for host groups: fit it with `trafficlens evaluate {bare} --by host`"),
            (["live", str(run), "-r", str(network), "--open-set"], "--open-set decides hosts: give it with --by host")):
        result = CliRunner().invoke(cli, args)
        assert isinstance(result.exception, ConfigError) and str(result.exception).startswith(message), result.output
        assert "\n" not in str(result.exception)

    # a run calibrated before the fit was named in calibration.json keeps the fit it was set for
    from trafficlens.inference.groups import read_open_set

    (bare / "calibration.json").write_text(json.dumps({"temperature": 1.2, "open_set": {"host": {
        "threshold": 0.42, "score": "mean calibrated top probability of the group's sessions"}}}))
    assert read_open_set(bare, "host-window") == {"unknown_below": 0.42, "unknown_score": "mean_top_probability"}


def _live(args, tmp_path):
    import torch

    out = tmp_path / "live.jsonl"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["live", *args, "-o", str(out), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)  # the command sets one intra-op thread for itself
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()], json.loads(result.stderr.strip().splitlines()[-1])


def test_live_by_host_prints_each_device_once_it_is_sure(run, network, tmp_path):
    rows, summary = _live([str(run), "-r", str(network), "--speed", "0", "--by", "host", "--host-key", "mac",
                           "--min-confidence", "0.9", "--after", "8"], tmp_path)
    confident = [r for r in rows if r["event"] == "confident"]
    assert {r["host"]: r["label"] for r in confident} == EXPECTED_BY_MAC
    assert all(r["confidence"] >= 0.9 and r["status"] == "ok" for r in confident)
    final = {r["host"]: (r["label"], r["sessions"]) for r in rows if r["event"] == "final"}
    assert final == {host: (label, 8) for host, label in EXPECTED_BY_MAC.items()}
    assert summary["decisions"] == 24 and summary["hosts"] == {"events": len(rows), "evicted": 0, "expired": 0}


def test_live_by_host_prints_a_change_of_mind(run, tmp_path):
    """A host that first looks like a camera, then keeps behaving as a plug: one row for each label."""
    from trafficlens.inference.classifier import Classifier
    from trafficlens.inference.groups import GroupConfig
    from trafficlens.serving.live import LiveClassifier, replay

    frames = (device_sessions("camera", "192.168.1.20", mac(9), 1.8e9, 2, seed=7)
              + device_sessions("plug", "192.168.1.20", mac(9), 1.8e9 + 100, 6, seed=8, sport=41000))
    path = write_pcap(tmp_path / "changing.pcap", frames)

    def paced():  # a heartbeat after every packet: sessions reach the model one by one, in order
        for packet in replay(path, None):
            yield packet
            yield None

    rows = []
    clf = Classifier.load(run, device="cpu")
    stats = LiveClassifier(clf, rows.append, after=8, groups=GroupConfig(aggregator="vote", min_confidence=0.6)).run(paced())
    events = [(r["event"], r["label"]) for r in rows]
    assert events == [("confident", "camera"), ("changed", "plug"), ("final", "plug")]
    assert rows[1]["votes"] == {"plug": 3, "camera": 2} and rows[-1]["sessions"] == 8
    assert stats.decisions == 8


def test_live_by_host_decides_a_batch_session_by_session(run, monkeypatch):
    """Sessions the worker takes together (a backlog) are added one at a time in order of start, so
    a row shows the host as it stood when its label changed, not after the whole batch."""
    from types import SimpleNamespace

    from trafficlens.inference.classifier import Classifier
    from trafficlens.inference.groups import GroupConfig
    from trafficlens.serving.live import LiveClassifier

    clf = Classifier.load(run, device="cpu")
    labels = list(clf.labels)
    starts = [0.0, 1.0] + [100.0 + i for i in range(6)]  # two camera sessions, then six plug sessions
    metas = [{"capture": "live", "src_ip": "192.168.1.20", "ts_start": t, "ts_end": t + 0.5} for t in starts]
    proba = np.eye(len(labels))[[labels.index("camera")] * 2 + [labels.index("plug")] * 6]
    shuffled = [5, 0, 7, 2, 1, 4, 6, 3]  # one batch, out of order
    monkeypatch.setattr(clf, "session_evidence", lambda items, bank=None: ([metas[i] for i in shuffled], proba[shuffled], None))
    rows = []
    live = LiveClassifier(clf, rows.append, groups=GroupConfig(aggregator="vote", min_confidence=0.6))
    live._decide_hosts([SimpleNamespace(items=None, macs=[])])
    assert [(r["event"], r["label"], r["votes"]) for r in rows] == [
        ("confident", "camera", {"camera": 1}), ("changed", "plug", {"plug": 3, "camera": 2})]


def test_live_by_host_memory_is_bounded(run, network):
    """Past max_groups hosts the least recently active is dropped; idle ones expire."""
    from trafficlens.inference.classifier import Classifier
    from trafficlens.inference.groups import GroupConfig
    from trafficlens.serving.live import LiveClassifier, replay

    clf = Classifier.load(run, device="cpu")
    rows = []
    live = LiveClassifier(clf, rows.append, groups=GroupConfig(max_groups=2), host_idle=20.0)
    stats = live.run(replay(network, None))
    dropped = [r for r in rows if r["event"] in ("evicted", "expired")]
    assert stats.hosts["evicted"] + stats.hosts["expired"] == len(dropped) >= 2
    assert len([r for r in rows if r["event"] == "final"]) <= 2
    # every session is in exactly one dropped or final row
    assert sum(r["sessions"] for r in rows if r["event"] in ("evicted", "expired", "final")) == 24


def test_evaluate_by_capture_pools_the_test_captures(run, network, tmp_path):
    """metrics-by-capture.json: metrics.json's schema, one decision per test capture, recomputed here by hand."""
    from trafficlens.datasets import Dataset
    from trafficlens.inference.classifier import Classifier
    from trafficlens.training.bundle import read_split

    result = CliRunner().invoke(cli, ["evaluate", str(run), "--by", "capture", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(cli, ["evaluate", str(run), "-o", str(tmp_path / "eval")]).exit_code == 0
    sessions = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    groups = json.loads((tmp_path / "eval" / "metrics-by-capture.json").read_text())
    assert set(sessions) - {"train_seconds", "epochs", "seconds_per_epoch", "parameters", "run",
                            "inference_sessions_per_s"} <= set(groups)
    assert groups["split"] == sessions["split"] == "capture" and groups["mask"] == "strict"
    assert (tmp_path / "eval" / "report-by-capture.html").read_text().count("<img") == 3

    clf = Classifier.load(run, device="cpu")
    temperature = groups["groups"]["temperature"]
    assert clf.temperature == temperature  # stored for predict --by and live --by host
    ds = Dataset.open(clf.bundle.config["dataset"]["path"])
    test = np.flatnonzero(read_split(run, len(ds)) == 2)
    proba = clf.probabilities({name: ds.tensor(name)[test] for name in clf.inputs})
    logp = calibrated_log_probs(proba, temperature)
    captures = np.array(ds.table.column("capture").to_pylist())[test]
    truth = np.array(ds.labels[test]).astype(str)
    right = [clf.labels[logp[captures == c].sum(0).argmax()] == truth[captures == c][0] for c in sorted(set(captures))]
    assert groups["n"] == groups["groups"]["n_groups"] == len(right) == 3
    assert groups["accuracy"] == pytest.approx(np.mean(right))
    assert groups["groups"]["aggregators"]["session"]["accuracy"] == pytest.approx(sessions["accuracy"])
    curve = groups["groups"]["curve"]["pool"]
    assert curve[-1]["sessions"] == max(np.sum(captures == c) for c in set(captures))
    assert curve[-1]["accuracy"] == pytest.approx(groups["accuracy"])

    # the learned aggregator, fitted on the validation captures, is stored for predict
    learned = json.loads((run / "calibration.json").read_text())["learned"]["capture"]
    assert np.array(learned["coef"]).shape == (3, 10) and learned["C"] in (1.0, 10.0, 100.0)
    assert set(groups["groups"]["aggregators"]) == {"pool", "vote", "learned", "pool_uncalibrated", "session"}
    out = tmp_path / "captures.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(run), str(network), "--by", "capture", "--aggregator",
                                      "learned", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["sessions"] == 24 and row["label"] in KINDS and 0 < row["confidence"] <= 1


def test_learned_aggregator_needs_fitting_first(run, network, tmp_path):
    import shutil

    from trafficlens.inference.classifier import Classifier
    from trafficlens.inference.groups import LearnedAggregator

    bare = tmp_path / "run"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("calibration.json", "evaluation"))
    with pytest.raises(ConfigError, match="evaluate .* --by host"):
        Classifier.load(bare, device="cpu").predict_hosts(network, aggregator="learned")
    coef = np.zeros((3, 10))
    coef[2, 3 + 2] = 1.0  # reads the mean probability of class 2 ("c" below)
    learned = LearnedAggregator(coef, np.zeros(3))
    groups = GroupDecisions(["a", "b", "c"], GroupConfig(aggregator="learned"), LearnedAggregator.from_dict(learned.to_dict(), 3))
    groups.add([{"capture": "x", "src_ip": "h", "ts_start": 0.0, "ts_end": 1.0}], np.array([[0.5, 0.2, 0.3]]))
    row = groups.rows()[0]
    assert row["label"] == "c" and row["confidence"] == pytest.approx(np.exp(0.3) / (2 + np.exp(0.3)))
    with pytest.raises(ConfigError, match="does not fit"):
        LearnedAggregator.from_dict(learned.to_dict(), 4)


def test_auto_aggregator_takes_the_learned_one_where_evaluate_fitted_it(run, network, tmp_path):
    """predict --by, predict_hosts and live default to --aggregator auto: the learned aggregator for
    the groups' kind where `evaluate --by` fitted one (captures here), else pooling (hosts here)."""
    import shutil

    from trafficlens.inference.classifier import Classifier

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("calibration.json", "evaluation"))

    def rows(by, aggregator=None):
        frame = Classifier.load(copy, device="cpu").predict_hosts(network, by=by, **(
            {"aggregator": aggregator} if aggregator else {}))
        return frame.sort_values(["capture", "host"]).to_dict("records")

    assert rows("capture") == rows("capture", "pool")  # nothing fitted: pooling
    result = CliRunner().invoke(cli, ["evaluate", str(copy), "--by", "capture", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    learned, pooled = rows("capture", "learned"), rows("capture", "pool")
    assert [r["confidence"] for r in learned] != pytest.approx([r["confidence"] for r in pooled])
    assert rows("capture") == learned
    assert rows("host") == rows("host", "pool")  # only the capture aggregator was fitted

    out = tmp_path / "auto.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(copy), str(network), "--by", "capture", "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "--aggregator auto: learned" in result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["label"] == learned[0]["label"] and row["confidence"] == pytest.approx(learned[0]["confidence"])


def test_train_group_fits_the_group_decisions_that_predict_then_uses(run, network, tmp_path):
    """`train --group capture --group host` ends as `evaluate --by` would: the learned aggregators
    stored in the run (predict's --aggregator auto takes them) and metrics-by-BY.json written."""
    ds = run.parent / "ds"
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(ds), "--model", "chen-cnn", "-o", str(out), "--batch-size", "16",
                                      "--epochs", "4", "--quiet", "--group", "capture", "--group", "host"])
    assert result.exit_code == 0, result.output
    learned = json.loads((out / "calibration.json").read_text())["learned"]
    assert set(learned) == {"capture", "host"}
    for by in ("capture", "host"):
        metrics = json.loads((out / "evaluation" / f"metrics-by-{by}.json").read_text())
        assert metrics["groups"]["n_groups"] == metrics["n"] == 3 and metrics["split"] == "capture"
        assert f"metrics-by-{by}.json" in result.output
    predicted = tmp_path / "hosts.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(out), str(network), "--by", "capture", "-o", str(predicted),
                                      "--device", "cpu"])
    assert result.exit_code == 0 and "--aggregator auto: learned" in result.output, result.output

    result = CliRunner().invoke(cli, ["train", str(ds), "--model", "chen-cnn", "-o", str(tmp_path / "none"),
                                      "--split", "none", "--group", "capture"])
    assert result.exit_code == 2 and "--split none" in result.output and not (tmp_path / "none").exists()


def test_evaluate_by_refuses_what_it_cannot_score(run):
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--by", "capture", "--window", "5m"])
    assert isinstance(result.exception, ConfigError) and "--window" in str(result.exception)


def test_groups_curve_and_fit_follow_each_group_in_time_order():
    from trafficlens.evaluation.by_group import Groups

    # group g1 (class 0): wrong first (b), then right twice; g2 (class 1): one session, right
    keys = [("g1",), ("g2",), ("g1",), ("g1",)]
    times = np.array([2.0, 0.0, 0.0, 1.0])  # g1 in time order: row 2 (a), row 3 (b), row 0 (a)
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    groups = Groups(keys, times, np.array([0, 1, 0, 0]), 2)
    assert groups.n == 2 and list(groups.sizes) == [3, 1] and groups.mixed == 0
    vote = groups.curve(proba, "vote", 1.0)
    # g1 after 1 session: a (right); after 2: a-b tie, pooled 0.6*0.1 < 0.4*0.9 -> b (wrong); after 3: a
    assert [(p["sessions"], p["accuracy"], p["groups_with_n"]) for p in vote] == [(1, 1.0, 2), (2, 0.5, 1), (3, 1.0, 1)]
    until = groups.until_right(proba, "vote", 1.0, ["a", "b"])
    assert until["a"] == {"groups": 1, "right_at_end": 1.0, "median_sessions_until_right": 3.0}
    assert until["b"]["median_sessions_until_right"] == 1.0
    fit = groups.open_set_fit("mean_top_probability", proba, 1.0)  # the mean of each session's top probability
    assert fit[0] == pytest.approx((0.8 + 0.6 + 0.9) / 3) and fit[1] == pytest.approx(0.7)
    calibrated = groups.open_set_fit("mean_top_probability", proba, 2.0)[1]
    assert calibrated == pytest.approx(np.sqrt(0.7) / (np.sqrt(0.7) + np.sqrt(0.3)))  # calibrated first
    pooled = groups.open_set_fit("mean_log_probability", proba, 1.0)  # the default
    # pooled, g1 goes to b (0.4 * 0.9 * 0.2 > 0.6 * 0.1 * 0.8): its fit is b's mean log-probability
    assert pooled[0] == pytest.approx(np.log([0.4, 0.9, 0.2]).mean()) and pooled[1] == pytest.approx(np.log(0.7))
    report = groups.report(proba, "pool", 1.0, ["a", "b"])
    assert report["n"] == 2 and report["accuracy"] == 0.5 and report["per_class"]["b"]["precision"] == 0.5


def test_evaluate_by_capture_scores_held_out_classes_as_open_set(run, tmp_path):
    """A class left out of training: its captures are scored against a threshold set on validation."""
    from trafficlens.datasets import Dataset
    from trafficlens.evaluation.by_group import UNKNOWN_RATE, evaluate_groups
    from trafficlens.inference.classifier import Classifier
    from trafficlens.inference.open_set import rate_interval
    from trafficlens.training import TrainConfig, train_run
    from trafficlens.training.bundle import read_split

    ds_path = Classifier.load(run, device="cpu").bundle.config["dataset"]["path"]
    open_run = tmp_path / "run"
    train_run(ds_path, open_run, "chen-cnn", TrainConfig(batch_size=16, max_epochs=10, exclude_classes=("bulb",)),
              progress=False, log=lambda m: None)
    open_set = evaluate_groups(open_run, "capture", out=tmp_path / "eval")["groups"]["open_set"]
    assert open_set["held_out_classes"] == ["bulb"] and open_set["held_out_groups"] == 3

    clf = Classifier.load(open_run, device="cpu")
    ds = Dataset.open(ds_path)
    side = read_split(open_run, len(ds))
    captures = np.array(ds.table.column("capture").to_pylist())
    labels = np.array(ds.labels).astype(str)
    temperature = json.loads((open_run / "calibration.json").read_text())["temperature"]

    def embeddings(rows):
        return clf.outputs({n: ds.tensor(n)[rows] for n in clf.inputs}, embed=True)[1]

    training = embeddings(np.flatnonzero((side == 0) & (labels != "bulb")))
    assert np.allclose(np.linalg.norm(training, axis=1), 1.0, atol=1e-5)

    def fits(rows, score):  # per capture
        if score == "embedding_distance":  # each session's cosine distance to its nearest training session, averaged
            distance = 1 - np.array([max(float(e @ t) for t in training) for e in embeddings(rows)])
            return np.array([-distance[captures[rows] == c].mean() for c in sorted(set(captures[rows]))])
        logp = calibrated_log_probs(clf.probabilities({n: ds.tensor(n)[rows] for n in clf.inputs}), temperature)
        if score == "mean_top_probability":  # each session's top probability, averaged
            return np.array([np.exp(logp[captures[rows] == c].max(1)).mean() for c in sorted(set(captures[rows]))])
        return np.array([logp[captures[rows] == c].mean(0).max() for c in sorted(set(captures[rows]))])

    for score in ("embedding_distance", "mean_top_probability", "mean_log_probability"):
        threshold = np.quantile(fits(np.flatnonzero(side == 1), score), UNKNOWN_RATE)
        got = open_set["scores"][score]
        assert got["threshold"] == pytest.approx(threshold, abs=1e-6)
        held = fits(np.flatnonzero(labels == "bulb"), score)
        assert got["held_out_called_unknown"] == pytest.approx(np.mean(held < threshold))
        known = fits(np.flatnonzero(side == 2), score)
        assert got["known_test_called_unknown"] == pytest.approx(np.mean(known < threshold))
        assert got["auroc"] == pytest.approx(np.mean(held[:, None] < known[None, :]) + 0.5 * np.mean(held[:, None] == known[None, :]))
        assert got["held_out_called_unknown_by_class"] == {"bulb": pytest.approx(np.mean(held < threshold))}
    # a deep model's fit is the embedding distance, its bank kept beside the calibration
    assert open_set["score"] == "embedding_distance"
    assert open_set["threshold"] == open_set["scores"]["embedding_distance"]["threshold"]
    calibration = json.loads((open_run / "calibration.json").read_text())
    stored = calibration["open_set"]["capture"]
    assert stored["threshold"] == pytest.approx(open_set["threshold"]) and stored["score"] == "embedding_distance"
    # the share of known groups such a threshold calls unknown, as a 90% interval from the validation groups' count
    interval = rate_interval(UNKNOWN_RATE, stored["validation_groups"])
    assert stored["known_called_unknown_90"] == pytest.approx(list(interval)) == open_set["known_called_unknown_90"]
    assert interval[0] < UNKNOWN_RATE < interval[1]
    assert calibration["open_set_bank"]["sessions"] == len(training) and (open_run / "openset-bank.npy").is_file()

    # predict --by capture --open-set on the held-out class's capture files: unknown exactly where
    # the evaluation's fit is under the threshold (the same sessions, the same bank)
    held = fits(np.flatnonzero(labels == "bulb"), "embedding_distance")
    bulbs = sorted((Path(ds_path).parent / "train" / "bulb").glob("*.pcap"))
    table = clf.predict_hosts(bulbs, by="capture", open_set=True)
    assert len(table) == 3 and (table["label"] == "unknown").sum() == int((held < open_set["threshold"]).sum())
    assert set(table["status"][table["label"] == "unknown"]) <= {"unknown_device"}
    assert (clf.predict_hosts(bulbs, by="capture")["label"] != "unknown").all()  # without --open-set: a known label
    # the command says which rule it applies, and writes the same decisions
    result = CliRunner().invoke(cli, ["predict", str(open_run), *map(str, bulbs), "--by", "capture", "--open-set",
                                      "-o", str(tmp_path / "groups.csv")])
    assert result.exit_code == 0, result.output
    assert (f"--open-set: a group is unknown when its embedding distance fit is under {open_set['threshold']:.4g}"
            in result.stderr)
    assert (f"expect it to call {interval[0]:.0%}-{interval[1]:.0%} of known groups unknown, a 90% interval from "
            f"{stored['validation_groups']} validation groups" in result.stderr)
    import pandas as pd

    assert list(pd.read_csv(tmp_path / "groups.csv")["label"]) == list(table["label"])

    # live --by host --open-set takes the same fit, session by session, from the hosts' threshold
    evaluate_groups(open_run, "host", out=tmp_path / "eval-host")
    expected = clf.predict_hosts(bulbs[:1], by="host", open_set=True)
    rows, _ = _live([str(open_run), "-r", str(bulbs[0]), "--speed", "0", "--by", "host", "--open-set"], tmp_path)
    final = {r["host"]: (r["label"], r["status"]) for r in rows if r["event"] == "final"}
    assert final == {h: (label, status) for h, label, status in zip(expected["host"], expected["label"], expected["status"])}

    # a bank that is not the one calibration.json names is refused, in one line, by a classifier
    # that has not read it yet (one that has keeps the checked copy it holds)
    bank = open_run / "openset-bank.npy"
    bank.write_bytes(bank.read_bytes()[:-4] + b"\0\0\0\0")
    assert len(clf.predict_hosts(bulbs, by="capture", open_set=True)) == 3
    with pytest.raises(BundleError, match="openset-bank.npy: does not match the SHA-256 in calibration.json"):
        Classifier.load(open_run, device="cpu").predict_hosts(bulbs, by="capture", open_set=True)


def test_the_embedding_bank_finds_each_session_s_nearest_training_session():
    from trafficlens.inference.open_set import _CHUNK, EmbeddingBank, bank_rows

    rng = np.random.default_rng(3)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    train, sessions = unit(rng.normal(size=(300, 8))), unit(rng.normal(size=(_CHUNK + 37, 8)))  # more than one chunk
    sessions[:5] = train[[7, 0, 299, 7, 150]]  # sessions the model was trained on: distance 0
    got = EmbeddingBank(train).distances(sessions)
    expect = np.array([min(1 - float(s @ t) for t in train) for s in sessions])
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert np.allclose(got[:5], 0.0, atol=1e-6) and (got[5:] > 0.01).all()
    assert EmbeddingBank(train[:1]).distances(-train[:1]) == pytest.approx([2.0])  # the opposite direction: the farthest
    assert EmbeddingBank(train).distances(np.zeros((0, 1), np.float32)).shape == (0,)  # no sessions: nothing to compare
    with pytest.raises(BundleError, match="do not match the open-set bank's 8 dimensions"):
        EmbeddingBank(train).distances(sessions[:, :4])
    # a bank keeps every training session up to its limit, then a seeded sample of distinct rows
    assert list(bank_rows(np.arange(10), limit=20)) == list(range(10))
    sample = bank_rows(np.arange(100, 1100), seed=1, limit=50)
    assert len(set(sample)) == 50 and set(sample) <= set(range(100, 1100)) and list(sample) == sorted(sample)
    assert list(sample) == list(bank_rows(np.arange(100, 1100), seed=1, limit=50))


def test_a_group_that_fits_no_known_class_is_an_unknown_device():
    """GroupDecisions with an open-set threshold (predict, live and serve share it): a mean over the
    sessions decides, not the pooled confidence, which grows with n. The default fit, the mean
    log-probability of the pooled class, also flags sessions that are sure but disagree."""
    labels = ["a", "b"]
    metas = [{"capture": "x", "src_ip": ip, "ts_start": float(i), "ts_end": i + 0.5}
             for i, ip in enumerate(["1.1.1.1"] * 6 + ["2.2.2.2"] * 2)]
    # host 1: six sessions leaning to a at 0.58 (pooled: very sure of a); host 2: two at 0.95 / 0.85
    proba = np.array([[0.58, 0.42]] * 6 + [[0.95, 0.05], [0.15, 0.85]])
    rows = {}
    for below in (None, 0.6):
        groups = GroupDecisions(labels, GroupConfig(aggregator="pool", unknown_below=below,
                                                    unknown_score="mean_top_probability"))
        groups.add(metas, proba)
        rows[below] = {r["host"]: r for r in groups.rows()}
    assert rows[None]["1.1.1.1"]["label"] == "a" and rows[None]["1.1.1.1"]["confidence"] > 0.85
    assert (rows[0.6]["1.1.1.1"]["label"], rows[0.6]["1.1.1.1"]["status"]) == ("unknown", "unknown_device")
    assert rows[0.6]["1.1.1.1"]["top_k"] == rows[None]["1.1.1.1"]["top_k"]  # the evidence is still shown
    assert (rows[0.6]["2.2.2.2"]["label"], rows[0.6]["2.2.2.2"]["status"]) == ("a", "ok")  # mean top 0.9
    # mean log-probability of the pooled class: host 1 log 0.58 = -0.545; host 2 pools to a,
    # (log 0.95 + log 0.15) / 2 = -0.974: two sure sessions that disagree fit no class well
    groups = GroupDecisions(labels, GroupConfig(aggregator="pool", unknown_below=-0.7))
    groups.add(metas, proba)
    by_host = {r["host"]: r for r in groups.rows()}
    assert (by_host["1.1.1.1"]["label"], by_host["2.2.2.2"]["status"]) == ("a", "unknown_device")
    assert groups.state(("x", "2.2.2.2", None)).open_set_fit("mean_log_probability") == \
        pytest.approx(np.log([0.95, 0.15]).mean())
    with pytest.raises(ConfigError, match="unknown_below"):
        GroupConfig(unknown_below=1.5, unknown_score="mean_top_probability")
    with pytest.raises(ConfigError, match=r"unknown_below \(mean_log_probability\) must be in \[-inf, 0\]"):
        GroupConfig(unknown_below=0.6)
    with pytest.raises(ConfigError, match="unknown_score must be one of"):
        GroupConfig(unknown_score="energy")
