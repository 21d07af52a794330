"""One run model: a run the CLI started is a run of the pipeline's named job, recorded with the
`dataflow` code location as its origin, so the UI can re-execute it. `dataflow run text_judge` against
the loopback OpenAI-compatible server fails its LLM step (3 of 4 rows get a 503 on their first attempt,
client retries off, so the blocking `scored_share` gate fails); `dagster-webserver` on the same
DAGSTER_HOME then re-executes the run from failure through GraphQL (what the run page's "Re-execute
from failure" sends). The re-execution succeeds, skips the steps that had succeeded, and repeats no
LLM call that had completed: the row answered in the first run comes from the generation cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import dagster as dg
import pytest

from tests.llm_server import LoopbackLLMServer
from tests.ui.test_webserver import RUN_Q, WORKSPACE_Q, GraphQL, _free_port, _stop, prepare_instance, write_workspace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

REEXECUTE_M = """
mutation($params: ReexecutionParams!) {
  launchPipelineReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message } } }
"""

DOCS = [
    "A plain document about bread, flour, water and a warm kitchen.",
    "A second document about rivers and bridges #fault=503",
    "A third document about libraries and reading rooms #fault=503",
    "A fourth document about honeybees and their dances #fault=503",
]


def _attempts(srv: LoopbackLLMServer) -> dict[int, int]:
    """LLM attempts per document (index in DOCS), read from the server's per-prompt counter."""
    out = {}
    for prompt, n in srv.attempts.items():
        for i, doc in enumerate(DOCS):
            if doc in prompt:
                out[i] = out.get(i, 0) + n
    return out


def test_cli_run_reexecuted_from_failure_through_graphql_repeats_no_llm_call(dataflow_home, tmp_path):
    dagster_home = dataflow_home / "dagster"
    prepare_instance(dagster_home, "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    with LoopbackLLMServer() as srv:
        env = {
            **os.environ,
            "DATAFLOW_HOME": str(dataflow_home),
            "DAGSTER_HOME": str(dagster_home),
            "DATAFLOW_ENV": "openai",
            "DATAFLOW_LLM_BASE_URL": srv.base_url,
            "DATAFLOW_LLM_MODEL": "echo",
            "DATAFLOW_LLM_API_KEY": "test-key",
            "DATAFLOW_LLM_RETRIES": "0",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "dataflow"), "run", "text_judge", "--input", str(data)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )
        assert cli.returncode == 1, cli.stdout[-3000:] + cli.stderr[-3000:]
        assert _attempts(srv) == {0: 1, 1: 1, 2: 1, 3: 1}

        with dg.DagsterInstance.get() as inst:
            failed = [r for r in inst.get_runs() if r.is_failure]
        assert len(failed) == 1, [(r.job_name, r.status) for r in inst.get_runs()]
        parent = failed[0]
        assert parent.job_name == "text_judge_stages" and parent.tags["dataflow/pipeline"] == "text_judge"
        assert parent.remote_job_origin is not None and parent.remote_job_origin.location_name == "dataflow"

        workspace = write_workspace(tmp_path, {"dataflow": "dataflow_assets.definitions"})
        port = _free_port()
        log = open(tmp_path / "webserver.log", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            gql = GraphQL(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log.seek(0) or log.read()[-4000:]
                try:
                    entries = gql(WORKSPACE_Q, timeout=10)["workspaceOrError"]["locationEntries"]
                    loaded = {e["name"]: e["locationOrLoadError"] for e in entries}.get("dataflow") or {}
                    assert loaded.get("__typename") != "PythonError", loaded
                    if loaded.get("__typename") == "RepositoryLocation":
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("dagster-webserver did not load the dataflow location within 180 s:\n" + (log.seek(0) or log.read()[-4000:]))
                time.sleep(1)

            launched = gql(REEXECUTE_M, {"params": {"parentRunId": parent.run_id, "strategy": "FROM_FAILURE"}})["launchPipelineReexecution"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_id = launched["run"]["runId"]
            deadline = time.monotonic() + 300
            while True:
                run = gql(RUN_Q, {"id": run_id})["runOrError"]
                if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"re-execution {run_id} still {run.get('status')} after 300 s")
                time.sleep(2)
            assert run["status"] == "SUCCESS", run
            steps = {s["stepKey"]: s["status"] for s in run["stepStats"]}
            assert "text_judge__source" not in steps  # succeeded in the parent run: not executed again
            assert steps.get("text_judge__quality") == "SUCCESS" and steps.get("text_judge__dataset") == "SUCCESS", steps
        finally:
            _stop(proc)
            log.close()
        # the answered row was served by the cache; only the three failed rows were asked again
        assert _attempts(srv) == {0: 1, 1: 2, 2: 2, 3: 2}
    with dg.DagsterInstance.get() as inst:
        child = inst.get_run_by_id(run_id)
    assert child.parent_run_id == parent.run_id and child.job_name == "text_judge_stages"
    assert child.tags.get("dagster/partition") == parent.tags.get("dagster/partition")
