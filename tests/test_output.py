"""serving/output.py on rows made by hand: group rows (predict --by) in CSV, JSON lines and
Parquet, value by value and type by type; session rows into a Zeek log through `write_rows`; the
refusals; and a write that fails half way leaves the file that was there. Session rows in CSV,
JSON lines and Parquet are checked against real predictions in test_prediction_rows.py."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trafficlens.errors import ConfigError
from trafficlens.inference.classifier import COLUMNS
from trafficlens.inference.groups import GROUP_COLUMNS
from trafficlens.serving.output import output_format, write_rows

GROUPS = [
    {"capture": "home.pcap", "host": "10.0.0.5", "window_start": 0.0, "window_end": 300.0, "sessions": 7,
     "label": "camera", "confidence": 0.9876, "top_k": [("camera", 0.9876), ("plug", 0.0124)],
     "votes": {"camera": 6, "plug": 1}, "status": "ok"},
    {"capture": "home.pcap", "host": None, "window_start": 12.5, "window_end": 13.25, "sessions": 1,
     "label": "unknown", "confidence": 0.41, "top_k": [("plug", 0.41)], "votes": {"plug": 1}, "status": "unknown_device"},
]
SESSION = {"capture": "a.pcap", "uid": "Cabc", "community_id": "1:xyz=", "src_ip": "10.0.0.1", "src_port": 40000,
           "dst_ip": "10.0.0.2", "dst_port": 443, "protocol": "TCP", "ts_start": 1.5, "ts_end": 2.0, "duration": 0.5,
           "packets": 5, "bytes": 400, "orig_pkts": 3, "orig_ip_bytes": 200, "resp_pkts": 2, "resp_ip_bytes": 200,
           "label": "web", "confidence": 0.75, "top_k": [("web", 0.75), ("mail", 0.25)], "status": "ok", "reason": None}


def test_group_rows_in_csv_flatten_top_k_and_votes(tmp_path):
    assert write_rows([GROUPS[:1], GROUPS[1:]], str(tmp_path / "g.csv"), columns=GROUP_COLUMNS) == 2
    with open(tmp_path / "g.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(GROUP_COLUMNS)
    assert rows[0]["top_k"] == "camera:0.9876;plug:0.0124" and rows[0]["votes"] == "camera:6;plug:1"
    assert (rows[0]["host"], rows[0]["sessions"], rows[0]["window_end"]) == ("10.0.0.5", "7", "300.0")
    assert (rows[1]["host"], rows[1]["label"], rows[1]["status"]) == ("", "unknown", "unknown_device")


def test_group_rows_in_json_lines_keep_structure(tmp_path):
    assert write_rows([GROUPS], str(tmp_path / "g.jsonl"), columns=GROUP_COLUMNS) == 2
    first, second = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert list(first) == list(GROUP_COLUMNS)
    assert first["top_k"] == [{"label": "camera", "probability": 0.9876}, {"label": "plug", "probability": 0.0124}]
    assert first["votes"] == {"camera": 6, "plug": 1} and second["host"] is None and second["window_start"] == 12.5


def test_group_rows_in_parquet_have_typed_columns_and_a_votes_map(tmp_path):
    assert write_rows([GROUPS[:1], [], GROUPS[1:]], str(tmp_path / "g.parquet"), columns=GROUP_COLUMNS) == 2
    table = pq.read_table(tmp_path / "g.parquet")
    assert table.column_names == list(GROUP_COLUMNS)
    types = dict(zip(table.schema.names, table.schema.types))
    assert types["sessions"] == pa.int64() and types["window_start"] == pa.float64() and types["host"] == pa.string()
    assert types["votes"] == pa.map_(pa.string(), pa.int64())
    assert types["top_k"] == pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))
    first, second = table.to_pylist()
    assert first["votes"] == [("camera", 6), ("plug", 1)] and second["host"] is None
    assert first["top_k"][1] == {"label": "plug", "probability": 0.0124} and second["status"] == "unknown_device"


def test_session_rows_parquet_types(tmp_path):
    write_rows([[SESSION]], str(tmp_path / "s.parquet"))
    table = pq.read_table(tmp_path / "s.parquet")
    types = dict(zip(table.schema.names, table.schema.types))
    assert table.column_names == list(COLUMNS)
    assert types["src_port"] == pa.int32() and types["packets"] == pa.int64() and types["duration"] == pa.float64()
    assert table.to_pylist()[0]["reason"] is None and table.to_pylist()[0]["orig_ip_bytes"] == 200


def test_session_rows_into_a_zeek_log_and_group_rows_refused(tmp_path):
    assert write_rows([[SESSION], [dict(SESSION, uid="Cdef", label="mail")]], str(tmp_path / "p.log")) == 2
    lines = (tmp_path / "p.log").read_text().splitlines()
    fields = next(line for line in lines if line.startswith("#fields")).split("\t")[1:]
    rows = [dict(zip(fields, line.split("\t"))) for line in lines if not line.startswith("#")]
    assert [(r["uid"], r["label"], r["id.orig_p"]) for r in rows] == [("Cabc", "web", "40000"), ("Cdef", "mail", "40000")]
    assert lines[-1].startswith("#close")
    with pytest.raises(ConfigError, match="a Zeek log holds one row per session"):
        write_rows([GROUPS], str(tmp_path / "g.log"), columns=GROUP_COLUMNS)
    with pytest.raises(ConfigError, match="a Zeek log holds one row per session"):
        write_rows([GROUPS], str(tmp_path / "g.csv"), format="zeek", columns=GROUP_COLUMNS)
    assert not (tmp_path / "g.log").exists() and not (tmp_path / "g.csv").exists()


def test_a_write_that_fails_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("the earlier run\n")

    def batches():
        yield [SESSION]
        raise KeyboardInterrupt  # Ctrl-C half way

    with pytest.raises(KeyboardInterrupt):
        write_rows(batches(), str(target))
    assert target.read_text() == "the earlier run\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_format_names_and_extensions():
    assert output_format("x.LOG") == ".log" and output_format("-", "csv") == ".csv"
    assert output_format("x.csv", "parquet") == ".parquet"  # the name wins over the extension
    for args, message in ((("x.csv", "tsv"), "--format tsv: unknown format; use csv, jsonl, parquet, zeek"),
                          (("", "csv"), "-o is empty: name the output file (.csv, .jsonl, .parquet or .log), or - for stdout"),
                          (("",), "-o is empty: name the output file (.csv, .jsonl, .parquet or .log), or - for stdout"),
                          (("-", "parquet"), "--format parquet needs a file: -o NAME.parquet")):
        with pytest.raises(ConfigError) as caught:
            output_format(*args)
        assert str(caught.value) == message


def test_dash_with_a_format_writes_that_format_on_stdout(capsys):
    assert write_rows([[SESSION]], "-", format="jsonl") == 1
    assert json.loads(capsys.readouterr().out)["uid"] == "Cabc"
    assert write_rows([GROUPS], "-", format="jsonl", columns=GROUP_COLUMNS) == 2
    assert [json.loads(line)["votes"] for line in capsys.readouterr().out.splitlines()] == [
        {"camera": 6, "plug": 1}, {"plug": 1}]
