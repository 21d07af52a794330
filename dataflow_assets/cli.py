"""The `dataflow` command: demo, operators, run (and `dagster dev -w workspace.yaml` for the UI)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped


class UsageError(Exception):
    """A user's mistake: one line on stderr and exit 2."""


class Failure(Exception):
    """A failure that is not the user's mistake: one line on stderr and exit 1."""


def _home_or_fail(command: str) -> Path:
    """The project home a read command uses; a place with no project state is an error, never a new
    empty `.dataflow`."""
    from resources.storage import has_project_state, home

    path = home(create=False)
    if not has_project_state(path):
        raise UsageError(
            f"no dataflow project state in {path} (DATAFLOW_HOME): `dataflow {command}` reads a project's runs; "
            "run `dataflow run PIPELINE --input FILE` first, or point DATAFLOW_HOME at your project's .dataflow"
        )
    return path


def _known_partitions(pipeline: str, keys: list[str]) -> None:
    from resources.storage import ShardRegistry

    known = {s.key for s in ShardRegistry().all(pipeline)}
    unknown = [k for k in keys if k not in known]
    if unknown:
        hint = f"known: {', '.join(sorted(known)[:5])}{' ...' if len(known) > 5 else ''}" if known else "it has none yet"
        raise UsageError(f"{pipeline}: unknown partition(s) {', '.join(unknown)}; see `dataflow partitions {pipeline}` ({hint})")


def _quiet_dagster() -> None:
    import logging

    warnings.filterwarnings("ignore", module="dagster")
    logging.getLogger("dagster").setLevel(logging.CRITICAL)


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
    if summary.records == 0 and not summary.failures:
        console.print(f"{summary.pipeline}: 0 records in the input: nothing to process (an empty input is not an error)")
    for s in summary.stages.values():
        top = sorted(s.dropped.items(), key=lambda kv: -kv[1])
        dropped = ", ".join(f"{r}: {n}" for r, n in top[:4]) + (f", +{len(top) - 4} more" if len(top) > 4 else "")
        table.add_row(s.stage, str(s.rows_in), str(s.rows_out), escape(dropped), str(s.llm_calls or ""), str(s.cache_hits or ""), f"{s.seconds:.2f}")
    console.print(table)
    for line in getattr(summary, "file_errors", []):
        console.print(f"[yellow]input file:[/] {escape(line)}", soft_wrap=True)
    if summary.quarantined:
        console.print(f"[yellow]{summary.quarantined} malformed record(s) quarantined[/]: see view {summary.pipeline}.quarantine in the catalog")
    if summary.checks_failed:
        console.print(f"[red]quality gates failed:[/] {', '.join(summary.checks_failed)}")
    if summary.export:
        console.print(f"export: {summary.export}")
    if getattr(summary, "export_note", None):
        console.print(f"[yellow]{escape(summary.export_note)}[/]", soft_wrap=True)
    for line in getattr(summary, "failures", []):
        console.print(f"[red]FAILED[/] {escape(line)}", soft_wrap=True)


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
            if event.get("stage") == "waiting":  # a pool wait (see liveness.wait_for_pools), not a stage
                bar.console.print(f"[yellow]{escape(event.get('message', 'waiting'))}[/]")
                return
            bar.update(task, advance=1, description=f"{name}: {event['stage']} ({event.get('rows', 0)} rows)")

        summary = run_pipeline(name, inputs, on_event=on_event, **kwargs)
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    from dataflow_assets.runner import check_inputs

    _quiet_dagster()
    check_inputs([Path(p) for p in args.input])  # before anything is registered or created
    if args.output and Path(args.output).suffix not in (".parquet", ".jsonl", ".ndjson", ".csv"):
        raise UsageError(f"--output {args.output}: must end in .parquet, .jsonl or .csv")
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
    _home_or_fail("backfill")
    if not args.all and not args.partitions:
        raise UsageError("give --all or --partitions KEY ... (see `dataflow partitions PIPELINE`)")
    if args.partitions:
        _known_partitions(args.pipeline, args.partitions)
    summary = backfill(args.pipeline, None if args.all else args.partitions, parallel=args.parallel)
    _print_summary(summary)
    return 0 if summary.success else 1


