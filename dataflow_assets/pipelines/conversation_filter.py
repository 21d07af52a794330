"""Conversation filtering: existing ShareGPT conversations (e.g. core_text_data/eval_data.json) ->
OpenAI `messages` (the table-driven converter) -> role normalisation -> role-order, turn-count,
repeated-turn and length validators -> exact dedup of the transcript -> per-turn LLM judge -> keep
conversations whose every reply reaches the threshold.

Input field: `conversations` (List[Struct{from, value}]). A record without it, or whose value is
not such a list, is quarantined by the source; a conversation with a broken role order is dropped
with the validator's reason (`starts_with_assistant`, `ends_with_user`, `not_alternating`, ...)."""

from __future__ import annotations

import polars as pl

from operators.base import Pipeline
from operators.conversations.llm import TurnQualityJudge
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
from operators.core.convert import SHAREGPT_DTYPE, ChatFormatConverter
from operators.llm import SamplingParams
from operators.text.dedup import ExactDedupFilter


class ConversationFilterPipeline(Pipeline):
    """ShareGPT conversations -> validated, judged OpenAI-format conversations."""

    name = "conversation_filter"
    input_schema = {"conversations": SHAREGPT_DTYPE}
    description = "Conversation filter: ShareGPT -> messages, role-order / turn-count / repetition / length validators, per-turn judge"

    def __init__(self, min_turns: int = 1, max_turns: int | None = 32, min_turn_score: int = 3):
        self.to_messages = ChatFormatConverter("sharegpt", "messages")
        self.roles_normalized = RoleNormalizer()
        self.role_order = RoleAlternationValidator()
        self.turn_count = TurnCountFilter(min_turns=min_turns, max_turns=max_turns)
        self.repeats = RepeatedTurnFilter()
        self.length = ConversationLengthFilter(min_words=3, max_words=16_384)
        self.transcript = ConversationFlattener()
        self.exact_dedup = ExactDedupFilter()
        self.turn_judge = TurnQualityJudge(params=SamplingParams(temperature=0.0, max_tokens=192))
        self.keep = TurnScoreFilter(threshold=min_turn_score)
        self.stats = ConversationStats()

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.to_messages(frame)
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
        name="conversation_filter",
        build=ConversationFilterPipeline,
        description=ConversationFilterPipeline.description,
        gates=[non_null_share_gate("turn_judge", "min_turn_score", 0.5, name="judged_share")],
    )


SPEC = _spec()
