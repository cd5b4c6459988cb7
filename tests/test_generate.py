"""trafficlens generate: the plan, labels from captures, and (with root and tcpdump) real runs.

The tests that build namespaces and run real clients and servers skip, printing why, where
that cannot work (not root, no `ip netns`, no tcpdump, class dependencies missing).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from captures import tcp_frame, tcp_session, udp_frame, write_pcap
from trafficlens.cli import cli
from trafficlens.errors import ConfigError
from trafficlens.generate import GenerateConfig
from trafficlens.generate import labels as lab
from trafficlens.generate.apps import CLASSES, robot
from trafficlens.generate.apps.imap import USERS as IMAP_USERS
from trafficlens.generate.capture import check_frames
from trafficlens.generate.cli import _range
from trafficlens.generate.run import plan

ROBOT = [name for name in CLASSES if name.startswith("robot-")]


# -- the plan ------------------------------------------------------------------------------------
def test_plan_is_reproducible_and_mixes_classes():
    config = GenerateConfig(out="x", classes=("robot-mqtt", "quic", "dns"), sessions=40, seed=7, per_capture=30)
    a, servers_a = plan(config, config.classes)
    b, servers_b = plan(config, config.classes)
    assert a == b and servers_a == servers_b
    assert plan(GenerateConfig(out="x", classes=config.classes, sessions=40, seed=8), config.classes)[0] != a
    assert len({s["client_ip"] for s in a}) == len(a) == 120  # one address per session: the label key
    for r in {s["round"] for s in a}:
        in_round = [s for s in a if s["round"] == r]
        assert len(in_round) <= 30
        assert len({s["cls"] for s in in_round}) >= 2  # no capture holds a single class
    lo, hi = config.rtt
    assert all(lo / 2 <= s["impairment"]["delay"] <= hi / 2 for s in a)
    # Server ports and host names are shared across classes, not a property of one class.
    assert {s["port"] for s in a if s["cls"] == "robot-mqtt"} & {s["port"] for s in a if s["cls"] == "quic"}
    hosts = {c: {s["host"] for s in a if s["cls"] == c} for c in config.classes}
    assert hosts["robot-mqtt"] & hosts["quic"] & hosts["dns"]


def test_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="--classes: unknown nope"):
        GenerateConfig(out="x", classes=("nope",))
    with pytest.raises(ConfigError, match="--rtt"):
        GenerateConfig(out="x", rtt=(0.08, 0.01))
    with pytest.raises(ConfigError, match="--snaplen"):
        GenerateConfig(out="x", snaplen=20)


def test_an_earlier_output_is_kept_without_overwrite(tmp_path):
    from trafficlens.generate import generate

    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "capture-000.pcap.gz").write_bytes(b"x")
    with pytest.raises(ConfigError, match="earlier run.*--overwrite"):
        generate(GenerateConfig(out=str(tmp_path), classes=("dns",), sessions=1))
    assert (tmp_path / "capture-000.pcap.gz").exists()


def test_range_parsing():
    assert _range("10-80ms", "ms", "--rtt") == pytest.approx((0.01, 0.08))
    assert _range("20ms", "ms", "--rtt") == pytest.approx((0.02, 0.02))
    assert _range("0-0.2%", "%", "--loss") == pytest.approx((0.0, 0.002))
    result = CliRunner().invoke(cli, ["generate", "-o", "x", "--rtt", "fast"])
    assert result.exit_code != 0 and "--rtt" in result.output


def test_list_names_every_class():
    result = CliRunner().invoke(cli, ["generate", "--list"])
    assert result.exit_code == 0
    for name in CLASSES:
        assert name in result.output


def test_robot_commands_differ_in_size_and_timing():
    import random

    rng = random.Random(0)
    stats = {}
    for command in robot.COMMANDS:
        steps = [s for _ in range(30) for s in robot.script(command, rng)]
        stats[command] = (sum(s.request for s in steps) / len(steps), sum(s.frames * s.frame_bytes + s.reply for s in steps) / len(steps))
    assert stats["camera-stream"][1] > 20 * stats["move"][1]  # frames dwarf acknowledgements
    assert stats["arm"][0] > 2 * stats["light"][0]
    step = robot.script("status", rng)[0]
    msg = robot.request("status", 3, step)
    assert len(msg) == step.request and len(robot.reply(robot.parse(msg))) == step.reply


# -- labels from a capture -------------------------------------------------------------------------
def test_labels_follow_the_session_address(tmp_path):
    frames = tcp_session(client="10.64.0.5", server="10.160.0.9", sport=40001, dport=443,
                         requests=(b"\x17\x03\x03" + bytes(60),), responses=(b"\x17\x03\x03" + bytes(200),))
    frames += tcp_session(client="10.64.0.6", server="10.160.0.9", sport=40002, dport=8883, t0=1.0,
                          requests=(b"\x17\x03\x03" + bytes(90),), responses=(b"\x17\x03\x03" + bytes(20000 % 1400),))
    frames += [(2.0, udp_frame(b"\x12\x34" + bytes(30), src="10.64.0.7", dst="10.160.0.1", sport=5000, dport=53)),
               (2.1, udp_frame(b"\x12\x34" + bytes(60), src="10.160.0.1", dst="10.64.0.7", sport=53, dport=5000)),
               (3.0, tcp_frame(b"noise", src="192.0.2.1", dst="192.0.2.2"))]  # no session: not labelled
    pcap = write_pcap(tmp_path / "lab" / "capture-000.pcap", frames)
    sessions = {"10.64.0.5": {"id": 0, "cls": "robot-https", "command": "move"},
                "10.64.0.6": {"id": 1, "cls": "robot-mqtt", "command": "camera-stream"},
                "10.64.0.7": {"id": 2, "cls": "dns", "command": "udp-query"}}
    rows = lab.flows(str(pcap), sessions)
    assert [(r["src_ip"], r["dst_port"], r["protocol"], r["application"], r["command"]) for r in rows] == [
        ("10.64.0.5", 443, "TCP", "robot-https", "move"),
        ("10.64.0.6", 8883, "TCP", "robot-mqtt", "camera-stream"),
        ("10.64.0.7", 53, "UDP", "dns", "udp-query"),
    ]
    labels_csv = tmp_path / "lab" / "labels.csv"
    assert lab.write(str(labels_csv), rows) == 3

    from trafficlens.prep.config import PrepConfig
    from trafficlens.datasets.dataset import Dataset
    from trafficlens.prep.local import prep

    for column, expected in (("label", {"robot-https", "robot-mqtt", "dns"}), ("command", {"move", "camera-stream", "udp-query"})):
        out = prep([tmp_path / "lab"], tmp_path / f"ds-{column}", PrepConfig(labels=f"csv:{labels_csv}", label_column=column), workers=1)
        assert set(Dataset.open(out).table.to_pandas()["label"]) == expected


def test_check_frames_finds_a_bad_checksum(tmp_path):
    good = tcp_frame(b"hello")
    bad = bytearray(good)
    bad[-1] ^= 0xFF  # payload changed, checksum not
    pcap = write_pcap(tmp_path / "c.pcap", [(0.0, good), (0.1, bytes(bad))])
    result = check_frames(str(pcap))
    assert result["frames"] == 2 and result["l4_checked"] == 2 and result["l4_bad"] == 1 and result["ip_bad"] == 0


# -- real runs (root, namespaces, tcpdump) -------------------------------------------------------------
def _why_not_live() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root for network namespaces (ip netns); run the tests as root"
    if not shutil.which("ip"):
        return "the `ip` command (iproute2) is missing"
    if not (shutil.which("tcpdump") or os.path.exists("/usr/sbin/tcpdump")):
        return "tcpdump is missing (apt-get install tcpdump)"
    probe = subprocess.run(["ip", "netns", "add", "tlgprobe"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", "tlgprobe"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace here: {probe.stderr.strip()}"
    return None


WHY_NOT = _why_not_live()
live = pytest.mark.skipif(WHY_NOT is not None, reason=f"generate needs namespaces: {WHY_NOT}")
# The three classes the CI run uses: robot classes first, whichever have their dependencies.
PREFERRED = ["robot-https", "robot-wss", "robot-mqtt", "robot-grpc", "dns", "quic", "ssh"]
READY = [c for c in PREFERRED if not CLASSES[c].missing()]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("tlg")}


@live
def test_topology_leaves_nothing_behind():
    from trafficlens.generate.topology import Topology

    before = _namespaces()
    topo = Topology(server_addresses=["10.160.0.1"], client_addresses=["10.64.0.1"])
    with topo:
        assert set(topo.namespaces) <= _namespaces()
        sleeper = subprocess.Popen([*topo.exec_prefix(topo.server_ns), "sleep", "300"])
        time.sleep(0.2)
        # Offloads stay off after the move into the namespace.
        probe = subprocess.run([*topo.exec_prefix(topo.server_ns), sys.executable, "-c",
                                "import json; from trafficlens.generate.topology import offloads; print(json.dumps(offloads('s0')))"],
                               capture_output=True, text=True, check=True)
        assert not any(json.loads(probe.stdout).values())
        mtu = subprocess.run(["ip", "-n", topo.server_ns, "link", "show", "s0"], capture_output=True, text=True).stdout
        assert "mtu 1500" in mtu
    assert sleeper.wait(timeout=5) is not None  # killed by the teardown
    assert _namespaces() == before
    assert not subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.count(f"tlg{topo.run_id}")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    if WHY_NOT:
        pytest.skip(f"generate needs namespaces: {WHY_NOT}")
    if len(READY) < 3:
        pytest.skip(f"fewer than three classes have their dependencies here: ready {READY}; pip install 'trafficlens[generate]'")
    out = tmp_path_factory.mktemp("gen") / "lab"
    before = _namespaces()
    result = CliRunner().invoke(cli, ["generate", "-o", str(out), "--classes", ",".join(READY[:3]), "--sessions", "5",
                                      "--seed", "3", "--per-capture", "8", "--rtt", "5-40ms"])
    assert result.exit_code == 0, result.output
    assert _namespaces() == before
    return out, json.loads((out / "manifest.json").read_text())


@pytest.mark.slow
def test_small_run_captures_cleanly(small_run):
    out, manifest = small_run
    assert sum(c["ok"] for c in manifest["sessions"].values()) == 15, manifest["errors"]
    assert len(manifest["captures"]) == 2
    t = manifest["totals"]
    assert t["captured"] > 100 and t["dropped"] == 0 and t["ip_bad"] == 0 and t["l4_bad"] == 0
    assert all(c["max_frame"] <= 1514 for c in manifest["captures"])  # no offload super-frames


@pytest.mark.slow
def test_every_session_is_labelled_through_prep(small_run, tmp_path):
    out, manifest = small_run
    from trafficlens.prep.config import PrepConfig
    from trafficlens.datasets.dataset import Dataset
    from trafficlens.prep.local import prep

    with open(out / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["session"]) for r in rows} == set(range(15))  # every session has labelled flows
    ds = prep([out], tmp_path / "ds", PrepConfig(labels=f"csv:{out / 'labels.csv'}", unlabeled="as:UNLABELLED"), workers=1)
    table = Dataset.open(ds).table.to_pandas()
    assert "UNLABELLED" not in set(table["label"])  # every captured session matched a label row
    assert set(table["label"]) == set(READY[:3])
    ds = prep([out], tmp_path / "ds-cmd", PrepConfig(labels=f"csv:{out / 'labels.csv'}", label_column="command"), workers=1)
    commands = set(Dataset.open(ds).table.to_pandas()["label"])
    assert commands and commands <= {c for name in READY[:3] for c in CLASSES[name].commands}


SECRETS = [b'{"c":"', *(f'"{c}"'.encode() for c in robot.COMMANDS)]


def _plaintext_hits(pcap, clients: set[str], needles: list[bytes]) -> int:
    """Packets of the given clients whose captured payload holds one of the needles."""
    from trafficlens.capture.decode import decode
    from trafficlens.capture.reader import CaptureReader

    hits = 0
    for raw in CaptureReader(pcap):
        pkt = decode(raw)
        if isinstance(pkt, str) or pkt.l7 >= pkt.end:
            continue
        if {".".join(map(str, pkt.src)), ".".join(map(str, pkt.dst))} & clients:
            payload = pkt.frame[pkt.l7:pkt.end]
            hits += any(n in payload for n in needles)
    return hits


def test_plaintext_search_finds_a_command_in_clear(tmp_path):
    step = robot.script("move", __import__("random").Random(0))[0]
    clear = robot.request("move", 0, step)
    pcap = write_pcap(tmp_path / "c.pcap", tcp_session(client="10.64.0.9", requests=(clear,)))
    assert _plaintext_hits(pcap, {"10.64.0.9"}, SECRETS) == 1
    assert _plaintext_hits(pcap, {"10.64.0.10"}, SECRETS) == 0


@pytest.mark.slow
def test_tls_payloads_hide_the_commands(small_run):
    out, _ = small_run
    with open(out / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    tls_clients = {r["src_ip"] for r in rows if r["application"] in ROBOT}
    assert tls_clients
    for pcap in sorted(out.glob("*.pcap")):
        assert _plaintext_hits(pcap, tls_clients, SECRETS) == 0, f"{pcap.name}: plaintext command in a TLS session"


@live
@pytest.mark.slow
def test_interrupted_run_tears_everything_down(tmp_path):
    if not READY:
        pytest.skip("no class has its dependencies here")
    before = _namespaces()
    proc = subprocess.Popen([sys.executable, "-m", "trafficlens", "generate", "-o", str(tmp_path / "lab"),
                             "--classes", READY[0], "--sessions", "30"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (_namespaces() - before):
        time.sleep(0.2)
    assert _namespaces() - before, "the run never built its namespaces"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _namespaces() == before, err
    assert "Traceback" not in err


@live
@pytest.mark.slow
def test_user_namespace_path_captures_with_dumpcap(tmp_path):
    """The path taken without root: a user + network + mount namespace, dumpcap instead of tcpdump."""
    if not (shutil.which("unshare") and shutil.which("dumpcap")):
        pytest.skip("needs unshare and dumpcap (apt-get install wireshark-common) for the user-namespace path")
    ready = [c for c in ("robot-https", "dns") if not CLASSES[c].missing()]
    if not ready:
        pytest.skip("robot-https and dns lack their dependencies here")
    from trafficlens.generate.topology import USERNS_ENV, unprivileged_argv

    out = tmp_path / "lab"
    before = _namespaces()
    argv = unprivileged_argv([sys.executable, "-m", "trafficlens", "generate", "-o", str(out), "--classes",
                              ",".join(ready), "--sessions", "2"])
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, USERNS_ENV: "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["link"]["capture_tool"] == "dumpcap"
    assert sum(c["ok"] for c in manifest["sessions"].values()) == 2 * len(ready)
    assert manifest["totals"]["dropped"] == 0 and manifest["totals"]["l4_bad"] == 0
    assert _namespaces() == before  # the namespaces lived inside the user namespace and died with it


@live
@pytest.mark.slow
def test_every_available_class_completes_sessions(tmp_path):
    """One run over every class whose dependencies are here: each plays real sessions end to end."""
    ready = [c for c in CLASSES if not CLASSES[c].missing()]
    if not ready:
        pytest.skip("no class has its dependencies here; pip install 'trafficlens[generate]'")
    result = CliRunner().invoke(cli, ["generate", "-o", str(tmp_path / "lab"), "--classes", ",".join(ready),
                                      "--sessions", "2", "--seed", "5", "--per-capture", "100"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    assert {c: v["ok"] for c, v in manifest["sessions"].items()} == {c: 2 for c in ready}, manifest["errors"]
    with open(tmp_path / "lab" / "labels.csv") as fh:
        assert {r["application"] for r in csv.DictReader(fh)} == set(ready)


# Plaintext that must not cross the wire in the classes that encrypt after a clear start.
HIDDEN = {
    "p2p": [b"BitTorrent protocol"],  # the handshake, hidden by forced RC4 stream encryption
    "imap": [*(p.encode() for p in IMAP_USERS.values()), b" FETCH ", b"Subject:"],  # login and mail, after STARTTLS
    "webrtc": [b"a=fingerprint:", b"a=ice-pwd:"],  # the SDP, signalled over HTTPS
}


@live
@pytest.mark.slow
def test_webrtc_p2p_imap_encrypt_and_label_every_flow(tmp_path):
    ready = [c for c in HIDDEN if not CLASSES[c].missing()]
    if not ready:
        pytest.skip("none of webrtc, p2p, imap has its dependencies here (pip install aiortc libtorrent; "
                    "apt-get install dovecot-imapd)")
    out = tmp_path / "lab"
    result = CliRunner().invoke(cli, ["generate", "-o", str(out), "--classes", ",".join(ready), "--sessions", "3",
                                      "--seed", "11"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {c: v["ok"] for c, v in manifest["sessions"].items()} == {c: 3 for c in ready}, manifest["errors"]
    assert manifest["totals"]["dropped"] == 0 and manifest["totals"]["l4_bad"] == 0
    with open(out / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    pcaps = sorted(out.glob("*.pcap"))
    for name in ready:
        clients = {r["src_ip"] for r in rows if r["application"] == name}
        assert len(clients) == 3
        for pcap in pcaps:
            assert _plaintext_hits(pcap, clients, HIDDEN[name]) == 0, f"{name}: plaintext in {pcap.name}"
    if "webrtc" in ready:  # signalling (TCP) and media (UDP) both labelled, for every call
        by_session: dict[str, set] = {}
        for r in rows:
            if r["application"] == "webrtc":
                by_session.setdefault(r["session"], set()).add(r["protocol"])
        assert all(protos == {"TCP", "UDP"} for protos in by_session.values()), by_session
    if "imap" in ready:  # the conversation did start in clear, as STARTTLS does
        imap_clients = {r["src_ip"] for r in rows if r["application"] == "imap"}
        assert sum(_plaintext_hits(p, imap_clients, [b"STARTTLS"]) for p in pcaps) >= 3


@live
def test_cleanup_removes_what_a_killed_run_left():
    from trafficlens.generate.topology import Topology

    topo = Topology(client_addresses=["10.64.0.1"], server_addresses=["10.160.0.1"]).up()  # never torn down
    sleeper = subprocess.Popen([*topo.exec_prefix(topo.client_ns), "sleep", "300"])
    result = CliRunner().invoke(cli, ["generate", "--cleanup"])
    assert result.exit_code == 0 and "removed 3 namespaces" in result.output
    assert not set(topo.namespaces) & _namespaces()
    assert sleeper.wait(timeout=5) is not None
