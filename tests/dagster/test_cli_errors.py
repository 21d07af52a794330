"""Errors a user can act on (issue 10 §3): one line saying what is wrong and what to do, no traceback,
exit 2 for usage errors and 1 for failures; a missing input registers nothing; FAILED lines name the
stage and partition; `dataflow partitions --remove`; every command names its DATAFLOW_HOME and a read
command never creates an empty home; every option has help text and pipeline arguments list names."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "dataflow_assets.cli"]


def _cli(home: Path, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATAFLOW_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=timeout)


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stdout + res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:") or "error: argument" in ln]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.slow
def test_usage_errors_are_one_line_with_exit_2_and_create_nothing(tmp_path):
    home = tmp_path / "nowhere"  # no project state here
    cases = [
        (("run", "no_such_pipeline", "--input", "x.jsonl"), "invalid choice"),
        (("run", "text_pt", "--input", str(tmp_path / "missing.jsonl")), "no such file"),
        (("trace", "text_pt", "--id", "abc"), "no dataflow project state"),
        (("partitions", "text_pt"), "no dataflow project state"),
        (("sql", "select 1"), "no dataflow project state"),
        (("backfill", "text_pt", "--all"), "no dataflow project state"),
    ]
    for args, expected in cases:
        res = _cli(home, *args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.returncode, res.stderr[-2000:])
        assert expected in _one_error_line(res), (args, res.stderr)
        assert not home.exists(), args  # a read command never creates an empty home
        assert not (tmp_path / ".dataflow").exists()
        if args[1] != "no_such_pipeline":
            assert f"DATAFLOW_HOME={home}" in res.stderr


def test_help_lists_pipelines_and_every_option_has_help():
    from dataflow_assets.cli import build_parser
    from dataflow_assets.pipelines import shipped

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"dataflow {name} {action.dest}: no help text"
            if action.dest == "pipeline":
                assert sorted(action.choices) == sorted(shipped()), name
                assert all(n in action.help for n in shipped())


@pytest.mark.slow
def test_run_errors_partition_lifecycle_and_failed_lines(tmp_path):
    from dataflow_assets.demo import write_demo_corpus

    home = tmp_path / "home"
    corpus = write_demo_corpus(tmp_path / "corpus.jsonl")
    ok = _cli(home, "run", "text_pt", "--input", str(corpus), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    export = home / "exports" / "text_pt" / "dataset.parquet"
    before = export.stat().st_mtime_ns

    # a missing input registers no partition
    missing = _cli(home, "run", "text_pt", "--input", str(tmp_path / "nonexistent.jsonl"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in _one_error_line(missing)
    listed = _cli(home, "partitions", "text_pt", cwd=tmp_path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1 and "nonexistent" not in listed.stdout
    key = listed.stdout.split("\t")[0]

    # unknown partition, row id, stage
    for args, expected in [
        (("backfill", "text_pt", "--partitions", "nope-000000"), "unknown partition"),
        (("rerun", "text_pt", "--partition", key, "--stage", "no_stage"), "unknown stage"),
        (("trace", "text_pt", "--id", "no-such-row"), "no row with _id"),
        (("trace", "text_pt", "--id", "x", "--partition", "nope"), "unknown partition"),
        (("partitions", "text_pt", "--remove", "nope"), "unknown partition"),
    ]:
        res = _cli(home, *args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr[-2000:])
        assert expected in _one_error_line(res), (args, res.stderr)

    # a failed run: a FAILED line naming stage and partition, exit 1, the export is not rewritten
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"this is not gzip")
    failed = _cli(home, "run", "text_pt", "--input", str(bad), cwd=tmp_path)
    assert failed.returncode == 1 and "Traceback" not in failed.stdout + failed.stderr
    [line] = [ln for ln in failed.stdout.splitlines() if ln.startswith("FAILED")]
    assert line.startswith("FAILED text_pt/source (partition bad.jsonl.gz-") and "gzip" in line
    assert "export:" not in failed.stdout and export.stat().st_mtime_ns == before

    # removing a partition: Dagster partition, shard record, files and catalog rows
    bad_key = next(k.split("\t")[0] for k in _cli(home, "partitions", "text_pt", cwd=tmp_path).stdout.splitlines() if k.startswith("bad"))
    removed = _cli(home, "partitions", "text_pt", "--remove", key, bad_key, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr[-2000:]
    assert _cli(home, "partitions", "text_pt", cwd=tmp_path).stdout == ""
    assert not list(home.rglob(f"{key}.*")) and not list(home.rglob(f"{bad_key}.*"))
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    assert dg.DagsterInstance.get().get_dynamic_partitions("text_pt_shards") == []
    count = _cli(home, "sql", "select count(*) as n from text_pt.source", cwd=tmp_path)
    assert count.returncode == 2 or "│ 0 │" in count.stdout.replace(" ", "").replace("││", "│"), count.stdout + count.stderr
    assert not export.exists()  # its only rows are gone


def test_json_summary_has_failures_and_file_errors(tmp_path):
    from dataflow_assets.runner import RunSummary, summary_json

    s = RunSummary("p", ["k"], failures=["p/source (partition k): bad"], file_errors=["f: empty file (0 records)"])
    data = json.loads(summary_json(s))
    assert data["failures"] == ["p/source (partition k): bad"] and data["file_errors"] == ["f: empty file (0 records)"]
