"""Core filters: an LLM-judged threshold filter and rule-based JSON-validity, length and
LLM-error filters."""

from __future__ import annotations

import json
from typing import Any, Mapping

import jsonschema
import polars as pl

from operators.base import Filter, register
from operators.core.common import _BAD, CoreLLMOperator, field_of, loads_loose
from operators.core.evaluate import RATIONALE_FIRST_REPLY, judge_schema
from operators.llm import LLMClient, PromptTemplate, SamplingParams


def _error_reasons(frame: pl.DataFrame, error: pl.Expr) -> dict[str, pl.Expr]:
    """reason `llm_error:<kind>` -> keep expression, for every error kind present in `frame`."""
    kinds = frame.select(error.alias("e")).get_column("e").drop_nulls().unique(maintain_order=True).to_list()
    return {f"llm_error:{k}": (error != k).fill_null(True) for k in kinds}


@register
class PromptedFilter(CoreLLMOperator, Filter):
    """Keeps rows whose LLM-judged score reaches `threshold`.

    Reads: `text` (default `text`) plus any extra columns the template names. Writes: optional
    `score` (default `filter_score`, Int64; pass `score=None` to not keep it) and `<score>_meta`.
    The judge answers JSON-schema constrained `{"rationale": string, "score": integer in
    [min_score, max_score]}`, rationale first (prompt and schema shared with `LLMJudgeEvaluator`)
    so the model states its reason before it scores. Drop reasons: `llm_error:<kind>` for rows
    whose call failed (or whose answer did not match the schema: `llm_error:schema`),
    `below_threshold` otherwise.
    Use it to drop low-quality, off-topic or unsafe rows with a natural-language criterion.
    """

    reads = {"text": "text"}
    writes = {"score": "filter_score"}
    default_template = PromptTemplate(
        "prompted_filter",
        "Rate the text below from {min_score} to {max_score} for: {criteria}\n\nText:\n{text}\n\n"
        "First say in one sentence what is good or bad about the text, then give the score. " + RATIONALE_FIRST_REPLY,
        "You are a careful data-quality annotator.",
    )

    def __init__(
        self,
        criteria: str = "overall quality: clear, coherent, informative and safe",
        threshold: int = 3,
        min_score: int = 1,
        max_score: int = 5,
        template: PromptTemplate | None = None,
        params: SamplingParams | None = None,
        llm: LLMClient | None = None,
    ):
        if not min_score <= threshold <= max_score:
            raise ValueError(f"threshold {threshold} outside [{min_score}, {max_score}]")
        self.criteria, self.threshold, self.min_score, self.max_score = criteria, threshold, min_score, max_score
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"criteria": self.criteria, "min_score": self.min_score, "max_score": self.max_score}

    @property
    def schema(self):
        return judge_schema(self.min_score, self.max_score)

    def run(self, frame, cols):
        score = cols.get("score") or "__score"
        res = self.ask(frame, cols, schema=self.schema)
        judged = self.join_results(frame, res, [field_of("parsed", "score", pl.Int64).alias(score)], f"{score}_meta")
        error = pl.col(f"{score}_meta").struct.field("error")
        keep = {**_error_reasons(judged, error), "below_threshold": pl.col(score) >= self.threshold}
        out = self.apply_keep(judged, keep)
        return out if cols.get("score") else out.drop(score, f"{score}_meta")

    def output_columns(self, cols):
        return [cols["score"], f"{cols['score']}_meta"] if cols.get("score") else []


