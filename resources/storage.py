"""Where run state lives: the project home, Parquet files per stage and partition, the DuckDB catalog,
and the shard registry that maps partition keys to input files.

Layout under the home folder (`$DATAFLOW_HOME`, default `./.dataflow`):
    data/<pipeline>/<stage>/<partition>.parquet          stage outputs (written tmp + os.replace)
    data/<pipeline>/<stage>/_dropped/<partition>.parquet rows a filter dropped, with the reason
    data/<pipeline>/_quarantine/<partition>.parquet      malformed input rows, with file/row/field/reason
    exports/<pipeline>/...                               training-ready jsonl + parquet + manifest
    catalog.duckdb                                       views <pipeline>.<stage> over the Parquet files
    shards.sqlite                                        partition key -> input file (+ row slice)
    dagster/                                             DAGSTER_HOME
    cache/                                               the LLM generation cache

Stages never open the DuckDB file: only `refresh_catalog` does, under an exclusive file lock, and it
never writes the live file either: it updates a copy and renames it into place, so readers (`dataflow
sql`, a `duckdb -readonly` session left open) keep the snapshot they opened and never block it.
First-time setup of the home (Dagster's instance tables, the shard registry) runs under `setup_lock()`,
so several processes starting at once on a fresh home do not race to create the same tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import dagster as dg
import polars as pl

UNPARTITIONED = "all"
QUARANTINE = "_quarantine"


def home(create: bool = True) -> Path:
    """The project home folder: `$DATAFLOW_HOME`, else `./.dataflow` (created unless `create=False`)."""
    path = Path(os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser().resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


PROJECT_STATE = ("shards.sqlite", "catalog.duckdb", "data", "dagster")


def has_project_state(path: Path | None = None) -> bool:
    """Whether `path` (default: the home) holds any project state: a read command pointed at a
    folder without it says so instead of creating an empty home."""
    path = path or home(create=False)
    return path.is_dir() and any((path / name).exists() for name in PROJECT_STATE)


# Run monitoring (used by dagster-daemon, i.e. `dataflow ui`): runs whose worker died are marked failed
# and the pool slots of finished runs are freed; CLI runs are also reaped by `liveness.reap_dead_runs`.
INSTANCE_YAML = """telemetry:
  enabled: false
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 60
  free_slots_after_run_end_seconds: 60
