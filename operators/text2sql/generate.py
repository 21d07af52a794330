"""Text-to-SQL generators: schema extraction from SQLite, SQL generation by target difficulty, SQL
variations, question generation from SQL, chain-of-thought generation (n samples) and the
training-prompt builder.

Databases are SQLite files named per row by the `db` role (a column holding the file's path,
default `db_path`); they are only ever opened read-only (`operators.text2sql.execution`).
"""

from __future__ import annotations

from typing import Sequence

import polars as pl

from operators.base import ID, Generator, register
from operators.core.common import CoreLLMOperator
from operators.llm import LLMClient, PromptTemplate, SamplingParams
from operators.text2sql.execution import extract_sql, schema_of, schema_text

DIFFICULTY_HINTS = {
    "easy": "a single table, at most one simple condition, no aggregation",
    "medium": "a join of two tables or an aggregation with GROUP BY, or two conditions",
    "hard": "several joins, or a nested sub-query, or GROUP BY with HAVING and ORDER BY",
    "extra": "a combination of nested sub-queries, set operations (UNION / INTERSECT / EXCEPT), several joins and aggregations",
}

SQL_FENCE = "```sql\n{sql}\n```"


def _fenced(col: str) -> pl.Expr:
    return pl.lit("```sql\n") + pl.col(col).fill_null("") + pl.lit("\n```")


@register
class SchemaExtractor(Generator):
    """Extracts a SQLite database's schema for prompts: DDL of every table, a few sample values
    per column, and foreign keys.

    Reads: `db` (default `db_path`, the database file). Writes: `schema` (String: DDL with
    `-- examples` comments and a `-- foreign keys` line), `tables` (List[String]) and
    `example_sql` (String, a query over the first table, used as a format example in prompts).
    Each distinct database is read once per call (read-only); a missing or unreadable file leaves
    null outputs. `max_chars` bounds the schema text for small-context models: example values go
    first, then tables from the end (named in an `-- omitted` line). Use it as the first stage of Text-to-SQL synthesis, or to attach schemas to
    existing question/SQL pairs.
    """

    reads = {"db": "db_path"}
    writes = {"schema": "schema", "tables": "tables", "example_sql": "example_sql"}

    def __init__(self, sample_values: int = 3, max_chars: int | None = None):
        if sample_values < 0:
            raise ValueError("sample_values must be >= 0")
        self.sample_values, self.max_chars = sample_values, max_chars

    def run(self, frame, cols):
        db = cols["db"]
        paths = frame.get_column(db).drop_nulls().unique().to_list()
        rows = []
        for path in paths:  # one read per database, not per row
            try:
                s = schema_of(path, self.sample_values)
            except Exception:  # noqa: BLE001 - unreadable database: null outputs for its rows
                continue
            names = [t["name"] for t in s["tables"]]
            first = names[0].replace('"', '""') if names else None
            rows.append({"__db": path, "schema": schema_text(s, self.sample_values > 0, self.max_chars), "tables": names,
                         "example_sql": f'SELECT * FROM "{first}" LIMIT 3' if first else None})
        right = pl.DataFrame(rows, schema={"__db": pl.String, "schema": pl.String, "tables": pl.List(pl.String), "example_sql": pl.String})
        right = right.rename({"schema": cols["schema"], "tables": cols["tables"], "example_sql": cols["example_sql"]})
        clash = [c for c in right.columns if c != "__db" and c in frame.columns]
        return frame.drop(clash).join(right, left_on=db, right_on="__db", how="left", maintain_order="left")


