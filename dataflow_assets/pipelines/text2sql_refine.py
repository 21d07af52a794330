"""Text-to-SQL refinement of existing (question, SQL) pairs: schema extraction -> SQL normalisation ->
syntax and read-only executability -> exact dedup of questions -> question/SQL consistency judge ->
chain-of-thought (n samples) -> CoT voting by execution result -> Spider component difficulty ->
execution difficulty -> training prompt. The counterpart of DataFlow's Text2SQL refine pipeline.

Input rows: `db_id`, `db_path` (a SQLite file), `question` and `sql` (DataFlow's `SQL` field is
renamed). Gates as in `text2sql`: the share of pairs whose SQL executes is at least
`$DATAFLOW_SQL_EXEC_FLOOR` (default 0.5), and every final row is execution-verified."""

from __future__ import annotations

import polars as pl

from dataflow_assets.pipelines.text2sql import (
    DEFAULT_EXEC_FLOOR,
    EXEC_FLOOR_ENV,
    all_verified,
    exec_share,
)
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
from operators.text2sql.generate import CoTGenerator, PromptBuilder, SchemaExtractor


class Text2SQLRefinePipeline(Pipeline):
    """Clean, verify, annotate and format existing Text-to-SQL pairs."""

    name = "text2sql_refine"
    input_schema = {"db_id": pl.String, "db_path": pl.String, "question": pl.String, "sql": pl.String}
    description = "Text-to-SQL refinement of existing pairs: read-only execution, consistency, CoT voting, difficulty, prompts"

    def __init__(self, cot_samples: int = 3, attempts: int = 3, timeout_s: float = 5.0, prompt_format: str = "omnisql",
                 max_tokens: int = 384, schema_max_chars: int | None = 3000):
        self.schema = SchemaExtractor(sample_values=3, max_chars=schema_max_chars)
        self.normalize = SQLNormalizer()
        self.execute = SQLExecutionEvaluator(timeout_s=timeout_s)
        self.syntax = SQLSyntaxFilter()
        self.executable = SQLExecutabilityFilter(timeout_s=timeout_s)
        self.exact_dedup = ExactDedupFilter()
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
        frame = self.normalize(frame, text="sql")
        frame = self.execute(frame, sql="sql", db="db_path")
        frame = self.syntax(frame, sql="sql")
        frame = self.executable(frame, sql="sql", db="db_path")
        frame = self.exact_dedup(frame, text="question")
        frame = self.consistency(frame)
        frame = self.cot(frame)
        frame = self.vote(frame, db="db_path")
        frame = self.verified(frame)
        frame = self.component_difficulty(frame)
        frame = self.execution_difficulty(frame, db="db_path")
        return self.prompt(frame)


def _spec():
    from dataflow_assets.checks import Gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="text2sql_refine",
        build=Text2SQLRefinePipeline,
        description=Text2SQLRefinePipeline.description,
        rename={"SQL": "sql"},
        gates=[
            Gate("executable_share", f"Share of input SQL that executes read-only is at least ${EXEC_FLOOR_ENV} (default {DEFAULT_EXEC_FLOOR}).",
                 lambda d: exec_share(d.frame), "execute"),
            Gate("execution_verified", "Every final row is execution-verified: its CoT query reproduces the gold result.",
                 lambda d: all_verified(d.frame), "prompt"),
        ],
    )


SPEC = _spec()
