"""Text-to-SQL synthesis from databases: schema extraction -> SQL generation by target difficulty ->
executability -> question generation -> question/SQL consistency -> chain-of-thought (n samples) ->
CoT voting by execution result -> Spider component difficulty -> execution difficulty -> training
prompt. Every SQL statement runs read-only (`operators.text2sql.execution`).

Input rows name a database: `db_id` and `db_path` (a SQLite file). Gates: the share of generated
SQL that executes is at least `$DATAFLOW_SQL_EXEC_FLOOR` (default 0.5), and every final row is
execution-verified."""

from __future__ import annotations

import os

import polars as pl

from operators.base import Pipeline
from operators.llm import SamplingParams
from operators.text.dedup import ExactDedupFilter
from operators.text2sql.evaluate import (
    CoTVoter,
    ExecutionVerifiedFilter,
    QuestionSQLConsistencyFilter,
    SQLComponentClassifier,
    SQLExecutabilityFilter,
    SQLExecutionClassifier,
    SQLExecutionEvaluator,
    SQLNormalizer,
    SQLSyntaxFilter,
)
from operators.text2sql.generate import (
    CoTGenerator,
    PromptBuilder,
    QuestionFromSQLGenerator,
    SchemaExtractor,
    SQLGenerator,
)

EXEC_FLOOR_ENV = "DATAFLOW_SQL_EXEC_FLOOR"
DEFAULT_EXEC_FLOOR = 0.5


class Text2SQLPipeline(Pipeline):
    """Synthesise verified Text-to-SQL training examples from SQLite databases."""

    name = "text2sql"
    input_schema = {"db_id": pl.String, "db_path": pl.String}
    description = "Text-to-SQL from databases: SQL by difficulty, read-only execution, questions, consistency, CoT voting, difficulty, prompts"

    def __init__(
        self,
        difficulties: tuple[str, ...] = ("easy", "medium", "hard", "extra"),
        per_difficulty: int = 2,
        cot_samples: int = 3,
        attempts: int = 3,
        timeout_s: float = 5.0,
        prompt_format: str = "omnisql",
        max_tokens: int = 384,
        schema_max_chars: int | None = 3000,
    ):
        # 3000 characters of schema keep every prompt inside the embedded model's 2048-token context
        self.schema = SchemaExtractor(sample_values=3, max_chars=schema_max_chars)
        self.generate_sql = SQLGenerator(difficulties=difficulties, per_difficulty=per_difficulty,
                                         params=SamplingParams(temperature=0.8, max_tokens=max_tokens))
        self.normalize = SQLNormalizer()
        self.syntax = SQLSyntaxFilter()
        self.execute = SQLExecutionEvaluator(timeout_s=timeout_s)
        self.executable = SQLExecutabilityFilter(timeout_s=timeout_s)
        self.exact_dedup = ExactDedupFilter()
        self.question = QuestionFromSQLGenerator()
        self.consistency = QuestionSQLConsistencyFilter()
        self.cot = CoTGenerator(n=cot_samples, params=SamplingParams(temperature=0.7, max_tokens=max_tokens))
        self.vote = CoTVoter(timeout_s=timeout_s)
        self.verified = ExecutionVerifiedFilter()
        self.component_difficulty = SQLComponentClassifier()
        self.execution_difficulty = SQLExecutionClassifier(n=attempts, timeout_s=timeout_s,
                                                           params=SamplingParams(temperature=0.8, max_tokens=max_tokens))
        self.prompt = PromptBuilder(format=prompt_format)

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.schema(frame, db="db_path")
        frame = self.generate_sql(frame)
        frame = self.normalize(frame, text="sql")
        frame = self.execute(frame, sql="sql", db="db_path")
        frame = self.syntax(frame, sql="sql")
        frame = self.executable(frame, sql="sql", db="db_path")
        frame = self.exact_dedup(frame, text="sql")
        frame = self.question(frame)
        frame = self.consistency(frame)
        frame = self.cot(frame)
        frame = self.vote(frame, db="db_path")
        frame = self.verified(frame)
        frame = self.component_difficulty(frame)
        frame = self.execution_difficulty(frame, db="db_path")
        return self.prompt(frame)


def exec_share(frame: pl.DataFrame, floor: float | None = None) -> tuple[bool, dict]:
    """Share of generated SQL (rows of the `execute` stage) whose status is `ok`."""
    floor = float(os.environ.get(EXEC_FLOOR_ENV, DEFAULT_EXEC_FLOOR)) if floor is None else floor
    n = frame.height
    ok = int((frame.get_column("exec_status") == "ok").sum()) if n else 0
    share = ok / n if n else 0.0
    by_status = {k: int(v) for k, v in frame.get_column("exec_status").value_counts().iter_rows()} if n else {}
    return share >= floor, {"exec_share": share, "floor": floor, "rows": n, "by_status": by_status}


def all_verified(frame: pl.DataFrame) -> tuple[bool, dict]:
    """Every final row's chosen CoT query reproduced the gold result, and the gold query ran."""
    n = frame.height
    bad = int((~(frame.get_column("exec_verified").fill_null(False) & (frame.get_column("exec_status") == "ok"))).sum()) if n else 0
    return n > 0 and bad == 0, {"rows": n, "unverified_rows": bad}


def _spec():
    from dataflow_assets.checks import Gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="text2sql",
        build=Text2SQLPipeline,
        description=Text2SQLPipeline.description,
        gates=[
            Gate("executable_share", f"Share of generated SQL that executes read-only is at least ${EXEC_FLOOR_ENV} (default {DEFAULT_EXEC_FLOOR}).",
                 lambda d: exec_share(d.frame), "execute"),
            Gate("execution_verified", "Every final row is execution-verified: its CoT query reproduces the gold result.",
                 lambda d: all_verified(d.frame), "prompt"),
        ],
    )


SPEC = _spec()
