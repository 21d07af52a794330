"""Answer extraction + math-verify on real data: every GSM8K test solution, the MATH-style examples
and the golden answers of DataFlow's ReasoningPipeline examples."""

from __future__ import annotations

import json
from fractions import Fraction

import polars as pl
import pytest

from operators.reasoning.answers import (
    AnswerExtractor,
    GoldAnswerParseFilter,
    MathVerifyEvaluator,
    PreferencePairBuilder,
    SelfConsistencyVoter,
    VerifiedAnswerFilter,
    AnswerTypeClassifier,
    answers_match,
)
from tests.conftest import shared


@pytest.fixture(scope="module")
def gsm8k() -> pl.DataFrame:
    frame = pl.read_ndjson(shared("gsm8k", "test.jsonl"))
    # the reference answer, read independently of the extractor: the text after the last "####"
    return frame.with_columns(pl.col("answer").map_elements(lambda s: s.rsplit("####", 1)[1].strip(), return_dtype=pl.String).alias("gold"))


def _rotate(values: list[str]) -> list[str]:
    """For each value, the next different value (so a mismatch is a real different answer)."""
    out = []
    for i, v in enumerate(values):
        j = (i + 1) % len(values)
        while values[j] == v:
            j = (j + 1) % len(values)
        out.append(values[j])
    return out


def test_every_gsm8k_solution_verifies_against_its_own_answer_and_not_another(gsm8k):
    out = AnswerExtractor()(gsm8k, text="answer", answer="extracted", form="form")
    assert out.height == 1319 and out.get_column("form").unique().to_list() == ["hash"]
    golds, got = out.get_column("gold").to_list(), out.get_column("extracted").to_list()
    assert all(answers_match(g, a) for g, a in zip(golds, got)), "a GSM8K solution failed to verify against its own answer"
    others = _rotate(golds)
    assert not any(answers_match(o, a) for o, a in zip(others, got)), "a GSM8K solution verified against a different answer"


@pytest.mark.parametrize("form", ["boxed", "answer_is", "last_number"])
def test_gsm8k_solutions_rewritten_in_other_answer_forms_still_verify(gsm8k, form):
    body = pl.col("answer").str.replace(r"\n####[^\n]*$", "")
    ending = {
        "boxed": pl.concat_str([body, pl.lit("\nSo the answer is $\\boxed{"), pl.col("gold"), pl.lit("}$.")]),
        "answer_is": pl.concat_str([body, pl.lit("\nThe answer is "), pl.col("gold"), pl.lit(".")]),
        "last_number": pl.concat_str([body, pl.lit("\nIn total: "), pl.col("gold"), pl.lit(" units.")]),
    }[form]
    frame = gsm8k.with_columns(ending.alias("solution"))
    out = AnswerExtractor()(frame, text="solution", answer="extracted", form="form")
    assert out.get_column("form").unique().to_list() == [form]
    res = MathVerifyEvaluator()(out, answers="extracted", gold="gold")
    assert res.get_column("sample_correct").all() and res.get_column("verification").unique().to_list() == ["math_verify"]
    wrong = MathVerifyEvaluator()(out.with_columns(pl.Series("other", _rotate(out.get_column("gold").to_list()))), answers="extracted", gold="other")
    assert not wrong.get_column("sample_correct").any()


def test_math_style_latex_answers_verify_against_their_golden_answers():
    rows = [json.loads(line) for line in shared("dataflow_examples", "example", "core_text_data", "bench_eval_data.jsonl").read_text().splitlines()]
    frame = pl.DataFrame(rows)
    out = AnswerExtractor()(frame, text="solution", answer="extracted", form="form")
    assert out.get_column("form").unique().to_list() == ["boxed"]
    golds, got = out.get_column("answer").to_list(), out.get_column("extracted").to_list()
    assert "\\dfrac{1}{9}" in golds and "\\frac{3}{8}" in golds and "48^\\circ" in golds
    assert all(answers_match(g, a) for g, a in zip(golds, got))
    assert not any(answers_match(o, a) for o, a in zip(_rotate(golds), got))
    # notation changes keep the value: \dfrac{1}{9} = 1/9 = 0.1111111, \frac{3}{8} = 0.375
    assert answers_match("\\dfrac{1}{9}", "1/9") and answers_match("\\frac{3}{8}", "0.375") and not answers_match("\\frac{3}{8}", "0.38")


