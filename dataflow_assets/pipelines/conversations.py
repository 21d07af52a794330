"""Multi-turn conversation synthesis from seeds: a simulated user and the assistant take turns ->
role-order, turn-count, repeated-turn and length validators -> exact dedup of the transcript ->
per-turn LLM judge -> keep conversations whose every reply scores at least the threshold.

Input field: `seed` (a topic or an opening question per record). A record without it is
quarantined by the source; a conversation whose role order is broken (a failed reply leaves a
trailing user turn) is dropped with the validator's reason."""

from __future__ import annotations

import polars as pl

from operators.base import Pipeline
from operators.conversations.llm import DialogueSynthesizer, TurnQualityJudge
from operators.conversations.rules import (
    ConversationFlattener,
    ConversationLengthFilter,
    ConversationStats,
    RepeatedTurnFilter,
    RoleAlternationValidator,
    RoleNormalizer,
    TurnCountFilter,
    TurnScoreFilter,
)
from operators.llm import SamplingParams
from operators.sft.rules import SFTFieldPresenceFilter
from operators.text.dedup import ExactDedupFilter


class ConversationsPipeline(Pipeline):
    """Seeds -> validated, judged multi-turn conversations (OpenAI `messages`)."""

    name = "conversations"
    input_schema = {"seed": pl.String}
    description = "Conversations: multi-turn synthesis from seeds, role-order / turn-count / repetition validators, per-turn judge"

    def __init__(self, num_turns: int = 3, seed_is_question: bool = False, min_turn_score: int = 3, reply_max_tokens: int = 384):
        self.has_seed = SFTFieldPresenceFilter()
        self.synthesize = DialogueSynthesizer(num_turns=num_turns, seed_is_question=seed_is_question,
                                              params=SamplingParams(temperature=0.7, max_tokens=reply_max_tokens))
        self.roles_normalized = RoleNormalizer()
        self.role_order = RoleAlternationValidator()
        self.turn_count = TurnCountFilter(min_turns=num_turns, max_turns=num_turns)
        self.repeats = RepeatedTurnFilter()
        self.length = ConversationLengthFilter(min_words=10, max_words=8192)
        self.transcript = ConversationFlattener()
        self.exact_dedup = ExactDedupFilter()
        self.turn_judge = TurnQualityJudge(params=SamplingParams(temperature=0.0, max_tokens=192))
        self.keep = TurnScoreFilter(threshold=min_turn_score)
        self.stats = ConversationStats()

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.has_seed(frame, instruction="seed", response=None)
        frame = self.synthesize(frame, seed="seed")
        frame = self.roles_normalized(frame, text="messages")
        frame = self.role_order(frame)
        frame = self.turn_count(frame, num_turns="num_turns")
        frame = self.repeats(frame)
        frame = self.length(frame)
        frame = self.transcript(frame)
        frame = self.exact_dedup(frame, text="transcript")
        frame = self.turn_judge(frame)
        frame = self.keep(frame)
        return self.stats(frame)


def _spec():
    from dataflow_assets.checks import non_null_share_gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="conversations",
        build=ConversationsPipeline,
        description=ConversationsPipeline.description,
        gates=[non_null_share_gate("turn_judge", "min_turn_score", 0.5, name="judged_share")],
    )


SPEC = _spec()
