"""Reading input files into Polars frames in bounded memory, with malformed rows quarantined instead of lost.

Formats: jsonl/ndjson, json (an array of objects), parquet, csv; each optionally gzip-compressed
(`.gz`). `read_input()` returns the good rows and a quarantine frame with one row per bad record:
`file`, `row` (1-based line for jsonl/csv, 1-based index for json/parquet), `field`, `reason`, `raw`.

How each format streams (memory is bounded by the rows returned plus one batch of `BATCH_BYTES`):
- jsonl and csv are cut into batches at record boundaries (newlines; for csv newlines outside
  quotes) with NumPy, and each batch is parsed by Polars. A batch Polars rejects is split in halves
  until the bad records are isolated; those few are checked one by one, so each bad record gets its
  own quarantine row with the reason. A slice [start, stop) seeks to a byte offset taken from a
  per-file record index (every `STRIDE`-th record's offset and line), computed once and cached under
  `$DATAFLOW_HOME/cache/ingest/` keyed by path, size and mtime: N slices cost one pass plus N reads.
- gzip is decompressed as a stream (zlib); slices of a `.gz` seek through an `indexed_gzip` seek-point
  index built once next to the record index, so they do not decompress from the start every time.
  A truncated or corrupt gzip keeps every record before the damage and quarantines the damaged tail
  with the compressed byte offset where the stream broke.
- json arrays are parsed element by element with `ijson` (a JSON array has no line boundaries to
  seek to, so a slice of one re-parses from the start: prefer jsonl for `--rows-per-shard`).
- parquet is scanned lazily and sliced by Polars (row groups), so only the slice is read.

Invariant: records in the file == rows returned + rows quarantined. A file that cannot be read at
all (missing, a directory, a symlink loop, not gzip, not parquet, not a JSON array, a required column
missing from or mistyped in a columnar file) raises `InputError`, which carries the file, the reason
and a one-row quarantine frame (`InputError.quarantine()`) for the run's accounting.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import json
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import ijson
import numpy as np
import polars as pl

try:  # seekable gzip for slices (a core dependency); without it slices of a .gz decompress from the start
    import indexed_gzip
except ImportError:  # pragma: no cover
    indexed_gzip = None

QUARANTINE_SCHEMA = {"file": pl.String, "row": pl.Int64, "field": pl.String, "reason": pl.String, "raw": pl.String}
MAX_RECORD_BYTES = 4 * 1024 * 1024
RAW_PREVIEW = 2000
BATCH_BYTES = 16 * 1024 * 1024  # bytes of records handed to Polars at a time
GZ_READ = 1024 * 1024  # compressed bytes fed to zlib at a time
GZ_POINTS = 256  # indexed_gzip seek points aimed at per file (a 32 KiB window each), 1-16 MiB apart
STRIDE = 1024  # the record index keeps the offset of every STRIDE-th record
INDEX_VERSION = 1
BOM = b"\xef\xbb\xbf"
_SMALL = 8  # a batch this small is checked record by record (json.loads / csv) for exact reasons

_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 32]] = True
_SEP = np.zeros(256, dtype=bool)  # bytes that end a csv field
_SEP[[10, 13, 44]] = True


class InputError(ValueError):
    """A whole input file is unreadable: `file` and `reason` say which and why; `quarantine()` is the
    file-level quarantine row a run records for it (row 0)."""

    def __init__(self, path: str | Path, reason: str, *, records: int = 0):
        self.file, self.reason, self.records = str(path), reason, records
        super().__init__(f"{path}: {reason}")

    def quarantine(self) -> pl.DataFrame:
        return pl.DataFrame([{"file": self.file, "row": 0, "field": None, "reason": self.reason, "raw": ""}], schema=QUARANTINE_SCHEMA)


@dataclass
class ReadResult:
    frame: pl.DataFrame
    quarantine: pl.DataFrame
    records: int  # records seen in the file (good + quarantined)
    problem: str | None = None  # file-level damage (truncated gzip or JSON array): also a quarantine row

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
    # --- document hook (operators/knowledge/extract.py): PDF/HTML/DOCX/markdown files are read as documents
    if name.endswith((".pdf", ".html", ".htm", ".docx", ".doc", ".md", ".markdown")):
        return "document", gz
    # --- end document hook
    raise InputError(path, "unsupported input format (expected .jsonl, .json, .parquet or .csv, optionally .gz)")


def check_input(path: str | Path) -> Path:
    """Raise `InputError` with one clear reason when `path` is not a readable regular file (missing,
    a directory, a symlink loop, no permission); return it otherwise."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as err:  # ELOOP: Path.exists() would just say False
        if err.errno == errno.ELOOP:
            raise InputError(path, "symlink loop (too many levels of symbolic links)") from None
        if err.errno == errno.ENOENT:
            raise InputError(path, "file not found") from None
        if err.errno == errno.EACCES:
            raise InputError(path, "permission denied") from None
        raise InputError(path, f"cannot read ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, "is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")
    return path


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


def _dtype_ok(actual: pl.DataType, expected: pl.DataType) -> bool:
    """Whether a column Polars parsed as `actual` holds only values of the required `expected` type."""
    if actual == pl.Null or actual == expected:
        return True
    if expected == pl.Float64:
        return actual.is_numeric()
    if isinstance(expected, pl.List):
        return isinstance(actual, pl.List)
    if isinstance(expected, pl.Struct):
        return isinstance(actual, pl.Struct)
    return expected not in _PY_TYPES


class _Quarantine:
    def __init__(self, file: str):
        self.file, self.rows = file, []

    def add(self, row: int, field: str | None, reason: str, raw: Any) -> None:
        if not isinstance(raw, str):
            raw = json.dumps(raw, ensure_ascii=False, default=str) if not isinstance(raw, bytes) else raw.decode("utf-8", "replace")
        self.rows.append({"file": self.file, "row": int(row), "field": field, "reason": reason, "raw": raw[:RAW_PREVIEW]})

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, schema=QUARANTINE_SCHEMA).sort("row", maintain_order=True)


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
    try:
        frame = pl.DataFrame(records, infer_schema_length=None, strict=False)
    except Exception:  # noqa: BLE001 - mixed types in an optional field: keep them as JSON text
        frame = pl.DataFrame(
            [{k: (v if k in required or v is None or isinstance(v, str) else json.dumps(v)) for k, v in r.items()} for r in records],
            infer_schema_length=None,
            strict=False,
        )
    return frame.with_columns([pl.col(c).cast(t) for c, t in required.items()])


