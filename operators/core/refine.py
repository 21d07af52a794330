"""Core LLM refiner: rewrite a column in place with a prompt."""

from __future__ import annotations

import polars as pl

from operators.base import Refiner, register
from operators.core.common import CoreLLMOperator
from operators.llm import LLMClient, PromptTemplate, SamplingParams


@register
class PromptedRefiner(CoreLLMOperator, Refiner):
    """Rewrites a text column in place with an LLM prompt (fix grammar, clarify, restyle, redact...).

    Reads and rewrites: `text` (default `text`); the template may also name other columns
    (e.g. `{instruction}` to refine a response in the light of its instruction) and `{goal}`,
    the configured rewriting goal. Writes `<text>_meta` (provenance). Rows whose call failed (or
    came back empty, with `keep_on_empty`) keep their original text, and the error is in the meta
    column. The report's `modified` counts rows whose text changed.
    Use it to improve existing data rather than add new columns.
    """

    reads = {"text": "text"}
    writes = {}
    default_template = PromptTemplate(
        "refine",
        "Rewrite the text below to {goal}. Keep its meaning and language. "
        "Reply with the rewritten text only.\n\nText:\n{text}",
        "You are a meticulous editor.",
    )

    def __init__(self, goal: str = "fix grammar and spelling and make it clear and fluent", keep_on_empty: bool = True, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.goal, self.keep_on_empty = goal, keep_on_empty
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"goal": self.goal}

    def run(self, frame, cols):
        col = cols["text"]
        res = self.ask(frame, cols)
        new = pl.col("text")
        if self.keep_on_empty:
            new = pl.when(new.str.strip_chars() == "").then(None).otherwise(new)
        joined = self.join_results(frame, res, [new.alias("__refined")], f"{col}_meta")
        out = joined.with_columns(pl.coalesce("__refined", col).alias(col)).drop("__refined")
        self.count_modified(frame, out, col)
        return out

    def output_columns(self, cols):
        return [cols["text"], f"{cols['text']}_meta"]