def cmd_rerun(args: argparse.Namespace) -> int:
    from dataflow_assets.pipelines import shipped
    from dataflow_assets.runner import backfill

    _quiet_dagster()
    _home_or_fail("rerun")
    _known_partitions(args.pipeline, [args.partition])
    stages = [s.name for s in shipped()[args.pipeline].pipeline.trace()]
    unknown = [s for s in args.stage if s not in stages]
    if unknown:
        raise UsageError(f"{args.pipeline}: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(stages)}")
    summary = backfill(args.pipeline, [args.partition], parallel=1, stages=args.stage)
    _print_summary(summary)
    return 0 if summary.success else 1


def cmd_trace(args: argparse.Namespace) -> int:
    from dataflow_assets.trace import format_trace, trace_row

    _home_or_fail("trace")
    if args.partition:
        _known_partitions(args.pipeline, [args.partition])
    try:
        steps = trace_row(args.pipeline, args.id, args.partition)
    except KeyError as err:
        raise UsageError(f"{err.args[0]}; find ids with `dataflow sql \"select _id from {args.pipeline}.source limit 5\"`") from None
    print(json.dumps(steps, indent=2, default=str) if args.json else format_trace(steps))
    return 0


def cmd_partitions(args: argparse.Namespace) -> int:
    from resources.storage import ShardRegistry

    _home_or_fail("partitions")
    if args.remove:
        _known_partitions(args.pipeline, args.remove)
        _quiet_dagster()
        for key in args.remove:
            removed = remove_partition(args.pipeline, key)
            console.print(f"removed partition {key} of {args.pipeline}: {removed} file(s), its Dagster partition and shard record; catalog and export refreshed")
        return 0
    shards = ShardRegistry().all(args.pipeline)
    if not shards:
        err_console.print(f"{args.pipeline}: no partitions yet; add inputs with `dataflow run {args.pipeline} --input FILE`")
    for shard in shards:
        rng = f" rows [{shard.start}, {shard.stop})" if shard.start is not None else ""
        print(f"{shard.key}\t{shard.path}{rng}")
    return 0


def remove_partition(pipeline: str, key: str) -> int:
    """Remove one partition everywhere: its Dagster dynamic partition, its shard record, every file it
    left (stage outputs, dropped rows, quarantine, its export), then refresh the catalog and the
    assembled export so no row of it remains. Returns the number of files removed."""
    from dataflow_assets.pipelines import shipped
    from dataflow_assets.runner import instance, refresh_catalog
    from resources.storage import ParquetStore, ShardRegistry, partition_files

    spec = shipped()[pipeline]
    store = ParquetStore()
    inst = instance()
    with store.catalog_lock():  # no catalog refresh or export assembly sees half the partition
        if key in set(inst.get_dynamic_partitions(f"{pipeline}_shards")):
            inst.delete_dynamic_partition(f"{pipeline}_shards", key)
        ShardRegistry().remove(pipeline, key)
        files = partition_files(store, pipeline, key)
        for f in files:
            f.unlink(missing_ok=True)
        result = refresh_catalog(spec)
    if not result.success:
        raise Failure(f"{pipeline}: partition {key} removed, but the catalog refresh failed; run `dataflow backfill {pipeline} --all` to rebuild it")
    from dataflow_assets.factory import exports_folder

    if not list((exports_folder(pipeline) / "partitions").glob("*.parquet")):  # the last partition: no export left
        for name in ("dataset.parquet", "dataset.jsonl", "manifest.json"):
            (exports_folder(pipeline) / name).unlink(missing_ok=True)
    return len(files)


