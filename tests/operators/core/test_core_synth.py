"""Core synthesis / verification LLM operators (operators/core/synth.py) on real SFT rows with a
deterministic fake client: grounding needs a real quote, paraphrases are novel, rubric scores,
critique -> refine keeps the original when the rewrite fails."""

from __future__ import annotations

import polars as pl

from operators.base import with_row_ids
from operators.core.synth import (
    AnswerabilityJudge,
    CritiqueGenerator,
    CritiqueRefiner,
    GroundednessJudge,
    MultiAspectScorer,
    Paraphraser,
    ReferenceMatchJudge,
)
from tests.operators.core.core_fakes import FakeLLM, load_sft_input, user_text


def test_groundedness_requires_a_quote_that_occurs_in_the_source():
    frame = with_row_ids(pl.DataFrame({
        "text": ["Light-colored peppered moths were camouflaged against lichen-covered trees."] * 3,
        "output": ["They were camouflaged.", "They were camouflaged.", "They were red."],
    }), source="g")
    ids = frame.get_column("_id").to_list()
    quotes = {ids[0]: ("LIGHT-COLORED peppered moths were   camouflaged", "supported"),  # case / spacing differ: still found
              ids[1]: ("moths were invisible to birds", "supported"),  # quote not in the source: not grounded
              ids[2]: ("", "unsupported")}
    client = FakeLLM(responder=lambda r: {"evidence": quotes[r.id][0], "verdict": quotes[r.id][1]}, fail={})
    out = GroundednessJudge(llm=client)(frame)
    assert out.get_column("grounded").to_list() == [True, False, False]
    assert "Question:" not in user_text(client.requests[0])  # no question bound: no empty block
    failed = GroundednessJudge(llm=FakeLLM(fail={ids[0]: "timeout"}))(frame)
    assert failed.get_column("grounded").to_list()[0] is None
    assert failed.get_column("grounded_meta").to_list()[0]["error"] == "timeout"


def test_paraphraser_drops_copies_of_the_input_and_repeats():
    data = with_row_ids(load_sft_input().head(2).rename({"instruction": "text"}), source="p")
    first = data.get_column("text")[0]
    client = FakeLLM(responder=lambda r: {"paraphrases": [first.upper() + "!", "Compare lists and tuples.", "compare lists, and tuples", "Another one."]})
    out = Paraphraser(n=4, llm=client)(data)
    assert out.get_column("paraphrases").to_list()[0] == ["Compare lists and tuples.", "Another one."]
    assert client.requests[0].schema["properties"]["paraphrases"]["maxItems"] == 4


def test_multi_aspect_scorer_writes_one_column_per_aspect_and_the_mean():
    data = with_row_ids(load_sft_input(), source="m")
    client = FakeLLM(responder=lambda r: {"correctness": 5, "helpfulness": 3, "clarity": 4})
    out = MultiAspectScorer(llm=client)(data)
    assert out.select("aspect_correctness", "aspect_helpfulness", "aspect_clarity").row(0) == (5, 3, 4)
    assert out.get_column("aspect_mean").to_list() == [4.0] * 5
    assert set(client.requests[0].schema["properties"]) == {"correctness", "helpfulness", "clarity"}


def test_critique_then_refine_keeps_the_original_when_the_rewrite_fails():
    data = with_row_ids(load_sft_input(), source="c")
    ids = data.get_column("_id").to_list()
    crit = CritiqueGenerator(llm=FakeLLM(responder=lambda r: "- too short"))(data)
    assert crit.get_column("critique").to_list() == ["- too short"] * 5
    client = FakeLLM(responder=lambda r: "A better answer.", fail={ids[2]: "server_error"})
    out = CritiqueRefiner(llm=client)(crit)
    assert out.get_column("refined").to_list()[2] == data.get_column("output")[2]
    assert out.get_column("refined_changed").to_list() == [True, True, False, True, True]
    assert "Critique:\n- too short" in user_text(client.requests[0])


def test_answerability_and_reference_match():
    rows = pl.read_ndjson(__import__("tests.conftest", fromlist=["shared"]).shared(
        "dataflow_examples", "example", "GeneralTextPipeline", "gen_input.jsonl"))
    frame = with_row_ids(rows, source="r")
    client = FakeLLM(responder=lambda r: {"rationale": "same", "same_meaning": "fox" in user_text(r)})
    out = ReferenceMatchJudge(llm=client)(frame, candidate="input_key", reference="reference_key")
    assert out.get_column("matches_reference").to_list() == [True] + [False] * 9
    ans = AnswerabilityJudge(llm=FakeLLM(responder=lambda r: {"reason": "x", "answerable": "no"}))(
        frame, question="input_key", context="reference_key")
    assert ans.get_column("answerable").to_list() == [False] * 10
