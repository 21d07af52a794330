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

import contextlib
import gc
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from operators.llm import LLMRequest, LLMResult, SamplingParams

SCHEMA_VERSION = 1
_CHUNK = 900  # bound variables per IN (...) query; far below SQLite's limit


def default_home() -> Path:
    return Path(os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser().resolve()


def default_cache_path(home: str | os.PathLike | None = None) -> Path:
    return Path(home).expanduser().resolve() / "cache" / "llm.sqlite" if home else default_home() / "cache" / "llm.sqlite"


@contextlib.contextmanager
def _gc_paused():
    """Building 100k result objects triggers many full GC passes that find nothing to free."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_ENCODE = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=lambda o: dict(o) if isinstance(o, Mapping) else repr(o)).encode


@lru_cache(maxsize=4096)
def _key_prefix(model: str, params: SamplingParams, sample: int, mode: str) -> str:
    head = json.dumps({"v": SCHEMA_VERSION, "model": model, "params": params.to_dict(), "sample": sample, "mode": mode}, sort_keys=True, ensure_ascii=False)
    return head + "\x00"


def cache_key(model: str, request: LLMRequest, *, mode: str = "") -> str:
    """The content address of one generation: backend model identity, the full rendered messages,
    sampling params (seed included), sample index, schema and structured-output mode. Never an
    API key or a row id. (~5 us per key: the per-batch constant part is memoized.)"""
    prefix = _key_prefix(model, request.params, request.sample, mode if request.schema is not None else "")
    msgs = request.messages
    messages = _ENCODE(msgs if isinstance(msgs, (list, tuple)) else list(msgs))
    schema = _ENCODE(request.schema) if request.schema is not None else "null"
    payload = f"{prefix}{messages}\x00{schema}"
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


# The rendered messages behind each cached answer, so `dataflow trace` can show the exact prompt.
_PROMPTS_DDL = "CREATE TABLE IF NOT EXISTS prompts (key TEXT PRIMARY KEY, messages TEXT NOT NULL) WITHOUT ROWID"


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
        self._retry(lambda c: c.execute(_PROMPTS_DDL))

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
    _COLS = ("key", "model", "text", "parsed", "finish_reason", "tokens_in", "tokens_out", "latency_s")

    def _rows(self, keys: Iterable[str]) -> dict[str, tuple]:
        uniq = list(dict.fromkeys(keys))
        out: dict[str, tuple] = {}
        cols = ", ".join(self._COLS)

        def read(conn: sqlite3.Connection) -> None:
            out.clear()
            for i in range(0, len(uniq), _CHUNK):
                chunk = uniq[i : i + _CHUNK]
                q = f"SELECT {cols} FROM generations WHERE key IN ({','.join('?' * len(chunk))})"
                for row in conn.execute(q, chunk):
                    out[row[0]] = row

        self._retry(read)
        return out

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored rows for the keys present, as dicts (key -> row). Missing keys are absent."""
        with _gc_paused():
            return {k: dict(zip(self._COLS, row)) for k, row in self._rows(keys).items()}

    def lookup(self, requests: Sequence[LLMRequest], keys: Sequence[str]) -> dict[int, LLMResult]:
        """Index in `requests` -> cached `LLMResult` (cached=True) for every hit."""
        with _gc_paused():
            return self._lookup(requests, keys)

    def _lookup(self, requests: Sequence[LLMRequest], keys: Sequence[str]) -> dict[int, LLMResult]:
        rows = self._rows(keys)
        hits: dict[int, LLMResult] = {}
        loads = json.loads
        for i, (req, key) in enumerate(zip(requests, keys)):
            row = rows.get(key)
            if row is not None:
                _, model, text, parsed, finish, t_in, t_out, lat = row
                hits[i] = LLMResult(
                    req.id, req.sample, text, loads(parsed) if parsed is not None else None, finish,
                    t_in, t_out, lat, model, key, True,
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

    def prompt(self, key: str) -> list[dict[str, Any]] | None:
        """The messages that produced the cached answer under `key`, when recorded."""
        row = self._retry(lambda c: c.execute("SELECT messages FROM prompts WHERE key = ?", (key,)).fetchone())
        return json.loads(row[0]) if row else None

    def put_many(self, results: Iterable[LLMResult], prompts: dict[str, Any] | None = None) -> int:
        """Persist successful results (one transaction); `prompts` maps cache key -> messages."""
        results = list(results)
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
                if prompts:
                    conn.executemany(
                        "INSERT OR REPLACE INTO prompts VALUES (?, ?)",
                        [(r[0], json.dumps(list(prompts[r[0]]), ensure_ascii=False)) for r in rows if r[0] in prompts],
                    )
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