# Statements `dataflow sql` runs; everything else (COPY, EXPORT, INSTALL, LOAD, ATTACH, SET, CREATE,
# INSERT, PRAGMA, CALL, ...) is refused before anything executes. DESCRIBE, SHOW and SUMMARIZE parse as SELECT.
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def read_only_catalog(path: Path, home: Path):
    """A DuckDB connection on the catalog that can only read: the file is opened read-only; file access
    is limited to the project home (the Parquet files the views read); no extension installs or loads,
    so no network; then the configuration is locked, so a query cannot undo any of it."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True, config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    # in this order: allowed_directories can only be set while external access is still on
    con.execute("set allowed_directories = ?", [[str(home) + os.sep]])
    con.execute("set enable_external_access = false")
    con.execute("set allow_community_extensions = false")
    con.execute("set lock_configuration = true")
    return con


def check_read_only(con, query: str) -> list:
    """The statements of `query`, or UsageError naming the first one that is not a read."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as err:
        raise UsageError(f"bad SQL: {str(err).splitlines()[0]}") from None
    if not statements:
        raise UsageError("no SQL statement given")
    for st in statements:
        kind = getattr(st.type, "name", str(st.type))
        if kind not in READ_ONLY_STATEMENTS:
            text = " ".join(st.query.split())[:60]
            raise UsageError(
                f"refused: `{text}` ({kind} statement): `dataflow sql` only reads the catalog "
                "(SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); nothing was run"
            )
    return statements


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from resources.storage import ParquetStore

    home = _home_or_fail("sql")
    path = ParquetStore().catalog_path
    if not path.exists():
        raise UsageError(f"no catalog in {home} yet: run a pipeline first (`dataflow run PIPELINE --input FILE`)")
    con = read_only_catalog(path, home)
    try:
        statements = check_read_only(con, args.query)
        for i, st in enumerate(statements):
            if len(statements) > 1:
                print(f"-- [{i + 1}/{len(statements)}] {' '.join(st.query.split())[:100]}")
            try:
                rel = con.sql(st.query)
                print(rel if rel is not None else "ok")
            except duckdb.PermissionException as err:
                raise UsageError(f"refused: {str(err).splitlines()[0]} (`dataflow sql` reads only files under {home})") from None
            except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as err:
                raise UsageError(f"bad SQL: {str(err).splitlines()[0]}; list the views with `dataflow sql \"show all tables\"`") from None
            except duckdb.Error as err:
                raise Failure(f"query failed: {str(err).splitlines()[0]}") from None
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


def _pipeline_names() -> list[str]:
    from dataflow_assets.pipelines import shipped

    return sorted(shipped())


def _add_pipeline(p: argparse.ArgumentParser, names: list[str]) -> None:
    p.add_argument("pipeline", choices=names, metavar="PIPELINE", help=f"a shipped pipeline: {', '.join(names)}")


