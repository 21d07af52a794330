"""LLM stages under Dagster against a real loopback HTTP server: metadata and provenance, zero calls
on re-materialisation, tracing a row's prompt, and a run killed mid-stage then re-executed from
failure that repeats no completed LLM call."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from dataflow_assets.runner import QUIET
from resources.storage import ParquetStore, ShardRegistry
from tests.llm_server import LoopbackLLMServer

REPO = Path(__file__).resolve().parents[2]


def _shard(tmp_path, n):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": f"what is {i} plus {i}?"}) + "\n" for i in range(n)))
    shard = ShardRegistry().add("answer", path)
    dg.DagsterInstance.get().add_dynamic_partitions("answer_shards", [shard.key])
    return shard.key


def _materialize(key):
    from tests.dagster import llm_defs

    return dg.materialize(
        [a for a in llm_defs.ASSETS if a.key.path[-1] != "catalog"],
        partition_key=key,
        instance=dg.DagsterInstance.get(),
        resources=llm_defs.resources(),
        run_config=QUIET,
        raise_on_error=False,
    )


def _meta(result, stage):
    for e in result.get_asset_materialization_events():
        if e.materialization.asset_key.path[-1] == stage:
            return {k: v.value for k, v in e.materialization.metadata.items()}
    raise KeyError(stage)


def test_llm_stages_record_calls_provenance_and_cost_zero_calls_on_rerun(dataflow_home, tmp_path, monkeypatch):
    with LoopbackLLMServer(latency=(0.0, 0.02)) as srv:
        monkeypatch.setenv("TEST_LLM_BASE_URL", srv.base_url)
        key = _shard(tmp_path, 12)
        first = _materialize(key)
        assert first.success
        answer, judge = _meta(first, "answer"), _meta(first, "judge")
        assert (answer["llm_calls"], answer["llm_cache_hits"], judge["llm_calls"]) == (12, 0, 12)
        assert answer["tokens_out"] > 0 and answer["columns_added"] == "answer, answer_meta"
        out = ParquetStore().read("answer", "judge", key)
        # each row's answer derives from its own question: matched by _id, never by position
        for q, a in zip(out["question"], out["answer"]):
            assert q in a
        meta = out.get_column("answer_meta").struct.unnest()
        assert set(meta["model"]) == {"openai:echo"} and meta["template"][0].startswith("answer@") and meta["cache_key"].n_unique() == 12
        requests_after_first = srv.requests

        second = _materialize(key)
        assert second.success
        assert (_meta(second, "answer")["llm_calls"], _meta(second, "answer")["llm_cache_hits"]) == (0, 12)
        assert _meta(second, "judge")["llm_calls"] == 0
        assert srv.requests == requests_after_first

        from dataflow_assets.trace import trace_row
        from tests.dagster.llm_defs import Answer

        row_id = out["_id"][0]
        steps = trace_row("answer", row_id, obj=Answer())
        llm = steps[1]["llm"][0]
        assert llm["model"] == "openai:echo" and llm["cached"] is True  # the second run was served by the cache
        assert llm["messages"][-1]["content"] == f"Answer briefly: {out['question'][0]}"
        assert llm["response"] == out["answer"][0]


KILL = textwrap.dedent(
    """
    import sys, dagster as dg
    from dagster import reconstructable
    from tests.dagster import llm_defs
    from dataflow_assets.runner import QUIET
    with dg.execute_job(reconstructable(llm_defs.stages_job), instance=dg.DagsterInstance.get(),
                        tags={"dagster/partition": sys.argv[1]}, run_config=QUIET) as r:
        print("done", r.success, flush=True)
    """
)


def test_killed_run_reexecuted_from_failure_repeats_no_completed_call(dataflow_home, tmp_path, monkeypatch):
    with LoopbackLLMServer(latency=0.25) as srv:
        monkeypatch.setenv("TEST_LLM_BASE_URL", srv.base_url)
        n = 40
        key = _shard(tmp_path, n)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", KILL, key], cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and srv.requests < 12:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the run process and its step processes, mid-way through `answer`
        proc.wait()
        time.sleep(0.5)
        sent_before = srv.requests
        assert 12 <= sent_before < n
        from resources.llm import GenerationCache

        cached_before = len(GenerationCache())  # answers that completed (and were persisted) before the kill

        from dagster import ReexecutionOptions, reconstructable
        from tests.dagster import llm_defs

        inst = dg.DagsterInstance.get()
        [run] = inst.get_runs()
        assert run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)
        inst.report_run_failed(run)  # what run monitoring does for a run whose process died
        with dg.execute_job(
            reconstructable(llm_defs.stages_job),
            instance=inst,
            reexecution_options=ReexecutionOptions.from_failure(run.run_id, inst),
            tags={"dagster/partition": key},
            run_config=QUIET,
        ) as again:
            assert again.success
            steps = {e.step_key for e in again.all_events if e.is_step_success}
        assert "answer__source" not in steps and {"answer__answer", "answer__judge"} <= steps
        def asked(bodies):
            return sum(1 for b in bodies if b["messages"][-1]["content"].startswith("Answer briefly"))

        # the re-execution asks only for the answers not completed before the kill, then judges all n
        assert asked(srv.bodies[sent_before:]) == n - cached_before
        assert len(srv.bodies) - sent_before == (n - cached_before) + n
        out = ParquetStore().read("answer", "judge", key)
        assert out.height == n and out["answer"].null_count() == 0 and out["score"].null_count() == 0


def test_api_key_reaches_the_server_but_no_metadata_log_or_file(dataflow_home, tmp_path, monkeypatch, capfd):
    from dagster._serdes import serialize_value

    from resources.llm import LLMResource
    from tests.dagster import llm_defs

    secret = "sk-test-NEVER-LOG-7f3a9c2e51"
    monkeypatch.setenv("TEST_LLM_KEY", secret)
    with LoopbackLLMServer() as srv:
        path = tmp_path / "questions.jsonl"
        # the 401 fault answers with the bearer key quoted in its error message, as OpenAI does
        path.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["what is 1+1?", "what is 2+2? #fault=401*"]))
        shard = ShardRegistry().add("answer", path)
        inst = dg.DagsterInstance.get()
        inst.add_dynamic_partitions("answer_shards", [shard.key])
        llm = LLMResource(backend="openai", base_url=srv.base_url, model="echo", api_key=dg.EnvVar("TEST_LLM_KEY"))
        result = dg.materialize(
            [a for a in llm_defs.ASSETS if a.key.path[-1] != "catalog"],
            partition_key=shard.key,
            instance=inst,
            resources={"store": ParquetStore(), "llm": llm},
            raise_on_error=False,
        )
        assert any(secret in h for h in srv.auth_headers)  # the key was really used
    out = ParquetStore().read("answer", "answer", shard.key)
    assert out.get_column("answer_meta").struct.field("error").to_list().count("client_error") == 1
    events = "".join(serialize_value(r) for r in inst.all_logs(result.run_id))
    assert "llm_calls" in events and secret not in events
    for f in dataflow_home.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    captured = capfd.readouterr()
    assert secret not in captured.out and secret not in captured.err


def test_llm_stages_run_in_the_llm_pool_with_a_retry_policy():
    from tests.dagster import llm_defs

    by_stage = {a.key.path[-1]: a for a in llm_defs.ASSETS}
    for stage in ("answer", "judge"):
        node = by_stage[stage].node_def
        assert node.pool == "llm" and node.retry_policy is not None and node.retry_policy.max_retries == 2
    assert by_stage["source"].node_def.pool is None and by_stage["source"].node_def.retry_policy is None
    assert by_stage["catalog"].node_def.pool == "duckdb_catalog"
