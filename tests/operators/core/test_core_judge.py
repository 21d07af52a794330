"""Core LLM evaluators, the prompted filter and the prompted refiner."""

from __future__ import annotations

import re

import polars as pl
import pytest

from operators.base import ID, with_row_ids
from operators.core.evaluate import LabelClassifier, LLMJudgeEvaluator, PairwiseJudge
from operators.core.filter import PromptedFilter
from operators.core.refine import PromptedRefiner
from operators.llm import PromptTemplate
from tests.operators.core.core_fakes import FakeLLM, load_sft_input, user_text


def frame_of(**columns) -> pl.DataFrame:
    return with_row_ids(pl.DataFrame(columns), source="core-judge-test")


def tag(req) -> str:
    return re.search(r"<<(\w+)>>", user_text(req)).group(1)


# --------------------------------------------------------------------------- LLM judge


def test_llm_judge_scores_rows_by_id_with_schema_range():
    frame = frame_of(instruction=["i1 <<s5>>", "i2 <<s2>>", "i3 <<s4>>"], output=["r1", "r2", "r3"])
    client = FakeLLM(responder=lambda r: {"score": int(tag(r)[1]), "rationale": f"because {tag(r)}"})
    judge = LLMJudgeEvaluator(criteria="accuracy", min_score=1, max_score=5, llm=client)
    out = judge(frame)

    req = client.requests[0]
    # llama.cpp grammars keep the enum (they ignore minimum/maximum); rationale comes first
    assert req.schema["properties"]["score"] == {"type": "integer", "minimum": 1, "maximum": 5, "enum": [1, 2, 3, 4, 5]}
    assert list(req.schema["properties"]) == ["rationale", "score"]
    assert req.schema["required"] == ["rationale", "score"]
    prompt = user_text(req)
    assert prompt.index('"rationale"') < prompt.index('"score"')
    assert "i1 <<s5>>" in user_text(req) and "r1" in user_text(req) and "accuracy" in user_text(req)
    assert out.get_column("score").to_list() == [5, 2, 4]
    assert out.schema["score"] == pl.Int64
    assert out.get_column("rationale").to_list() == ["because s5", "because s2", "because s4"]
    assert "rationale_meta" not in out.columns
    assert all(m["template"] == judge.template.version for m in out.get_column("score_meta").to_list())


def test_llm_judge_out_of_range_and_failed_rows_are_null_with_errors():
    frame = frame_of(instruction=["<<s9>>", "<<s3>>", "<<s1>>"], output=["a", "b", "c"])
    failing = frame.get_column(ID)[2]
    client = FakeLLM(responder=lambda r: {"score": int(tag(r)[1]), "rationale": "r"}, fail={failing: "rate_limited"})
    out = LLMJudgeEvaluator(llm=client)(frame)
    assert out.get_column("score").to_list() == [None, 3, None]
    assert [m["error"] for m in out.get_column("score_meta").to_list()] == ["schema", None, "rate_limited"]


def test_llm_judge_on_real_sft_rows_without_instruction():
    data = with_row_ids(load_sft_input(), source="sft")
    client = FakeLLM(responder=lambda r: {"score": min(5, 1 + len(user_text(r)) % 5), "rationale": "ok"})
    out = LLMJudgeEvaluator(llm=client)(data, instruction=None, response="output", score="quality", rationale=None)
    for row, req in zip(data.iter_rows(named=True), client.calls[0], strict=True):
        assert row["output"] in user_text(req)
        assert row["instruction"] not in user_text(req)
    assert out.get_column("quality").null_count() == 0
    assert "rationale" not in out.columns and "quality_meta" in out.columns


