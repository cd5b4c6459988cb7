"""Label sources: dir, file regex, csv (per file, per flow with time), ndpi, presets."""

import pytest

from trafficlens.prep.labels import Labeler
from trafficlens.errors import ConfigError


def _meta(src="10.0.0.1", sport=5000, dst="10.0.0.2", dport=443, proto="TCP", start=100.0):
    return dict(src_ip=src, src_port=sport, dst_ip=dst, dst_port=dport, protocol=proto, ts_start=start)


def test_dir_and_file_regex(tmp_path):
    assert Labeler("dir").bind(tmp_path / "Aria" / "Setup-A-1.pcap", "Aria/Setup-A-1.pcap")(_meta()) == "Aria"
    lab = Labeler(r"file:^([a-z]+)_").bind(tmp_path / "skype_chat1.pcap", "skype_chat1.pcap")
    assert lab(_meta()) == "skype"
    assert Labeler(r"file:^([a-z]+)_").bind(tmp_path / "X.pcap", "X.pcap")(_meta()) is None
    with pytest.raises(ConfigError, match="bad regular expression"):
        Labeler("file:([")


def test_csv_per_file_and_per_flow_either_direction(tmp_path):
    per_file = tmp_path / "files.csv"
    per_file.write_text("file,label\na.pcap,web\nsub/b.pcap,mail\n")
    lab = Labeler(f"csv:{per_file}")
    assert lab.bind(tmp_path / "a.pcap", "a.pcap")(_meta()) == "web"
    assert lab.bind(tmp_path / "sub" / "b.pcap", "sub/b.pcap")(_meta()) == "mail"
    assert lab.bind(tmp_path / "c.pcap", "c.pcap")(_meta()) is None

    flows = tmp_path / "flows.csv"
    flows.write_text(
        "file,src_ip,src_port,dst_ip,dst_port,protocol,ts_start,ts_end,application,command\n"
        "lab.pcap,10.0.0.1,5000,10.0.0.2,443,TCP,100,110,robot-mqtt,light\n"
        "lab.pcap,10.0.0.1,5000,10.0.0.2,443,TCP,200,210,robot-https,move\n"
    )
    lab = Labeler(f"csv:{flows}", column="application").bind(tmp_path / "lab.pcap", "lab.pcap")
    assert lab(_meta(start=100.2)) == "robot-mqtt"
    # the responder's side of the same session, later reuse of the 5-tuple
    assert lab(_meta(src="10.0.0.2", sport=443, dst="10.0.0.1", dport=5000, start=200.0)) == "robot-https"
    assert lab(_meta(start=150.0)) is None
    assert Labeler(f"csv:{flows}", column="command").bind(tmp_path / "lab.pcap", "lab.pcap")(_meta(start=205)) == "move"
    with pytest.raises(ConfigError, match="no column 'nope'"):
        Labeler(f"csv:{flows}", column="nope")


def test_ndpi_table(tmp_path):
    table = tmp_path / "labels.tsv"
    table.write_text(
        "file\tl4\taddr_a\tport_a\taddr_b\tport_b\tmaster\tapp\n"
        "x.pcap\tTCP\t10.0.0.2\t443\t10.0.0.1\t5000\tTLS\tGoogle\n"
    )
    lab = Labeler(f"ndpi:{table}").bind(tmp_path / "x.pcap", "x.pcap")
    assert lab(_meta()) == "Google"
    master = Labeler(f"ndpi:{table}", column="master").bind(tmp_path / "x.pcap", "x.pcap")
    assert master(_meta()) == "TLS"
    assert master(_meta(proto="UDP")) is None


@pytest.mark.parametrize(
    "name, app, service, vpn",
    [
        ("aim_chat_3a.pcap", "AIMchat", "chat", "non-vpn"),
        ("vpn_bittorrent.pcap", "Torrent", "p2p", "vpn"),
        ("Torrent01.pcapng", "Torrent", "p2p", "non-vpn"),
        ("torTwitter.pcap", "tor", "browsing", "tor"),
        ("gmailchat1.pcapng", "Gmail", "chat", "non-vpn"),
        ("email1a.pcap", "E-mail", "email", "non-vpn"),
        ("vpn_skype_audio1.pcap", "Skype", "voip", "vpn"),
        ("sftpDown1.pcap", "Sftp", "file-transfer", "non-vpn"),
        ("scpUp1.pcap", "Scp", "file-transfer", "non-vpn"),
        ("youtubeHTML5_1.pcap", "Youtube", "streaming", "non-vpn"),
    ],
)
def test_iscx_preset(tmp_path, name, app, service, vpn):
    lab = Labeler("preset:iscx-vpn2016").bind(tmp_path / name, name)
    assert lab(_meta()) == app
    assert lab.extra(_meta()) == {"service": service, "vpn": vpn}


