"""Core LLM generators, with a fake client that shuffles results and injects errors."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from operators.base import ID, ColumnError, with_row_ids
from operators.core.generate import (
    AnswerGenerator,
    EntityExtractor,
    JsonExtractor,
    KeywordExtractor,
    PromptedTextGenerator,
    QuestionGenerator,
    SelfConsistencyGenerator,
    Summarizer,
    Translator,
)
from operators.llm import PromptTemplate, SamplingParams
from tests.operators.core.core_fakes import FakeLLM, load_sft_input, user_text


def frame_of(**columns) -> pl.DataFrame:
    return with_row_ids(pl.DataFrame(columns), source="core-gen-test")


def row_tag(req) -> str:
    """The `<<...>>` marker the tests put in each row's text."""
    return re.search(r"<<(\w+)>>", user_text(req)).group(1)


# --------------------------------------------------------------------------- prompted generator


def test_prompted_generator_renders_row_values_and_matches_shuffled_results_by_id():
    frame = frame_of(topic=["cats", "dogs", "owls", "bees"], tone=["formal", "playful", "dry", "warm"])
    tpl = PromptTemplate("blurb", "Write a {tone} blurb about {topic}.", "You write blurbs.")
    client = FakeLLM(responder=lambda r: "BLURB " + user_text(r).split(" about ")[1].rstrip("."))
    out = PromptedTextGenerator(tpl, llm=client)(frame, output="blurb")

    prompts = {r.id: r.messages for r in client.requests}
    first = frame.row(0, named=True)
    assert prompts[first[ID]][0] == {"role": "system", "content": "You write blurbs."}
    assert prompts[first[ID]][1]["content"] == "Write a formal blurb about cats."
    # results came back shuffled, yet each lands on its own row
    assert [r.id for r in client.calls[0]] == frame.get_column(ID).to_list()
    assert out.get_column("blurb").to_list() == ["BLURB cats", "BLURB dogs", "BLURB owls", "BLURB bees"]
    meta = out.get_column("blurb_meta").to_list()
    assert all(m["model"] == "fake-model" and m["template"] == tpl.version and m["error"] is None for m in meta)
    assert len({m["cache_key"] for m in meta}) == 4
    assert out.columns == [*frame.columns, "blurb", "blurb_meta"]


def test_prompted_generator_keeps_failed_rows_with_null_output_and_error_in_meta():
    frame = frame_of(instruction=["a", "b", "c"])
    bad = frame.get_column(ID)[1]
    client = FakeLLM(fail={bad: "timeout"})
    gen = PromptedTextGenerator(llm=client)
    out = gen(frame)
    assert out.height == 3
    row = out.filter(pl.col(ID) == bad).row(0, named=True)
    assert row["generated"] is None
    assert row["generated_meta"]["error"] == "timeout"
    assert out.get_column("generated").null_count() == 1
    assert gen.last_report.llm["errors"] == {"timeout": 1}


def test_prompted_generator_missing_template_column_fails_before_any_call():
    client = FakeLLM()
    op = PromptedTextGenerator(PromptTemplate("t", "{title}: {body}"), llm=client)
    with pytest.raises(ColumnError, match="body"):
        op(frame_of(title=["x"]))
    assert client.calls == []


def test_zero_row_frame_makes_no_call_and_keeps_dtypes():
    client = FakeLLM()
    empty = frame_of(text=["x"]).clear()
    out = Summarizer(llm=client)(empty)
    assert client.calls == [] and out.height == 0
    assert out.schema["summary"] == pl.String
    assert out.schema["summary_meta"] == pl.Struct(
        {"model": pl.String, "template": pl.String, "cache_key": pl.String, "cached": pl.Boolean, "error": pl.String}
    )


def test_unbound_client_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no LLM client bound"):
        Summarizer()(frame_of(text=["x"]))


# --------------------------------------------------------------------------- text generators


def test_summarizer_on_real_sft_rows():
    data = with_row_ids(load_sft_input(), source="sft")
    client = FakeLLM(responder=lambda r: "SUMMARY of " + user_text(r).split("Text:\n", 1)[1][:25])
    out = Summarizer(max_words=30, llm=client)(data, text="output", output="gist")
    for row, req in zip(data.iter_rows(named=True), client.calls[0], strict=True):
        assert req.id == row[ID]
        assert row["output"] in user_text(req)
        assert "at most 30 words" in user_text(req)
    for row in out.iter_rows(named=True):
        assert row["gist"] == "SUMMARY of " + row["output"][:25]


