"""Streaming ingest (issue 8 §2): slices seek by byte offset through a cached record index, batches
are parsed by Polars, and each bad record still gets its own quarantine row with the exact reason."""

from __future__ import annotations

import gzip
import json
import os

import polars as pl
import pytest

from operators import io as ingest
from operators.io import count_records, read_input, record_index

REQ = {"text": pl.String, "n": pl.Int64}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "home"))
    ingest._INDEXES.clear()
    return tmp_path / "home"


def planted(n: int) -> tuple[bytes, dict[int, tuple[str | None, str]], list[tuple[str, int]]]:
    """n jsonl lines with a bad record every 97 lines (kinds rotate); returns the bytes, the expected
    quarantine {line: (field, reason prefix)} and the expected good (text, n) rows."""
    kinds = [
        (b'{"text": 7, "n": 1}', ("text", "wrong type: expected String, got int")),
        (b'{"text": {"a": 1}, "n": 1}', ("text", "wrong type: expected String, got dict")),
        (b'{"text": "t", "n": "5"}', ("n", "wrong type: expected Int64, got str")),
        (b'{"n": 3}', ("text", "missing required field")),
        (b'{"text": "broken', (None, "invalid JSON")),
        (b'{"text": "bad \xff"}', (None, "invalid UTF-8")),
        (b'["an", "array"]', (None, "record is a JSON list")),
    ]
    lines, bad, good = [], {}, []
    for i in range(n):
        if i % 97 == 50:
            raw, why = kinds[(i // 97) % len(kinds)]
            lines.append(raw)
            bad[i + 1] = why
        else:
            text = str(i) if i % 5 == 0 else f"doc {i}"  # numeric-looking text must stay text
            lines.append(json.dumps({"text": text, "n": i, "extra": i % 3 or None}).encode())
            good.append((text, i))
    return b"\n".join(lines) + b"\n", bad, good


def check(res, bad, good) -> None:
    assert res.frame.select("text", "n").rows() == good
    q = res.quarantine
    assert q.get_column("row").to_list() == sorted(bad)
    for row, field, reason in q.select("row", "field", "reason").iter_rows():
        assert (field, reason[: len(bad[row][1])]) == bad[row], row


def test_batches_quarantine_each_bad_record_exactly(tmp_path):
    data, bad, good = planted(20_000)
    path = tmp_path / "planted.jsonl"
    path.write_bytes(data)
    res = read_input(path, REQ)
    check(res, bad, good)
    assert res.records == 20_000 == res.frame.height + res.quarantined


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_slices_add_up_to_the_whole_file(tmp_path, suffix, home):
    data, bad, good = planted(12_345)
    path = tmp_path / f"planted{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    assert count_records(path) == 12_345
    parts = [read_input(path, REQ, start=s, stop=s + 1000) for s in range(0, 12_345, 1000)]
    assert [p.records for p in parts] == [1000] * 12 + [345]
    check(
        type(parts[0])(pl.concat([p.frame for p in parts]), pl.concat([p.quarantine for p in parts]), 12_345),
        bad,
        good,
    )
    cached = os.listdir(home / "cache" / "ingest")
    assert any(name.endswith(".json") for name in cached)
    if suffix.endswith(".gz"):  # slices of a gzip seek through an indexed_gzip index built once
        assert any(name.endswith(".gzidx") for name in cached)


def test_a_slice_seeks_by_byte_offset_instead_of_rescanning(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"".join(json.dumps({"text": f"doc {i}", "n": i}).encode() + b"\n" for i in range(5000)))
    assert record_index(path).records == 5000
    # Rewrite the first line in place (same size and mtime, so the cached index stays valid) with two
    # records where there was one: a reader that re-scanned from the start would now be off by one.
    stat = path.stat()
    data = bytearray(path.read_bytes())
    first = data.index(b"\n")
    data[:first] = b'{"n":0}\n{"n":1}'.ljust(first)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    res = read_input(path, REQ, start=4000, stop=4003)
    assert res.frame.get_column("n").to_list() == [4000, 4001, 4002]
    assert res.quarantine.height == 0


def test_text_fields_polars_would_coerce_are_still_typed(tmp_path):
    """Polars reads 7 or true in a text column as "7" / "true": those rows are re-checked exactly."""
    rows = [{"text": f"doc {i}", "n": i} for i in range(3000)]
    rows[10]["text"], rows[2000]["text"], rows[2500]["text"] = 7, True, "7"
    path = tmp_path / "coerce.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    res = read_input(path, REQ)
    assert res.quarantine.select("row", "reason").rows() == [
        (11, "wrong type: expected String, got int"),
        (2001, "wrong type: expected String, got bool"),
    ]
    assert res.frame.filter(pl.col("n") == 2500).get_column("text").to_list() == ["7"]


def test_a_giant_record_is_skipped_with_its_preview(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "BATCH_BYTES", 4096)
    path = tmp_path / "giant.jsonl"
    giant = json.dumps({"text": "x" * 50_000, "n": 1})
    path.write_text("\n".join([json.dumps({"text": "a", "n": 0}), giant, json.dumps({"text": "b", "n": 2})]) + "\n")
    res = read_input(path, REQ, max_record_bytes=1000)
    assert res.frame.get_column("text").to_list() == ["a", "b"]
    q = res.quarantine.row(0, named=True)
    assert q["row"] == 2 and q["reason"] == f"record of {len(giant)} bytes exceeds the limit of 1000"
    assert q["raw"] == giant[: ingest.RAW_PREVIEW]
    assert res.records == 3


def test_csv_quoted_newlines_blank_lines_and_slices(tmp_path):
    lines = ["text,n"]
    for i in range(3000):
        lines.append(f'"multi\nline ""{i}""",{i}' if i % 10 == 0 else f"doc {i},{i}")
        if i % 500 == 0:
            lines.append("")  # blank line: not a record
    path = tmp_path / "quoted.csv"
    path.write_text("\n".join(lines) + "\n")
    whole = read_input(path, REQ)
    assert whole.records == 3000 == count_records(path) and whole.quarantined == 0
    assert whole.frame.row(0) == ('multi\nline "0"', 0)
    parts = [read_input(path, REQ, start=s, stop=s + 700) for s in range(0, 3000, 700)]
    assert pl.concat([p.frame for p in parts]).equals(whole.frame)


def test_csv_ragged_and_bad_rows_in_a_large_file(tmp_path):
    rows = ["text,n"] + [f"doc {i},{i}" for i in range(5000)]
    rows[1001] = "doc,1000,surplus"
    rows[3001] = "doc,notanumber"
    path = tmp_path / "ragged.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode())
    res = read_input(path, REQ)
    assert res.quarantine.select("row", "field", "reason").rows() == [
        (1002, None, "more values than header columns"),
        (3002, "n", "wrong type: cannot read 'notanumber' as Int64"),
    ]
    assert res.records == 5000 and res.frame.height == 4998


def test_json_array_streams_element_by_element(tmp_path):
    elements = [{"text": f"doc {i}", "n": i} for i in range(25_000)]
    elements[100] = ["not", "an", "object"]
    elements[20_000] = {"text": None, "n": 1}
    path = tmp_path / "array.json.gz"
    path.write_bytes(gzip.compress(json.dumps(elements).encode()))
    whole = read_input(path, REQ)
    assert whole.records == 25_000 == count_records(path)
    assert whole.quarantine.select("row", "field", "reason").rows() == [
        (101, None, "record is a JSON list, not an object"),
        (20_001, "text", "missing required field"),
    ]
    parts = [read_input(path, REQ, start=s, stop=s + 10_000) for s in range(0, 25_000, 10_000)]
    assert [p.records for p in parts] == [10_000, 10_000, 5_000]
    assert pl.concat([p.frame for p in parts]).equals(whole.frame)


def test_a_json_file_holding_jsonl_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"text": "a", "n": 1}\n{"text": "b", "n": 2}\n{"text": "broken\n')
    res = read_input(path, REQ)
    assert res.frame.rows() == [("a", 1), ("b", 2)]
    assert res.quarantine.select("row", "reason").rows()[0][0] == 3
    single = tmp_path / "one.json"
    single.write_text('{\n  "text": "pretty",\n  "n": 5\n}\n')
    assert read_input(single, REQ).frame.rows() == [("pretty", 5)]
