"""A content-addressed generation cache shared by every LLM backend.

key = hash(backend model identity, full rendered messages, sampling params (incl. seed), sample
index, JSON schema, output mode). Stored in SQLite (WAL mode, busy timeout, retry on
`database is locked`) under the project home: `$DATAFLOW_HOME/cache/llm.sqlite`
(DATAFLOW_HOME defaults to `./.dataflow`).

- Safe under concurrent processes: WAL lets readers run beside one writer; writers wait
  (busy_timeout) and we retry on top of that.
- Each completed result is committed as it arrives (`put`), so a SIGKILL mid-stage loses nothing
  that completed. Errors are never stored: a re-run retries only the failed rows.
- Batch lookup (`get_many`) reads in chunks of `IN (...)` queries: 100k keys well under 2 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from operators.llm import LLMRequest, LLMResult

SCHEMA_VERSION = 1
_CHUNK = 900  # bound variables per IN (...) query; far below SQLite's limit


def default_home() -> Path:
    return Path(os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser().resolve()


def default_cache_path(home: str | os.PathLike | None = None) -> Path:
    return Path(home).expanduser().resolve() / "cache" / "llm.sqlite" if home else default_home() / "cache" / "llm.sqlite"


def cache_key(model: str, request: LLMRequest, *, mode: str = "") -> str:
    """The content address of one generation (never includes an API key or a row id)."""
    payload = json.dumps(
        {
            "v": SCHEMA_VERSION,
            "model": model,
            "messages": [dict(m) for m in request.messages],
            "params": request.params.to_dict(),
            "sample": request.sample,
            "schema": request.schema,
            "mode": mode if request.schema is not None else "",
        },
        sort_keys=True,
        ensure_ascii=False,
        default=repr,
    )
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


_DDL = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT,
    parsed TEXT,
    finish_reason TEXT,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL
) WITHOUT ROWID
"""


class GenerationCache:
    """SQLite-backed cache of successful generations, keyed by `cache_key()`.

    One connection per thread (sqlite3 connections are not shared across threads); every
    write is its own short transaction so completed results are durable immediately.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, busy_timeout_s: float = 30.0, retries: int = 20):
        self.path = Path(path).expanduser().resolve() if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self.retries = retries
        self._local = threading.local()
        self._retry(lambda c: c.execute(_DDL))

    # -- connections ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self._retry_raw(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _retry_raw(self, fn):
        delay = 0.01
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except sqlite3.OperationalError as err:
                msg = str(err).lower()
                if ("locked" not in msg and "busy" not in msg) or attempt == self.retries:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)

    def _retry(self, fn):
        return self._retry_raw(lambda: fn(self._conn()))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- reads ------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored rows for the keys present, as dicts (key -> row). Missing keys are absent."""
        uniq = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        cols = ("key", "model", "text", "parsed", "finish_reason", "tokens_in", "tokens_out", "latency_s")

        def read(conn: sqlite3.Connection) -> None:
            for i in range(0, len(uniq), _CHUNK):
                chunk = uniq[i : i + _CHUNK]
                q = f"SELECT {', '.join(cols)} FROM generations WHERE key IN ({','.join('?' * len(chunk))})"
                for row in conn.execute(q, chunk):
                    out[row[0]] = dict(zip(cols, row))

        self._retry(read)
        return out

    def lookup(self, requests: Sequence[LLMRequest], keys: Sequence[str]) -> dict[int, LLMResult]:
        """Index in `requests` -> cached `LLMResult` (cached=True) for every hit."""
        rows = self.get_many(keys)
        hits: dict[int, LLMResult] = {}
        for i, (req, key) in enumerate(zip(requests, keys)):
            row = rows.get(key)
            if row is not None:
                hits[i] = LLMResult(
                    id=req.id,
                    sample=req.sample,
                    text=row["text"],
                    parsed=json.loads(row["parsed"]) if row["parsed"] is not None else None,
                    finish_reason=row["finish_reason"],
                    tokens_in=row["tokens_in"],
                    tokens_out=row["tokens_out"],
                    latency_s=row["latency_s"],
                    model=row["model"],
                    cache_key=key,
                    cached=True,
                )
        return hits

    def __contains__(self, key: str) -> bool:
        return bool(self.get_many([key]))

    def __len__(self) -> int:
        return self._retry(lambda c: c.execute("SELECT count(*) FROM generations").fetchone()[0])

    # -- writes -----------------------------------------------------------------------------
    def put(self, result: LLMResult) -> None:
        """Persist one successful result now (its own transaction). Errors are never stored."""
        self.put_many([result])

    def put_many(self, results: Iterable[LLMResult]) -> int:
        rows = [
            (
                r.cache_key,
                r.model,
                r.text,
                json.dumps(r.parsed, ensure_ascii=False) if r.parsed is not None else None,
                r.finish_reason,
                int(r.tokens_in),
                int(r.tokens_out),
                float(r.latency_s),
                time.time(),
            )
            for r in results
            if r.error is None and r.cache_key and not r.cached
        ]
        if not rows:
            return 0

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?,?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._retry(write)
        return len(rows)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)

        def run(conn: sqlite3.Connection) -> None:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                conn.execute(f"DELETE FROM generations WHERE key IN ({','.join('?' * len(chunk))})", chunk)

        self._retry(run)

    def __repr__(self) -> str:
        return f"GenerationCache({str(self.path)!r})"


def open_cache(cache: "GenerationCache | str | os.PathLike | None | bool" = None, home: str | None = None) -> GenerationCache | None:
    """Normalize a cache argument: an instance, a path, None (default path under the home) or False (no cache)."""
    if cache is False:
        return None
    if isinstance(cache, GenerationCache):
        return cache
    if cache:
        return GenerationCache(cache)
    return GenerationCache(default_cache_path(home))