def test_translator_prompt_has_languages_and_text():
    frame = frame_of(body=["Bonjour le monde"])
    client = FakeLLM(responder=lambda r: "Hello world")
    out = Translator(target_language="German", source_language="French", llm=client)(frame, text="body")
    prompt = user_text(client.requests[0])
    assert "from French into German" in prompt and "Bonjour le monde" in prompt
    assert out.get_column("translation").to_list() == ["Hello world"]


def test_answer_generator_with_optional_context():
    frame = frame_of(q=["Who wrote it?"], ctx=["It was written by Ada."])
    client = FakeLLM(responder=lambda r: "Ada")
    out = AnswerGenerator(llm=client)(frame, question="q", context="ctx", output="a")
    prompt = user_text(client.requests[0])
    assert "It was written by Ada." in prompt and "Who wrote it?" in prompt
    assert out.get_column("a").to_list() == ["Ada"]
    # without context the placeholder renders empty
    AnswerGenerator(llm=client)(frame, question="q")
    assert user_text(client.requests[-1]).startswith("\n\nAnswer the question")


def test_user_template_may_mix_roles_config_and_extra_columns():
    frame = frame_of(body=["Long text <<r0>>"], lang=["fr"])
    tpl = PromptTemplate("s", "[{lang}] max {max_words}: {text}")
    client = FakeLLM(responder=lambda r: "ok")
    op = Summarizer(max_words=7, template=tpl, llm=client)
    assert ("template field 'lang'", "lang") in op.input_columns(op.resolve({"text": "body"}))
    op(frame, text="body")
    assert user_text(client.requests[0]) == "[fr] max 7: Long text <<r0>>"


# --------------------------------------------------------------------------- structured generators


def test_keyword_extractor_passes_schema_and_writes_lists():
    frame = frame_of(text=["<<alpha>> text", "<<beta>> text", "<<gamma>> text"])
    bad = frame.get_column(ID)[2]
    client = FakeLLM(responder=lambda r: {"keywords": [row_tag(r), "text"]}, fail={bad: "server_error"})
    out = KeywordExtractor(max_keywords=4, llm=client)(frame)
    req = client.requests[0]
    assert req.schema["properties"]["keywords"] == {"type": "array", "items": {"type": "string"}, "maxItems": 4}
    assert out.schema["keywords"] == pl.List(pl.String)
    assert out.get_column("keywords").to_list() == [["alpha", "text"], ["beta", "text"], None]
    assert out.get_column("keywords_meta").to_list()[2]["error"] == "server_error"


def test_structured_answer_that_breaks_the_schema_becomes_a_schema_error():
    frame = frame_of(text=["<<ok>>", "<<toomany>>", "<<notjson>>"])

    def respond(r):
        tag = row_tag(r)
        if tag == "ok":
            return {"keywords": ["a"]}
        if tag == "toomany":
            return {"keywords": ["a", "b", "c"]}
        return "this is not JSON"

    out = KeywordExtractor(max_keywords=2, llm=FakeLLM(responder=respond))(frame)
    assert out.get_column("keywords").to_list() == [["a"], None, None]
    assert [m["error"] for m in out.get_column("keywords_meta").to_list()] == [None, "schema", "schema"]


def test_structured_text_without_parsed_is_parsed_from_fenced_json():
    frame = frame_of(text=["<<x>>"])
    client = FakeLLM(responder=lambda r: '```json\n{"questions": ["Why?", "How?"]}\n```')
    out = QuestionGenerator(num_questions=2, llm=client)(frame)
    assert out.get_column("questions").to_list() == [["Why?", "How?"]]
    assert "Write 2 diverse questions" in user_text(client.requests[0])


def test_entity_extractor_enum_and_struct_output():
    frame = frame_of(text=["Ada Lovelace worked in London."])
    ents = [{"text": "Ada Lovelace", "type": "PERSON"}, {"text": "London", "type": "LOCATION"}]
    client = FakeLLM(responder=lambda r: {"entities": ents})
    out = EntityExtractor(entity_types=["PERSON", "LOCATION"], llm=client)(frame)
    item = client.requests[0].schema["properties"]["entities"]["items"]
    assert item["properties"]["type"]["enum"] == ["PERSON", "LOCATION"]
    assert out.schema["entities"] == pl.List(pl.Struct({"text": pl.String, "type": pl.String}))
    assert out.get_column("entities").to_list() == [ents]
    # a type outside the enum is rejected
    bad = FakeLLM(responder=lambda r: {"entities": [{"text": "x", "type": "DATE"}]})
    assert EntityExtractor(entity_types=["PERSON", "LOCATION"], llm=bad)(frame).get_column("entities").to_list() == [None]


