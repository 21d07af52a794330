"""Text2QA: question-answer pairs generated from raw documents (e.g. the C4 sample), each kept
only when its answer is supported by the source passage: documents -> English -> passages
(chunks) -> QA pairs -> presence / length screens -> lexical grounding (no LLM) -> LLM grounding
judge whose quoted evidence must occur in the passage -> keep grounded -> exact dedup of questions.

Input field: `text` (C4: `text`, `url`, `timestamp`; extra fields ride along). A record without
`text` is quarantined by the source. Gate: every final pair is grounded (blocking)."""

from __future__ import annotations

import polars as pl

from operators.base import Pipeline
from operators.core.synth import GroundednessJudge
from operators.llm import SamplingParams
from operators.sft.llm import QAPairGenerator
from operators.sft.rules import (
    DocumentChunker,
    LexicalGroundingFilter,
    PairLengthFilter,
    ScoreThresholdFilter,
    SFTFieldPresenceFilter,
)
from operators.text.dedup import ExactDedupFilter
from operators.text.langid import LanguageFilter


class Text2QAPipeline(Pipeline):
    """Documents -> grounded (question, answer) pairs with their source passage."""

    name = "text2qa"
    input_schema = {"text": pl.String}
    description = "Text2QA: documents -> passages -> QA pairs -> lexical + LLM grounding (verified quote) -> grounded pairs"

    def __init__(self, pairs_per_chunk: int = 2, max_chunk_words: int = 220, min_chunk_words: int = 60):
        self.has_text = SFTFieldPresenceFilter()
        self.language = LanguageFilter(keep=("en",), min_confidence=0.65)
        self.chunk = DocumentChunker(max_words=max_chunk_words, min_words=min_chunk_words)
        self.qa = QAPairGenerator(n=pairs_per_chunk, params=SamplingParams(temperature=0.3, max_tokens=768))
        self.has_pair = SFTFieldPresenceFilter()
        self.length = PairLengthFilter(min_instruction_words=3, max_instruction_words=80, min_response_words=1, max_response_words=200)
        self.lexical = LexicalGroundingFilter(min_support=0.6)
        self.grounding = GroundednessJudge(params=SamplingParams(temperature=0.0, max_tokens=320))
        self.grounded = ScoreThresholdFilter({"grounded": 1})
        self.exact_dedup = ExactDedupFilter(strip_punct=True)

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.has_text(frame, instruction="text", response=None)
        frame = self.language(frame, text="text")
        frame = self.chunk(frame, text="text")
        frame = self.qa(frame, text="chunk")
        frame = self.has_pair(frame)
        frame = self.length(frame)
        frame = self.lexical(frame, answer="output", source="chunk", support="lexical_support")
        frame = self.grounding(frame, claim="output", source="chunk", question="instruction")
        frame = self.grounded(frame)
        return self.exact_dedup(frame, text="instruction")


def all_grounded(frame: pl.DataFrame) -> tuple[bool, dict]:
    """Every final pair was judged grounded with a quote found in its passage."""
    n = frame.height
    bad = int((~frame.get_column("grounded").fill_null(False)).sum()) if n else 0
    return bad == 0, {"rows": n, "ungrounded_rows": bad}


def _spec():
    from dataflow_assets.checks import Gate, non_null_share_gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="text2qa",
        build=Text2QAPipeline,
        description=Text2QAPipeline.description,
        gates=[
            non_null_share_gate("grounding", "grounded", 0.5, name="grounding_judged_share"),
            Gate("all_grounded", "Every final QA pair is supported by its passage (LLM verdict + quote found in the passage).",
                 lambda d: all_grounded(d.frame), "exact_dedup"),
        ],
    )


SPEC = _spec()
