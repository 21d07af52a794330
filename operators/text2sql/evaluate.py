"""Text-to-SQL checks: SQL syntax (sqlglot), read-only executability, question/SQL consistency (LLM
judge), CoT voting by execution result, Spider component difficulty, execution difficulty (how many
of `n` model attempts reproduce the gold result), execution accuracy, schema linking, and SQL
normalisation / dialect transpiling.

Executing SQL is per row by nature; each operator keeps one read-only connection per database
for the whole call (`DatabasePool`).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import sqlglot
from sqlglot import exp

from operators.base import ID, Evaluator, Filter, Generator, Refiner, register
from operators.core.common import CoreLLMOperator, field_of, schema_object
from operators.llm import LLMClient, PromptTemplate, SamplingParams
from operators.text2sql.difficulty import components
from operators.text2sql.execution import (
    DatabasePool,
    extract_sql,
    has_top_level_order_by,
    results_match,
)


def _parse_error(sql: str | None, dialect: str) -> str | None:
    if sql is None or not sql.strip():
        return "empty"
    try:
        trees = [t for t in sqlglot.parse(sql, read=dialect) if t is not None]
    except sqlglot.errors.SqlglotError as err:
        return str(err).splitlines()[0][:200]
    if len(trees) != 1:
        return f"{len(trees)} statements"
    if not isinstance(trees[0], exp.Query):
        return f"not a query: {type(trees[0]).__name__}"
    return None


@register
class SQLSyntaxFilter(Filter):
    """Drops rows whose SQL does not parse as one query (sqlglot, `dialect` default `sqlite`):
    syntax errors, several statements, or a statement that is not a SELECT / set operation.
    Cheap, so it runs before execution.

    Reads: `sql` (default `sql`). Writes: nothing; dropped rows carry reason `sql_syntax`.
    Use it on model-written SQL before `SQLExecutabilityFilter`.
    """

    reads = {"sql": "sql"}

    def __init__(self, dialect: str = "sqlite"):
        self.dialect = dialect

    def keep(self, cols):
        return {"sql_syntax": pl.col(cols["sql"]).map_elements(lambda s: _parse_error(s, self.dialect) is None, return_dtype=pl.Boolean)}


def _execute_all(frame: pl.DataFrame, sql_col: str, db_col: str, timeout_s: float, row_cap: int, require_rows: bool) -> dict[str, list[Any]]:
    status, nrows, digest = [], [], []
    with DatabasePool(timeout_s, row_cap) as pool:
        for db, sql in zip(frame.get_column(db_col), frame.get_column(sql_col)):
            res = pool.execute(db, sql) if sql else None
            st = "error" if res is None else res.status
            if st == "ok" and require_rows and not res.rows:
                st = "empty"
            status.append(st)
            nrows.append(len(res.rows) if res is not None and res.ok else None)
            digest.append(res.digest() if res is not None else None)
    return {"status": status, "rows": nrows, "digest": digest}


_EXEC_DTYPES = {"status": pl.String, "rows": pl.Int64, "digest": pl.String}


@register
class SQLExecutionEvaluator(Evaluator):
    """Executes each SQL query read-only (authorizer-enforced, time limit, row cap) and records the
    outcome for every row, dropping none.

    Reads: `sql` (default `sql`), `db` (default `db_path`). Writes: `exec_status` (String: ok /
    denied / error / timeout / row_cap, or `empty` for a query returning no row when
    `require_rows=True`), `exec_rows` (Int64) and `exec_digest` (String, a hash of the
    order-insensitive result: equal digests, equal results).
    Use it where the share of executable SQL is measured (a gate), then `SQLExecutabilityFilter`.
    """

    reads = {"sql": "sql", "db": "db_path"}
    writes = {"status": "exec_status", "rows": "exec_rows", "digest": "exec_digest"}

    def __init__(self, timeout_s: float = 5.0, row_cap: int = 10_000, require_rows: bool = True):
        self.timeout_s, self.row_cap, self.require_rows = timeout_s, row_cap, require_rows

    def run(self, frame, cols):
        res = _execute_all(frame, cols["sql"], cols["db"], self.timeout_s, self.row_cap, self.require_rows)
        return frame.with_columns([pl.Series(cols[k], v, dtype=_EXEC_DTYPES[k]) for k, v in res.items()])


@register
class SQLExecutabilityFilter(Filter):
    """Keeps only SQL that executes read-only (authorizer-enforced, time limit, row cap) with a
    result; executes each query unless an upstream `SQLExecutionEvaluator` already wrote the
    status column, in which case it filters on that.

    Reads: `sql` (default `sql`), `db` (default `db_path`). Writes: `exec_status`, `exec_rows`,
    `exec_digest` (as `SQLExecutionEvaluator`). Drops every row whose status is not `ok` (reason
    `exec_<status>`: denied, error, timeout, row_cap, and empty when `require_rows=True`).
    Use it right after SQL generation; nothing it runs can change a database or write a file.
    """

    reads = {"sql": "sql", "db": "db_path"}
    writes = {"status": "exec_status", "rows": "exec_rows", "digest": "exec_digest"}

    def __init__(self, timeout_s: float = 5.0, row_cap: int = 10_000, require_rows: bool = True):
        self.timeout_s, self.row_cap, self.require_rows = timeout_s, row_cap, require_rows

    def run(self, frame, cols):
        out = frame
        if not all(cols[k] in frame.columns for k in ("status", "rows", "digest")):
            res = _execute_all(frame, cols["sql"], cols["db"], self.timeout_s, self.row_cap, self.require_rows)
            out = frame.with_columns([pl.Series(cols[k], v, dtype=_EXEC_DTYPES[k]) for k, v in res.items()])
        st = pl.col(cols["status"])
        reasons = {f"exec_{s}": st != s for s in ("denied", "error", "timeout", "row_cap", "empty")}
        reasons["exec_unknown"] = st == "ok"
        return self.apply_keep(out, reasons)


@register
class ExecutionVerifiedFilter(Filter):
    """Keeps only rows whose label is execution-verified: `exec_verified` true (set by `CoTVoter`:
    the chosen reasoning's query reproduces the gold query's result).

    Reads: `verified` (default `exec_verified`). Writes: nothing. Dropped reason: `not_verified`.
    Use it before the final stage so no training row lacks an execution check.
    """

    reads = {"verified": "exec_verified"}

    def keep(self, cols):
        return {"not_verified": pl.col(cols["verified"]).fill_null(False)}


@register
class QuestionSQLConsistencyFilter(CoreLLMOperator, Filter):
    """LLM judge: does the SQL query answer exactly the question? Drops the pairs it rejects.

    Reads: `question` (default `question`), `sql` (default `sql`), `schema` (default `schema`).
    Writes: `consistent` (Boolean), `consistency_reason` (String) and `consistent_meta`. Dropped
    reasons: `inconsistent` (the judge said no) and `judge_failed` (no valid verdict).
    Use it after question generation, or to clean existing Text-to-SQL pairs.
    """

    reads = {"question": "question", "sql": "sql", "schema": "schema"}
    writes = {"verdict": "consistent", "reason": "consistency_reason"}
    default_params = SamplingParams(temperature=0.0, max_tokens=128)
    default_template = PromptTemplate(
        "text2sql_consistency",
        "Database schema:\n```sql\n{schema}\n```\n\nQuestion: {question}\n\nSQL:\n```sql\n{sql}\n```\n\n"
        "Does the SQL query return exactly what the question asks for (same entities, conditions and "
        'aggregation)? Reply in JSON with "consistent" (true or false) and "reason" (one short sentence).',
        "You are a meticulous reviewer of Text-to-SQL training data.",
    )
    schema = schema_object({"consistent": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 240}})

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        v, r = cols["verdict"], cols["reason"]
        res = self.ask(frame, cols, schema=self.schema)
        out = self.join_results(frame, res, [field_of("parsed", "consistent", pl.Boolean).alias(v),
                                             field_of("parsed", "reason", pl.String).alias(r)], f"{v}_meta")
        return self.apply_keep(out, {"judge_failed": pl.col(v).is_not_null(), "inconsistent": pl.col(v)})

    def output_columns(self, cols):
        return [cols["verdict"], cols["reason"], f"{cols['verdict']}_meta"]


@register(name="text2sql_cot_voter")
class CoTVoter(Generator):
    """Chooses one chain-of-thought per row by execution-result agreement: the final query of every
    candidate is executed (read-only), candidates are grouped by result, and the largest group
    that reproduces the gold query's result wins (earliest candidate in it).

    Reads: `candidates` (default `cot_candidates`, List[String]), `sql` (default `sql`, the gold
    query), `db` (default `db_path`). Writes: `cot` (String, the chosen reasoning, null when no
    candidate reproduces the gold result), `cot_sql` (String, its final query), `cot_votes`
    (Int64, candidates in the winning group), `cot_agreement` (Float64, votes / candidates) and
    `exec_verified` (Boolean: the chosen CoT's query returns the gold result).
    Use it after `CoTGenerator`; filter on `exec_verified` so every kept example is execution-checked.
    """

    reads = {"candidates": "cot_candidates", "sql": "sql", "db": "db_path"}
    writes = {"cot": "cot", "cot_sql": "cot_sql", "votes": "cot_votes", "agreement": "cot_agreement", "verified": "exec_verified"}

    def __init__(self, timeout_s: float = 5.0, row_cap: int = 10_000):
        self.timeout_s, self.row_cap = timeout_s, row_cap

    def run(self, frame, cols):
        out: dict[str, list[Any]] = {k: [] for k in ("cot", "cot_sql", "votes", "agreement", "verified")}
        with DatabasePool(self.timeout_s, self.row_cap) as pool:
            for cands, gold_sql, db in zip(frame.get_column(cols["candidates"]).to_list(), frame.get_column(cols["sql"]), frame.get_column(cols["db"])):
                cands = list(cands or [])
                gold = pool.execute(db, gold_sql)
                ordered = has_top_level_order_by(gold_sql or "")
                groups: dict[int, list[int]] = {}
                sqls = [extract_sql(c) for c in cands]
                results = [pool.execute(db, s) if s else None for s in sqls]
                for i, r in enumerate(results):
                    if r is not None and r.ok and gold.ok and results_match(r.rows, gold.rows, ordered):
                        groups.setdefault(0, []).append(i)
                win = groups.get(0, [])
                if win and gold.ok:
                    out["cot"].append(cands[win[0]])
                    out["cot_sql"].append(sqls[win[0]])
                    out["votes"].append(len(win))
                    out["agreement"].append(len(win) / len(cands))
                    out["verified"].append(True)
                else:
                    out["cot"].append(None)
                    out["cot_sql"].append(None)
                    out["votes"].append(0)
                    out["agreement"].append(0.0 if cands else None)
                    out["verified"].append(False)
        dtypes = {"cot": pl.String, "cot_sql": pl.String, "votes": pl.Int64, "agreement": pl.Float64, "verified": pl.Boolean}
        return frame.with_columns([pl.Series(cols[k], v, dtype=dtypes[k]) for k, v in out.items()])


@register
class SQLComponentClassifier(Evaluator):
    """Spider's SQL hardness (easy / medium / hard / extra) from the query's components: joins,
    nesting, aggregations, set operations, WHERE/GROUP BY/ORDER BY/LIMIT, OR and LIKE, computed
    on a sqlglot parse with Spider's `eval_hardness` rules (`operators.text2sql.difficulty`).

    Reads: `sql` (default `sql`). Writes: `component_difficulty` (String; null when the SQL does
    not parse), `sql_joins`, `sql_nested`, `sql_aggregations` (Int64).
    Use it to balance a synthetic set across difficulties or to report a benchmark per class.
    """

    reads = {"sql": "sql"}
    writes = {"difficulty": "component_difficulty", "joins": "sql_joins", "nested": "sql_nested", "aggregations": "sql_aggregations"}

    def run(self, frame, cols):
        dtype = pl.Struct({"difficulty": pl.String, "joins": pl.Int64, "nested": pl.Int64, "aggregations": pl.Int64})

        def one(sql: str | None) -> dict[str, Any]:
            try:
                c = components(sql or "")
            except (sqlglot.errors.SqlglotError, ValueError):
                return {"difficulty": None, "joins": None, "nested": None, "aggregations": None}
            return {"difficulty": c.hardness, "joins": c.joins, "nested": c.component2, "aggregations": c.aggregations}

        parts = pl.col(cols["sql"]).map_elements(one, return_dtype=dtype)
        return frame.with_columns(parts.alias("__c")).with_columns(
            [pl.col("__c").struct.field(k).alias(cols[k]) for k in ("difficulty", "joins", "nested", "aggregations")]
        ).drop("__c")


@register
class SQLExecutionClassifier(CoreLLMOperator, Evaluator):
    """Execution difficulty: asks the model `n` times to write SQL for the question (without the
    gold query) and counts how many attempts reproduce the gold result when executed read-only.

    Reads: `question` (default `question`), `schema` (default `schema`), `sql` (default `sql`,
    gold), `db` (default `db_path`). Writes: `exec_correct` (Int64, attempts matching the gold
    result), `exec_difficulty` (String: easy when >= `thresholds[0]` of attempts match, medium >=
    `thresholds[1]`, hard when at least one, extra when none) and `exec_correct_meta`.
    Use it to grade how hard an example is for a model family (curriculum, filtering trivial rows).
    """

    reads = {"question": "question", "schema": "schema", "sql": "sql", "db": "db_path"}
    writes = {"correct": "exec_correct", "difficulty": "exec_difficulty"}
    default_params = SamplingParams(temperature=0.8, max_tokens=256)
    default_template = PromptTemplate(
        "text2sql_attempt",
        "Database schema:\n```sql\n{schema}\n```\n\nQuestion: {question}\n\n"
        "Write the SQLite query that answers the question. Reply with the query in a ```sql block.",
        "You are an expert SQLite developer.",
    )

    def __init__(self, n: int = 5, thresholds: tuple[float, float] = (0.8, 0.4), timeout_s: float = 5.0,
                 template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n, self.thresholds, self.timeout_s = n, tuple(thresholds), timeout_s
        self._setup(template, params, llm)

    def template_columns(self):
        return [f for f in super().template_columns() if f != "db"]

    def run(self, frame, cols):
        correct, difficulty = cols["correct"], cols["difficulty"]
        res = self.ask(frame, cols, n=self.n)
        attempts = res.sort(ID, "sample").group_by(ID, maintain_order=True).agg(pl.col("text"))
        lookup = {r[ID]: r["text"] for r in attempts.iter_rows(named=True)}
        counts = []
        with DatabasePool(self.timeout_s) as pool:
            for rid, gold_sql, db in zip(frame.get_column(ID), frame.get_column(cols["sql"]), frame.get_column(cols["db"])):
                gold = pool.execute(db, gold_sql)
                if not gold.ok:
                    counts.append(None)
                    continue
                ordered = has_top_level_order_by(gold_sql)
                k = 0
                for text in lookup.get(rid, []):
                    s = extract_sql(text)
                    r = pool.execute(db, s) if s else None
                    k += bool(r is not None and r.ok and results_match(r.rows, gold.rows, ordered))
                counts.append(k)
        share = pl.col(correct) / self.n
        hi, mid = self.thresholds
        label = (
            pl.when(pl.col(correct).is_null()).then(None)
            .when(share >= hi).then(pl.lit("easy"))
            .when(share >= mid).then(pl.lit("medium"))
            .when(pl.col(correct) > 0).then(pl.lit("hard"))
            .otherwise(pl.lit("extra"))
        )
        meta = res.filter(pl.col("sample") == 0).select(ID, pl.col("meta").alias(f"{correct}_meta"))
        out = frame.with_columns(pl.Series(correct, counts, dtype=pl.Int64)).with_columns(label.alias(difficulty))
        clash = [f"{correct}_meta"] if f"{correct}_meta" in out.columns else []
        return out.drop(clash).join(meta, on=ID, how="left", maintain_order="left")

    def output_columns(self, cols):
        return [cols["correct"], cols["difficulty"], f"{cols['correct']}_meta"]


@register
class ExecutionAccuracyEvaluator(Evaluator):
    """Execution accuracy of a predicted query against the gold query: both run read-only, results
    compared like Spider/BIRD EX (normalised values; rows as a multiset, in order when the gold
    query has a top-level ORDER BY; any column permutation).

    Reads: `predicted` (default `predicted_sql`), `sql` (default `sql`, gold), `db` (default
    `db_path`). Writes: `ex_match` (Boolean; null when the gold query itself does not run).
    Use it to score model outputs on a Text-to-SQL benchmark or to verify refined pairs.
    """

    reads = {"predicted": "predicted_sql", "sql": "sql", "db": "db_path"}
    writes = {"match": "ex_match"}

    def __init__(self, timeout_s: float = 5.0, row_cap: int = 10_000):
        self.timeout_s, self.row_cap = timeout_s, row_cap

    def run(self, frame, cols):
        out = []
        with DatabasePool(self.timeout_s, self.row_cap) as pool:
            for pred, gold_sql, db in zip(frame.get_column(cols["predicted"]), frame.get_column(cols["sql"]), frame.get_column(cols["db"])):
                gold = pool.execute(db, gold_sql)
                if not gold.ok:
                    out.append(None)
                    continue
                p = pool.execute(db, pred) if pred else None
                out.append(bool(p is not None and p.ok and results_match(p.rows, gold.rows, has_top_level_order_by(gold_sql))))
        return frame.with_columns(pl.Series(cols["match"], out, dtype=pl.Boolean))


@register
class SchemaLinker(Evaluator):
    """Schema linking from the SQL: the tables and columns a query references (sqlglot), for schema
    pruning in prompts or to check coverage of a database.

    Reads: `sql` (default `sql`). Writes: `linked_tables` and `linked_columns` (List[String],
    lower-cased, sorted; table aliases resolved to table names; null when the SQL does not parse).
    """

    reads = {"sql": "sql"}
    writes = {"tables": "linked_tables", "columns": "linked_columns"}

    def run(self, frame, cols):
        dtype = pl.Struct({"tables": pl.List(pl.String), "columns": pl.List(pl.String)})

        def link(sql: str | None) -> dict[str, Any]:
            try:
                tree = sqlglot.parse_one(sql or "", read="sqlite")
            except sqlglot.errors.SqlglotError:
                return {"tables": None, "columns": None}
            ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
            tables = sorted({t.name.lower() for t in tree.find_all(exp.Table) if t.name and t.name.lower() not in ctes})
            columns = sorted({c.name.lower() for c in tree.find_all(exp.Column) if c.name and c.name != "*"})
            return {"tables": tables, "columns": columns}

        parts = pl.col(cols["sql"]).map_elements(link, return_dtype=dtype)
        return frame.with_columns(parts.alias("__l")).with_columns(
            pl.col("__l").struct.field("tables").alias(cols["tables"]), pl.col("__l").struct.field("columns").alias(cols["columns"])
        ).drop("__l")


@register
class SQLNormalizer(Refiner):
    """Rewrites SQL into one canonical text (sqlglot: keywords upper-case, single spaces, no
    trailing semicolon), so exact dedup and string comparisons see through formatting.

    Reads and rewrites: `text` (default `sql`). Text that does not parse as one query is left unchanged.
    """

    reads = {"text": "sql"}

    def __init__(self, dialect: str = "sqlite"):
        self.dialect = dialect

    def refine(self, text, cols):
        def norm(s: str | None) -> str | None:
            if s is None or _parse_error(s, self.dialect) is not None:
                return s
            try:
                return sqlglot.transpile(s, read=self.dialect, write=self.dialect)[0]
            except (sqlglot.errors.SqlglotError, IndexError):
                return s

        return text.map_elements(norm, return_dtype=pl.String)


@register
class SQLDialectTranspiler(Refiner):
    """Translates SQL from another dialect (`source`: mysql, postgres, bigquery, ... as sqlglot
    names them) into SQLite, e.g. MySQL backticks and functions, so existing pairs run here.

    Reads and rewrites: `text` (default `sql`). SQL that fails to transpile is left unchanged
    (the executability filter then decides).
    """

    reads = {"text": "sql"}

    def __init__(self, source: str = "mysql", target: str = "sqlite"):
        self.source, self.target = source, target

    def refine(self, text, cols):
        def tr(s: str | None) -> str | None:
            if s is None or _parse_error(s, self.source) is not None:
                return s
            try:
                return sqlglot.transpile(s, read=self.source, write=self.target)[0]
            except (sqlglot.errors.SqlglotError, IndexError):
                return s

        return text.map_elements(tr, return_dtype=pl.String)