def test_llm_judge_prompt_has_no_empty_blocks_and_keeps_the_text_intact():
    doc = "Ingredients:\n\nEggs, flour.\n\nMethod:\n\nMix."  # the text's own empty-looking labels stay
    frame = frame_of(instruction=["Write a recipe", "   ", None], output=[doc, doc, doc])
    client = FakeLLM(responder=lambda r: {"rationale": "fine", "score": 3})
    LLMJudgeEvaluator(llm=client)(frame)
    with_instruction, blank, null = (user_text(r) for r in client.calls[0])
    assert "Instruction:\nWrite a recipe" in with_instruction
    for prompt in (blank, null):
        assert "Instruction:" not in prompt
        assert ".\n\nResponse:\n" + doc + "\n\nFirst say" in prompt and prompt.count("Response:") == 1
    client2 = FakeLLM(responder=lambda r: {"rationale": "fine", "score": 3})
    LLMJudgeEvaluator(llm=client2)(frame, instruction=None)
    assert all("Instruction:" not in user_text(r) for r in client2.requests)


# --------------------------------------------------------------------------- pairwise


def _slot(req, letter: str) -> str:
    return re.search(rf"Response {letter}:\n(.*?)\n\n", user_text(req), re.S).group(1)


def test_pairwise_judge_evaluates_both_orders():
    frame = frame_of(
        instruction=["q1", "q2", "q3"],
        response_a=["good a1", "a2", "good a3"],
        response_b=["b1", "good b2", "b3"],
    )
    bad = frame.get_column(ID)[2]
    # a fair judge: prefers the slot holding the "good" answer, whatever its position
    client = FakeLLM(
        responder=lambda r: {"rationale": "r", "winner": "A" if _slot(r, "A").startswith("good") else "B"},
        fail={bad: "timeout"},
    )
    op = PairwiseJudge(llm=client)
    out = op(frame, rationale="why")
    assert len(client.calls) == 1 and len(client.requests) == 6  # every pair in both orders, one batch
    assert client.requests[0].schema["properties"]["winner"]["enum"] == ["A", "B"]
    by_id = {r.id: r for r in client.requests}
    first_id = frame.get_column(ID)[0]
    first, swapped = by_id[first_id], by_id[first_id + PairwiseJudge.SWAPPED]
    assert _slot(first, "A") == _slot(swapped, "B") and _slot(first, "B") == _slot(swapped, "A")
    assert out.get_column("preference").to_list() == ["a", "b", None]
    assert out.get_column("chosen").to_list() == ["good a1", "good b2", None]
    assert out.get_column("rejected").to_list() == ["b1", "a2", None]
    assert out.get_column("position_consistent").to_list() == [True, True, None]
    assert out.get_column("why").to_list() == ["r", "r", None]
    assert out.get_column("preference_meta").to_list()[2]["error"] == "timeout"
    assert op.last_report.extra["position_consistency"] == 1.0


def test_pairwise_judge_flags_position_bias():
    frame = frame_of(instruction=["q1", "q2"], response_a=["x", "y"], response_b=["z", "w"])
    client = FakeLLM(responder=lambda r: {"rationale": "first is better", "winner": "A"})  # always the first slot
    op = PairwiseJudge(llm=client)
    out = op(frame)
    assert out.get_column("preference").to_list() == [None, None]
    assert out.get_column("chosen").to_list() == [None, None]
    assert out.get_column("position_consistent").to_list() == [False, False]
    assert op.last_report.extra["position_consistency"] == 0.0
    single = PairwiseJudge(both_orders=False, llm=FakeLLM(responder=lambda r: {"rationale": "r", "winner": "A"}))
    out = single(frame)
    assert out.get_column("preference").to_list() == ["a", "a"]
    assert "position_consistency" not in single.last_report.extra


# --------------------------------------------------------------------------- classifier


def test_label_classifier_uses_enum_and_rejects_other_labels():
    frame = frame_of(text=["<<sport>>", "<<politics>>", "<<cooking>>"])
    client = FakeLLM(responder=lambda r: {"label": tag(r)})
    op = LabelClassifier(labels=["sport", "politics", "science"], description="news topic", llm=client)
    out = op(frame, label="topic")
    assert client.requests[0].schema["properties"]["label"]["enum"] == ["sport", "politics", "science"]
    assert "(news topic)" in user_text(client.requests[0]) and "sport, politics, science" in user_text(client.requests[0])
    assert out.get_column("topic").to_list() == ["sport", "politics", None]
    assert out.get_column("topic_meta").to_list()[2]["error"] == "schema"


