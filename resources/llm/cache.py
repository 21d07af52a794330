"""A content-addressed generation cache shared by every LLM backend.

key = hash(backend model identity, full rendered messages, sampling params (incl. seed and the
optional top_k / min_p / penalties), sample index, JSON schema, output mode, and every other body
field that can change the answer: `extra_body` (the client's merged with the request's), tools,
tool_choice, response_format). Two stores with the same interface:

- `GenerationCache`: SQLite (WAL mode, busy timeout, retry on `database is locked`) under the
  project home, `$DATAFLOW_HOME/cache/llm.sqlite` (DATAFLOW_HOME defaults to `./.dataflow`): the
  default for one host;
- `PostgresGenerationCache`: the same tables in PostgreSQL, for deployments that keep Dagster's
  state there (several hosts, one cache). Chosen with `DATAFLOW_CACHE_URL=postgresql://...`
  (or `cache="postgresql://..."`); see `open_cache`.

- Safe under concurrent processes: SQLite WAL lets readers run beside one writer; writers wait
  (busy_timeout) and we retry on top of that. PostgreSQL writes are `ON CONFLICT DO NOTHING` in
  key order, so two writers of the same keys neither fail nor deadlock.
- Each completed result is committed as it arrives (`put_many` per event-loop tick), so a SIGKILL
  mid-stage loses nothing that completed. Errors (and truncated replies, unless accepted) are
  never stored: a re-run retries only the failed rows.
- Batch lookup reads in chunks of `IN (...)` / `= ANY(...)` queries: 100k keys well under 2 s.
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

SCHEMA_VERSION = 2  # 2: extra_body / tools / response_format and the real model identity in the key
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


def _extras(request: LLMRequest, client_extra: Mapping[str, Any] | None) -> str:
    """The optional body fields of a request (client-level `extra_body` merged under the
    request's own), encoded; "" when there are none (the common case costs nothing)."""
    extra_body = {**client_extra, **(request.extra_body or {})} if client_extra else request.extra_body
    if not (extra_body or request.tools or request.tool_choice is not None or request.response_format):
        return ""
    return _ENCODE(
        {
            "extra_body": dict(extra_body or {}),
            "tools": list(request.tools or []),
            "tool_choice": request.tool_choice,
            "response_format": dict(request.response_format) if request.response_format else None,
        }
    )


def cache_key(model: str, request: LLMRequest, *, mode: str = "", extra_body: Mapping[str, Any] | None = None) -> str:
    """The content address of one generation: backend model identity, the full rendered messages,
    sampling params (seed included), sample index, schema and structured-output mode, and the
    request's (and the client's) `extra_body`, tools, tool_choice and response_format. Never an
    API key or a row id. (~5 us per key: the per-batch constant part is memoized.)"""
    prefix = _key_prefix(model, request.params, request.sample, mode if request.schema is not None else "")
    msgs = request.messages
    messages = _ENCODE(msgs if isinstance(msgs, (list, tuple)) else list(msgs))
    schema = _ENCODE(request.schema) if request.schema is not None else "null"
    payload = f"{prefix}{messages}\x00{schema}\x00{_extras(request, extra_body)}"
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


_COLS = ("key", "model", "text", "parsed", "finish_reason", "tokens_in", "tokens_out", "latency_s")


def _result_rows(results: Iterable[LLMResult]) -> list[tuple]:
    """Rows to store: successful, fresh (not served from the cache), keyed results only."""
    now = time.time()
    return [
        (
            r.cache_key,
            r.model,
            r.text,
            json.dumps(r.parsed, ensure_ascii=False) if r.parsed is not None else None,
            r.finish_reason,
            int(r.tokens_in),
            int(r.tokens_out),
            float(r.latency_s),
            now,
        )
        for r in results
        if r.error is None and r.cache_key and not r.cached
    ]


class _CacheBase:
    """What both stores share: rows by key -> `LLMResult`s. Subclasses implement `_rows`,
    `_write`, `prompt`, `delete`, `__len__`."""

    _COLS = _COLS

    def _rows(self, keys: Iterable[str]) -> dict[str, tuple]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write(self, rows: list[tuple], prompt_rows: list[tuple[str, str]]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored rows for the keys present, as dicts (key -> row). Missing keys are absent."""
        with _gc_paused():
            return {k: dict(zip(self._COLS, row)) for k, row in self._rows(keys).items()}

    def lookup(self, requests: Sequence[LLMRequest], keys: Sequence[str]) -> dict[int, LLMResult]:
        """Index in `requests` -> cached `LLMResult` (cached=True) for every hit."""
        with _gc_paused():
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

    def put(self, result: LLMResult) -> None:
        """Persist one successful result now (its own transaction). Errors are never stored."""
        self.put_many([result])

    def put_many(self, results: Iterable[LLMResult], prompts: Mapping[str, Any] | None = None) -> int:
        """Persist successful results (one transaction); `prompts` maps cache key -> messages
        (only the entries for these results are read: the cost is O(results))."""
        rows = _result_rows(results)
        if not rows:
            return 0
        prompt_rows = []
        if prompts:
            for r in rows:
                msgs = prompts.get(r[0])
                if msgs is not None:
                    prompt_rows.append((r[0], json.dumps(list(msgs), ensure_ascii=False, default=dict)))
        self._write(rows, prompt_rows)
        return len(rows)

    def close(self) -> None:
        pass


class GenerationCache(_CacheBase):
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

    def __len__(self) -> int:
        return self._retry(lambda c: c.execute("SELECT count(*) FROM generations").fetchone()[0])

    def prompt(self, key: str) -> list[dict[str, Any]] | None:
        """The messages that produced the cached answer under `key`, when recorded."""
        row = self._retry(lambda c: c.execute("SELECT messages FROM prompts WHERE key = ?", (key,)).fetchone())
        return json.loads(row[0]) if row else None

    # -- writes -----------------------------------------------------------------------------
    def _write(self, rows: list[tuple], prompt_rows: list[tuple[str, str]]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?,?)", rows)
                if prompt_rows:
                    conn.executemany("INSERT OR REPLACE INTO prompts VALUES (?, ?)", prompt_rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._retry(write)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)

        def run(conn: sqlite3.Connection) -> None:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                conn.execute(f"DELETE FROM generations WHERE key IN ({','.join('?' * len(chunk))})", chunk)

        self._retry(run)

    def __repr__(self) -> str:
        return f"GenerationCache({str(self.path)!r})"


# --------------------------------------------------------------------------- PostgreSQL

_PG_TABLE, _PG_PROMPTS = "dataflow_llm_generations", "dataflow_llm_prompts"
_PG_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {_PG_TABLE} (
        key TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT, parsed TEXT, finish_reason TEXT,
        tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0,
        latency_s DOUBLE PRECISION NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL)""",
    f"CREATE TABLE IF NOT EXISTS {_PG_PROMPTS} (key TEXT PRIMARY KEY, messages TEXT NOT NULL)",
)
_PG_CHUNK = 10_000  # keys per `= ANY(%s)` lookup


def is_postgres_url(url: Any) -> bool:
    return isinstance(url, str) and url.split("://", 1)[0] in ("postgresql", "postgres")


def _safe_url(url: str) -> str:
    """The URL without its password (for repr and errors)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class PostgresGenerationCache(_CacheBase):
    """The generation cache in PostgreSQL (tables `dataflow_llm_generations` / `_prompts`): the
    same keys, rows and batched lookups as the SQLite store, shared by every host that reaches
    the database. Use it when Dagster's own state is in PostgreSQL (`deploy/dagster.yaml`): a
    SQLite file on a shared file system is not safe across hosts.

    `url`: a libpq URI, `postgresql://user:password@host:port/db` (give the password through
    `PGPASSWORD` or `~/.pgpass` to keep it out of the URL). One connection per thread and
    process; each write is one transaction. Concurrent writers of the same keys: rows go in key
    order with `ON CONFLICT DO NOTHING` (the first committed answer stays), retried on deadlock
    or serialization failures.
    """

    def __init__(self, url: str, *, retries: int = 10, connect_timeout_s: int = 10):
        try:
            import psycopg2  # noqa: F401  (dagster-postgres' driver; the `deploy` and `dev` extras install it)
        except ImportError as err:
            raise ModuleNotFoundError("the PostgreSQL generation cache needs psycopg2: pip install 'dataflow[deploy]'") from err
        self.url, self.retries, self.connect_timeout_s = url, retries, connect_timeout_s
        self._local = threading.local()

        def ddl(cur) -> None:
            # CREATE TABLE IF NOT EXISTS races between processes (pg_type unique violation):
            # serialise first-time setup with a transaction-level advisory lock
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('dataflow_llm_cache_ddl'))")
            for stmt in _PG_DDL:
                cur.execute(stmt)

        self._tx(ddl)

    def _conn(self):
        import psycopg2

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            conn = psycopg2.connect(self.url, connect_timeout=self.connect_timeout_s, application_name="dataflow-llm-cache")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _tx(self, fn):
        """Run `fn(cursor)` in one transaction; retry on deadlock, serialization failure and a
        dropped connection."""
        import psycopg2
        from psycopg2 import errorcodes

        retryable = {errorcodes.DEADLOCK_DETECTED, errorcodes.SERIALIZATION_FAILURE, errorcodes.UNIQUE_VIOLATION}
        delay = 0.02
        for attempt in range(self.retries + 1):
            conn = self._conn()
            try:
                with conn:  # commit on success, rollback on error
                    with conn.cursor() as cur:
                        return fn(cur)
            except psycopg2.OperationalError:
                with contextlib.suppress(Exception):
                    conn.close()
                self._local.conn = None
                if attempt == self.retries:
                    raise
            except psycopg2.Error as err:
                if err.pgcode not in retryable or attempt == self.retries:
                    raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _rows(self, keys: Iterable[str]) -> dict[str, tuple]:
        uniq = list(dict.fromkeys(keys))
        cols = ", ".join(self._COLS)

        def read(cur) -> dict[str, tuple]:
            out: dict[str, tuple] = {}
            for i in range(0, len(uniq), _PG_CHUNK):
                cur.execute(f"SELECT {cols} FROM {_PG_TABLE} WHERE key = ANY(%s)", (uniq[i : i + _PG_CHUNK],))
                for row in cur.fetchall():
                    out[row[0]] = row
            return out

        return self._tx(read) if uniq else {}

    def __len__(self) -> int:
        return self._tx(lambda cur: (cur.execute(f"SELECT count(*) FROM {_PG_TABLE}"), cur.fetchone()[0])[1])

    def prompt(self, key: str) -> list[dict[str, Any]] | None:
        def read(cur):
            cur.execute(f"SELECT messages FROM {_PG_PROMPTS} WHERE key = %s", (key,))
            return cur.fetchone()

        row = self._tx(read)
        return json.loads(row[0]) if row else None

    def _write(self, rows: list[tuple], prompt_rows: list[tuple[str, str]]) -> None:
        from psycopg2.extras import execute_values

        rows = sorted({r[0]: r for r in rows}.values())  # key order: concurrent writers cannot deadlock
        prompt_rows = sorted(dict(prompt_rows).items())

        def write(cur) -> None:
            execute_values(cur, f"INSERT INTO {_PG_TABLE} VALUES %s ON CONFLICT (key) DO NOTHING", rows, page_size=1000)
            if prompt_rows:
                execute_values(cur, f"INSERT INTO {_PG_PROMPTS} VALUES %s ON CONFLICT (key) DO NOTHING", prompt_rows, page_size=1000)

        self._tx(write)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self._tx(lambda cur: cur.execute(f"DELETE FROM {_PG_TABLE} WHERE key = ANY(%s)", (keys,)))

    def __repr__(self) -> str:
        return f"PostgresGenerationCache({_safe_url(self.url)!r})"


CACHE_URL_ENV = "DATAFLOW_CACHE_URL"


def open_cache(cache: Any = None, home: str | None = None) -> GenerationCache | PostgresGenerationCache | None:
    """Normalize a cache argument: an instance; a `postgresql://` URL; a SQLite path; None (the
    store `DATAFLOW_CACHE_URL` names, else the SQLite file under the home); or False (no cache)."""
    if cache is False:
        return None
    if isinstance(cache, _CacheBase):
        return cache
    if cache is None or cache is True:
        cache = os.environ.get(CACHE_URL_ENV) or None
    if is_postgres_url(cache):
        return PostgresGenerationCache(cache)
    if isinstance(cache, str) and cache.startswith("sqlite:///"):
        cache = cache[len("sqlite:///") :]  # sqlite:///rel/path, sqlite:////abs/path
    if cache:
        return GenerationCache(cache)
    return GenerationCache(default_cache_path(home))
