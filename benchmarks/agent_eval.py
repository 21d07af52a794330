"""Benchmark: the pipeline agent over DataFlow-Agent's 71 test items and a few domain inputs.

    .venv/bin/python benchmarks/agent_eval.py [--rows 3] [--limit N] [--modes embedded,endpoint] [--max-rounds 3]

`agent_test_data.json` (../shared/data/dataflow_examples/example/DataflowAgent) holds 71 items, each a
sentence in an `instruction` field (English and Chinese facts), not a pipeline request. So each of the
71 cases pairs one item (with the next `rows - 1` items as the sample input, field `instruction`) with
one of ten DataFlow-Agent-style requests in rotation (entities, translation, summary, keywords, dedup,
language filter, sentiment, questions, clean-up, paraphrase). Seven domain cases add real inputs
from ../shared/data (GSM8K, MBPP, Spider, C4, function-call chats, MedQA-style questions).

Modes, side by side in one run:
- `embedded`: the embedded SmolLM2-135M (managed llama.cpp, CPU) runs the LLM stages of the sample
  run; planning is deterministic (the agent's rule for the small model);
- `embedded-llm` (opt-in): the embedded model forced through the LLM planner (deterministic fallback
  after it), to measure how a 135M model plans;
- `endpoint`: an OpenAI-compatible endpoint from DATAFLOW_LLM_BASE_URL / _MODEL / _API_KEY plans
  (LLM planner, deterministic fallback) and runs the stages; skipped when none is configured.

Per mode: share of cases producing a pipeline that passed check() and the sample run, rounds used,
operators per pipeline, synthesised operators accepted / rejected, wall time, tokens (planning +
synthesis + the sample runs' LLM stages). Prints a table; the last line is one JSON object.
Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DATAFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))
AGENT_DATA = DATA / "dataflow_examples" / "example" / "DataflowAgent" / "agent_test_data.json"

REQUESTS = [
    "extract the named entities from each sentence",
    "translate every sentence into English",
    "summarize the text",
    "extract keywords from each sentence",
    "normalise unicode and drop duplicate sentences",
    "keep only English sentences",
    "classify the sentiment of each sentence",
    "generate questions about each sentence",
    "clean the text and drop empty rows",
    "paraphrase each sentence",
]
DOMAIN_CASES = [
    ("gsm8k", "gsm8k/test.jsonl", "drop duplicate questions, then add a chain-of-thought solution to each math question"),
    ("mbpp", "mbpp/mbpp.jsonl", "drop code with syntax errors and code that contains secrets"),
    ("spider", "spider_dev/dev.json", "keep only SQL queries that parse and drop duplicate questions"),
    ("c4", "c4_validation_2k/c4_validation_2k.parquet", "remove html, keep English documents, drop near-duplicates"),
    ("chat", "dataflow_examples/example/FuncCallPipeline/chat_data.jsonl", "parse the chat transcripts into messages, drop conversations with repeated turns"),
    ("medqa", "dataflow_examples/example/DataflowAgent/mq_test_data.jsonl", "summarize each question"),
    ("abbrev", "dataflow_examples/example/GeneralTextPipeline/abbreviation.jsonl", "clean the text, drop duplicates and judge its quality"),
]


def cases(rows: int, workdir: Path) -> list[tuple[str, str, Path]]:
    import polars as pl

    items = json.loads(AGENT_DATA.read_text())
    out = []
    for i in range(len(items)):
        window = [items[(i + k) % len(items)] for k in range(rows)]
        path = workdir / f"agent_{i:02d}.jsonl"
        pl.DataFrame(window).write_ndjson(path)
        out.append((f"agent_{i:02d}", REQUESTS[i % len(REQUESTS)], path))
    for name, rel, request in DOMAIN_CASES:
        if (DATA / rel).exists():
            out.append((name, request, DATA / rel))
    return out


def make_llm(mode: str):
    from dataflow_assets.agent.cli import make_llm as _make

    return _make("endpoint" if mode == "endpoint" else "embedded")


def run_mode(mode: str, all_cases, rows: int, max_rounds: int) -> dict:
    from dataflow_assets.agent import build_pipeline

    llm = make_llm(mode)
    results = []
    try:
        for name, request, path in all_cases:
            t0 = time.perf_counter()
            try:
                res = build_pipeline(request, path, rows=rows, llm=llm, max_rounds=max_rounds, echo=None,
                                     planner="llm" if mode == "embedded-llm" else "auto")
                row = {**res.summary(), "ops": [s.operator for s in res.plan.steps] if res.ok else []}
            except Exception as err:  # noqa: BLE001 - a crash is a failed case, counted as such
                row = {"ok": False, "error": f"{type(err).__name__}: {err}", "rounds": 0, "operators": 0, "tokens": 0,
                       "synthesized": {"accepted": 0, "rejected": 0}, "ops": [], "planner": ""}
            row.update(case=name, request=request, seconds=time.perf_counter() - t0)
            results.append(row)
            status = "ok " if row["ok"] else "FAIL"
            print(f"[{mode}] {status} {name:10s} {row['seconds']:6.1f}s rounds={row['rounds']} ops={','.join(row['ops']) or '-'}"
                  + ("" if row["ok"] else f"  ({(row.get('error') or '')[:140]})"), flush=True)
        stage_tokens = 0
        stats = getattr(llm, "stats_", None)
        if stats is not None:
            d = stats.to_dict()
            stage_tokens = d["tokens_in"] + d["tokens_out"]
    finally:
        if llm is not None and hasattr(llm, "close"):
            llm.close()
    ok = [r for r in results if r["ok"]]
    agent_only = [r for r in results if r["case"].startswith("agent_")]
    return {
        "cases": len(results),
        "ok": len(ok),
        "ok_share": round(len(ok) / max(len(results), 1), 3),
        "ok_share_agent_items": round(sum(r["ok"] for r in agent_only) / max(len(agent_only), 1), 3),
        "rounds_mean": round(statistics.mean(r["rounds"] for r in results), 2) if results else 0,
        "rounds_max": max((r["rounds"] for r in results), default=0),
        "first_round_share": round(sum(r["ok"] and r["rounds"] == 1 for r in results) / max(len(results), 1), 3),
        "operators_per_pipeline": round(statistics.mean(r["operators"] for r in ok), 2) if ok else 0,
        "synth_accepted": sum(r["synthesized"]["accepted"] for r in results),
        "synth_rejected": sum(r["synthesized"]["rejected"] for r in results),
        "wall_s": round(sum(r["seconds"] for r in results), 1),
        "wall_s_median_case": round(statistics.median(r["seconds"] for r in results), 2) if results else 0,
        "tokens_planning": sum(r["tokens"] for r in results),
        "tokens_total": sum(r["tokens"] for r in results) + stage_tokens if stats is not None else None,
        "planners": {p: sum(r.get("planner") == p for r in ok) for p in ("llm", "deterministic")},
        "failures": [{"case": r["case"], "error": (r.get("error") or "")[:200]} for r in results if not r["ok"]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3, help="sample rows per case (default 3)")
    ap.add_argument("--limit", type=int, help="only the first N cases (a quick look)")
    ap.add_argument("--modes", default="embedded,endpoint", help="comma-separated: embedded, embedded-llm, endpoint")
    ap.add_argument("--max-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not AGENT_DATA.exists():
        print(f"shared data not available: {AGENT_DATA}")
        return 2
    home = Path(tempfile.mkdtemp(prefix="agent-eval-"))
    os.environ["DATAFLOW_HOME"] = str(home)  # pipelines and operators are written here, never into a project
    all_cases = cases(args.rows, Path(tempfile.mkdtemp(prefix="agent-eval-inputs-")))
    if args.limit:
        all_cases = all_cases[: args.limit]
    report: dict = {"rows": args.rows, "max_rounds": args.max_rounds, "cases": len(all_cases), "modes": {}}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode == "endpoint" and not os.environ.get("DATAFLOW_LLM_BASE_URL"):
            report["modes"][mode] = {"skipped": "no endpoint configured (DATAFLOW_LLM_BASE_URL unset)"}
            continue
        report["modes"][mode] = run_mode(mode, all_cases, args.rows, args.max_rounds)
    print()
    cols = ("mode", "cases", "ok share", "71 items", "1st round", "rounds", "ops/pipe", "synth +/-", "wall s", "median s", "tokens")
    print(" | ".join(f"{c:>9s}" for c in cols))
    for mode, m in report["modes"].items():
        if "skipped" in m:
            print(f"{mode:>9s} | skipped: {m['skipped']}")
            continue
        vals = (mode, m["cases"], m["ok_share"], m["ok_share_agent_items"], m["first_round_share"], m["rounds_mean"], m["operators_per_pipeline"],
                f"{m['synth_accepted']}/{m['synth_rejected']}", m["wall_s"], m["wall_s_median_case"], m["tokens_total"])
        print(" | ".join(f"{v!s:>9s}" for v in vals))
    print(json.dumps(report, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