"""


def dagster_home() -> Path:
    """DAGSTER_HOME inside the project home (created with an empty dagster.yaml when missing)."""
    path = Path(os.environ.get("DAGSTER_HOME") or home() / "dagster")
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        write_text_atomic(INSTANCE_YAML, config)  # never half a file for a racing reader
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path in `path`'s folder; on success rename it onto `path`, so readers never see
    half a file; on failure remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Rows per Parquet row group. Polars' default (512^2 rows) makes a 100k-row stage one row group, all of
# it encoded in memory before it is written: 100,000 C4 documents took +390 MB and 2.1 s to write,
# 10,000-row groups +80 MB and 1.2 s (same file size; reads are faster too, by row group in parallel).
# zstd level 1 instead of Polars' default 3: every stage hands its output to the next through a file, and
# that write is most of a CPU stage's overhead over calling its operator (same 100k-row frame: ~1.0 s -> ~0.65 s,
# files 24% larger).
PARQUET_ROW_GROUP_ROWS = 10_000
PARQUET_ZSTD_LEVEL = 1


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd", compression_level=PARQUET_ZSTD_LEVEL, row_group_size=PARQUET_ROW_GROUP_ROWS)
    return path


def link_atomic(src: Path, dst: Path) -> Path:
    """Make `dst` the same file as `src`: a hard link (a copy where the file system has none), put in
    place by rename. Safe to share because no file here is ever written in place: rewriting either
    path renames a new file onto it and leaves the other's content as it was. Used where an output
    is byte for byte a file already written (a stage that changed nothing, the export of the last stage),
    instead of encoding it again."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def write_text_atomic(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, home_dir: str | os.PathLike | None = None) -> str:
    """The SHA-256 of a file, computed once per (path, size, mtime): memoized in this process and in
    `$DATAFLOW_HOME/cache/file-hashes/`, so an input shard (source metadata, then the export manifest,
    then the input sensor) or a 100 MB GGUF is not re-read per use."""
    p = Path(path).resolve()
    st = p.stat()
    sig = (str(p), st.st_size, st.st_mtime_ns)
    if sig in _HASHES:
        return _HASHES[sig]
    root = Path(home_dir).expanduser().resolve() if home_dir else home(create=False)
    memo = root / "cache" / "file-hashes" / (hashlib.blake2b(str(p).encode(), digest_size=12).hexdigest() + ".json")
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(memo.read_text())
        if (saved["path"], saved["size"], saved["mtime_ns"]) == sig:
            _HASHES[sig] = saved["sha256"]
            return saved["sha256"]
    with open(p, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    _HASHES[sig] = digest
    with contextlib.suppress(OSError):
        write_text_atomic(json.dumps({"path": sig[0], "size": sig[1], "mtime_ns": sig[2], "sha256": digest}), memo)
    return digest


class LockTimeout(TimeoutError):
    """A file lock was not free within its bound."""


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None, what: str = "") -> Iterator[None]:
    """An exclusive inter-process lock (`flock`; the kernel drops it when its holder dies, so a
    killed process never leaves it held). Blocks until free, or raises `LockTimeout` after
    `timeout_s` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        if timeout_s is None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{what or path}: still locked by another process after {timeout_s:.0f} s") from None
                    time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def setup_lock() -> Iterator[None]:
    """Serialise first-time setup of the project home across processes (instance and registry tables)."""
    with file_lock(home() / ".setup.lock", timeout_s=_env_float("DATAFLOW_SETUP_LOCK_TIMEOUT_S", 300), what="project setup"):
        yield


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


# The frame a stage wrote last in this process, for the next stage to read without decoding the file it
# was just encoded into (a run executes its stages one after another in one process). One slot, so it
# holds at most the frame the next stage works on anyway; used only while the file is the one written
# (same inode, size and mtime) and its Parquet schema equals the frame's, so a reader gets what
# `pl.read_parquet` would give. At 100,000 C4 documents a text_pt run decoded 16 stage files, ~2.4 s.
_HANDOFF: dict[str, tuple[tuple[int, int, int] | None, pl.DataFrame]] = {}


_CATALOG_HELD: dict[str, int] = {}  # catalog lock path -> depth held by this process (the lock is reentrant)


class ParquetStore(dg.ConfigurableResource):
    """Parquet files per pipeline stage and partition under the project home, plus the DuckDB catalog."""

    root: str = ""  # default: <home>/data

    @property
    def base(self) -> Path:
        return Path(self.root) if self.root else home() / "data"

    @property
    def catalog_path(self) -> Path:
        return (Path(self.root).parent if self.root else home()) / "catalog.duckdb"

    def path(self, pipeline: str, stage: str, partition: str | None = None) -> Path:
        return self.base / pipeline / stage / f"{partition or UNPARTITIONED}.parquet"

    def dropped_path(self, pipeline: str, stage: str, partition: str | None = None) -> Path:
        return self.base / pipeline / stage / "_dropped" / f"{partition or UNPARTITIONED}.parquet"

    def write(
        self,
        pipeline: str,
        stage: str,
        partition: str | None,
        frame: pl.DataFrame,
        hand_off: bool = False,
        same_as: str | None = None,
    ) -> Path:
        """Write a stage's file. `hand_off`: keep the frame for the next `read` of it in this process.
        `same_as`: a stage whose file holds exactly `frame` (the caller compared them: a filter that
        dropped nothing, a refiner that changed nothing); its file is linked instead of encoded again
        (same bytes; ~0.5 s and 130 MB per 100k C4 documents)."""
        if hand_off:
            _HANDOFF.clear()  # before encoding: the frame kept for this stage is no longer needed
        path = self.path(pipeline, stage, partition)
        upstream = self.path(pipeline, same_as, partition) if same_as is not None else None
        if upstream is not None and upstream.exists():
            link_atomic(upstream, path)
        else:
            write_parquet_atomic(frame, path)
        if hand_off and pl.read_parquet_schema(path) == frame.schema:
            _HANDOFF[str(path)] = (_file_key(path), frame)
        return path

    @staticmethod
    def end_hand_off() -> None:
        """Let go of the frame kept for the next stage (the chain's last reader calls this)."""
        _HANDOFF.clear()

    def read(self, pipeline: str, stage: str, partition: str | None = None) -> pl.DataFrame:
        path = self.path(pipeline, stage, partition)
        kept = _HANDOFF.get(str(path))
        if kept is not None and kept[0] is not None and kept[0] == _file_key(path):
            return kept[1]
        if not path.exists():
            raise FileNotFoundError(f"{pipeline}/{stage}: no data for partition {partition!r} at {path}; materialise it first")
        return pl.read_parquet(path)

    def partitions(self, pipeline: str, stage: str) -> list[str]:
        folder = self.base / pipeline / stage
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def row_count(self, pipeline: str, stage: str, partition: str | None = None) -> int | None:
        path = self.path(pipeline, stage, partition)
        return pl.scan_parquet(path).select(pl.len()).collect().item() if path.exists() else None

    @contextlib.contextmanager
    def catalog_lock(self, timeout_s: float | None = None) -> Iterator[None]:
        """The writers' lock on the catalog and the assembled export (reentrant within a process).
        Waits at most `timeout_s` (default `$DATAFLOW_CATALOG_LOCK_TIMEOUT_S`, 300 s), then raises
        `LockTimeout`. Readers never take it: they read a complete snapshot (see `refresh_catalog`)."""
        lock = str(self.catalog_path.with_suffix(".lock"))
        if _CATALOG_HELD.get(lock):
            _CATALOG_HELD[lock] += 1
            try:
                yield
            finally:
                _CATALOG_HELD[lock] -= 1
            return
        bound = _env_float("DATAFLOW_CATALOG_LOCK_TIMEOUT_S", 300) if timeout_s is None else timeout_s
        with file_lock(Path(lock), timeout_s=bound, what=f"catalog {self.catalog_path}"):
            _CATALOG_HELD[lock] = 1
            try:
                yield
            finally:
                _CATALOG_HELD.pop(lock, None)

    def refresh_catalog(self, pipeline: str, stages: list[str], attempts: int = 3) -> list[str]:
        """(Re)create one DuckDB view per stage with data: `<pipeline>.<stage>` over all its partitions.

        Under the catalog lock, so concurrent refreshes queue. The live catalog file is never opened
        for writing: the views go into a copy that is then renamed over it, so a reader holding the
        old file open (a `duckdb -readonly` session, `dataflow sql`) keeps its snapshot and neither
        blocks the refresh nor sees a half-made catalog. A failed attempt is retried (`attempts`).
        Returns the views created.
        """
        import duckdb

        for attempt in range(1, attempts + 1):
            try:
                with self.catalog_lock(), atomic_path(self.catalog_path) as tmp:
                    return self._write_views(duckdb, tmp, pipeline, stages)
            except duckdb.Error:
                if attempt == attempts:
                    raise
                time.sleep(0.5 * attempt)
        return []

    def _write_views(self, duckdb, tmp: Path, pipeline: str, stages: list[str]) -> list[str]:
        created = []
        tmp.unlink()
        if self.catalog_path.exists():
            shutil.copyfile(self.catalog_path, tmp)
        try:
            # an older storage format, so the `duckdb` CLI (duckdb-cli, a release behind) can open it too
            con = duckdb.connect(str(tmp), config={"storage_compatibility_version": "v1.2.0"})
            try:
                con.execute(f'create schema if not exists "{pipeline}"')
                for stage in stages:
                    for view, pattern in (
                        (stage, self.base / pipeline / stage / "*.parquet"),
                        (f"{stage}_dropped", self.base / pipeline / stage / "_dropped" / "*.parquet"),
                    ):
                        name = "quarantine" if view == QUARANTINE else view
                        if not list(pattern.parent.glob("*.parquet")):
                            # no files (left): no view, rather than one that fails when queried
                            con.execute(f'drop view if exists "{pipeline}"."{name}"')
                            continue
                        con.execute(
                            f'create or replace view "{pipeline}"."{name}" as '
                            f"select * from read_parquet('{pattern}', union_by_name = true, filename = true)"
                        )
                        created.append(f"{pipeline}.{name}")
                con.execute("checkpoint")
            finally:
                con.close()
        finally:
            Path(f"{tmp}.wal").unlink(missing_ok=True)
        return created


# --------------------------------------------------------------------------- shards


_KEY_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Shard:
    pipeline: str
    key: str
    path: str
    start: int | None = None  # row slice [start, stop) of a large file; None = whole file
    stop: int | None = None


def shard_key(path: Path, start: int | None = None) -> str:
    """A readable, stable partition key: file name + short hash of its absolute path (+ slice start)."""
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=3).hexdigest()
    stem = _KEY_SAFE.sub("_", path.name)[:60]
    return f"{stem}-{digest}" + (f"@{start}" if start is not None else "")


