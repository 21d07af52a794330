"""LLM quality scoring of pre-training text: an LLM-as-judge score and rationale per document.

The demo runs it on the embedded SmolLM2 model over a few documents that `text_pt` kept, so a new
user sees a real model at work with no GPU and no network."""

from __future__ import annotations

import polars as pl

from operators.base import Pipeline
from operators.core.evaluate import LLMJudgeEvaluator
from operators.llm import SamplingParams


class TextJudgePipeline(Pipeline):
    """Judge each document's value as pre-training text (1-5, with a one-sentence rationale)."""

    name = "text_judge"
    input_schema = {"text": pl.String}
    description = "LLM-as-judge quality score (1-5) and rationale for each document of text_pt's export"
    # reads rows of text_pt's export (`exports/text_pt/...`): their `_id`s are kept, and the asset graph
    # and `dataflow trace` link the two pipelines
    upstream = "text_pt"

    def __init__(self, max_tokens: int = 96):
        self.quality = LLMJudgeEvaluator(
            criteria="how clear, informative and well written the text is as training data for a language model",
            min_score=1,
            max_score=5,
            params=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        )

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        return self.quality(frame, instruction=None, response="text", score="quality_score", rationale="quality_rationale")


def _spec():
    from dataflow_assets.checks import non_null_share_gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="text_judge",
        build=TextJudgePipeline,
        description=TextJudgePipeline.description,
        gates=[non_null_share_gate("quality", "quality_score", 0.5, name="scored_share")],
    )


SPEC = _spec()