def _latex_forms(value: str) -> dict[str, tuple[str, str, str]]:
    """LaTeX re-expressions of a numeric golden answer: (gold, equivalent, different)."""
    frac = Fraction(value)
    n, d = frac.numerator, frac.denominator
    return {
        "fraction": (value, f"\\frac{{{2 * n}}}{{{2 * d}}}", f"\\frac{{{2 * n + 1}}}{{{2 * d}}}"),
        "radical": (value, f"\\sqrt{{\\frac{{{n * n}}}{{{d * d}}}}}" if frac >= 0 else f"-\\sqrt{{\\frac{{{n * n}}}{{{d * d}}}}}", f"\\sqrt{{{n * n + 1}}}"),
        "interval": (f"[{value}, {value}+1)", f"\\left[\\frac{{{n}}}{{{d}}}, \\frac{{{n + d}}}{{{d}}}\\right)", f"({value}, {value}+1]"),
        "matrix": (
            f"\\begin{{pmatrix}} {value} & 0 \\\\ 0 & 1 \\end{{pmatrix}}",
            f"\\begin{{pmatrix}} \\frac{{{n}}}{{{d}}} & 0 \\\\ 0 & \\frac{{2}}{{2}} \\end{{pmatrix}}",
            f"\\begin{{pmatrix}} {value} & 1 \\\\ 0 & 1 \\end{{pmatrix}}",
        ),
    }


def test_reasoning_pipeline_golden_answers_verify_in_latex_forms():
    rows = json.loads(shared("dataflow_examples", "example", "ReasoningPipeline", "pipeline_math.json").read_text())
    golds = [r["golden_answer"] for r in rows if r["golden_answer"]]
    assert len(golds) >= 290
    failures = []
    for g in golds[:60]:  # 60 values x 4 forms x 2 comparisons
        for kind, (gold, same, other) in _latex_forms(g).items():
            if not answers_match(gold, same):
                failures.append((kind, gold, same, "rejected"))
            if answers_match(gold, other):
                failures.append((kind, gold, other, "accepted"))
    assert not failures, failures[:5]


def test_reasoning_pipeline_outputs_verify_where_they_state_the_golden_answer():
    rows = json.loads(shared("dataflow_examples", "example", "ReasoningPipeline", "pipeline_math.json").read_text())
    frame = pl.DataFrame(rows).filter(pl.col("output").is_not_null() & (pl.col("golden_answer") != ""))
    out = AnswerExtractor()(frame, text="output", answer="extracted")
    res = MathVerifyEvaluator()(out, answers="extracted", gold="golden_answer")
    # the LaTeX display answer "\[ P = ... = 2.025 \]" verifies against its golden 2.025
    row = res.filter(pl.col("golden_answer") == "2.025")
    assert row.get_column("verified").to_list() == [True]
    share = res.get_column("verified").mean()
    assert 0.7 < share < 0.9, share  # 231 of 295 model outputs state the golden answer


def test_gold_that_does_not_parse_is_dropped_with_a_reason():
    frame = pl.DataFrame({"_id": ["a", "b", "c"], "gold_answer": ["18", None, "Yes, it is a right triangle."]})
    filt = GoldAnswerParseFilter()
    out = filt(frame, gold="gold_answer")
    assert out.get_column("_id").to_list() == ["a", "b"]
    assert filt.last_report.dropped == {"gold_unparseable": 1}
    assert filt.last_report.dropped_ids.to_dicts() == [{"_id": "c", "reason": "gold_unparseable"}]


