"""The `dataflow` command: demo, operators, run (and `dagster dev -w workspace.yaml` for the UI)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 150)


def _quiet_dagster() -> None:
    import logging

    warnings.filterwarnings("ignore", module="dagster")
    logging.getLogger("dagster").setLevel(logging.ERROR)


def cmd_operators(args: argparse.Namespace) -> int:
    from operators.base import load_all

    infos = sorted(load_all().values(), key=lambda i: (i.domain, i.kind, i.name))
    if args.domain:
        infos = [i for i in infos if i.domain == args.domain]
    if args.kind:
        infos = [i for i in infos if i.kind == args.kind]
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2, default=str))
        return 0
    table = Table(title=f"{len(infos)} operators")
    for col in ("name", "domain", "kind", "llm", "reads", "writes", "summary"):
        table.add_column(col, overflow="fold")
    for i in infos:
        table.add_row(
            i.name,
            i.domain,
            i.kind,
            "yes" if i.needs_llm else "",
            ", ".join(f"{k}={v}" for k, v in i.reads.items()),
            ", ".join(f"{k}={v}" for k, v in i.writes.items()),
            escape(i.doc.split("\n\n")[0].replace("\n", " ")),  # docstrings hold [a, b] ranges, not markup
        )
    console.print(table)
    return 0


def _print_summary(summary) -> None:
    table = Table(title=f"{summary.pipeline}: {len(summary.partitions)} partition(s)")
    for col in ("stage", "rows in", "rows out", "dropped (by reason)", "llm calls", "cache hits", "seconds"):
        table.add_column(col, overflow="fold")
    table.add_row("input records", str(summary.records), "", f"quarantined: {summary.quarantined}" if summary.quarantined else "", "", "", "")
    for s in summary.stages.values():
        top = sorted(s.dropped.items(), key=lambda kv: -kv[1])
        dropped = ", ".join(f"{r}: {n}" for r, n in top[:4]) + (f", +{len(top) - 4} more" if len(top) > 4 else "")
        table.add_row(s.stage, str(s.rows_in), str(s.rows_out), escape(dropped), str(s.llm_calls or ""), str(s.cache_hits or ""), f"{s.seconds:.2f}")
    console.print(table)
    if summary.quarantined:
        console.print(f"[yellow]{summary.quarantined} malformed record(s) quarantined[/]: see view {summary.pipeline}.quarantine in the catalog")
    if summary.checks_failed:
        console.print(f"[red]quality gates failed:[/] {', '.join(summary.checks_failed)}")
    if summary.export:
        console.print(f"export: {summary.export}")


def _run_with_progress(name: str, inputs: list[Path], **kwargs: Any):
    from dataflow_assets.pipelines import shipped
    from dataflow_assets.runner import run_pipeline

    spec = shipped()[name]
    stages = ["source", *[s.name for s in spec.pipeline.trace()], "dataset"]
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} stages"), TimeElapsedColumn(), console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def on_event(event: dict[str, Any]) -> None:
            if "all" not in tasks:
                tasks["all"] = bar.add_task(name, total=len(stages) * max(1, len(inputs)))
            task = tasks["all"]
            bar.update(task, advance=1, description=f"{name}: {event['stage']} ({event.get('rows', 0)} rows)")

        summary = run_pipeline(name, inputs, on_event=on_event, **kwargs)
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    _quiet_dagster()
    summary = _run_with_progress(args.pipeline, [Path(p) for p in args.input], output=Path(args.output) if args.output else None, rows_per_shard=args.rows_per_shard)
    _print_summary(summary)
    if args.json:
        from dataflow_assets.runner import summary_json

        print(summary_json(summary))
    return 0 if summary.success else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from dataflow_assets.demo import run_demo

    _quiet_dagster()
    return run_demo(console, _run_with_progress, _print_summary, llm=not args.no_llm, judge_rows=args.judge_rows)


def cmd_backfill(args: argparse.Namespace) -> int:
    from dataflow_assets.runner import backfill

    _quiet_dagster()
    if not args.all and not args.partitions:
        console.print("[red]give --all or --partitions KEY ...[/]")
        return 2
    summary = backfill(args.pipeline, None if args.all else args.partitions, parallel=args.parallel)
    _print_summary(summary)
    return 0 if summary.success else 1


def cmd_rerun(args: argparse.Namespace) -> int:
    from dataflow_assets.runner import backfill

    _quiet_dagster()
    summary = backfill(args.pipeline, [args.partition], parallel=1, stages=args.stage)
    _print_summary(summary)
    return 0 if summary.success else 1


def cmd_trace(args: argparse.Namespace) -> int:
    from dataflow_assets.trace import format_trace, trace_row

    steps = trace_row(args.pipeline, args.id, args.partition)
    print(json.dumps(steps, indent=2, default=str) if args.json else format_trace(steps))
    return 0


def cmd_partitions(args: argparse.Namespace) -> int:
    from resources.storage import ShardRegistry

    for shard in ShardRegistry().all(args.pipeline):
        rng = f" rows [{shard.start}, {shard.stop})" if shard.start is not None else ""
        print(f"{shard.key}\t{shard.path}{rng}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from resources.storage import ParquetStore

    con = duckdb.connect(str(ParquetStore().catalog_path), read_only=True)
    try:
        print(con.sql(args.query))
    finally:
        con.close()
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """`dagster dev` on this project's instance, so the UI shows what the CLI materialised."""
    from resources.storage import dagster_home

    os.environ["DAGSTER_HOME"] = str(dagster_home())
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    console.print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(cmd)}")
    os.execv(cmd[0], cmd)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dataflow", description="LLM-driven data preparation on Dagster.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the demo pipelines (embedded LLM, no GPU, no network)")
    p.add_argument("--no-llm", action="store_true", help="skip the LLM stage")
    p.add_argument("--judge-rows", type=int, default=6, help="rows the embedded model judges")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("operators", help="list the registered operators")
    p.add_argument("--domain")
    p.add_argument("--kind", choices=["generate", "evaluate", "filter", "refine"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_operators)

    p = sub.add_parser("run", help="run a shipped pipeline on input files through Dagster")
    p.add_argument("pipeline")
    p.add_argument("--input", nargs="+", required=True, help="jsonl/json/parquet/csv files (optionally .gz)")
    p.add_argument("--output", help="write the final dataset here (.jsonl, .parquet or .csv)")
    p.add_argument("--rows-per-shard", type=int, help="split each file into partitions of this many records")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("backfill", help="run many partitions of a pipeline, in parallel")
    p.add_argument("pipeline")
    p.add_argument("--all", action="store_true", help="every registered partition")
    p.add_argument("--partitions", nargs="+", help="partition keys (see `dataflow partitions PIPELINE`)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.set_defaults(fn=cmd_backfill)

    p = sub.add_parser("rerun", help="re-run some stages of one partition")
    p.add_argument("pipeline")
    p.add_argument("--partition", required=True)
    p.add_argument("--stage", nargs="+", required=True, help="stage names (asset keys <pipeline>/<stage>)")
    p.set_defaults(fn=cmd_rerun)

    p = sub.add_parser("trace", help="one row's journey through every stage")
    p.add_argument("pipeline")
    p.add_argument("--id", required=True, help="the row's _id")
    p.add_argument("--partition")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_trace)

    p = sub.add_parser("partitions", help="list a pipeline's registered input shards")
    p.add_argument("pipeline")
    p.set_defaults(fn=cmd_partitions)

    p = sub.add_parser("sql", help="query the DuckDB catalog (read-only), e.g. \"select * from text_pt.minhash_dedup limit 5\"")
    p.add_argument("query")
    p.set_defaults(fn=cmd_sql)

    p = sub.add_parser("ui", help="the Dagster UI (dagster dev) on this project's instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(fn=cmd_ui)

    args = parser.parse_args(argv)
    os.environ.setdefault("DATAFLOW_HOME", str(Path(".dataflow").resolve()))
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
