"""Every record accounted for at the reader (issue 9 §4): records in the file == rows + quarantined,
file-level damage named in a quarantine row, and unreadable files as one clear InputError."""

from __future__ import annotations

import gzip
import json
import os
import zlib

import polars as pl
import pytest

from operators.base import ID, with_row_ids
from operators.io import InputError, count_records, read_input

REQ = {"text": pl.String}


@pytest.fixture(autouse=True)
def _ingest_cache_home(tmp_path, monkeypatch):
    """Record indexes are cached under $DATAFLOW_HOME: keep them in the test's folder."""
    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "home"))


def test_csv_with_one_latin1_line_counts_every_record(tmp_path):
    path = tmp_path / "mixed.csv"
    rows = [f"row {i},{i}" for i in range(21)]
    rows[7] = "r\xf4w 7,7"  # latin-1, not UTF-8
    path.write_bytes(("text,n\n" + "\n".join(rows) + "\n").encode("latin-1"))
    res = read_input(path, REQ)
    assert res.records == 21 == count_records(path)
    assert res.frame.height == 20 and res.quarantined == 1
    q = res.quarantine.row(0, named=True)
    assert q["row"] == 9 and q["reason"].startswith("invalid UTF-8")  # line 9 = header + 8th row


@pytest.mark.parametrize("name", ["in.jsonl", "in.csv", "in.json"])
def test_utf8_bom_does_not_cost_the_first_record(tmp_path, name):
    path = tmp_path / name
    body = {
        "in.jsonl": b'{"text": "first"}\n{"text": "second"}\n',
        "in.csv": b"text\nfirst\nsecond\n",
        "in.json": b'[{"text": "first"}, {"text": "second"}]',
    }[name]
    path.write_bytes(b"\xef\xbb\xbf" + body)
    res = read_input(path, REQ)
    assert res.frame.get_column("text").to_list() == ["first", "second"]
    assert res.quarantined == 0 and res.records == 2


def _gzip_records(n: int) -> tuple[bytes, bytes]:
    payload = b"".join(json.dumps({"text": f"doc {i} " + "x" * (i % 37)}).encode() + b"\n" for i in range(n))
    return payload, gzip.compress(payload)


def test_truncated_gzip_keeps_the_records_before_the_damage(tmp_path):
    payload, packed = _gzip_records(5000)
    path = tmp_path / "cut.jsonl.gz"
    cut = len(packed) * 2 // 3
    path.write_bytes(packed[:cut])
    res = read_input(path, REQ)
    # what a streaming decompressor can recover is a prefix of the payload: every whole line in it is kept
    recovered = zlib.decompressobj(31).decompress(packed[:cut])
    whole_lines = recovered.count(b"\n")
    assert whole_lines > 1000
    assert res.frame.height == whole_lines
    assert res.frame.get_column("text").to_list() == [json.loads(x)["text"] for x in payload.split(b"\n")[:whole_lines]]
    # the damaged tail is one quarantined record naming the compressed byte where the stream broke
    assert res.records == res.frame.height + res.quarantined == whole_lines + 1 == count_records(path)
    tail = res.quarantine.row(-1, named=True)
    assert tail["row"] == whole_lines + 1
    assert f"truncated gzip: the compressed stream ends at byte {cut}" in tail["reason"]
    assert res.problem == tail["reason"]
    # slices of the damaged file add up to the same
    parts = [read_input(path, REQ, start=s, stop=s + 1000) for s in range(0, 5000, 1000)]
    assert sum(p.records for p in parts) == res.records
    assert pl.concat([p.frame for p in parts]).equals(res.frame)


def test_truncated_json_array_keeps_whole_elements_and_names_the_damage(tmp_path):
    data = json.dumps([{"text": f"d{i}"} for i in range(100)]).encode()
    path = tmp_path / "cut.json"
    path.write_bytes(data[: len(data) // 2])
    res = read_input(path, REQ)
    kept = res.frame.get_column("text").to_list()
    assert kept == [f"d{i}" for i in range(len(kept))] and len(kept) > 40
    tail = res.quarantine.row(-1, named=True)
    assert tail["row"] == len(kept) + 1 and tail["reason"].startswith("truncated JSON array: the file ends at byte")
    assert res.records == len(kept) + 1 == res.frame.height + res.quarantined


def test_unreadable_files_give_a_reason_and_a_quarantine_row(tmp_path):
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(InputError) as err:
        read_input(folder, REQ)
    assert err.value.reason == "is a directory, not a file" and err.value.file == str(folder)
    assert err.value.quarantine().select("row", "reason").rows() == [(0, "is a directory, not a file")]

    typed = tmp_path / "typed.parquet"
    pl.DataFrame({"text": [1, 2, 3]}).write_parquet(typed)
    with pytest.raises(InputError, match="column 'text' has type Int64, expected String") as err:
        read_input(typed, REQ)
    assert err.value.records == 3 and err.value.quarantine().height == 1

    nothing = tmp_path / "nothing.jsonl.gz"
    nothing.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:10])  # the gzip header and no data
    with pytest.raises(InputError, match="truncated gzip"):
        read_input(nothing, REQ)


def test_symlink_loop_is_a_clear_input_error(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(InputError, match="symlink loop"):
        read_input(a, REQ)
    with pytest.raises(InputError, match="symlink loop"):
        count_records(a)


def test_empty_files_count_zero_with_an_empty_file_row(tmp_path):
    for name in ("e.jsonl", "e.csv", "e.json", "e.jsonl.gz"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")
        res = read_input(path, REQ)
        assert (res.records, res.frame.height) == (0, 0)
        assert res.quarantine.get_column("reason").to_list() == ["empty file"], name


def test_input_ids_are_kept_next_to_the_content_hash(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"_id": "u-1", "text": "a"}\n{"_id": "u-2", "text": "b"}\n')
    frame = with_row_ids(read_input(path, REQ).frame, source="ids.jsonl")
    assert frame.columns[:2] == [ID, "source_id"]
    assert frame.get_column("source_id").to_list() == ["u-1", "u-2"]
    assert frame.get_column(ID).n_unique() == 2 and not set(frame.get_column(ID)) & {"u-1", "u-2"}
    plain = with_row_ids(pl.DataFrame({"text": ["a"], "id": [17]}), source="x")
    assert plain.columns == [ID, "id", "text"] and plain.get_column("id").to_list() == [17]
    both = with_row_ids(pl.DataFrame({"_id": ["u"], "source_id": ["s"], "text": ["a"]}), source="x")
    assert both.select("source_id", "source__id").rows() == [("s", "u")]
    empty = with_row_ids(pl.DataFrame(schema={"_id": pl.String, "text": pl.String}), source="x")
    assert empty.columns == [ID, "source_id", "text"]