def test_voting_verifier_and_solution_choice_on_sampled_answers():
    frame = pl.DataFrame(
        {
            "_id": ["gold_ok", "gold_wrong", "vote_ok", "vote_split", "nothing"],
            "gold_answer": ["18", "3", None, None, None],
            "solutions": [
                ["... so \\boxed{17}", "... \\boxed{18}", "#### 18.0"],
                ["\\boxed{4}", "\\boxed{5}", "\\boxed{6}"],
                ["so x = 1/2", "The answer is 0.5.", "\\boxed{\\frac{1}{2}}"],
                ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"],
                ["no idea", "I cannot", "sorry"],
            ],
        }
    )
    out = AnswerExtractor()(frame, text="solutions", answer="sample_answers", form="forms")
    assert out.get_column("sample_answers").to_list()[0] == ["17", "18", "18.0"]
    assert out.get_column("forms").to_list()[2] == ["last_number", "answer_is", "boxed"]
    out = MathVerifyEvaluator()(out, answers="sample_answers", gold="gold_answer")
    out = SelfConsistencyVoter(min_agreement=0.5)(out, answers="sample_answers", gold="gold_answer")
    by_id = {r["_id"]: r for r in out.iter_rows(named=True)}
    assert by_id["gold_ok"]["sample_correct"] == [False, True, True] and by_id["gold_ok"]["verification_detail"] == "2/3 samples equal gold 18"
    assert by_id["gold_wrong"]["verified"] is False
    assert by_id["vote_ok"]["verification"] == "self_consistency" and by_id["vote_ok"]["verified"] is True
    assert by_id["vote_ok"]["voted_answer"] == "1/2" and by_id["vote_ok"]["verification_detail"] == "vote 3/3 for 1/2"
    assert by_id["vote_split"]["verified"] is False and by_id["nothing"]["verified"] is False
    pairs = PreferencePairBuilder()(out)
    assert pairs.filter(pl.col("_id") == "gold_ok").select("chosen", "rejected").row(0) == ("... \\boxed{18}", "... so \\boxed{17}")
    filt = VerifiedAnswerFilter()
    kept = filt(out)
    assert kept.get_column("_id").to_list() == ["gold_ok", "vote_ok"]
    assert kept.get_column("solution").to_list() == ["... \\boxed{18}", "so x = 1/2"]
    assert kept.get_column("final_answer").to_list() == ["18", "1/2"]
    assert filt.last_report.dropped == {"answer_mismatch": 1, "no_consensus": 1, "no_answer_extracted": 1}


def test_a_single_sample_is_no_consensus():
    frame = pl.DataFrame({"_id": ["one", "two"], "gold_answer": [None, None], "sample_answers": [["4"], ["4", "4.0"]]})
    out = SelfConsistencyVoter()(frame)
    assert out.get_column("verified").to_list() == [False, True]
    assert out.get_column("verification_detail").to_list() == ["vote 1/1 for 4", "vote 2/2 for 4"]


def test_answer_type_classifier():
    answers = ["18", "-2.5", "\\frac{3}{8}", "2\\sqrt{3}", "[1, 4)", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", "\\{1, 2\\}", "x^2+1", "4:30 p.m."]
    out = AnswerTypeClassifier()(pl.DataFrame({"final_answer": answers}))
    assert out.get_column("answer_type").to_list() == ["integer", "decimal", "fraction", "radical", "interval", "matrix", "set", "expression", "text"]


def test_zero_rows_make_zero_rows_with_the_output_columns():
    frame = pl.DataFrame(schema={"_id": pl.String, "solutions": pl.List(pl.String), "gold_answer": pl.String})
    out = AnswerExtractor()(frame, text="solutions", answer="sample_answers")
    out = MathVerifyEvaluator()(out)
    out = SelfConsistencyVoter()(out)
    assert out.height == 0 and {"sample_answers", "verified", "verification", "voted_answer"} <= set(out.columns)
