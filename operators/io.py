"""Reading input files into Polars frames, with malformed rows quarantined instead of lost.

Formats: jsonl/ndjson, json (an array of objects), parquet, csv; each optionally gzip-compressed
(`.gz`). `read_input()` returns the good rows and a quarantine frame with one row per bad record:
`file`, `row` (1-based line for jsonl/csv, 1-based index for json/parquet), `field`, `reason`, `raw`.

Invariant: records in the file == rows returned + rows quarantined. A file that cannot be read at
all (not gzip, not parquet, not a JSON array, a required column missing from a columnar file)
raises `InputError` naming the file and why.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import polars as pl

QUARANTINE_SCHEMA = {"file": pl.String, "row": pl.Int64, "field": pl.String, "reason": pl.String, "raw": pl.String}
MAX_RECORD_BYTES = 4 * 1024 * 1024
RAW_PREVIEW = 2000


class InputError(ValueError):
    """A whole input file is unreadable."""


@dataclass
class ReadResult:
    frame: pl.DataFrame
    quarantine: pl.DataFrame
    records: int  # records seen in the file (good + quarantined)

    @property
    def quarantined(self) -> int:
        return self.quarantine.height


def detect_format(path: Path) -> tuple[str, bool]:
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet"), (".csv", "csv")):
        if name.endswith(ext):
            return fmt, gz
    raise InputError(f"{path}: unsupported input format (expected .jsonl, .json, .parquet or .csv, optionally .gz)")


_PY_TYPES: dict[Any, tuple[type, ...]] = {
    pl.String: (str,),
    pl.Int64: (int,),
    pl.Float64: (int, float),
    pl.Boolean: (bool,),
}


def _type_ok(value: Any, dtype: pl.DataType) -> bool:
    for base, types in _PY_TYPES.items():
        if dtype == base:
            return isinstance(value, types) and not (base != pl.Boolean and isinstance(value, bool))
    if isinstance(dtype, pl.List):
        return isinstance(value, list)
    if isinstance(dtype, pl.Struct):
        return isinstance(value, dict)
    return True


class _Quarantine:
    def __init__(self, file: str):
        self.file, self.rows = file, []

    def add(self, row: int, field: str | None, reason: str, raw: Any) -> None:
        if not isinstance(raw, str):
            raw = json.dumps(raw, ensure_ascii=False, default=str) if not isinstance(raw, bytes) else raw.decode("utf-8", "replace")
        self.rows.append({"file": self.file, "row": row, "field": field, "reason": reason, "raw": raw[:RAW_PREVIEW]})

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, schema=QUARANTINE_SCHEMA).sort("row")


def _check_record(rec: Any, required: Mapping[str, pl.DataType]) -> tuple[str | None, str] | None:
    if not isinstance(rec, dict):
        return None, f"record is a JSON {type(rec).__name__}, not an object"
    for name, dtype in required.items():
        if rec.get(name) is None:
            return name, "missing required field"
        if not _type_ok(rec[name], dtype):
            return name, f"wrong type: expected {dtype}, got {type(rec[name]).__name__}"
    return None


def _records_to_frame(records: list[dict], required: Mapping[str, pl.DataType]) -> pl.DataFrame:
    if not records:
        return pl.DataFrame(schema=dict(required))
    frame = pl.DataFrame(records, infer_schema_length=None, strict=False)
    return frame.with_columns([pl.col(c).cast(t) for c, t in required.items()])


def read_input(
    path: str | Path,
    required: Mapping[str, pl.DataType] | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> ReadResult:
    """Read one input file (or the record slice [start, stop) of it).

    `required` maps column -> dtype every row must have (non-null, right type); `rename` maps
    input field -> pipeline column (applied before the checks). Bad records are quarantined.
    """
    path = Path(path)
    required = dict(required or {})
    rename = dict(rename or {})
    fmt, gz = detect_format(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    q = _Quarantine(str(path))
    # Streamed formats: only the requested slice is held in memory (bounded by the shard size).
    if fmt == "parquet" and not gz:
        return _read_parquet_slice(path, required, rename, q, start, stop)
    if fmt == "jsonl":
        return _read_jsonl(_lines(path, gz), required, rename, q, start, stop, max_record_bytes)
    data = path.read_bytes()
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise InputError(f"{path}: not a valid gzip file ({err})") from err
    if not data.strip():
        q.add(0, None, "empty file", "")
        return ReadResult(pl.DataFrame(schema=required), q.frame(), 0)
    if fmt == "json":
        try:
            records = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            # some ".json" files are really jsonl
            if data.lstrip()[:1] == b"{":
                return _read_jsonl(iter(data.split(b"\n")), required, rename, q, start, stop, max_record_bytes)
            raise InputError(f"{path}: not valid JSON ({err})") from err
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list):
            raise InputError(f"{path}: expected a JSON array of objects, got {type(records).__name__}")
        return _check_records(list(enumerate(records, 1))[start:stop], required, rename, q)
    if fmt == "csv":
        return _read_csv(data, required, rename, q, start, stop)
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - polars raises several error types for a corrupt file
        raise InputError(f"{path}: not a readable parquet file ({err})") from err
    return _check_frame(frame, required, rename, q, start, stop, path)


def _lines(path: Path, gz: bool) -> Iterator[bytes]:
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            for line in fh:
                yield line.rstrip(b"\r\n")
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: not a valid gzip file ({err})" if gz else f"{path}: cannot read ({err})") from err


def _read_jsonl(lines: Iterable[bytes], required, rename, q, start, stop, max_bytes) -> ReadResult:
    """Records are the non-blank lines; only those in [start, stop) are parsed and kept."""
    records: list[tuple[int, Any]] = []
    index, seen = -1, 0
    lo, hi = start or 0, stop
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        index += 1
        if index < lo:
            continue
        if hi is not None and index >= hi:
            break
        seen += 1
        if len(line) > max_bytes:
            q.add(n, None, f"record of {len(line)} bytes exceeds the limit of {max_bytes}", line[:RAW_PREVIEW])
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            q.add(n, None, f"invalid UTF-8 at byte {err.start}", line)
            continue
        try:
            records.append((n, json.loads(text)))
        except json.JSONDecodeError as err:
            q.add(n, None, f"invalid JSON: {err.msg} at column {err.colno}", text)
    if index < 0 and not start:
        q.add(0, None, "empty file", "")
    result = _check_records(records, required, rename, q)
    result.records = seen
    return result


def _read_parquet_slice(path: Path, required, rename, q, start, stop) -> ReadResult:
    try:
        lazy = pl.scan_parquet(path)
        if start is not None or stop is not None:
            s = start or 0
            lazy = lazy.slice(s, (stop - s) if stop is not None else None)
        frame = lazy.collect()
    except Exception as err:  # noqa: BLE001 - polars raises several error types for a corrupt file
        raise InputError(f"{path}: not a readable parquet file ({err})") from err
    return _check_frame(frame, required, rename, q, None, None, path, offset=start or 0)


def count_records(path: str | Path) -> int:
    """Records in a file without holding it in memory (parquet metadata; non-blank jsonl lines)."""
    path = Path(path)
    fmt, gz = detect_format(path)
    if fmt == "parquet" and not gz:
        try:
            return pl.scan_parquet(path).select(pl.len()).collect().item()
        except Exception as err:  # noqa: BLE001
            raise InputError(f"{path}: not a readable parquet file ({err})") from err
    if fmt == "jsonl":
        return sum(1 for line in _lines(path, gz) if line.strip())
    return read_input(path, {}).records


def _check_records(numbered, required, rename, q) -> ReadResult:
    good = []
    for n, rec in numbered:
        if isinstance(rec, dict) and rename:
            rec = {rename.get(k, k): v for k, v in rec.items()}
        problem = _check_record(rec, required)
        if problem:
            q.add(n, problem[0], problem[1], rec)
        else:
            good.append(rec)
    try:
        frame = _records_to_frame(good, required)
    except Exception:  # noqa: BLE001 - mixed types in an optional field: keep them as JSON text
        frame = _records_to_frame(
            [{k: (v if k in required or v is None or isinstance(v, str) else json.dumps(v)) for k, v in r.items()} for r in good],
            required,
        )
    return ReadResult(frame, q.frame(), len(numbered))


def _read_csv(data, required, rename, q, start, stop) -> ReadResult:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        kept = []
        for n, line in enumerate(data.split(b"\n"), 1):
            try:
                kept.append(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                q.add(n, None, f"invalid UTF-8 at byte {err.start}", line)
        text = "\n".join(kept)
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for rec in reader:
        line = reader.line_num
        if None in rec:  # more values than header fields
            q.add(line, None, "more values than header columns", rec.pop(None))
            continue
        rows.append((line, rec))
    rows = rows[start:stop]
    if not rows:
        return ReadResult(pl.DataFrame(schema=required), q.frame(), 0)
    if rename:
        rows = [(n, {rename.get(k, k): v for k, v in rec.items()}) for n, rec in rows]
    columns = list(dict.fromkeys([*rows[0][1], *required]))
    frame = pl.DataFrame([rec for _, rec in rows], schema={c: pl.String for c in columns}).with_columns(
        pl.Series("__row", [n for n, _ in rows], dtype=pl.Int64)
    )
    # csv values are strings: a required value must be non-empty and cast to its dtype
    reasons = []
    for name, dtype in required.items():
        col = pl.col(name)
        reasons.append(pl.when(col.is_null() | (col == "")).then(pl.lit(f"{name}\x00missing required field")))
        if dtype != pl.String:
            reasons.append(
                pl.when(_from_text(col, dtype).is_null())
                .then(pl.format(f"{name}\x00wrong type: cannot read '{{}}' as {dtype}", col))
            )
    good = _quarantine_where(frame, reasons, q)
    return ReadResult(good.with_columns([_from_text(pl.col(c), t) for c, t in required.items()]), q.frame(), len(rows))


def _from_text(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A csv text value as `dtype`, null where it does not convert (Polars has no str -> bool cast)."""
    if dtype == pl.Boolean:
        return col.str.to_lowercase().replace_strict({"true": True, "false": False}, default=None, return_dtype=pl.Boolean)
    return col.cast(dtype, strict=False)


