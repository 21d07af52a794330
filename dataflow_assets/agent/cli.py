"""`dataflow agent "REQUEST" --input FILE [--rows 10] [--out PATH]`: the agent from the command line
(`dataflow_assets/cli.py` registers the sub-command and calls `run_agent_command`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("request", help='what the pipeline should do, e.g. "clean the text, drop duplicates, keep English"')
    p.add_argument("--input", required=True, metavar="FILE", help="a sample input file (jsonl/json/parquet/csv, optionally .gz)")
    p.add_argument("--rows", type=int, default=10, metavar="N", help="sample rows the plan is verified on (default 10)")
    p.add_argument("--out", metavar="PATH", help="write the pipeline here (default $DATAFLOW_HOME/pipelines/NAME.py)")
    p.add_argument("--llm", choices=["auto", "embedded", "endpoint", "none"], default="auto",
                   help="model for planning and LLM stages: endpoint = DATAFLOW_LLM_BASE_URL/_MODEL/_API_KEY; "
                        "auto = endpoint when DATAFLOW_LLM_BASE_URL is set, else the embedded model")
    p.add_argument("--planner", choices=["auto", "llm", "deterministic"], default="auto",
                   help="auto: the LLM planner with an endpoint, the deterministic planner with the embedded model")
    p.add_argument("--max-rounds", type=int, default=3, metavar="N", help="verification rounds per planner (default 3)")
    p.add_argument("--no-synthesis", action="store_true", help="never synthesise a new operator")
    p.add_argument("--json", action="store_true", help="also print the result as JSON (last line)")


def make_llm(choice: str) -> Any:
    """The client the agent plans with and verifies LLM stages with (nothing starts until a request is sent)."""
    from resources.llm import make_client
    from resources.llm.resource import llm_settings_from_env

    settings = llm_settings_from_env()
    if choice == "auto":
        choice = "endpoint" if os.environ.get("DATAFLOW_LLM_BASE_URL") else "embedded"
    if choice == "none":
        return None
    if choice == "endpoint":
        url = os.environ.get("DATAFLOW_LLM_BASE_URL")
        if not url:
            raise ValueError("--llm endpoint needs DATAFLOW_LLM_BASE_URL (and DATAFLOW_LLM_MODEL, DATAFLOW_LLM_API_KEY)")
        return make_client("openai", base_url=url, model=os.environ.get("DATAFLOW_LLM_MODEL"),
                           api_key=os.environ.get("DATAFLOW_LLM_API_KEY") or "none", **settings)
    return make_client("llamacpp", **settings)


def run_agent_command(args: argparse.Namespace, console: Any, usage_error: type[Exception]) -> int:
    from rich.markup import escape

    from dataflow_assets.agent.core import build_pipeline

    path = Path(args.input)
    if not path.exists():
        raise usage_error(f"--input {args.input}: no such file")
    if args.rows < 1 or args.max_rounds < 1:
        raise usage_error("--rows and --max-rounds must be at least 1")
    if args.out and not args.out.endswith(".py"):
        raise usage_error(f"--out {args.out}: must end in .py")
    from dataflow_assets.agent.core import read_sample
    from operators.io import InputError

    try:
        read_sample(path, args.rows)  # an unreadable or empty input is the user's mistake: one line, exit 2
    except (InputError, ValueError) as err:
        raise usage_error(f"--input {args.input}: {getattr(err, 'reason', err)}") from None
    try:
        llm = make_llm(args.llm)
    except ValueError as err:
        raise usage_error(str(err)) from None
    try:
        result = build_pipeline(args.request, path, rows=args.rows, out=args.out, llm=llm, planner=args.planner,
                                max_rounds=args.max_rounds, synthesize=not args.no_synthesis,
                                echo=lambda m: console.print(escape(m), highlight=False, soft_wrap=True))
    finally:
        if llm is not None and hasattr(llm, "close"):
            llm.close()
    if result.ok:
        console.print("sample output:")
        console.print(result.output.head(5))
        console.print(f"[green]pipeline {result.plan.name}[/] written to {result.path}")
        from dataflow_assets.agent.user import pipeline_dirs

        if result.path.parent not in pipeline_dirs():
            console.print(f"[yellow]{result.path.parent} is not a user pipelines folder: add it to DATAFLOW_PIPELINES_PATH to load it in Dagster[/]")
        else:
            console.print(f"it is loaded next to the shipped pipelines: `dataflow run {result.plan.name} --input FILE` or `dataflow ui`")
    else:
        console.print(f"[red]no pipeline written[/]: {escape(result.error or '')}", soft_wrap=True)
    if args.json:
        print(json.dumps(result.summary(), default=str))
    return 0 if result.ok else 1