def test_json_extractor_string_and_struct_outputs():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "price": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "price"],
    }
    frame = frame_of(text=["<<lamp>> costs 12.5", "<<desk>> costs 80"])
    price = {"lamp": 12.5, "desk": 80.0}
    client = FakeLLM(responder=lambda r: {"name": row_tag(r), "price": price[row_tag(r)], "tags": ["home"]})

    out = JsonExtractor(schema=schema, llm=client)(frame, output="product")
    assert client.requests[0].schema == schema
    assert json.dumps(schema) in user_text(client.requests[0])
    assert out.schema["product"] == pl.String
    assert [json.loads(v)["name"] for v in out.get_column("product")] == ["lamp", "desk"]

    st = JsonExtractor(schema=schema, as_struct=True, llm=client)(frame, output="product")
    assert st.schema["product"] == pl.Struct({"name": pl.String, "price": pl.Float64, "tags": pl.List(pl.String)})
    assert st.get_column("product").struct.field("price").to_list() == [12.5, 80.0]
    assert JsonExtractor(schema=schema, as_struct=True, llm=client)(frame.clear()).schema["extracted"] == st.schema["product"]


def test_json_extractor_rejects_schema_without_struct_mapping():
    with pytest.raises(ValueError, match="properties"):
        JsonExtractor(schema={"type": "object"}, as_struct=True)


# --------------------------------------------------------------------------- self-consistency


def test_self_consistency_majority_and_agreement():
    frame = frame_of(instruction=["<<q1>>", "<<q2>>", "<<q3>>", "<<q4>>"])
    ids = frame.get_column(ID).to_list()
    answers = {
        "q1": ["42", "42.", " 42", "41", "40"],  # normalised majority 42, 3/5
        "q2": ["b", "A", "a", "B", "c"],  # tie a/b (2 each): the earliest sample wins -> "b"
        "q3": ["x", "x", "x", "x", "x"],  # but samples 0 and 1 fail -> 3/3
        "q4": ["z"] * 5,  # all samples fail
    }
    fail = {(ids[2], 0): "timeout", (ids[2], 1): "rate_limited", **{(ids[3], k): "server_error" for k in range(5)}}
    client = FakeLLM(responder=lambda r: {"reasoning": "...", "answer": answers[row_tag(r)][r.sample]}, fail=fail)
    op = SelfConsistencyGenerator(n=5, llm=client)
    out = op(frame, samples="all_answers")

    reqs = client.requests
    assert len(reqs) == 20 and len(client.calls) == 1
    assert sorted(r.sample for r in reqs if r.id == ids[0]) == [0, 1, 2, 3, 4]
    assert reqs[0].params.temperature > 0 and reqs[0].schema["required"] == ["reasoning", "answer"]

    assert out.get_column("answer").to_list() == ["42", "b", "x", None]
    agreement = out.get_column("agreement").to_list()
    assert agreement[:3] == pytest.approx([0.6, 0.4, 1.0]) and agreement[3] is None
    assert out.get_column("all_answers").to_list()[2] == ["x", "x", "x"]
    metas = out.get_column("answer_meta").to_list()
    assert metas[0]["error"] is None and metas[3]["error"] == "server_error"
    assert op.last_report.llm["errors"] == {"timeout": 1, "rate_limited": 1, "server_error": 5}


def test_self_consistency_custom_params():
    op = SelfConsistencyGenerator(n=2, params=SamplingParams(temperature=1.0, seed=7))
    client = FakeLLM(responder=lambda r: {"reasoning": "", "answer": "1"})
    op.llm = client
    out = op(frame_of(instruction=["q"]))
    assert {r.params.temperature for r in client.requests} == {1.0}
    assert out.get_column("agreement").to_list() == [1.0]
    assert "all_answers" not in out.columns


class _SloppyClient(FakeLLM):
    """Returns one result twice, drops another and adds one for an id never asked."""

    def generate(self, requests):
        results = super().generate(requests)
        by_id = {r.id: r for r in results}
        first, second = requests[0].id, requests[1].id
        stray = type(results[0])(id="not-a-row", text="stray", model=self.model)
        return [r for r in results if r.id != second] + [by_id[first], stray]


def test_missing_duplicate_and_stray_results_cannot_corrupt_rows():
    frame = frame_of(instruction=["a", "b", "c"])
    ids = frame.get_column(ID).to_list()
    gen = PromptedTextGenerator(llm=_SloppyClient(responder=lambda r: "ok"))
    out = gen(frame)
    assert out.get_column(ID).to_list() == ids  # no duplicated, no extra rows
    assert out.get_column("generated").to_list() == ["ok", None, "ok"]
    assert out.get_column("generated_meta").to_list()[1]["error"] == "bad_response"
    assert gen.last_report.llm["errors"] == {"bad_response": 1}
