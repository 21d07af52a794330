"""SFT quality filtering of (instruction, output) pairs: rule screens (presence, length, ratio,
refusal, boilerplate, parroting, truncation, keyboard mash, language and language agreement),
dataset-wide exact + MinHash dedup of the instruction, Deita-style LLM quality and complexity
scores, InsTag-style tags, optional reward-model score, then keep-by-threshold, tag-coverage
diversity selection and keep-top-k by the Deita score.

Input fields: `instruction`, `output` (Alpaca without `input`, e.g. GeneralTextPipeline's
sft_input.jsonl). A record without an instruction or output field is quarantined by the source;
a blank one is dropped as `missing_instruction` / `missing_response`. A reward model is used when
`$DATAFLOW_SFT_REWARD_MODEL` (or `reward_model=`) names a local Hugging Face sequence-classification
model folder."""

from __future__ import annotations

import os

import polars as pl

from operators.base import Pipeline
from operators.core.evaluate import LLMJudgeEvaluator
from operators.llm import SamplingParams
from operators.sft.llm import (
    InstructionComplexityScorer,
    InstructionTagger,
    RewardModelScorer,
)
from operators.sft.rules import (
    BoilerplateResponseFilter,
    DeitaScoreCombiner,
    GibberishInstructionFilter,
    InstructionEchoFilter,
    LanguageMatchFilter,
    PairLengthFilter,
    RefusalFilter,
    ResponseOpenerStripper,
    ResponseRatioFilter,
    ScoreThresholdFilter,
    SFTFieldPresenceFilter,
    TagCoverageFilter,
    TopKFilter,
    TruncatedResponseFilter,
)
from operators.text.dedup import ExactDedupFilter, MinhashDedupFilter
from operators.text.langid import LanguageFilter

REWARD_ENV = "DATAFLOW_SFT_REWARD_MODEL"
QUALITY_CRITERIA = "helpfulness, correctness, completeness and clarity of the response to this instruction"


class SFTFilterPipeline(Pipeline):
    """(instruction, output) pairs -> a smaller, cleaner, scored and diverse SFT set."""

    name = "sft_filter"
    input_schema = {"instruction": pl.String, "output": pl.String}
    description = "SFT quality filter: rule screens, language, instruction exact+MinHash dedup, Deita quality/complexity, InsTag tags, threshold, diversity, top-k"

    def __init__(
        self,
        languages: tuple[str, ...] = ("en",),
        min_language_confidence: float = 0.5,
        min_quality: int = 3,
        min_complexity: int = 1,
        top_k: int = 10_000,
        diversity: bool = True,
        reward_model: str | None = None,
        judge_max_tokens: int = 192,
    ):
        judge_params = SamplingParams(temperature=0.0, max_tokens=judge_max_tokens)
        self.presence = SFTFieldPresenceFilter()
        self.opener = ResponseOpenerStripper()
        self.length = PairLengthFilter(min_instruction_words=3, min_response_words=1)
        self.ratio = ResponseRatioFilter(min_ratio=0.1)
        self.refusal = RefusalFilter()
        self.boilerplate = BoilerplateResponseFilter()
        self.echo = InstructionEchoFilter()
        self.truncated = TruncatedResponseFilter()
        self.gibberish = GibberishInstructionFilter()
        self.language = LanguageFilter(keep=tuple(languages), min_confidence=min_language_confidence)
        self.language_match = LanguageMatchFilter()
        self.exact_dedup = ExactDedupFilter(strip_punct=True)
        self.near_dedup = MinhashDedupFilter(threshold=0.8, shingle_size=3)
        self.quality = LLMJudgeEvaluator(criteria=QUALITY_CRITERIA, min_score=1, max_score=6, params=judge_params)
        self.complexity = InstructionComplexityScorer(min_score=1, max_score=6, params=judge_params)
        self.tags = InstructionTagger(params=judge_params)
        reward_model = reward_model or os.environ.get(REWARD_ENV) or None
        self.reward = RewardModelScorer(reward_model) if reward_model else None
        self.deita = DeitaScoreCombiner()
        self.threshold = ScoreThresholdFilter({"quality_score": min_quality, "complexity_score": min_complexity})
        self.diversity = TagCoverageFilter() if diversity else None
        self.top_k = TopKFilter(k=top_k)

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.presence(frame)
        frame = self.opener(frame, text="output")
        frame = self.length(frame)
        frame = self.ratio(frame)
        frame = self.refusal(frame)
        frame = self.boilerplate(frame)
        frame = self.echo(frame)
        frame = self.truncated(frame)
        frame = self.gibberish(frame)
        frame = self.language(frame, text="instruction", language="language")
        frame = self.language_match(frame)
        frame = self.exact_dedup(frame, text="instruction")
        frame = self.near_dedup(frame, text="instruction")
        frame = self.quality(frame, instruction="instruction", response="output", score="quality_score", rationale="quality_rationale")
        frame = self.complexity(frame)
        frame = self.tags(frame)
        if self.reward is not None:
            frame = self.reward(frame)
        frame = self.deita(frame)
        frame = self.threshold(frame)
        if self.diversity is not None:
            frame = self.diversity(frame, priority="deita_score")
        return self.top_k(frame, score="deita_score", tiebreak="quality_score", rank="rank")


def _spec():
    from dataflow_assets.checks import kept_share_gate, non_null_share_gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="sft_filter",
        build=SFTFilterPipeline,
        description=SFTFilterPipeline.description,
        gates=[
            # the rule screens keep some pairs of any real SFT set; none or all of them kept means a misconfiguration
            kept_share_gate("language_match", 0.01, 1.0),
            non_null_share_gate("quality", "quality_score", 0.5, name="quality_scored_share"),
            non_null_share_gate("complexity", "complexity_score", 0.5, name="complexity_scored_share"),
        ],
    )


SPEC = _spec()