def test_label_classifier_validates_labels():
    with pytest.raises(ValueError):
        LabelClassifier(labels=["only"])


# --------------------------------------------------------------------------- prompted filter


def test_prompted_filter_threshold_and_error_reasons():
    frame = frame_of(text=["<<s5>>", "<<s1>>", "<<s3>>", "<<s4>>", "<<s2>>"])
    ids = frame.get_column(ID).to_list()
    client = FakeLLM(responder=lambda r: {"score": int(tag(r)[1]), "rationale": ""}, fail={ids[3]: "timeout"})
    op = PromptedFilter(criteria="is about sports", threshold=3, llm=client)
    out = op(frame)
    assert "is about sports" in user_text(client.requests[0])
    assert client.requests[0].schema["properties"]["score"]["maximum"] == 5
    assert out.get_column(ID).to_list() == [ids[0], ids[2]]
    assert out.get_column("filter_score").to_list() == [5, 3]
    assert "filter_score_meta" in out.columns
    rep = op.last_report
    assert rep.dropped == {"below_threshold": 2, "llm_error:timeout": 1}
    assert dict(rep.dropped_ids.iter_rows()) == {ids[1]: "below_threshold", ids[3]: "llm_error:timeout", ids[4]: "below_threshold"}


def test_prompted_filter_without_score_column_and_schema_errors():
    frame = frame_of(text=["<<s4>>", "<<s7>>"])
    client = FakeLLM(responder=lambda r: {"score": int(tag(r)[1]), "rationale": ""})
    op = PromptedFilter(threshold=4, llm=client)
    out = op(frame, score=None)
    assert out.columns == frame.columns
    assert out.height == 1
    assert op.last_report.dropped == {"llm_error:schema": 1}


def test_prompted_filter_threshold_must_be_in_range():
    with pytest.raises(ValueError):
        PromptedFilter(threshold=9)


# --------------------------------------------------------------------------- prompted refiner


def test_prompted_refiner_rewrites_in_place_and_keeps_failed_rows():
    frame = frame_of(text=["helo wrld", "good text", "bad <<x>>", "empty"], n=[1, 2, 3, 4])
    ids = frame.get_column(ID).to_list()

    def respond(r):
        body = user_text(r).split("Text:\n", 1)[1]
        return {"helo wrld": "hello world", "good text": "good text", "empty": "  "}[body]

    client = FakeLLM(responder=respond, fail={ids[2]: "connection"})
    op = PromptedRefiner(goal="fix typos", llm=client)
    out = op(frame)
    assert "to fix typos" in user_text(client.requests[0])
    assert out.columns == ["_id", "text", "n", "text_meta"]
    assert out.get_column("text").to_list() == ["hello world", "good text", "bad <<x>>", "empty"]
    assert out.get_column("text_meta").to_list()[2]["error"] == "connection"
    assert op.last_report.modified == 1
    assert frame.get_column("text").to_list()[0] == "helo wrld"  # input untouched


def test_prompted_refiner_template_can_use_other_columns():
    frame = frame_of(instruction=["Say hi"], output=["hi"])
    tpl = PromptTemplate("refine_resp", "Improve the answer to: {instruction}\n\nAnswer: {text}")
    client = FakeLLM(responder=lambda r: "Hi there!")
    out = PromptedRefiner(template=tpl, llm=client)(frame, text="output")
    assert user_text(client.requests[0]) == "Improve the answer to: Say hi\n\nAnswer: hi"
    assert out.get_column("output").to_list() == ["Hi there!"]
    assert "output_meta" in out.columns