def _quarantine_where(frame: pl.DataFrame, reasons: list[pl.Expr], q: _Quarantine) -> pl.DataFrame:
    """Quarantine the rows of `frame` (which has a 1-based `__row`) for which one of `reasons`
    (expressions giving "field\x00reason" or null, first match wins) is set; return the others."""
    why = pl.coalesce(*reasons, pl.lit(None, dtype=pl.String)) if reasons else pl.lit(None, dtype=pl.String)
    marked = frame.with_columns(why.alias("__why"))
    for rec in marked.filter(pl.col("__why").is_not_null()).iter_rows(named=True):  # only the bad rows
        field, reason = rec.pop("__why").split("\x00")
        q.add(rec.pop("__row"), field, reason, rec)
    return marked.filter(pl.col("__why").is_null()).drop("__row", "__why")


def _check_frame(frame, required, rename, q, start, stop, path, offset: int = 0) -> ReadResult:
    if rename:
        frame = frame.rename({k: v for k, v in rename.items() if k in frame.columns})
    if start is not None or stop is not None:
        s = start or 0
        frame = frame.slice(s, (stop - s) if stop is not None else None)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: required column(s) {missing} not in the file (columns: {frame.columns})")
    frame = frame.with_row_index("__row", offset=(start or offset or 0) + 1)
    reasons = []
    for name, dtype in required.items():
        ok_type = frame.schema[name] == dtype or (dtype == pl.Float64 and frame.schema[name].is_numeric())
        if not ok_type:
            raise InputError(f"{path}: column {name!r} has type {frame.schema[name]}, expected {dtype}")
        reasons.append(pl.when(pl.col(name).is_null()).then(pl.lit(f"{name}\x00missing required field")))
    return ReadResult(_quarantine_where(frame, reasons, q), q.frame(), frame.height)