class _SQLReplyGenerator(CoreLLMOperator, Generator):
    """One reply per row, from which the SQL query is extracted (not registered)."""

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols)
        return self.join_results(
            frame, res, [pl.col("text").map_elements(extract_sql, return_dtype=pl.String).alias(out)], f"{out}_meta"
        )

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class SQLGenerator(_SQLReplyGenerator):
    """Generates SQL queries over a database schema at target difficulties (Spider's easy / medium /
    hard / extra), `per_difficulty` queries for each.

    Reads: `schema` (default `schema`), `example_sql` (default `example_sql`, a format example;
    both from `SchemaExtractor`). Writes: one row per (input row, difficulty, sample) with
    `difficulty` (String, the target), `output` (default `sql`, the query extracted from the reply's
    last ```sql block, or null) and `sql_meta`; the new row's `_id` is `<_id>-<difficulty>-<k>`.
    Use it to synthesise Text-to-SQL data from databases alone; follow it with
    `SQLExecutabilityFilter` (the target difficulty is a request, `SQLComponentClassifier` measures it).
    """

    reads = {"schema": "schema", "example_sql": "example_sql"}
    writes = {"output": "sql", "difficulty": "difficulty"}
    default_params = SamplingParams(temperature=0.8, max_tokens=256)
    default_template = PromptTemplate(
        "text2sql_generate_sql",
        "Here is a SQLite database schema with example values:\n```sql\n{schema}\n```\n\n"
        "Write one new, meaningful SQL query of {difficulty} difficulty ({hint}) that runs on this "
        "database and returns a non-empty result. Use only tables and columns from the schema.\n"
        "Reply with the query in a ```sql block, in the same format as this example:\n```sql\n{example_sql}\n```",
        "You are an expert SQLite developer who writes correct, varied queries.",
    )

    def __init__(self, difficulties: Sequence[str] = ("easy", "medium", "hard", "extra"), per_difficulty: int = 1,
                 template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        unknown = set(difficulties) - set(DIFFICULTY_HINTS)
        if unknown or not difficulties:
            raise ValueError(f"difficulties must be a non-empty subset of {list(DIFFICULTY_HINTS)}, got {list(difficulties)}")
        if per_difficulty < 1:
            raise ValueError("per_difficulty must be >= 1")
        self.difficulties, self.per_difficulty = tuple(difficulties), per_difficulty
        self._setup(template, params, llm)

    def template_columns(self):
        return [f for f in super().template_columns() if f not in ("difficulty", "hint")]

    def run(self, frame, cols):
        out, diff = cols["output"], cols["difficulty"]
        grid = pl.DataFrame(
            {"__difficulty": [d for d in self.difficulties for _ in range(self.per_difficulty)],
             "__k": [k for _ in self.difficulties for k in range(self.per_difficulty)]},
            schema={"__difficulty": pl.String, "__k": pl.Int64},
        )
        wide = frame.join(grid, how="cross").with_columns(
            (pl.col(ID) + "-" + pl.col("__difficulty") + "-" + pl.col("__k").cast(pl.String)).alias(ID),
            pl.col("__difficulty").alias(diff),
            pl.col("__difficulty").replace_strict(DIFFICULTY_HINTS, return_dtype=pl.String).alias("hint"),
        ).drop("__difficulty", "__k")
        roles = {role: cols.get(role) for role in self.reads}
        extra = self.template_columns()

        def render(row):
            values = {f: row.get(f) for f in extra}
            values.update({role: (row[col] if col else None) for role, col in roles.items()})
            values.update(difficulty=row[diff], hint=row["hint"])
            return self.template.render(values)

        res = self.call_llm(wide, render).unique(subset=[ID, "sample"], keep="first", maintain_order=True)
        wide = wide.drop("hint")
        return self.join_results(wide, res, [pl.col("text").map_elements(extract_sql, return_dtype=pl.String).alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], cols["difficulty"], f"{cols['output']}_meta"]


@register
class SQLVariationGenerator(_SQLReplyGenerator):
    """Rewrites a seed SQL query into a different query over the same schema (new conditions,
    another aggregation, an extra join), to grow a small seed set.

    Reads: `sql` (default `sql`), `schema` (default `schema`). Writes: `output` (default
    `sql_variant`, the extracted query or null) and `sql_variant_meta`.
    Use it on existing question/SQL pairs before question generation; filter the variants with
    `SQLExecutabilityFilter` like any generated SQL.
    """

    reads = {"sql": "sql", "schema": "schema"}
    writes = {"output": "sql_variant"}
    default_params = SamplingParams(temperature=0.8, max_tokens=256)
    default_template = PromptTemplate(
        "text2sql_sql_variation",
        "Database schema:\n```sql\n{schema}\n```\n\nSeed query:\n```sql\n{sql}\n```\n\n"
        "Write one different SQL query over the same database that asks a related but new question "
        "(change the conditions, the aggregation or the tables joined). Reply with the query in a ```sql block.",
        "You are an expert SQLite developer.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)


@register(name="text2sql_question_generator")
class QuestionFromSQLGenerator(CoreLLMOperator, Generator):
    """Writes the natural-language question that a SQL query answers, given the schema.

    Reads: `sql` (default `sql`), `schema` (default `schema`). Writes: `output` (default
    `question`, String) and `question_meta`.
    Use it after `SQLExecutabilityFilter` in Text-to-SQL synthesis; check the pair afterwards with
    `QuestionSQLConsistencyFilter`.
    """

    reads = {"sql": "sql", "schema": "schema"}
    writes = {"output": "question"}
    default_params = SamplingParams(temperature=0.2, max_tokens=128)
    default_template = PromptTemplate(
        "text2sql_question_from_sql",
        "Database schema:\n```sql\n{schema}\n```\n\nSQL query:\n```sql\n{sql}\n```\n\n"
        "Write the one question, in plain English, that this query answers. A user who knows nothing "
        "about SQL should be able to ask it. Reply with the question only.",
        "You translate SQL queries into the natural questions that they answer.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols)
        return self.join_results(frame, res, [pl.col("text").str.strip_chars().alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register(name="text2sql_cot_generator")
class CoTGenerator(CoreLLMOperator, Generator):
    """Generates `n` chain-of-thought solutions per question: step-by-step reasoning from the
    question and schema that ends in a SQL query (the gold query guides the reasoning).

    Reads: `question` (default `question`), `schema` (default `schema`), `sql` (default `sql`,
    the verified gold query). Writes: `output` (default `cot_candidates`, List[String], the
    successful samples in sample order) and `cot_candidates_meta` (provenance of sample 0).
    Use it before `CoTVoter`, which keeps one candidate whose final query reproduces the gold result.
    """

    reads = {"question": "question", "schema": "schema", "sql": "sql"}
    writes = {"output": "cot_candidates"}
    default_params = SamplingParams(temperature=0.7, max_tokens=512)
    default_template = PromptTemplate(
        "text2sql_cot",
        "Database schema:\n```sql\n{schema}\n```\n\nQuestion: {question}\n\n"
        "Explain step by step which tables, joins, conditions and aggregations answer the question, "
        "then give the final SQLite query in a ```sql block. The reasoning must lead to a query "
        "equivalent to this reference solution:\n```sql\n{sql}\n```",
        "You are an expert data analyst who reasons carefully before writing SQL.",
    )

    def __init__(self, n: int = 3, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._setup(template, params, llm)

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols, n=self.n)
        lists = (
            res.filter(pl.col("text").is_not_null()).sort(ID, "sample").group_by(ID, maintain_order=True)
            .agg(pl.col("text").alias(out))
        )
        meta = res.filter(pl.col("sample") == 0).select(ID, pl.col("meta").alias(f"{out}_meta"))
        right = meta.join(lists, on=ID, how="left").with_columns(pl.col(out).fill_null(pl.lit([], dtype=pl.List(pl.String))))
        clash = [c for c in right.columns if c != ID and c in frame.columns]
        return frame.drop(clash).join(right.select(ID, out, f"{out}_meta"), on=ID, how="left", maintain_order="left")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


PROMPT_FORMATS = {
    "omnisql": (
        "Task Overview:\nYou are a data science expert. Below, you are provided with a database schema and a "
        "natural language question. Your task is to understand the schema and generate a valid SQL query to "
        "answer the question.\n\nDatabase Engine:\nSQLite\n\nDatabase Schema:\n{schema}\n\nQuestion:\n{question}\n\n"
        "Instructions:\n- Make sure you only output the information that is asked in the question.\n"
        "- Think step by step, then give the final query in a ```sql block."
    ),
    "alpaca": "### Instruction:\nWrite a SQLite query that answers the question.\n\n### Input:\n{schema}\n\nQuestion: {question}\n\n### Response:\n",
    "plain": "{schema}\n\n-- Using valid SQLite, answer the following question for the tables provided above.\n-- {question}\n",
}


@register(name="text2sql_prompt_builder")
class PromptBuilder(Generator):
    """Builds the training prompt for a Text-to-SQL example: schema + question in a chosen format
    (`omnisql`, `alpaca` or `plain`, or any template with `{schema}` and `{question}`).

    Reads: `question` (default `question`), `schema` (default `schema`). Writes: `prompt`
    (String). No LLM call: a vectorised string template.
    Use it as the last stage, pairing `prompt` with the verified `cot` (or `sql`) as the target.
    """

    reads = {"question": "question", "schema": "schema"}
    writes = {"prompt": "prompt"}

    def __init__(self, format: str = "omnisql"):
        if format in PROMPT_FORMATS:
            template = PROMPT_FORMATS[format]
        elif "{schema}" in format and "{question}" in format:
            template = format
        else:
            raise ValueError(f"format must be one of {list(PROMPT_FORMATS)} or contain {{schema}} and {{question}}")
        self.format, self.template_text = format, template

    def run(self, frame, cols):
        parts, rest = [], self.template_text
        while rest:
            i_s, i_q = rest.find("{schema}"), rest.find("{question}")
            idx = [i for i in (i_s, i_q) if i >= 0]
            if not idx:
                parts.append(pl.lit(rest))
                break
            i = min(idx)
            parts.append(pl.lit(rest[:i]))
            if i == i_s:
                parts.append(pl.col(cols["schema"]).fill_null(""))
                rest = rest[i + len("{schema}"):]
            else:
                parts.append(pl.col(cols["question"]).fill_null(""))
                rest = rest[i + len("{question}"):]
        return frame.with_columns(pl.concat_str(parts).alias(cols["prompt"]))