def test_ustc_preset(tmp_path):
    lab = Labeler("preset:ustc-tfc2016")
    assert lab.bind(tmp_path / "SMB-1.pcap", "SMB-1.pcap")(_meta()) == "SMB"
    assert lab.bind(tmp_path / "Nsis-ay.pcap", "Nsis-ay.pcap")(_meta()) == "Nsis-ay"
    assert lab.bind(tmp_path / "World of Warcraft.pcap", "x")(_meta()) == "WorldOfWarcraft"
    assert lab.extra(_meta()) == {"kind": "benign"}
    with pytest.raises(ConfigError, match="unknown preset"):
        Labeler("preset:nope")


def test_specs_that_can_never_work_are_errors():
    with pytest.raises(ConfigError, match="file:REGEX needs a regular expression"):
        Labeler("file:")
    for spec in ("dir:extra", "dir:"):
        with pytest.raises(ConfigError, match="--labels dir takes nothing after it"):
            Labeler(spec)


def test_an_empty_match_is_no_label(tmp_path):
    lab = Labeler("file:^([a-z]*)")
    assert lab.bind(tmp_path / "9lives.pcap", "9lives.pcap")(_meta()) is None
    assert lab.bind(tmp_path / "web9.pcap", "web9.pcap")(_meta()) == "web"


def test_check_warns_where_a_spec_labels_nothing_or_one_folder(tmp_path):
    files = [(tmp_path / "caps" / name, name) for name in ("web-1.pcap", "mail-1.pcap", "x.pcap")]
    assert Labeler("file:^([a-z]+)-").check(files, [tmp_path / "caps"]) == [
        "--labels file:^([a-z]+)- gives no label to 1 of 3 capture names (e.g. x.pcap): their sessions are "
        "unlabeled (dropped, unless --unlabeled keep or as:NAME)"]
    assert "any of the 3 capture names" in Labeler("file:nogroup").check(files, [tmp_path / "caps"])[0]
    assert "gives no label to 1 of 3" in Labeler("preset:ustc-tfc2016").check(
        [(tmp_path / n, n) for n in ("SMB-1.pcap", "Zeus.pcap", "nope.pcap")], [tmp_path])[0]
    # dir: captures straight in an input folder all get that folder's name
    [warning] = Labeler("dir").check(files, [tmp_path / "caps"])
    assert warning == (f"--labels dir: 3 capture(s) lie directly in {tmp_path / 'caps'}, not in a folder per class, "
                       "so all their sessions are labelled 'caps' (e.g. web-1.pcap)")
    nested = [(tmp_path / "caps" / "web" / "a.pcap", "web/a.pcap"), (tmp_path / "caps" / "mail" / "b.pcap", "mail/b.pcap")]
    assert Labeler("dir").check(nested, [tmp_path / "caps"]) == []
    named = tmp_path / "caps" / "web" / "a.pcap"  # a file given by name keeps its folder's label, silently
    assert Labeler("dir").check([(named, "a.pcap")], [named]) == []
    assert Labeler("file:^([a-z]+)-").check(nested[:0], []) == []


def test_label_tables_must_be_utf8_and_well_formed(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_bytes("file,label\na.pcap,web\nb.pcap,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"labels.csv: not UTF-8 text \(byte 0xe9 on line 3\); save the label table as UTF-8"):
        Labeler(f"csv:{table}")
    table.write_bytes("\ufefffile,label\na.pcap,caf\u00e9\n".encode("utf-8"))  # a byte-order mark is fine
    assert Labeler(f"csv:{table}").bind(tmp_path / "a.pcap", "a.pcap")(_meta()) == "caf\u00e9"
    table.write_text("src_ip,src_port,dst_ip,dst_port,protocol,label\n10.0.0.1,http,10.0.0.2,443,TCP,web\n")
    with pytest.raises(ConfigError, match="labels.csv: a row that is not a label row"):
        Labeler(f"csv:{table}")