@register
class JsonValidityFilter(Filter):
    """Rule-based: keeps rows whose text column holds valid JSON (optionally matching a JSON schema).

    Reads: `text` (default `output`). Writes nothing. Options: `schema` (a JSON schema the value
    must satisfy), `strip_fences` (accept a Markdown ```json fence around the JSON, default True),
    `require_object` (only JSON objects pass). Drop reasons: `invalid_json`, `not_object`,
    `schema_mismatch`. Use it after generators that should have produced JSON (function calls,
    extraction targets, structured SFT outputs).
    """

    reads = {"text": "output"}
    writes = {}

    def __init__(self, schema: Mapping[str, Any] | None = None, strip_fences: bool = True, require_object: bool = False):
        self.schema = dict(schema) if schema is not None else None
        self.strip_fences, self.require_object = strip_fences, require_object
        if self.schema is not None:
            jsonschema.Draft202012Validator.check_schema(self.schema)

    def run(self, frame, cols):
        validator = jsonschema.Draft202012Validator(self.schema) if self.schema is not None else None
        parsed, is_obj, matches = [], [], []
        for text in frame.get_column(cols["text"]).cast(pl.String):
            if self.strip_fences:
                obj = loads_loose(text)
            else:
                try:
                    obj = json.loads(text) if text is not None else _BAD
                except ValueError:
                    obj = _BAD
            ok = obj is not _BAD
            parsed.append(ok)
            is_obj.append(ok and isinstance(obj, dict))
            matches.append(ok and (validator is None or validator.is_valid(obj)))
        keep: dict[str, Any] = {"invalid_json": pl.Series(parsed, dtype=pl.Boolean)}
        if self.require_object:
            keep["not_object"] = pl.Series(is_obj, dtype=pl.Boolean)
        if validator is not None:
            keep["schema_mismatch"] = pl.Series(matches, dtype=pl.Boolean)
        return self.apply_keep(frame, keep)


@register
class ResponseLengthFilter(Filter):
    """Rule-based: keeps rows whose response length lies within [min, max] words or characters.

    Reads: `text` (default `output`). Writes: optional `length` (Int64, the measured length; off by
    default). `unit` is "words" (whitespace-separated tokens) or "chars"; `max_length=None` means
    no upper bound. Drop reasons: `too_short` (null text counts as too short), `too_long`.
    Use it to drop empty/truncated or runaway responses in SFT data.
    """

    reads = {"text": "output"}
    writes = {"length": None}

    def __init__(self, min_length: int = 1, max_length: int | None = 2048, unit: str = "words"):
        if unit not in ("words", "chars"):
            raise ValueError('unit must be "words" or "chars"')
        if max_length is not None and max_length < min_length:
            raise ValueError("max_length must be >= min_length")
        self.min_length, self.max_length, self.unit = min_length, max_length, unit

    def measure(self, text: pl.Expr) -> pl.Expr:
        n = text.str.count_matches(r"\S+") if self.unit == "words" else text.str.len_chars()
        return n.cast(pl.Int64)

    def scores(self, cols):
        return [self.measure(pl.col(cols["text"])).alias(cols["length"])] if cols.get("length") else []

    def keep(self, cols):
        n = self.measure(pl.col(cols["text"]))
        keep = {"too_short": n >= self.min_length}
        if self.max_length is not None:
            keep["too_long"] = (n <= self.max_length).fill_null(True)
        return keep


@register
class LLMErrorFilter(Filter):
    """Rule-based: drops rows whose earlier LLM call failed, judged from a provenance column.

    Reads: `meta` (default `generated_meta`, an `<output>_meta` struct written by an LLM operator).
    Writes nothing. Drop reason: `llm_error:<kind>` (e.g. `llm_error:timeout`). Rows with a null
    meta (no result at all) are dropped as `llm_error:missing`.
    Use it after a generator/evaluator (which keep failed rows with null outputs) when the
    following stages need every row to have an output.
    """

    reads = {"meta": "generated_meta"}
    writes = {}

    def __init__(self):
        pass

    def run(self, frame, cols):
        meta = pl.col(cols["meta"])
        error = meta.struct.field("error")
        keep = {"llm_error:missing": meta.is_not_null(), **_error_reasons(frame, error)}
        return self.apply_keep(frame, keep)
