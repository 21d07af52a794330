"""Verified math-reasoning pipeline (DataFlow's reasoning pipeline): questions in, chain-of-thought
solutions out, each kept only when its final answer was verified against the ground truth with
`math-verify` or, where no ground truth exists, agreed on by self-consistency voting.

Input fields: `question` (or `problem` / `instruction`), optional ground truth `answer` (a GSM8K
solution ending in `#### n`, a MATH solution with `\\boxed{}`, or a bare answer; `golden_answer`
is read as `answer`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import polars as pl

from operators.base import Pipeline
from operators.reasoning.answers import (
    AnswerExtractor,
    GoldAnswerParseFilter,
    MathVerifyEvaluator,
    SelfConsistencyVoter,
    VerifiedAnswerFilter,
)
from operators.reasoning.contamination import NgramContaminationFilter, contamination
from operators.reasoning.llm import (
    ChainOfThoughtGenerator,
    DifficultyClassifier,
    MathCategoryClassifier,
    QuestionVariantGenerator,
    QuestionWellPosednessFilter,
)
from operators.reasoning.rules import MathFormatFilter, ProvenanceRecorder, QuestionPresenceFilter, VariantNoveltyFilter
from operators.reasoning.tokens import TokenLengthFilter
from operators.text.dedup import ExactDedupFilter, MinhashDedupFilter

VERIFIED_FLOOR_ENV = "DATAFLOW_MATH_VERIFIED_FLOOR"
DEFAULT_VERIFIED_FLOOR = 0.2
VERIFICATION_METHODS = ("math_verify", "self_consistency")


class MathReasoningPipeline(Pipeline):
    """Math questions -> verified chain-of-thought data: question checks, dedup, well-posedness
    (LLM), variant synthesis (rephrase / harder / easier) with a novelty check, difficulty and
    category (LLM), `n` CoT samples, answer extraction, math-verify against the ground truth or
    self-consistency voting, format and token-length filters, benchmark decontamination and a
    provenance record per row."""

    name = "math_reasoning"
    input_schema = {"question": pl.String}
    description = "Verified math reasoning: synthesis, classification, n-sample CoT, math-verify / voting, decontamination"

    def __init__(
        self,
        n_samples: int = 4,
        synthesis_modes: Sequence[str] = ("rephrase", "harder", "easier"),
        min_agreement: float = 0.5,
        max_question_tokens: int = 512,
        max_solution_tokens: int = 1024,
        benchmarks: Mapping[str, str] | Sequence[str] | None = None,
        contamination_ngram: int = 8,
        contamination_threshold: float = 0.5,
        tokenizer_gguf: str | None = None,
        cot_max_tokens: int = 512,
    ):
        from operators.llm import SamplingParams

        self.has_question = QuestionPresenceFilter()
        self.gold = AnswerExtractor(forms=("boxed", "hash", "answer_is", "whole"))
        self.gold_parses = GoldAnswerParseFilter()
        self.exact_dedup = ExactDedupFilter(strip_punct=True)
        self.near_dedup = MinhashDedupFilter(threshold=0.8, shingle_size=3)
        self.well_posed = QuestionWellPosednessFilter()
        self.synthesize = QuestionVariantGenerator(modes=synthesis_modes)
        self.novelty = VariantNoveltyFilter()
        self.difficulty = DifficultyClassifier()
        self.category = MathCategoryClassifier()
        self.cot = ChainOfThoughtGenerator(
            n=n_samples, params=SamplingParams(temperature=0.7 if n_samples > 1 else 0.0, max_tokens=cot_max_tokens)
        )
        self.extract = AnswerExtractor()
        self.verify = MathVerifyEvaluator()
        self.vote = SelfConsistencyVoter(min_agreement=min_agreement)
        self.keep_verified = VerifiedAnswerFilter()
        self.format = MathFormatFilter()
        self.token_length = TokenLengthFilter(
            max_question_tokens=max_question_tokens, max_solution_tokens=max_solution_tokens, model_path=tokenizer_gguf
        )
        self.decontaminate = NgramContaminationFilter(benchmarks, n=contamination_ngram, threshold=contamination_threshold)
        self.provenance = ProvenanceRecorder(pipeline=self.name)

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.has_question(frame, question="question")
        frame = self.gold(frame, text="answer", answer="gold_answer", form="gold_form")
        frame = self.gold_parses(frame, gold="gold_answer")
        frame = self.exact_dedup(frame, text="question")
        frame = self.near_dedup(frame, text="question")
        frame = self.well_posed(frame, question="question")
        frame = self.synthesize(frame, question="question")
        frame = self.novelty(frame, question="question", parent="parent_question", similarity="variant_similarity")
        frame = self.difficulty(frame, question="question")
        frame = self.category(frame, question="question")
        frame = self.cot(frame, question="question", solutions="solutions")
        frame = self.extract(frame, text="solutions", answer="sample_answers", form="answer_forms")
        frame = self.verify(frame, answers="sample_answers", gold="gold_answer")
        frame = self.vote(frame, answers="sample_answers", gold="gold_answer")
        frame = self.keep_verified(frame, solution_meta="solution_meta")
        frame = self.format(frame, text="solution")
        frame = self.token_length(frame, question="question", solution="solution", question_tokens="question_tokens", solution_tokens="solution_tokens")
        frame = self.decontaminate(frame, text="question", text2="solution", overlap="contamination_overlap")
        frame = self.provenance(frame, solution_meta="solution_meta")
        return frame


# --------------------------------------------------------------------------- gates


def verified_floor() -> float:
    """The configured floor for the verified-answer share (`DATAFLOW_MATH_VERIFIED_FLOOR`)."""
    try:
        return float(os.environ.get(VERIFIED_FLOOR_ENV, DEFAULT_VERIFIED_FLOOR))
    except ValueError:
        return DEFAULT_VERIFIED_FLOOR


def verified_share(frame: pl.DataFrame) -> tuple[bool, dict[str, Any]]:
    """Share of rows whose answer was verified (math-verify or an agreeing vote) >= the floor."""
    floor = verified_floor()
    n = frame.height
    ok = int(frame.get_column("verified").fill_null(False).sum()) if n else 0
    by = frame.group_by("verification").agg(pl.col("verified").fill_null(False).sum().alias("v"), pl.len().alias("n")) if n else None
    methods = {str(m): f"{v}/{k}" for m, v, k in by.iter_rows()} if by is not None else {}
    share = ok / n if n else 0.0
    return share >= floor, {"verified_share": share, "floor": floor, "rows": n, "verified_rows": ok, "by_method": methods}


def no_contamination(frame: pl.DataFrame, filt: NgramContaminationFilter) -> tuple[bool, dict[str, Any]]:
    """Re-checks the final rows (question and solution) against every benchmark: zero may overlap."""
    cols = [c for c in ("question", "solution") if c in frame.columns]
    if frame.height == 0:
        return True, {"contaminated_rows": 0, "benchmarks": ", ".join(filt.benchmarks) or "none"}
    _, bench = contamination(frame, cols, filt.benchmarks, filt.n, filt.threshold)
    bad = int(bench.is_not_null().sum())
    return bad == 0, {"contaminated_rows": bad, "benchmarks": ", ".join(filt.benchmarks) or "none", "rows": frame.height}


def provenance_complete(frame: pl.DataFrame) -> tuple[bool, dict[str, Any]]:
    """Every final row says whether its answer was verified or voted, and how."""
    if frame.height == 0:
        return True, {"rows": 0, "incomplete": 0}
    bad = frame.filter(
        ~pl.col("verification").is_in(list(VERIFICATION_METHODS)).fill_null(False)
        | pl.col("verification_detail").is_null()
        | ~pl.col("verified").fill_null(False)
        | pl.col("provenance").struct.field("verification").is_null()
    ).height
    methods = {str(k): int(v) for k, v in frame.get_column("verification").value_counts().iter_rows()}
    return bad == 0, {"rows": frame.height, "incomplete": bad, "by_method": methods}


def _spec():
    from dataflow_assets.checks import Gate, GateInput
    from dataflow_assets.pipelines import ShippedPipeline

    def contamination_gate(d: GateInput):
        return no_contamination(d.frame, SPEC.pipeline.decontaminate)

    return ShippedPipeline(
        name="math_reasoning",
        build=MathReasoningPipeline,
        description=MathReasoningPipeline.description,
        rename={"problem": "question", "instruction": "question", "golden_answer": "answer"},
        gates=[
            Gate(
                "verified_share",
                f"Share of rows whose answer was verified (math-verify vs ground truth, or an agreeing vote) "
                f"is at least ${VERIFIED_FLOOR_ENV} (default {DEFAULT_VERIFIED_FLOOR}).",
                lambda d: verified_share(d.frame),
                "vote",
            ),
            Gate("zero_contaminated", "No final row overlaps a benchmark test set (question or solution).", contamination_gate, "provenance"),
            Gate(
                "verification_recorded",
                "Every final row records that its answer was verified or voted, and how.",
                lambda d: provenance_complete(d.frame),
                "provenance",
            ),
        ],
    )


SPEC = _spec()
