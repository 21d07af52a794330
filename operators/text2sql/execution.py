"""Read-only, bounded execution of untrusted SQL against SQLite, and execution-accuracy comparison.

A read-only URI (`mode=ro`) is not enough: SQLite still lets `ATTACH` create a file and
`PRAGMA writable_schema` run. Every statement therefore goes through four locks:

1. **Statement kind**: the text must be one `SELECT` / `WITH ... SELECT` / `VALUES` statement
   (checked after stripping comments; a second statement is refused).
2. **Authorizer** (`Connection.set_authorizer`): only `SQLITE_SELECT`, `SQLITE_READ`,
   `SQLITE_FUNCTION` and `SQLITE_RECURSIVE` actions are allowed; `ATTACH`, `DETACH`, `PRAGMA`,
   every write, DDL and transaction action is denied, whatever syntax reaches it.
3. **Connection**: opened `mode=ro` with `PRAGMA query_only=1`, `temp_store=MEMORY` (no temp
   files), `SQLITE_LIMIT_ATTACHED=0` and a cap on string/blob length.
4. **Bounds**: a progress handler interrupts a statement after `timeout_s` (a runaway recursive CTE
   ends as `timeout`), and at most `row_cap` rows are fetched (`row_cap` status beyond).

`execute(db, sql)` returns an `ExecResult` with status `ok`, `denied`, `error`, `timeout` or
`row_cap`. Results compare like execution-accuracy metrics (`results_match`): values normalised
(1 == 1.0, floats rounded, bytes decoded), rows compared as multisets (as lists when the gold query
has a top-level ORDER BY), and a permutation of columns accepted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

EXEC_STATUSES = ("ok", "denied", "error", "timeout", "row_cap")

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
if hasattr(sqlite3, "SQLITE_RECURSIVE"):
    _ALLOWED_ACTIONS.add(sqlite3.SQLITE_RECURSIVE)
_RECURSIVE_CODE = 33  # SQLITE_RECURSIVE, not exported by every Python build
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_LEADING = re.compile(r"^\s*\(*\s*(select|with|values)\b", re.I)


@dataclass
class ExecResult:
    """The outcome of one read-only statement."""

    status: str
    rows: list[tuple] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def digest(self) -> str | None:
        """A hash of the normalised, order-insensitive result (None unless `ok`): equal digests
        mean equal results up to row order."""
        if not self.ok:
            return None
        rows = sorted(json.dumps(_norm_row(r), default=str) for r in self.rows)
        return hashlib.blake2b("\n".join(rows).encode(), digest_size=8).hexdigest()


def _authorizer(action: int, *_args: Any) -> int:
    if action in _ALLOWED_ACTIONS or action == _RECURSIVE_CODE:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def statement_kind_ok(sql: str) -> tuple[bool, str]:
    """(ok, reason): one read-only query statement?"""
    text = _COMMENTS.sub(" ", sql or "").strip().rstrip(";").strip()
    if not text:
        return False, "empty statement"
    if not sqlite3.complete_statement(text + ";"):
        return False, "incomplete statement"
    if not _LEADING.match(text):
        return False, f"not a query: {text.split(None, 1)[0].upper()}"
    return True, ""


def connect_readonly(db_path: str | Path, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection that can only read `db_path` (see the module docstring)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, timeout=timeout_s)
    conn.execute("PRAGMA query_only = 1")
    conn.execute("PRAGMA temp_store = MEMORY")
    if hasattr(conn, "setlimit"):
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 8_000_000)
    conn.set_authorizer(_authorizer)
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    return conn


class ReadOnlyDatabase:
    """A reusable read-only connection to one SQLite file; `execute` never raises."""

    def __init__(self, db_path: str | Path, timeout_s: float = 5.0, row_cap: int = 10_000):
        self.path, self.timeout_s, self.row_cap = Path(db_path), timeout_s, row_cap
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_readonly(self.path)
        return self._conn

    def execute(self, sql: str | None, timeout_s: float | None = None, row_cap: int | None = None) -> ExecResult:
        start = time.perf_counter()
        ok, why = statement_kind_ok(sql or "")
        if not ok:
            return ExecResult("denied", error=why, seconds=time.perf_counter() - start)
        try:
            conn = self._connection()
        except (OSError, sqlite3.Error) as err:
            return ExecResult("error", error=f"cannot open database: {err}", seconds=time.perf_counter() - start)
        limit = self.timeout_s if timeout_s is None else timeout_s
        cap = self.row_cap if row_cap is None else row_cap
        deadline = time.perf_counter() + limit
        conn.set_progress_handler(lambda: 1 if time.perf_counter() > deadline else 0, 1000)
        try:
            cur = conn.execute(sql)
            rows = cur.fetchmany(cap + 1)
            columns = [d[0] for d in cur.description or []]
            cur.close()
        except sqlite3.DatabaseError as err:
            msg = str(err)
            if "interrupted" in msg:
                status = "timeout"
                msg = f"interrupted after {limit:g}s"
            elif any(k in msg for k in ("not authorized", "prohibited", "too many attached", "one statement")):
                status = "denied"
            else:
                status = "error"
            return ExecResult(status, error=msg, seconds=time.perf_counter() - start)
        except (sqlite3.Warning, ValueError, OverflowError, MemoryError) as err:  # e.g. two statements
            return ExecResult("denied" if "one statement" in str(err) else "error", error=str(err), seconds=time.perf_counter() - start)
        finally:
            conn.set_progress_handler(None, 0)
        if len(rows) > cap:
            return ExecResult("row_cap", rows[:cap], columns, f"more than {cap} rows", time.perf_counter() - start)
        return ExecResult("ok", rows, columns, None, time.perf_counter() - start)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def execute(db_path: str | Path, sql: str | None, timeout_s: float = 5.0, row_cap: int = 10_000) -> ExecResult:
    """Run one statement read-only against `db_path` (a fresh connection)."""
    db = ReadOnlyDatabase(db_path, timeout_s, row_cap)
    try:
        return db.execute(sql)
    finally:
        db.close()


class DatabasePool:
    """One `ReadOnlyDatabase` per path, reused across the rows of one operator call."""

    def __init__(self, timeout_s: float = 5.0, row_cap: int = 10_000):
        self.timeout_s, self.row_cap = timeout_s, row_cap
        self._dbs: dict[str, ReadOnlyDatabase] = {}

    def execute(self, db_path: str | None, sql: str | None) -> ExecResult:
        if not db_path:
            return ExecResult("error", error="no database for this row")
        db = self._dbs.get(db_path)
        if db is None:
            db = self._dbs[db_path] = ReadOnlyDatabase(db_path, self.timeout_s, self.row_cap)
        return db.execute(sql)

    def __enter__(self) -> "DatabasePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        for db in self._dbs.values():
            db.close()


# --------------------------------------------------------------------------- comparison


def _norm_value(v: Any, digits: int = 6) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        f = round(float(v), digits)
        return int(f) if f.is_integer() else f
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    return v if v is None else str(v)


def _norm_row(row: tuple) -> tuple:
    return tuple(_norm_value(v) for v in row)


def results_match(pred: list[tuple], gold: list[tuple], ordered: bool = False, max_permute: int = 6) -> bool:
    """Execution-accuracy equality: normalised values, multiset (or ordered) rows, and any
    permutation of the predicted columns (up to `max_permute` columns)."""
    p = [_norm_row(r) for r in pred]
    g = [_norm_row(r) for r in gold]
    if len(p) != len(g):
        return False
    if not g:
        return True
    width = len(g[0])
    if any(len(r) != width for r in p):
        return False

    def same(rows: list[tuple]) -> bool:
        return rows == g if ordered else Counter(rows) == Counter(g)

    if same(p):
        return True
    if width > max_permute or width < 2:
        return False
    for perm in itertools.permutations(range(width)):
        if same([tuple(r[i] for i in perm) for r in p]):
            return True
    return False


def has_top_level_order_by(sql: str) -> bool:
    """Whether the outermost query orders its rows (then row order matters in comparison)."""
    try:
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(sql, read="sqlite")
        return isinstance(tree, exp.Query) and tree.args.get("order") is not None
    except Exception:  # noqa: BLE001 - unparseable: fall back to a keyword test
        return bool(re.search(r"\border\s+by\b", _COMMENTS.sub(" ", sql or ""), re.I))


# --------------------------------------------------------------------------- schema + extraction


def schema_of(db_path: str | Path, sample_values: int = 3) -> dict[str, Any]:
    """DDL, columns, sample values and foreign keys of a SQLite database (read-only)."""
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        out: dict[str, Any] = {"tables": [], "foreign_keys": [], "ddl": []}
        for name, ddl in tables:
            q = '"' + name.replace('"', '""') + '"'
            cols = [(c[1], c[2]) for c in conn.execute(f"PRAGMA table_info({q})")]
            samples: dict[str, list[Any]] = {}
            if sample_values:
                for col, _ in cols:
                    cq = '"' + col.replace('"', '""') + '"'
                    vals = conn.execute(
                        f"SELECT DISTINCT {cq} FROM {q} WHERE {cq} IS NOT NULL LIMIT {int(sample_values)}"
                    ).fetchall()
                    samples[col] = [_norm_value(v[0]) if not isinstance(v[0], str) else v[0][:40] for v in vals]
            for fk in conn.execute(f"PRAGMA foreign_key_list({q})"):
                out["foreign_keys"].append(f"{name}.{fk[3]} -> {fk[2]}.{fk[4] or fk[3]}")
            out["tables"].append({"name": name, "columns": cols, "samples": samples})
            out["ddl"].append((ddl or "").strip())
        return out
    finally:
        conn.close()


def schema_text(schema: Mapping[str, Any], with_samples: bool = True, max_chars: int | None = None) -> str:
    """The schema as DDL, each table followed by a comment with example values, then foreign keys.

    With `max_chars`, a schema that is too long loses its example values first, then whole tables
    from the end (a `-- N more tables omitted: ...` line says which), so prompts fit small contexts."""
    text = _schema_text(schema, with_samples)
    if max_chars is None or len(text) <= max_chars:
        return text
    text = _schema_text(schema, False)
    if len(text) <= max_chars:
        return text
    tables = list(schema["tables"])
    for keep in range(len(tables) - 1, 0, -1):
        part = {"ddl": schema["ddl"][:keep], "tables": tables[:keep],
                "foreign_keys": [fk for fk in schema["foreign_keys"] if fk.split(".", 1)[0] in {t["name"] for t in tables[:keep]}]}
        omitted = [t["name"] for t in tables[keep:]]
        text = _schema_text(part, False) + f"\n-- {len(omitted)} more tables omitted: {', '.join(omitted)}"
        if len(text) <= max_chars:
            return text
    return text[:max_chars]


def _schema_text(schema: Mapping[str, Any], with_samples: bool) -> str:
    parts = []
    for ddl, table in zip(schema["ddl"], schema["tables"]):
        parts.append(ddl.rstrip(";") + ";")
        if with_samples and table["samples"]:
            ex = "; ".join(f"{c}: {', '.join(map(str, v))}" for c, v in table["samples"].items() if v)
            if ex:
                parts.append(f"-- examples from {table['name']}: {ex}")
    if schema["foreign_keys"]:
        parts.append("-- foreign keys: " + "; ".join(schema["foreign_keys"]))
    return "\n".join(parts)


_FENCED_SQL = re.compile(r"```(?:sql|sqlite)?\s*\n(.*?)```", re.S | re.I)
_BARE_SELECT = re.compile(r"((?:WITH|SELECT)\b.*?)(?:;|$)", re.S | re.I)


def extract_sql(text: str | None) -> str | None:
    """The SQL query in a model reply: the last ```sql fenced block that is a query, else the last
    bare SELECT/WITH statement. None when there is none."""
    if not text:
        return None
    blocks = [b for b in (b.strip().rstrip(";").strip() for b in _FENCED_SQL.findall(text)) if b]
    queries = [b for b in blocks if _LEADING.match(_COMMENTS.sub(" ", b))]
    if queries:
        return queries[-1]
    if blocks:
        return blocks[-1]
    bare = _BARE_SELECT.findall(text)
    return bare[-1].strip() if bare else None
