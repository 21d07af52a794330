"""Input readers: every format, gzip, and malformed records quarantined with file/row/field/reason."""

import gzip
import json

import polars as pl
import pytest

from operators.io import InputError, read_input

REQ = {"text": pl.String}


@pytest.fixture(autouse=True)
def _ingest_cache_home(tmp_path, monkeypatch):
    """Record indexes are cached under $DATAFLOW_HOME: keep them in the test's folder."""
    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "home"))


def test_jsonl_quarantines_each_kind_of_bad_record(tmp_path):
    path = tmp_path / "in.jsonl"
    big = json.dumps({"text": "x" * (10 * 1024 * 1024)}).encode()
    path.write_bytes(
        b'{"text": "good one", "n": 1}\n'
        b'{"text": 7}\n'  # wrong type
        b'{"other": "no text"}\n'  # missing required field
        b'{"text": "broken\n'  # malformed json
        b'{"text": "bad \xff\xfe utf8"}\n'  # invalid utf-8
        + big + b"\n"  # 10 MB single line
        b'["not", "an", "object"]\n'
        b'{"text": "good two"}\n'
    )
    res = read_input(path, REQ)
    assert res.frame.get_column("text").to_list() == ["good one", "good two"]
    q = res.quarantine
    assert q.get_column("row").to_list() == [2, 3, 4, 5, 6, 7]
    reasons = dict(zip(q.get_column("row").to_list(), q.get_column("reason").to_list()))
    assert reasons[2].startswith("wrong type") and q.filter(pl.col("row") == 2)["field"][0] == "text"
    assert reasons[3] == "missing required field"
    assert reasons[4].startswith("invalid JSON")
    assert reasons[5].startswith("invalid UTF-8")
    assert "exceeds the limit" in reasons[6]
    assert "not an object" in reasons[7]
    assert set(q.get_column("file").to_list()) == {str(path)}
    assert res.records == res.frame.height + res.quarantined == 8


def test_empty_file_is_quarantined_not_fatal(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    res = read_input(path, REQ)
    assert res.frame.height == 0 and res.quarantine.get_column("reason").to_list() == ["empty file"]


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv", "jsonl.gz", "csv.gz"])
def test_formats_and_gzip(tmp_path, fmt):
    frame = pl.DataFrame({"text": ["alpha", None, "gamma"], "score": [1, 2, 3]})
    base = fmt.removesuffix(".gz")
    path = tmp_path / f"in.{base}"
    if base == "json":
        path.write_text(json.dumps(frame.to_dicts()))
    elif base == "parquet":
        frame.write_parquet(path)
    elif base == "csv":
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)
    if fmt.endswith(".gz"):
        gz = tmp_path / f"in.{fmt}"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    res = read_input(path, REQ)
    assert res.frame.get_column("text").to_list() == ["alpha", "gamma"]
    assert res.quarantine.get_column("field").to_list() == ["text"]
    assert res.quarantine.get_column("row").to_list() == [3 if base == "csv" else 2]
    assert res.records == 3


def test_csv_type_errors_are_quarantined(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("text,n\nhello,1\nworld,notanumber\n")
    res = read_input(path, {"text": pl.String, "n": pl.Int64})
    assert res.frame.get_column("n").to_list() == [1]
    assert res.quarantine.get_column("reason")[0].startswith("wrong type")


def test_unreadable_files_raise_naming_the_file(tmp_path):
    bad_gz = tmp_path / "x.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="x.jsonl.gz: not a valid gzip"):
        read_input(bad_gz, REQ)
    bad_pq = tmp_path / "x.parquet"
    bad_pq.write_bytes(b"PAR1garbage")
    with pytest.raises(InputError, match="x.parquet: not a readable parquet"):
        read_input(bad_pq, REQ)
    no_col = tmp_path / "y.parquet"
    pl.DataFrame({"body": ["a"]}).write_parquet(no_col)
    with pytest.raises(InputError, match=r"y.parquet: required column\(s\) \['text'\]"):
        read_input(no_col, REQ)
    with pytest.raises(InputError, match="unsupported input format"):
        read_input(tmp_path / "z.txt", REQ)


def test_rename_and_slices(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps({"raw_content": f"doc {i}"}) for i in range(10)))
    res = read_input(path, REQ, rename={"raw_content": "text"}, start=3, stop=6)
    assert res.frame.get_column("text").to_list() == ["doc 3", "doc 4", "doc 5"]
    assert res.records == 3


def test_real_dolma_fixture_reads_cleanly():
    from tests.conftest import shared

    path = shared("dolma_fixtures", "provided_documents", "000.json.gz")
    res = read_input(path, REQ)
    assert res.frame.height == 10 and res.quarantined == 0
    assert res.frame.get_column("text").str.len_chars().min() > 0


def test_parquet_and_gzip_jsonl_slices_stream_and_count(tmp_path):
    from operators.io import count_records

    frame = pl.DataFrame({"text": [f"doc {i}" if i != 7 else None for i in range(20)]})
    pq = tmp_path / "big.parquet"
    frame.write_parquet(pq, row_group_size=5)
    res = read_input(pq, REQ, start=5, stop=10)
    assert res.frame.get_column("text").to_list() == ["doc 5", "doc 6", "doc 8", "doc 9"]
    assert res.quarantine.get_column("row").to_list() == [8]  # 1-based row in the file, not in the slice
    gz = tmp_path / "big.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n".join(json.dumps({"text": t}).encode() for t in frame["text"]) + b"\n\n"))
    assert count_records(pq) == count_records(gz) == 20
    assert read_input(gz, REQ, start=18).frame.get_column("text").to_list() == ["doc 18", "doc 19"]


def test_csv_required_booleans_and_numbers_are_parsed_or_quarantined(tmp_path):
    path = tmp_path / "flags.csv"
    path.write_text("text,ok,n\na,true,1\nb,maybe,2\nc,FALSE,x\n,true,3\nd,False,4\n")
    res = read_input(path, {"text": pl.String, "ok": pl.Boolean, "n": pl.Int64})
    assert res.frame.rows() == [("a", True, 1), ("d", False, 4)]
    q = res.quarantine
    assert q.select("row", "field").rows() == [(3, "ok"), (4, "n"), (5, "text")]
    assert q.get_column("reason").to_list() == [
        "wrong type: cannot read 'maybe' as Boolean",
        "wrong type: cannot read 'x' as Int64",
        "missing required field",
    ]