class ShardRegistry:
    """Partition key -> input file (and row slice), in SQLite so sensors, the CLI and runs in other
    processes agree on it."""

    def __init__(self, path: Path | None = None):
        self.path = path or home() / "shards.sqlite"
        if self.path.exists():
            self._create()
        else:
            with setup_lock():  # a fresh home: one process creates the file and its table
                self._create()

    def _create(self) -> None:
        with contextlib.closing(self._connect()) as con, con:
            con.execute(
                "create table if not exists shards (pipeline text, key text, path text, start integer, stop integer,"
                " primary key (pipeline, key))"
            )

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("pragma journal_mode=wal")
        return con

    def add(self, pipeline: str, path: Path, start: int | None = None, stop: int | None = None) -> Shard:
        shard = Shard(pipeline, shard_key(path, start), str(path.resolve()), start, stop)
        with self._connect() as con:
            # an upsert keeps the row (and its rowid, the registration order) of a re-registered shard
            con.execute(
                "insert into shards values (?, ?, ?, ?, ?) on conflict (pipeline, key) do update"
                " set path = excluded.path, start = excluded.start, stop = excluded.stop",
                (shard.pipeline, shard.key, shard.path, shard.start, shard.stop),
            )
        return shard

    def in_registration_order(self, pipeline: str) -> list[str]:
        """Partition keys of `pipeline` in the order they were first registered (dataset-wide dedup:
        the earliest registered shard wins)."""
        with contextlib.closing(self._connect()) as con:
            return [k for (k,) in con.execute("select key from shards where pipeline = ? order by rowid", (pipeline,))]

    def get(self, pipeline: str, key: str) -> Shard:
        with self._connect() as con:
            row = con.execute(
                "select pipeline, key, path, start, stop from shards where pipeline = ? and key = ?", (pipeline, key)
            ).fetchone()
        if row is None:
            raise KeyError(f"{pipeline}: unknown partition {key!r}; add it with `dataflow run` or the input sensor")
        return Shard(*row)

    def remove(self, pipeline: str, key: str) -> Shard:
        """Forget one partition (raises KeyError when unknown); returns what it was."""
        shard = self.get(pipeline, key)
        with contextlib.closing(self._connect()) as con, con:
            con.execute("delete from shards where pipeline = ? and key = ?", (pipeline, key))
        return shard

    def all(self, pipeline: str) -> list[Shard]:
        with self._connect() as con:
            rows = con.execute(
                "select pipeline, key, path, start, stop from shards where pipeline = ? order by key", (pipeline,)
            ).fetchall()
        return [Shard(*r) for r in rows]


def partition_files(store: ParquetStore, pipeline: str, key: str) -> list[Path]:
    """Every file one partition left under the home: stage outputs, dropped rows, quarantine, and
    its per-partition export (used by `dataflow partitions --remove`)."""
    base = store.base / pipeline
    # `<key>.*`: its Parquet files and any per-partition state (dedup decisions, ...); keys hold no glob characters
    files = [p for p in base.rglob(f"{key}.*") if p.is_file()] if base.is_dir() else []
    exports = home() / "exports" / pipeline / "partitions"
    files += [p for p in (exports / f"{key}.parquet", exports / f"{key}.jsonl", exports / f"{key}.manifest.json") if p.is_file()]
    return sorted(set(files))
