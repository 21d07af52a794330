"""The prompted filter asks for its rationale before the score, with the LLM judge's own prompt
sentence and schema (llama.cpp grammars emit keys in schema order)."""

from __future__ import annotations

import polars as pl

from operators.base import with_row_ids
from operators.core.evaluate import RATIONALE_FIRST_REPLY, judge_schema
from operators.core.filter import PromptedFilter
from tests.operators.core.core_fakes import FakeLLM, user_text


def test_prompted_filter_asks_for_the_rationale_before_the_score():
    frame = with_row_ids(pl.DataFrame({"text": ["a fine paragraph about rowing", "spam spam"]}), source="rf-test")
    client = FakeLLM(responder=lambda r: {"rationale": "on topic", "score": 4 if "rowing" in user_text(r) else 1})
    op = PromptedFilter(criteria="is about sports", threshold=3, min_score=1, max_score=5, llm=client)
    out = op(frame)
    req = client.requests[0]
    assert list(req.schema["properties"]) == ["rationale", "score"]
    assert req.schema["required"] == ["rationale", "score"]
    assert req.schema == judge_schema(1, 5)
    prompt = user_text(req)
    assert prompt.index('"rationale"') < prompt.index('"score"')
    assert RATIONALE_FIRST_REPLY.format(min_score=1, max_score=5) in prompt
    assert out.get_column("text").to_list() == ["a fine paragraph about rowing"]
