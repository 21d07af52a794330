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

Stages never open the DuckDB file: only `refresh_catalog` does, under an exclusive file lock, so
parallel processes never fail on DuckDB's single-writer lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import dagster as dg
import polars as pl

UNPARTITIONED = "all"
QUARANTINE = "_quarantine"


def home() -> Path:
    """The project home folder: `$DATAFLOW_HOME`, else `./.dataflow`."""
    path = Path(os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def dagster_home() -> Path:
    """DAGSTER_HOME inside the project home (created with an empty dagster.yaml when missing)."""
    path = Path(os.environ.get("DAGSTER_HOME") or home() / "dagster")
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
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


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (blocks until free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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

    def write(self, pipeline: str, stage: str, partition: str | None, frame: pl.DataFrame) -> Path:
        return write_parquet_atomic(frame, self.path(pipeline, stage, partition))

    def read(self, pipeline: str, stage: str, partition: str | None = None) -> pl.DataFrame:
        path = self.path(pipeline, stage, partition)
        if not path.exists():
            raise FileNotFoundError(f"{pipeline}/{stage}: no data for partition {partition!r} at {path}; materialise it first")
        return pl.read_parquet(path)

    def partitions(self, pipeline: str, stage: str) -> list[str]:
        folder = self.base / pipeline / stage
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def row_count(self, pipeline: str, stage: str, partition: str | None = None) -> int | None:
        path = self.path(pipeline, stage, partition)
        return pl.scan_parquet(path).select(pl.len()).collect().item() if path.exists() else None

    def refresh_catalog(self, pipeline: str, stages: list[str]) -> list[str]:
        """(Re)create one DuckDB view per stage with data: `<pipeline>.<stage>` over all its partitions.

        Takes an exclusive file lock first, so concurrent refreshes queue instead of failing on
        DuckDB's single-writer lock. Returns the views created.
        """
        import duckdb

        created = []
        with file_lock(self.catalog_path.with_suffix(".lock")):
            # an older storage format, so the `duckdb` CLI (duckdb-cli, a release behind) can open it too
            con = duckdb.connect(str(self.catalog_path), config={"storage_compatibility_version": "v1.2.0"})
            try:
                con.execute(f'create schema if not exists "{pipeline}"')
                for stage in stages:
                    for view, pattern in (
                        (stage, self.base / pipeline / stage / "*.parquet"),
                        (f"{stage}_dropped", self.base / pipeline / stage / "_dropped" / "*.parquet"),
                    ):
                        if not list(pattern.parent.glob("*.parquet")):
                            continue
                        name = "quarantine" if stage == QUARANTINE else view
                        con.execute(
                            f'create or replace view "{pipeline}"."{name}" as '
                            f"select * from read_parquet('{pattern}', union_by_name = true, filename = true)"
                        )
                        created.append(f"{pipeline}.{name}")
            finally:
                con.close()
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
        with self._connect() as con:
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
            con.execute(
                "insert or replace into shards values (?, ?, ?, ?, ?)",
                (shard.pipeline, shard.key, shard.path, shard.start, shard.stop),
            )
        return shard

    def get(self, pipeline: str, key: str) -> Shard:
        with self._connect() as con:
            row = con.execute(
                "select pipeline, key, path, start, stop from shards where pipeline = ? and key = ?", (pipeline, key)
            ).fetchone()
        if row is None:
            raise KeyError(f"{pipeline}: unknown partition {key!r}; add it with `dataflow run` or the input sensor")
        return Shard(*row)

    def all(self, pipeline: str) -> list[Shard]:
        with self._connect() as con:
            rows = con.execute(
                "select pipeline, key, path, start, stop from shards where pipeline = ? order by key", (pipeline,)
            ).fetchall()
        return [Shard(*r) for r in rows]