def _on_sigterm(signum, frame) -> None:
    # SIGTERM stops a run as Ctrl-C does: Dagster unwinds the run (marked failed, resources and the
    # managed model server torn down) instead of the process dying mid-write
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    names = _pipeline_names()
    parser = argparse.ArgumentParser(
        prog="dataflow",
        description="LLM-driven data preparation on Dagster. State lives in $DATAFLOW_HOME (default ./.dataflow).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the demo pipelines (embedded LLM, no GPU, no network)")
    p.add_argument("--no-llm", action="store_true", help="skip the LLM stage")
    p.add_argument("--judge-rows", type=int, default=6, help="rows the embedded model judges (default 6)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("operators", help="list the registered operators")
    p.add_argument("--domain", help="only operators of this domain (e.g. text, core, sft)")
    p.add_argument("--kind", choices=["generate", "evaluate", "filter", "refine"], help="only operators of this kind")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(fn=cmd_operators)

    p = sub.add_parser("run", help="run a shipped pipeline on input files through Dagster")
    _add_pipeline(p, names)
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="jsonl/json/parquet/csv files (optionally .gz); one partition each")
    p.add_argument("--output", metavar="FILE", help="also write the final dataset here (.jsonl, .parquet or .csv)")
    p.add_argument("--rows-per-shard", type=int, metavar="N", help="split each file into partitions of N records")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON (last line)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("backfill", help="run many partitions of a pipeline, in parallel")
    _add_pipeline(p, names)
    p.add_argument("--all", action="store_true", help="every registered partition")
    p.add_argument("--partitions", nargs="+", metavar="KEY", help="partition keys (see `dataflow partitions PIPELINE`)")
    p.add_argument("--parallel", type=int, default=2, metavar="N", help="runs at a time (default 2)")
    p.set_defaults(fn=cmd_backfill)

    p = sub.add_parser("rerun", help="re-run some stages of one partition")
    _add_pipeline(p, names)
    p.add_argument("--partition", required=True, metavar="KEY", help="the partition key (see `dataflow partitions PIPELINE`)")
    p.add_argument("--stage", nargs="+", required=True, metavar="STAGE", help="stage names (asset keys <pipeline>/<stage>)")
    p.set_defaults(fn=cmd_rerun)

    p = sub.add_parser("trace", help="one row's journey through every stage")
    _add_pipeline(p, names)
    p.add_argument("--id", required=True, metavar="ROW_ID", help="the row's _id")
    p.add_argument("--partition", metavar="KEY", help="look only in this partition (faster)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(fn=cmd_trace)

    p = sub.add_parser("partitions", help="list (or remove) a pipeline's registered input shards")
    _add_pipeline(p, names)
    p.add_argument("--remove", nargs="+", metavar="KEY", help="remove these partitions: Dagster partition, shard record, files and catalog rows")
    p.set_defaults(fn=cmd_partitions)

    p = sub.add_parser("sql", help="query the DuckDB catalog read-only, e.g. \"select * from text_pt.minhash_dedup limit 5\"")
    p.add_argument("query", help="one or more read-only SQL statements (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)")
    p.set_defaults(fn=cmd_sql)

    p = sub.add_parser("ui", help="the Dagster UI (dagster dev) on this project's instance")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port to serve on (default 3000)")
    p.set_defaults(fn=cmd_ui)

    from dataflow_assets.agent.cli import add_arguments

    p = sub.add_parser("agent", help="write a verified pipeline from a request: dataflow agent \"REQUEST\" --input FILE")
    add_arguments(p)
    p.set_defaults(fn=cmd_agent)
    return parser


def cmd_agent(args: argparse.Namespace) -> int:
    from dataflow_assets.agent.cli import run_agent_command

    _quiet_dagster()
    return run_agent_command(args, console, UsageError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits 2 with argparse's one-line message
    os.environ.setdefault("DATAFLOW_HOME", str(Path(".dataflow").resolve()))
    err_console.print(f"[dim]DATAFLOW_HOME={Path(os.environ['DATAFLOW_HOME']).expanduser().resolve()}[/]", highlight=False)
    if threading_main():
        signal.signal(signal.SIGTERM, _on_sigterm)
    debug = bool(os.environ.get("DATAFLOW_DEBUG"))
    try:
        return args.fn(args)
    except UsageError as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]: the run was stopped and marked failed; re-run or re-execute it from failure")
        return 130
    except Exception as err:  # one line a user can act on, not a traceback
        if debug:
            raise
        usage = isinstance(err, (KeyError, FileNotFoundError))  # unknown names, missing paths
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        kind = "" if isinstance(err, (Failure, KeyError, FileNotFoundError)) else f"{type(err).__name__}: "
        first = (str(msg).strip().splitlines() or [""])[0]
        hint = "" if usage else " (DATAFLOW_DEBUG=1 shows the traceback)"
        err_console.print(f"[red]error:[/] {escape(kind + first)}{hint}", highlight=False)
        return 2 if usage else 1


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
