"""Every registered `core` operator runs on a small frame and on a zero-row frame."""

from __future__ import annotations

import polars as pl
import pytest

from operators.base import ID, KINDS, REGISTRY, Pipeline, load_all, with_row_ids
from operators.llm import META_DTYPE
from tests.operators.core.core_fakes import FakeEncoder, FakeLLM

load_all()
CORE = sorted(name for name, info in REGISTRY.items() if info.domain == "core")


def test_core_has_enough_documented_operators():
    assert len(CORE) >= 22, CORE
    for name in CORE:
        info = REGISTRY[name]
        assert info.kind in KINDS
        assert info.cls.__module__.startswith("operators.core.")
        doc = info.doc.lower()
        assert "reads" in doc and "writes" in doc and "use" in doc, f"{name}: docstring must say reads / writes / when to use"


def universal_frame() -> pl.DataFrame:
    meta = [
        {"model": "m", "template": "t@1", "cache_key": "k1", "cached": False, "error": None},
        {"model": "m", "template": "t@1", "cache_key": "k2", "cached": False, "error": None},
        {"model": "m", "template": "t@1", "cache_key": "k3", "cached": False, "error": None},
    ]
    frame = pl.DataFrame(
        {
            "text": ["The cat sat on the mat.", '{"a": 1}', "Paris is the capital of France."],
            "instruction": ["Describe the cat.", "Return JSON.", "What is the capital of France?"],
            "output": ["A cat sat on a mat.", '{"a": 1}', "Paris."],
            "response_a": ["short", "a", "Paris."],
            "response_b": ["longer answer", "b", "Lyon."],
            "reference": ["A cat was sitting on the mat.", '{"a": 1}', "Lyon."],
            "critique": ["- say which mat", "- fine", "- add context"],
            "conversations": [
                [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
                [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                [],
            ],
            "messages": [
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                [{"role": "user", "content": "q"}],
                [],
            ],
            "generated_meta": meta,
        },
        schema_overrides={"generated_meta": META_DTYPE},
    )
    return with_row_ids(frame, source="core-test")


def build(name: str, client: FakeLLM):
    cls = REGISTRY[name].cls
    kwargs = {}
    if REGISTRY[name].needs_llm:
        kwargs["llm"] = client
    if "encoder" in cls.__init__.__code__.co_varnames:
        kwargs["encoder"] = FakeEncoder()
    return cls(**kwargs)


@pytest.mark.parametrize("name", CORE)
def test_every_core_operator_runs_on_small_and_empty_frames(name):
    frame = universal_frame()
    before = frame.clone()
    client = FakeLLM()
    op = build(name, client)
    cols = op.resolve({})
    expected = op.output_columns(cols)

    out = op(frame)
    assert frame.equals(before), "the input frame must not be mutated"
    assert set(expected) <= set(out.columns)
    assert op.last_report.rows_in == 3
    if REGISTRY[name].kind != "filter":
        assert out.height == 3
        assert out.get_column(ID).to_list() == frame.get_column(ID).to_list()
    if REGISTRY[name].needs_llm:
        assert len(client.calls) == 1
        for col in expected:
            if col.endswith("_meta"):
                metas = out.get_column(col).to_list()
                assert all(m["model"] == "fake-model" and m["template"] == op.template.version for m in metas)

    client.calls.clear()
    empty = frame.clear()
    out0 = op(empty)
    assert out0.height == 0
    assert client.calls == [], "a zero-row frame makes no LLM call"
    assert set(expected) <= set(out0.columns)
    for col in expected:
        assert out0.schema[col] == out.schema[col], f"{col}: dtype differs on a zero-row frame"


@pytest.mark.parametrize("name", [n for n in CORE if REGISTRY[n].needs_llm])
def test_llm_operators_version_tracks_template_text(name):
    cls = REGISTRY[name].cls
    op = cls()
    tpl = op.template
    edited = type(tpl)(tpl.name, tpl.user + "\nBe brief.", tpl.system)
    assert cls(template=edited).code_version() != op.code_version()
    assert cls().code_version() == op.code_version()


def test_core_operators_trace_in_a_pipeline():
    from operators.core.convert import ChatFormatConverter
    from operators.core.evaluate import LLMJudgeEvaluator
    from operators.core.filter import ResponseLengthFilter
    from operators.core.generate import AnswerGenerator

    class SFT(Pipeline):
        input_schema = {"instruction": pl.String}

        def __init__(self):
            self.answer = AnswerGenerator()
            self.length = ResponseLengthFilter(min_length=2)
            self.judge = LLMJudgeEvaluator()
            self.to_chat = ChatFormatConverter("alpaca", "messages")

        def forward(self, frame):
            frame = self.answer(frame, output="response")
            frame = self.length(frame, text="response")
            frame = self.judge(frame, response="response")
            return self.to_chat(frame, output="response")

    stages = SFT().check()
    assert [s.name for s in stages] == ["answer", "length", "judge", "to_chat"]
    assert stages[2].schema["score"] == pl.Int64
    assert stages[3].schema["messages"] == pl.List(pl.Struct({"role": pl.String, "content": pl.String}))

    client = FakeLLM(responder=lambda r: {"score": 4, "rationale": "ok"} if r.schema else "An answer here.")
    out = SFT().bind_llm(client)(pl.DataFrame({"instruction": ["Say hi", "Count to 3"]}))
    assert out.get_column("score").to_list() == [4, 4]
    assert out.get_column("messages").to_list()[0][1] == {"role": "assistant", "content": "An answer here."}
