"""SFT synthesis, Condor-style: seed topics -> a (topic x task type) grid -> generated questions ->
dedup of the questions (exact + MinHash, dataset-wide) and topic balancing -> answers -> critique
-> refined answers -> rule screens -> LLM judge -> keep by threshold.

Input field: `topic` (one seed domain or topic per record, e.g. {"topic": "sourdough baking"});
a record without it is quarantined by the source, a blank one dropped as `missing_instruction`."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from operators.base import Pipeline
from operators.core.evaluate import LLMJudgeEvaluator
from operators.core.filter import ResponseLengthFilter
from operators.core.generate import AnswerGenerator
from operators.core.synth import CritiqueGenerator, CritiqueRefiner
from operators.llm import SamplingParams
from operators.sft.llm import TopicQuestionGenerator
from operators.sft.rules import (
    RefusalFilter,
    ScoreThresholdFilter,
    SeedTopicExpander,
    SFTFieldPresenceFilter,
    TopicBalancer,
    TruncatedResponseFilter,
)
from operators.text.dedup import ExactDedupFilter, MinhashDedupFilter


class SFTSynthPipeline(Pipeline):
    """Seed topics -> judged (instruction, output) pairs through question synthesis, answer,
    critique and refinement."""

    name = "sft_synth"
    input_schema = {"topic": pl.String}
    description = "SFT synthesis (Condor): topics x tasks -> questions -> dedup + topic balance -> answer -> critique -> refine -> judge"

    def __init__(
        self,
        task_types: Sequence[str] = ("explanation", "how-to", "comparison"),
        questions_per_seed: int = 2,
        max_per_topic: int = 6,
        min_quality: int = 4,
        answer_max_tokens: int = 512,
    ):
        self.has_topic = SFTFieldPresenceFilter()
        self.grid = SeedTopicExpander(task_types=task_types)
        self.questions = TopicQuestionGenerator(n=questions_per_seed, params=SamplingParams(temperature=0.8, max_tokens=384))
        self.question_length = ResponseLengthFilter(min_length=4, max_length=200)
        self.exact_dedup = ExactDedupFilter(strip_punct=True)
        self.near_dedup = MinhashDedupFilter(threshold=0.7, shingle_size=3)
        self.balance = TopicBalancer(max_per_topic=max_per_topic)
        self.answer = AnswerGenerator(params=SamplingParams(temperature=0.3, max_tokens=answer_max_tokens))
        self.critique = CritiqueGenerator(params=SamplingParams(temperature=0.0, max_tokens=256))
        self.refine = CritiqueRefiner(params=SamplingParams(temperature=0.0, max_tokens=answer_max_tokens + 128))
        self.has_answer = SFTFieldPresenceFilter()
        self.refusal = RefusalFilter()
        self.truncated = TruncatedResponseFilter()
        self.judge = LLMJudgeEvaluator(criteria="helpfulness, correctness and completeness", min_score=1, max_score=5,
                                       params=SamplingParams(temperature=0.0, max_tokens=192))
        self.keep = ScoreThresholdFilter({"quality_score": min_quality})

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.has_topic(frame, instruction="topic", response=None)
        frame = self.grid(frame, topic="topic")
        frame = self.questions(frame, topic="topic", task_type="task_type", question="instruction")
        frame = self.question_length(frame, text="instruction")
        frame = self.exact_dedup(frame, text="instruction")
        frame = self.near_dedup(frame, text="instruction")
        frame = self.balance(frame, topic="topic")
        frame = self.answer(frame, question="instruction", output="draft")
        frame = self.critique(frame, instruction="instruction", response="draft", output="critique")
        frame = self.refine(frame, instruction="instruction", response="draft", critique="critique", output="output")
        frame = self.has_answer(frame, instruction="instruction", response="output")
        frame = self.refusal(frame, response="output")
        frame = self.truncated(frame, response="output")
        frame = self.judge(frame, instruction="instruction", response="output", score="quality_score", rationale="quality_rationale")
        return self.keep(frame)


def _spec():
    from dataflow_assets.checks import non_null_share_gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="sft_synth",
        build=SFTSynthPipeline,
        description=SFTSynthPipeline.description,
        gates=[
            non_null_share_gate("questions", "instruction", 0.99, name="questions_present"),
            non_null_share_gate("judge", "quality_score", 0.5, name="judged_share"),
        ],
    )


SPEC = _spec()