@dataclass
class _Ctx:
    """What every batch of one read needs."""

    path: Path
    required: dict[str, pl.DataType]
    rename: dict[str, str]
    q: _Quarantine
    max_bytes: int
    header: list[str] | None = None  # csv
    header_bytes: bytes = b""

    @property
    def overrides(self) -> dict[str, pl.DataType]:
        """Required non-text scalar types, given to Polars so a value of another type fails the batch."""
        back = {v: k for k, v in self.rename.items()}
        return {back.get(c, c): t for c, t in self.required.items() if t in (pl.Int64, pl.Float64, pl.Boolean)}

    def renamed(self, rec: Any) -> Any:
        return {self.rename.get(k, k): v for k, v in rec.items()} if isinstance(rec, dict) and self.rename else rec

    def rename_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        pairs = {k: v for k, v in self.rename.items() if k in frame.columns and k != v}
        if not pairs:
            return frame
        return frame.drop([v for v in pairs.values() if v in frame.columns]).rename(pairs)


# --------------------------------------------------------------------------- bytes, decompressed


def _cache_dir() -> Path:
    return Path(os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser() / "cache" / "ingest"


def _file_key(path: Path, kind: str) -> str:
    st = path.stat()
    ident = f"{path.resolve()}\x00{st.st_size}\x00{st.st_mtime_ns}\x00{kind}\x00{INDEX_VERSION}\x00{STRIDE}"
    return hashlib.blake2b(ident.encode(), digest_size=12).hexdigest()


class _Source:
    """The (decompressed) bytes of a file from byte `offset`, as chunks. For gzip, `damage` is set
    when the stream breaks (truncated or corrupt) after some data came out; nothing at all raises."""

    def __init__(self, path: Path, gz: bool, offset: int = 0, chunk: int = BATCH_BYTES, end: int | None = None):
        self.path, self.gz, self.offset, self.chunk, self.end = path, gz, offset, chunk, end
        self.damage: str | None = None

    def chunks(self) -> Iterator[bytes]:
        """Chunks from `offset` up to `end` (a record boundary from the index) or the end of the file."""
        try:
            if not self.gz:
                with open(self.path, "rb") as fh:
                    fh.seek(self.offset)
                    yield from _upto(fh.read, self.chunk, None if self.end is None else self.end - self.offset)
            elif self.offset:
                yield from self._seek_gz()
            else:
                yield from _limit(self._gunzip(), self.end)
        except OSError as err:
            raise InputError(self.path, f"cannot read ({err})") from err

    def _gunzip(self) -> Iterator[bytes]:
        """zlib over the compressed file, member after member, with bounded output per call."""
        produced = fed = 0
        dec: Any = None
        with open(self.path, "rb") as fh:
            while data := fh.read(GZ_READ):
                fed += len(data)
                while data:
                    if dec is None and not produced and data[:2] != b"\x1f\x8b":
                        raise InputError(self.path, f"not a valid gzip file (Not a gzipped file ({data[:2]!r}))")
                    if dec is None:  # a new member, or padding / garbage after the last one
                        if data[:2] != b"\x1f\x8b" and produced and not data.strip(b"\0"):
                            break  # zero padding after the last member
                        if data[:2] != b"\x1f\x8b" and produced:
                            self.damage = f"corrupt gzip: unexpected bytes after a complete member at compressed byte {fed - len(data)}"
                            return
                        dec = zlib.decompressobj(31)
                    try:
                        out = dec.decompress(data, self.chunk)
                    except zlib.error as err:
                        if not produced:
                            raise InputError(self.path, f"not a valid gzip file ({err})") from None
                        self.damage = f"corrupt gzip: data error near compressed byte {fed - len(data)} ({err}); {produced} bytes decompressed before it"
                        return
                    if out:
                        produced += len(out)
                        yield out
                    if dec.eof:
                        data, dec = dec.unused_data, None
                    else:
                        data = dec.unconsumed_tail
            if dec is not None:  # the file ended inside a member
                if not produced:
                    raise InputError(self.path, f"truncated gzip: the compressed stream ends at byte {fed}, before any data")
                self.damage = f"truncated gzip: the compressed stream ends at byte {fed} before its end marker ({produced} bytes decompressed)"

    def _spacing(self) -> int:
        """Decompressed bytes between seek points: a slice decompresses half of it on average before
        its first byte; the index holds 32 KiB per point (text gzips about 4:1)."""
        return int(min(max(4 * self.path.stat().st_size // GZ_POINTS, 1 << 20), 16 << 20))

    def _gz_index_path(self) -> Path:
        return _cache_dir() / f"{_file_key(self.path, 'gzidx')}.gzidx"

    def _seek_gz(self) -> Iterator[bytes]:
        """Seek through an indexed_gzip seek-point index (built once, cached); without the library,
        decompress from the start and skip."""
        if indexed_gzip is None:  # pragma: no cover - indexed_gzip is a core dependency
            yield from _skip(self._gunzip(), self.offset)
            return
        index = self._gz_index_path()
        fh = indexed_gzip.IndexedGzipFile(str(self.path), spacing=self._spacing(), index_file=str(index) if index.exists() else None)
        try:
            if not index.exists():
                fh.build_full_index()
                _atomic_write(index, fh.export_index)
            fh.seek(self.offset)
            yield from _upto(fh.read, self.chunk, None if self.end is None else self.end - self.offset)
        finally:
            fh.close()

    def indexed_pass(self) -> Iterator[bytes] | None:
        """The whole stream read through indexed_gzip, which records seek points as it goes (saved
        for later slices, so one decompression pass serves the record index and the seek index).
        indexed_gzip stops quietly at a truncated end: `intact()` checks the gzip trailer after."""
        if indexed_gzip is None:  # pragma: no cover - indexed_gzip is a core dependency
            return None

        def chunks() -> Iterator[bytes]:
            fh = indexed_gzip.IndexedGzipFile(str(self.path), spacing=self._spacing())
            try:
                self.produced = 0
                while chunk := fh.read(self.chunk):
                    self.produced += len(chunk)
                    yield chunk
                _atomic_write(self._gz_index_path(), fh.export_index)
            finally:
                fh.close()

        return chunks()

    def intact(self) -> bool:
        """Whether the gzip trailer (ISIZE) matches what came out: a truncated file fails this (and so
        does a multi-member file, which is then read again with zlib)."""
        with open(self.path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int.from_bytes(fh.read(4), "little") == getattr(self, "produced", -1) % 2**32


def _upto(read: Callable[[int], bytes], chunk: int, left: int | None) -> Iterator[bytes]:
    """Chunks from `read`, `left` bytes in all (None: to the end)."""
    while left is None or left > 0:
        data = read(chunk if left is None else min(chunk, left))
        if not data:
            return
        if left is not None:
            left -= len(data)
        yield data


def _limit(chunks: Iterator[bytes], n: int | None) -> Iterator[bytes]:
    """The first `n` bytes of `chunks` (all when None)."""
    for chunk in chunks:
        if n is not None and len(chunk) >= n:
            if n:
                yield chunk[:n]
            return
        if n is not None:
            n -= len(chunk)
        yield chunk


def _skip(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write a cache file via tmp + rename; a cache that cannot be written is skipped, not fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass


# --------------------------------------------------------------------------- records in a byte stream


@dataclass
class _Block:
    """Whole records cut from the stream: record i is data[starts[i]:ends[i]] (no line break)."""

    data: bytes
    pos: int  # byte offset of data[0] in the (decompressed) file
    starts: np.ndarray
    ends: np.ndarray
    sizes: np.ndarray  # full record size (larger than ends - starts only for a skipped giant record)
    lines: np.ndarray  # 1-based line where each record starts
    first: int  # index of the first record in the file (non-blank records, counted from 0)
    damage: str | None = None  # the last record is the damaged tail of a broken stream

    @property
    def n(self) -> int:
        return len(self.starts)

    def trim(self, lo: int, hi: int | None) -> "_Block":
        a = max(lo - self.first, 0)
        b = self.n if hi is None else min(max(hi - self.first, 0), self.n)
        if a == 0 and b == self.n:
            return self
        damage = self.damage if b == self.n else None
        s = slice(a, b)
        return _Block(self.data, self.pos, self.starts[s], self.ends[s], self.sizes[s], self.lines[s], self.first + a, damage)


def _scan(
    source: _Source, *, quoted: bool, max_bytes: int, line: int = 1, first: int = 0, chunks: Iterator[bytes] | None = None
) -> Iterator[_Block]:
    """Cut the stream into blocks of whole non-blank records. jsonl: a record is a line that is not
    all whitespace; csv (`quoted`): a non-empty line, where line breaks inside double quotes do not end
    a record. A record larger than `max_bytes` with no end in sight is skipped, keeping its preview."""
    pos = source.offset
    carry = b""
    giant: dict[str, Any] | None = None  # a record being skipped: its start, preview, size so far
    at_start = source.offset == 0
    for chunk in source.chunks() if chunks is None else chunks:
        if at_start:
            at_start = False
            if chunk.startswith(BOM):
                chunk, pos = chunk[3:], pos + 3
        if giant is not None:
            arr = np.frombuffer(chunk, dtype=np.uint8)
            nl = np.flatnonzero(arr == 10)
            qpos = _quotes(arr) if quoted else None
            ends_at = nl[(np.searchsorted(qpos, nl) + giant["parity"]) % 2 == 0] if quoted else nl
            if not ends_at.size:
                giant["size"] += len(chunk)
                giant["newlines"] += nl.size
                if quoted:
                    giant["parity"] = (giant["parity"] + qpos.size) % 2
                continue
            cut = int(ends_at[0]) + 1
            giant["size"] += cut
            yield _giant_block(giant, first)
            first += 1
            line = giant["line"] + giant["newlines"] + int(np.searchsorted(nl, cut))
            pos = giant["pos"] + giant["size"]
            chunk, giant = chunk[cut:], None
        buf = carry + chunk if carry else chunk
        block, carry, line, first = _cut(buf, pos, quoted, line, first)
        pos += len(buf) - len(carry)
        if block is not None and block.n:
            yield block
        if len(carry) > max_bytes + BATCH_BYTES:  # a giant record: keep its preview, skip the rest
            arr = np.frombuffer(carry, dtype=np.uint8)
            parity = (_quotes(arr).size % 2) if quoted else 0
            giant = {"line": line, "pos": pos, "preview": carry[:RAW_PREVIEW], "size": len(carry), "parity": parity,
                     "newlines": int(np.count_nonzero(arr == 10))}
            carry = b""
    if giant is not None:
        yield _giant_block(giant, first, source.damage)
        return
    if carry.strip() if not quoted else carry.rstrip(b"\r"):
        end = len(carry) - (1 if carry.endswith(b"\r") else 0)
        yield _Block(carry, pos, np.array([0]), np.array([end]), np.array([len(carry)]), np.array([line]), first, source.damage)
    elif source.damage is not None:  # broke exactly at a record boundary: the tail is empty
        yield _Block(b"", pos, np.array([0]), np.array([0]), np.array([0]), np.array([line]), first, source.damage)


def _giant_block(giant: dict[str, Any], first: int, damage: str | None = None) -> _Block:
    preview = giant["preview"]
    one = np.array([0])
    return _Block(preview, giant["pos"], one, np.array([len(preview)]), np.array([giant["size"]]), np.array([giant["line"]]), first, damage)


def _quotes(arr: np.ndarray) -> np.ndarray:
    """Positions of the double quotes that open, close or escape a quoted csv field: a quote inside
    an unquoted field (`5" screen`, not valid csv) is literal, as Python's csv module reads it."""
    q = np.flatnonzero(arr == 34)
    if not q.size:
        return q
    prev = np.where(q > 0, arr[np.maximum(q - 1, 0)], 10)
    nxt = np.where(q + 1 < arr.size, arr[np.minimum(q + 1, arr.size - 1)], 10)
    return q[_SEP[prev] | _SEP[nxt] | (prev == 34) | (nxt == 34)]


def _cut(buf: bytes, pos: int, quoted: bool, line: int, first: int) -> tuple[_Block | None, bytes, int, int]:
    """The whole records at the start of `buf` as a block, and the incomplete rest (carried over)."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    ends_at = nl[np.searchsorted(_quotes(arr), nl) % 2 == 0] if quoted else nl
    if not ends_at.size:
        return None, buf, line, first
    cut = int(ends_at[-1]) + 1
    starts = np.concatenate(([0], ends_at[:-1] + 1))
    ends = ends_at - (arr[np.maximum(ends_at - 1, 0)] == 13) * (ends_at > starts)
    lines = line + np.searchsorted(nl, starts)
    if quoted:
        keep = ends > starts
    else:
        keep = ~_WS[arr[np.minimum(starts, arr.size - 1)]] & (ends > starts)
        maybe = np.flatnonzero(~keep & (ends > starts))  # lines that start with whitespace: rare
        if maybe.size:
            keep[maybe] = [bool(buf[s:e].strip()) for s, e in zip(starts[maybe].tolist(), ends[maybe].tolist())]
    starts, ends, lines = starts[keep], ends[keep], lines[keep]
    block = _Block(buf[:cut], pos, starts, ends, ends - starts, lines, first)
    return block, buf[cut:], line + int(np.searchsorted(nl, cut)), first + len(starts)


# --------------------------------------------------------------------------- the record index


@dataclass
class RecordIndex:
    """Every STRIDE-th record's byte offset and line in the (decompressed) file, and the total."""

    records: int
    offsets: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    damage: str | None = None

    def seek(self, record: int) -> tuple[int, int, int]:
        """(byte offset, line, record) of the indexed record at or before `record`."""
        k = min(record // STRIDE, len(self.offsets) - 1)
        if k < 0:
            return 0, 1, 0
        return self.offsets[k], self.lines[k], k * STRIDE

    def end(self, record: int) -> int | None:
        """A byte offset at or after the start of `record` (None: the end of the file)."""
        k = -(-record // STRIDE)
        return self.offsets[k] if k < len(self.offsets) else None


_INDEXES: dict[str, RecordIndex] = {}


def record_index(path: str | Path, max_record_bytes: int = MAX_RECORD_BYTES, *, build: bool = True) -> RecordIndex | None:
    """The record index of a jsonl or csv file (plain or gzip): computed in one streaming pass,
    cached in memory and under `$DATAFLOW_HOME/cache/ingest/` (keyed by path, size and mtime).
    With `build=False`, None when it is not cached yet."""
    path = check_input(Path(path))
    fmt, gz = detect_format(path)
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"{path}: record indexes are for jsonl and csv files")
    key = _file_key(path, f"{fmt}:{int(gz)}:{max_record_bytes}")
    if key in _INDEXES:
        return _INDEXES[key]
    cached = _cache_dir() / f"{key}.json"
    try:
        index = RecordIndex(**json.loads(cached.read_text()))
    except (OSError, ValueError, TypeError):
        if not build:
            return None
        index = _build_index(path, fmt == "csv", gz, max_record_bytes)
        _atomic_write(cached, lambda tmp: Path(tmp).write_text(json.dumps(vars(index))))
    _INDEXES[key] = index
    return index


def _build_index(path: Path, quoted: bool, gz: bool, max_bytes: int) -> RecordIndex:
    if gz and path.stat().st_size >= 18:  # one indexed_gzip pass makes both indexes when the file is whole
        try:
            source = _Source(path, gz)
            chunks = source.indexed_pass()
            if chunks is not None:
                index = _index_blocks(_Source(path, gz), chunks, quoted, max_bytes)
                if source.intact():
                    return index
        except Exception:  # noqa: BLE001 - not gzip, damaged: the zlib pass below says what is wrong
            pass
    source = _Source(path, gz)
    index = _index_blocks(source, source.chunks(), quoted, max_bytes)
    index.damage = source.damage
    return index


def _index_blocks(source: _Source, chunks: Iterator[bytes], quoted: bool, max_bytes: int) -> RecordIndex:
    index = RecordIndex(0)
    for block in _scan(source, quoted=quoted, max_bytes=max_bytes, chunks=chunks):
        k = np.arange(block.first, block.first + block.n)
        at = np.flatnonzero(k % STRIDE == 0)
        index.offsets.extend((block.pos + block.starts[at]).tolist())
        index.lines.extend(block.lines[at].tolist())
        index.records = block.first + block.n
    return index


# --------------------------------------------------------------------------- reading


def read_input(
    path: str | Path,
    required: Mapping[str, pl.DataType] | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> ReadResult:
    """Read one input file (or the record slice [start, stop) of it) in bounded memory.

    `required` maps column -> dtype every row must have (non-null, right type); `rename` maps
    input field -> pipeline column (applied before the checks). Bad records are quarantined.
    """
    path = Path(path)
    fmt, gz = detect_format(path)
    check_input(path)
    if fmt == "document":  # document hook: one row per extracted page/section, failures quarantined
        from operators.knowledge.extract import read_document

        result = read_document(path, required, rename)
        return result if start is None and stop is None else type(result)(result.frame.slice(start or 0, (stop or result.frame.height) - (start or 0)), result.quarantine.clear() if start else result.quarantine, result.records)
    ctx = _Ctx(path, dict(required or {}), dict(rename or {}), _Quarantine(str(path)), max_record_bytes)
    if fmt == "parquet":
        return _read_parquet(ctx, gz, start, stop)
    if fmt == "json":
        return _read_json(ctx, gz, start, stop)
    return _read_lines(ctx, fmt, gz, start, stop)


def count_records(path: str | Path) -> int:
    """Records in a file without holding it in memory (parquet metadata; the jsonl/csv record index,
    which later slice reads reuse; a streamed pass over a JSON array)."""
    path = check_input(Path(path))
    fmt, gz = detect_format(path)
    if fmt == "parquet" and not gz:
        try:
            return pl.scan_parquet(path).select(pl.len()).collect().item()
        except Exception as err:  # noqa: BLE001
            raise InputError(path, f"not a readable parquet file ({err})") from err
    if fmt in ("jsonl", "csv"):
        n = record_index(path).records  # type: ignore[union-attr]
        return max(n - 1, 0) if fmt == "csv" else n  # csv: the header is not a record
    return read_input(path, {}).records


def _read_lines(ctx: _Ctx, fmt: str, gz: bool, start: int | None, stop: int | None) -> ReadResult:
    """jsonl / csv: seek to the slice with the record index, cut batches, parse each with Polars."""
    quoted = fmt == "csv"
    base = 1 if quoted else 0  # csv: record 0 of the file is the header
    lo, hi = (start or 0) + base, (stop + base if stop is not None else None)
    if quoted:
        _read_csv_header(ctx, gz)
        if ctx.header is None:
            if not start:
                ctx.q.add(0, None, "empty file", "")
            return ReadResult(pl.DataFrame(schema=ctx.required), ctx.q.frame(), 0)
    offset, line, first, end = 0, 1, 0, None
    if lo > base or hi is not None:  # a slice: seek (an index built once); stop early (if one is cached)
        index = record_index(ctx.path, ctx.max_bytes, build=lo > base)
        if index is not None and (index.damage is None or not gz):
            offset, line, first = index.seek(lo)
            end = None if hi is None else index.end(hi)
    source = _Source(ctx.path, gz, offset, end=end)
    frames: list[pl.DataFrame] = []
    records, problem = 0, None
    for block in _scan(source, quoted=quoted, max_bytes=ctx.max_bytes, line=line, first=first):
        if block.first + block.n <= lo:
            continue
        if hi is not None and block.first >= hi:
            break
        block = block.trim(lo, hi)
        records += block.n
        problem = problem or block.damage
        frames.extend(_parse_block(block, ctx, quoted))
        if hi is not None and block.first + block.n >= hi:
            break
    if not quoted and records == 0 and not start and first == 0:
        ctx.q.add(0, None, "empty file", "")
    return ReadResult(_concat(frames, ctx.required), ctx.q.frame(), records, problem)


def _parse_block(block: _Block, ctx: _Ctx, quoted: bool) -> list[pl.DataFrame]:
    starts, ends, lines = block.starts, block.ends, block.lines
    if block.damage is not None:  # the damaged tail of a broken stream
        starts, ends, lines = starts[:-1], ends[:-1], lines[:-1]
    big = np.flatnonzero(block.sizes[: len(starts)] > ctx.max_bytes)
    for j in big.tolist():
        raw = block.data[starts[j] : starts[j] + RAW_PREVIEW]
        ctx.q.add(lines[j], None, f"record of {block.sizes[j]} bytes exceeds the limit of {ctx.max_bytes}", raw)
    if big.size:
        keep = np.ones(len(starts), dtype=bool)
        keep[big] = False
        starts, ends, lines = starts[keep], ends[keep], lines[keep]
    parse = _csv_frames if quoted else _jsonl_frames
    frames = parse(block.data, starts, ends, lines, ctx) if len(starts) else []
    if block.damage is not None:
        ctx.q.add(block.lines[-1], None, block.damage, block.data[block.starts[-1] : block.starts[-1] + RAW_PREVIEW])
    return frames


def _bisect(parse_fast, parse_each, data: bytes, starts, ends, lines, ctx: _Ctx, split: bool = True) -> list[pl.DataFrame]:
    """Parse records with Polars; a batch it rejects is cut in 16 parts, each tried again, and the
    parts that still fail are checked record by record (exact reasons, as json.loads / csv give them).
    Cost: a clean batch one Polars pass; a batch with bad records at most two passes plus the
    record-by-record check of the failing sixteenths (never much more than checking every record)."""
    if len(starts) > _SMALL:
        frame = parse_fast(data, starts, ends, lines, ctx)
        if frame is not None:
            return [frame]
    if not split or len(starts) <= _SMALL:
        return [parse_each(data, starts, ends, lines, ctx)]
    out: list[pl.DataFrame] = []
    cuts = np.linspace(0, len(starts), 17).astype(np.int64)
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        if b > a:
            out += _bisect(parse_fast, parse_each, data, starts[a:b], ends[a:b], lines[a:b], ctx, split=False)
    return out


# a String value that could be a number, boolean, object or list that Polars turned into text
_MAYBE_COERCED = r"^(?:-?[0-9][0-9.eE+-]*$|true$|false$|\{|\[)"


def _jsonl_frames(data, starts, ends, lines, ctx: _Ctx) -> list[pl.DataFrame]:
    return _bisect(_jsonl_fast, _jsonl_each, data, starts, ends, lines, ctx)


def _jsonl_fast(data: bytes, starts, ends, lines, ctx: _Ctx) -> pl.DataFrame | None:
    n = len(starts)
    try:
        payload = io.BytesIO(memoryview(data)[starts[0] : ends[-1]])
        frame = pl.read_ndjson(payload, infer_schema_length=None, schema_overrides=ctx.overrides or None)
    except Exception:  # noqa: BLE001 - any parse error: bisect to find the bad records
        return None
    if frame.height != n:
        return None
    frame = ctx.rename_frame(frame)
    if any(c in frame.columns and not _dtype_ok(frame.schema[c], t) for c, t in ctx.required.items()):
        return None
    frame = frame.with_columns(
        [pl.lit(None, dtype=t).alias(c) for c, t in ctx.required.items() if c not in frame.columns]
    ).with_columns(pl.Series("__row", lines, dtype=pl.Int64), pl.int_range(n, dtype=pl.Int64).alias("__i"))
    # Polars reads a number/bool/object in a text column as its JSON text: re-check those rows exactly
    text = [c for c, t in ctx.required.items() if t == pl.String and frame.schema[c] == pl.String]
    if text:
        maybe = frame.filter(pl.any_horizontal([pl.col(c).str.contains(_MAYBE_COERCED) for c in text])).get_column("__i")
        bad = []
        for i in maybe.to_list():
            rec = ctx.renamed(json.loads(data[starts[i] : ends[i]]))
            problem = _check_record(rec, ctx.required)
            if problem and problem[1] != "missing required field":
                ctx.q.add(lines[i], problem[0], problem[1], rec)
                bad.append(i)
        if bad:
            frame = frame.filter(~pl.col("__i").is_in(bad))
    reasons = [pl.when(pl.col(c).is_null()).then(pl.lit(f"{c}\x00missing required field")) for c in ctx.required]
    return _quarantine_where(frame, reasons, ctx.q, raw=lambda i: data[starts[i] : ends[i]])


def _jsonl_each(data: bytes, starts, ends, lines, ctx: _Ctx) -> pl.DataFrame:
    """Record by record (the few a Polars batch rejected): each bad one gets its exact reason."""
    good = []
    for s, e, n in zip(starts.tolist(), ends.tolist(), lines.tolist()):
        line = data[s:e]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            ctx.q.add(n, None, f"invalid UTF-8 at byte {err.start}", line)
            continue
        try:
            rec = ctx.renamed(json.loads(text))
        except json.JSONDecodeError as err:
            ctx.q.add(n, None, f"invalid JSON: {err.msg} at column {err.colno}", text)
            continue
        problem = _check_record(rec, ctx.required)
        if problem:
            ctx.q.add(n, problem[0], problem[1], rec)
        else:
            good.append(rec)
    return _records_to_frame(good, ctx.required)


def _concat(frames: list[pl.DataFrame], required: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Batches into one frame; a column typed differently across batches becomes JSON text."""
    frames = [f for f in frames if f.width]
    if not frames:
        return pl.DataFrame(schema=dict(required))
    try:
        out = pl.concat(frames, how="diagonal_relaxed")
    except Exception:  # noqa: BLE001 - e.g. a struct in one batch, text in another
        types: dict[str, set] = {}
        for f in frames:
            for c, t in f.schema.items():
                types.setdefault(c, set()).add(t)
        mixed = [c for c, ts in types.items() if len(ts - {pl.Null}) > 1 and c not in required]
        frames = [f.with_columns([_as_json_text(f, c) for c in mixed if c in f.columns]) for f in frames]
        out = pl.concat(frames, how="diagonal_relaxed")
    return out.with_columns([pl.col(c).cast(t) for c, t in required.items() if c in out.columns])


def _as_json_text(frame: pl.DataFrame, column: str) -> pl.Series:
    """A column as JSON text (only for a column whose type differs between batches; per value)."""
    col = frame.get_column(column)
    if col.dtype == pl.String:
        return col
    return pl.Series(column, [None if v is None else json.dumps(v, default=str) for v in col.to_list()], dtype=pl.String)


def _quarantine_where(frame: pl.DataFrame, reasons: list[pl.Expr], q: _Quarantine, raw: Callable[[int], Any] | None = None) -> pl.DataFrame:
    """Quarantine the rows of `frame` (which has a 1-based `__row`, and `__i` when `raw` maps it to
    the record's original text) for which one of `reasons` (expressions giving "field\x00reason" or
    null, first match wins) is set; return the others."""
    why = pl.coalesce(*reasons, pl.lit(None, dtype=pl.String)) if reasons else pl.lit(None, dtype=pl.String)
    marked = frame.with_columns(why.alias("__why"))
    for rec in marked.filter(pl.col("__why").is_not_null()).iter_rows(named=True):  # only the bad rows
        field_, reason = rec.pop("__why").split("\x00")
        i = rec.pop("__i", None)
        q.add(rec.pop("__row"), field_, reason, raw(i) if raw is not None and i is not None else rec)
    return marked.filter(pl.col("__why").is_null()).drop("__row", "__why", "__i", strict=False)


# --------------------------------------------------------------------------- csv


def _read_csv_header(ctx: _Ctx, gz: bool) -> None:
    """The header (first non-empty record) of a csv file: its columns and raw bytes."""
    for block in _scan(_Source(ctx.path, gz, chunk=1024 * 1024), quoted=True, max_bytes=ctx.max_bytes):
        if block.damage is not None and block.n == 1:
            return
        raw = block.data[block.starts[0] : block.ends[0]]
        try:
            ctx.header = next(csv.reader([raw.decode("utf-8")]))
        except (UnicodeDecodeError, StopIteration, csv.Error) as err:
            raise InputError(ctx.path, f"unreadable csv header ({err})") from None
        ctx.header_bytes = raw
        return


def _csv_frames(data, starts, ends, lines, ctx: _Ctx) -> list[pl.DataFrame]:
    return _bisect(_csv_fast, _csv_each, data, starts, ends, lines, ctx)


def _csv_fast(data: bytes, starts, ends, lines, ctx: _Ctx) -> pl.DataFrame | None:
    n = len(starts)
    # blank lines inside the span would be read as rows of nulls: join the records then (rare)
    span = data[starts[0] : ends[-1]]
    contiguous = bool(np.all(starts[1:] - ends[:-1] <= 2))
    body = span if contiguous else b"\n".join(data[s:e] for s, e in zip(starts.tolist(), ends.tolist()))
    try:
        frame = pl.read_csv(
            ctx.header_bytes + b"\n" + body,
            infer_schema=False,
            empty_string_is_null=False,
            truncate_ragged_lines=False,
        )
    except Exception:  # noqa: BLE001 - invalid UTF-8, ragged or malformed rows: bisect
        return None
    if frame.height != n or frame.columns != ctx.header:
        return None
    return _csv_check(frame.with_columns(pl.Series("__row", lines, dtype=pl.Int64)), ctx)


def _csv_each(data: bytes, starts, ends, lines, ctx: _Ctx) -> pl.DataFrame:
    """Record by record with Python's csv module (the few a Polars batch rejected)."""
    rows, numbers = [], []
    width = len(ctx.header or [])
    for s, e, n in zip(starts.tolist(), ends.tolist(), lines.tolist()):
        raw = data[s:e]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            ctx.q.add(n, None, f"invalid UTF-8 at byte {err.start}", raw)
            continue
        try:
            parsed = list(csv.reader(io.StringIO(text)))
        except csv.Error as err:
            ctx.q.add(n, None, f"malformed csv record ({err})", text)
            continue
        if len(parsed) != 1:
            ctx.q.add(n, None, "malformed csv record (unbalanced quotes)", text)
            continue
        values = parsed[0]
        if len(values) > width:
            ctx.q.add(n, None, "more values than header columns", values[width:])
            continue
        rows.append(dict(zip(ctx.header or [], values + [None] * (width - len(values)))))
        numbers.append(n)
    frame = pl.DataFrame(rows, schema={c: pl.String for c in ctx.header or []})
    return _csv_check(frame.with_columns(pl.Series("__row", numbers, dtype=pl.Int64)), ctx)


def _csv_check(frame: pl.DataFrame, ctx: _Ctx) -> pl.DataFrame:
    """csv values are strings: a required value must be non-empty and cast to its dtype."""
    frame = ctx.rename_frame(frame)
    frame = frame.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in ctx.required if c not in frame.columns])
    reasons = []
    for name, dtype in ctx.required.items():
        col = pl.col(name)
        reasons.append(pl.when(col.is_null() | (col == "")).then(pl.lit(f"{name}\x00missing required field")))
        if dtype != pl.String:
            reasons.append(
                pl.when(_from_text(col, dtype).is_null()).then(pl.format(f"{name}\x00wrong type: cannot read '{{}}' as {dtype}", col))
            )
    good = _quarantine_where(frame, reasons, ctx.q)
    return good.with_columns([_from_text(pl.col(c), t) for c, t in ctx.required.items()])


def _from_text(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A csv text value as `dtype`, null where it does not convert (Polars has no str -> bool cast)."""
    if dtype == pl.Boolean:
        return col.str.to_lowercase().replace_strict({"true": True, "false": False}, default=None, return_dtype=pl.Boolean)
    return col.cast(dtype, strict=False)


# --------------------------------------------------------------------------- json arrays


class _Reader(io.RawIOBase):
    """A file-like view of a `_Source`'s chunks (for ijson), without a leading BOM, counting the
    bytes handed out."""

    def __init__(self, source: _Source):
        self.chunks, self.buf, self.pos, self.fresh = source.chunks(), b"", 0, True

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self.buf:
            chunk = next(self.chunks, None)
            if chunk is None:
                return b""
            self.buf = chunk.removeprefix(BOM) if self.fresh else chunk
            self.fresh = False
        out, self.buf = (self.buf, b"") if n < 0 or n >= len(self.buf) else (self.buf[:n], self.buf[n:])
        self.pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _head(ctx: _Ctx, gz: bool, limit: int) -> bytes:
    """The first `limit` bytes or so of the (decompressed) file, without a BOM."""
    head = b""
    for chunk in _Source(ctx.path, gz, chunk=min(limit, BATCH_BYTES)).chunks():
        head += chunk
        if len(head) >= limit:
            break
    return head.removeprefix(BOM)


def _read_json(ctx: _Ctx, gz: bool, start: int | None, stop: int | None) -> ReadResult:
    """A JSON array, element by element (ijson); a single object is one record; a `.json` file that
    is really jsonl (one object per line) is read as jsonl."""
    head = _head(ctx, gz, 64 * 1024).lstrip()
    if not head:
        ctx.q.add(0, None, "empty file", "")
        return ReadResult(pl.DataFrame(schema=ctx.required), ctx.q.frame(), 0)
    if head[:1] == b"{":
        try:
            json.loads(head.split(b"\n", 1)[0])
            return _read_lines(ctx, "jsonl", gz, start, stop)  # the first line is a whole object: jsonl
        except ValueError:
            pass
        whole = _head(ctx, gz, ctx.max_bytes + 1)
        try:
            if len(whole) > ctx.max_bytes:
                raise ValueError("larger than the record limit")
            obj = json.loads(whole)
        except ValueError:  # not one object either: each line is a record (as jsonl)
            return _read_lines(ctx, "jsonl", gz, start, stop)
        numbered = [(1, obj)][start:stop]
        return ReadResult(_check_json_batch(numbered, ctx), ctx.q.frame(), len(numbered))
    if head[:1] != b"[":
        try:
            value = json.loads(head)
        except ValueError as err:
            raise InputError(ctx.path, f"not valid JSON ({err})") from None
        raise InputError(ctx.path, f"expected a JSON array of objects, got {type(value).__name__}")
    source = _Source(ctx.path, gz)
    reader = _Reader(source)
    lo, hi = start or 0, stop
    frames, batch, parsed, records, problem = [], [], 0, 0, None
    try:
        for rec in ijson.items(reader, "item", use_float=True):
            parsed += 1
            if parsed <= lo:
                continue
            if hi is not None and parsed > hi:
                break
            batch.append((parsed, rec))
            if len(batch) >= 10_000:
                frames.append(_check_json_batch(batch, ctx))
                records, batch = records + len(batch), []
    except ijson.JSONError as err:  # truncated or malformed: keep the elements before the damage
        tail = parsed + 1
        if tail > lo and (hi is None or tail <= hi):
            if source.damage:
                where = source.damage
            elif isinstance(err, ijson.IncompleteJSONError) and "premature EOF" in str(err):
                where = f"truncated JSON array: the file ends at byte {reader.pos}"
            else:
                where = f"invalid JSON in the array before byte {reader.pos} ({str(err).strip().splitlines()[0]})"
            problem = f"{where}; element {tail} and any after it are lost"
            ctx.q.add(tail, None, problem, "")
            records += 1
    if batch:
        frames.append(_check_json_batch(batch, ctx))
        records += len(batch)
    return ReadResult(_concat(frames, ctx.required), ctx.q.frame(), records, problem)


def _check_json_batch(numbered: list[tuple[int, Any]], ctx: _Ctx) -> pl.DataFrame:
    """Per-element checks (ijson hands out Python objects, so this is per record anyway)."""
    good = []
    for n, rec in numbered:
        rec = ctx.renamed(rec)
        problem = _check_record(rec, ctx.required)
        if problem:
            ctx.q.add(n, problem[0], problem[1], rec)
        else:
            good.append(rec)
    return _records_to_frame(good, ctx.required)


# --------------------------------------------------------------------------- parquet


def _read_parquet(ctx: _Ctx, gz: bool, start: int | None, stop: int | None) -> ReadResult:
    try:
        if gz:  # rare: a gzipped parquet file is decompressed in memory (parquet needs random access)
            with gzip.open(ctx.path, "rb") as fh:
                lazy = pl.read_parquet(io.BytesIO(fh.read())).lazy()
        else:
            lazy = pl.scan_parquet(ctx.path)
        if start is not None or stop is not None:
            s = start or 0
            lazy = lazy.slice(s, (stop - s) if stop is not None else None)
        frame = lazy.collect()
    except (OSError, EOFError) as err:
        raise InputError(ctx.path, f"not a valid gzip file ({err})") from err
    except Exception as err:  # noqa: BLE001 - polars raises several error types for a corrupt file
        raise InputError(ctx.path, f"not a readable parquet file ({err})") from err
    frame = ctx.rename_frame(frame)
    missing = [c for c in ctx.required if c not in frame.columns]
    if missing:
        raise InputError(ctx.path, f"required column(s) {missing} not in the file (columns: {frame.columns})", records=frame.height)
    frame = frame.with_row_index("__row", offset=(start or 0) + 1).with_columns(pl.col("__row").cast(pl.Int64))
    reasons = []
    for name, dtype in ctx.required.items():
        ok_type = frame.schema[name] == dtype or (dtype == pl.Float64 and frame.schema[name].is_numeric())
        if not ok_type:
            raise InputError(ctx.path, f"column {name!r} has type {frame.schema[name]}, expected {dtype}", records=frame.height)
        reasons.append(pl.when(pl.col(name).is_null()).then(pl.lit(f"{name}\x00missing required field")))
    return ReadResult(_quarantine_where(frame, reasons, ctx.q), ctx.q.frame(), frame.height)
