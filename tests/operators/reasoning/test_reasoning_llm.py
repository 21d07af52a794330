"""LLM reasoning operators with a deterministic in-test client (results shuffled, failures injected):
requests, joins by `_id`, drop reasons, variants and their ids, n samples, provenance."""

from __future__ import annotations


import polars as pl

from operators.llm import LLMRequest
from operators.reasoning.llm import (
    ChainOfThoughtGenerator,
    CoTCompressor,
    DifficultyClassifier,
    LLMAnswerEquivalenceJudge,
    MathCategoryClassifier,
    QuestionVariantGenerator,
    QuestionWellPosednessFilter,
    SolutionStepCritic,
)
from tests.operators.core.core_fakes import FakeLLM, user_text

QUESTIONS = pl.DataFrame(
    {
        "_id": ["q1", "q2", "q3"],
        "question": [
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell altogether?",
            "What is the value of x?",
            "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes of babysitting. How much did she earn?",
        ],
    }
)


def test_well_posedness_filter_drops_ill_posed_and_failed_rows_with_reasons():
    def responder(req: LLMRequest):
        return {"well_posed": "value of x" not in user_text(req), "issue": "x is undefined" if "value of x" in user_text(req) else "none"}

    llm = FakeLLM(responder, fail={"q3": "timeout"})
    filt = QuestionWellPosednessFilter(llm=llm)
    out = filt(QUESTIONS, issue="issue")
    assert out.get_column("_id").to_list() == ["q1"]
    assert filt.last_report.dropped == {"ill_posed": 1, "llm_error:timeout": 1}
    assert out.get_column("well_posed_meta").struct.field("template")[0].startswith("math_well_posed@")
    assert llm.requests[0].schema["properties"]["well_posed"] == {"type": "boolean"}


def test_variant_generator_adds_new_rows_per_mode_with_parent_links():
    def responder(req: LLMRequest):
        text = user_text(req)
        mode = "harder" if "harder" in text else "easier" if "easier" in text else "rephrase"
        if req.id.startswith("q2"):
            return ""  # an empty reply makes no variant
        return f"[{mode}] " + text.rsplit("Problem:\n", 1)[1]

    llm = FakeLLM(responder, fail={"q3:easier": "server_error"})
    gen = QuestionVariantGenerator(llm=llm)
    out = gen(QUESTIONS)
    assert len(llm.requests) == 9
    originals = out.filter(pl.col("origin") == "original")
    assert originals.get_column("_id").to_list() == ["q1", "q2", "q3"] and originals.get_column("parent_question").null_count() == 3
    variants = out.filter(pl.col("origin") != "original").sort("parent_id", "origin")
    assert variants.select("parent_id", "origin").rows() == [("q1", "easier"), ("q1", "harder"), ("q1", "rephrase"), ("q3", "harder"), ("q3", "rephrase")]
    assert gen.last_report.extra["failed_variants"] == 4
    assert variants.get_column("_id").n_unique() == 5 and not set(variants.get_column("_id")) & {"q1", "q2", "q3"}
    assert all(q.startswith(f"[{m}] ") for q, m in variants.select("question", "origin").rows())
    assert (variants.get_column("parent_question") == QUESTIONS.get_column("question")[0]).sum() == 3
    # deterministic ids: a re-run gives the same rows
    assert QuestionVariantGenerator(llm=FakeLLM(responder, fail={"q3:easier": "server_error"}))(QUESTIONS).get_column("_id").to_list() == out.get_column("_id").to_list()


def test_difficulty_and_category_classifiers_are_schema_constrained():
    def responder(req: LLMRequest):
        props = req.schema["properties"]
        if "difficulty" in props:
            return {"difficulty": 2 if "Natalia" in user_text(req) else 11}  # 11 is off the 1-10 enum
        return {"category": "arithmetic"}

    llm = FakeLLM(responder)
    out = DifficultyClassifier(llm=llm)(QUESTIONS)
    assert out.get_column("difficulty").to_list() == [2, None, None]
    assert out.get_column("difficulty_meta").struct.field("error").to_list() == [None, "schema", "schema"]
    out = MathCategoryClassifier(llm=llm)(out)
    assert out.get_column("category").to_list() == ["arithmetic"] * 3
    assert llm.requests[-1].schema["properties"]["category"]["enum"][:3] == ["arithmetic", "algebra", "geometry"]


def test_chain_of_thought_keeps_n_samples_in_order_with_per_sample_provenance():
    def responder(req: LLMRequest):
        return f"{req.id} sample {req.sample}: ... \\boxed{{{req.sample}}}"

    llm = FakeLLM(responder, fail={("q2", 1): "timeout"})
    cot = ChainOfThoughtGenerator(n=3, llm=llm)
    out = cot(QUESTIONS)
    assert out.get_column("solutions").to_list()[0] == [f"q1 sample {k}: ... \\boxed{{{k}}}" for k in range(3)]
    assert out.get_column("solutions").to_list()[1][1] is None
    metas = out.get_column("solutions_meta").to_list()
    assert [m["error"] for m in metas[1]] == [None, "timeout", None] and len({m["cache_key"] for m in metas[0]}) == 3
    assert {r.sample for r in llm.requests} == {0, 1, 2} and llm.requests[0].params.temperature == 0.7
    assert cot.last_report.llm["requests"] == 9


def test_answer_equivalence_judge_asks_only_where_math_verify_cannot_decide():
    frame = pl.DataFrame(
        {
            "_id": ["num", "text", "missing"],
            "question": ["q"] * 3,
            "final_answer": ["0.5", "half past four in the afternoon", None],
            "gold_answer": ["\\frac{1}{2}", "It is 4:30 in the afternoon.", "3"],
        }
    )
    llm = FakeLLM(lambda req: {"equivalent": True})
    out = LLMAnswerEquivalenceJudge(llm=llm)(frame)
    assert [r.id for r in llm.requests] == ["text"]
    assert out.get_column("equivalent").to_list() == [True, True, None]


def test_step_critic_and_cot_compressor():
    frame = pl.DataFrame({"_id": ["a", "b"], "question": ["2+3*4?", "5*5?"], "solution": ["3*4 = 12. 2 + 12 = 14. \\boxed{14}", "5*5 = 25. \\boxed{25}"], "final_answer": ["14", "25"]})
    out = SolutionStepCritic(llm=FakeLLM(lambda req: {"first_error_step": 0, "critique": "none"}))(frame, critique="critique")
    assert out.get_column("first_error_step").to_list() == [0, 0] and out.get_column("critique").to_list() == ["none", "none"]

    def shorter(req: LLMRequest):
        return "2 + 12 = \\boxed{14}" if "14" in user_text(req) else "So \\boxed{24}"  # the second rewrite changes the answer

    comp = CoTCompressor(llm=FakeLLM(shorter))
    out = comp(frame)
    assert out.get_column("concise_solution").to_list() == ["2 + 12 = \\boxed{14}", None]
    assert comp.last_report.extra["answer_changed"] == 1


def test_zero_rows_make_no_call():
    llm = FakeLLM()
    empty = QUESTIONS.clear()
    for op in (QuestionWellPosednessFilter(llm=llm), QuestionVariantGenerator(llm=llm), DifficultyClassifier(llm=llm), ChainOfThoughtGenerator(llm=llm)):
        out = op(empty)
        assert out.height == 0
    assert llm.calls == [] or all(not c for c in llm.calls)
