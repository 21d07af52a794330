"""Runs that survive kills, readers and concurrent starts (issue 9 §1-§4), through the real CLI.

- a `dataflow run` killed with kill -9 inside an LLM stage, with the `llm` pool limited to 1, no
  longer blocks the next run: its run is marked failed, its slot freed, and re-executing it from
  failure asks only for the answers not yet cached;
- a run that waits on a pool held by a live run gives up after DATAFLOW_POOL_WAIT_S with one line;
- SIGTERM stops a run cleanly (run marked failed, slot freed);
- `dataflow sql` readers and catalog refreshes run side by side without a failure;
- 4 `dataflow run` processes on a fresh home all succeed;
- every record is accounted for in the summary (empty file, unreadable file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.llm_server import LoopbackLLMServer

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "dataflow_assets.cli"]


def _env(home: Path, srv: LoopbackLLMServer | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATAFLOW_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    if srv is not None:
        env.update(DATAFLOW_ENV="openai", DATAFLOW_LLM_BASE_URL=srv.base_url, DATAFLOW_LLM_MODEL="echo", DATAFLOW_LLM_API_KEY="test-key")
    env.update(extra)
    return env


def _docs(path: Path, n: int, tag: str) -> Path:
    path.write_text("".join(json.dumps({"text": f"{tag} document number {i} about bread and baking."}) + "\n" for i in range(n)))
    return path


def _instance(home: Path) -> dg.DagsterInstance:
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    return dg.DagsterInstance.get()


def _asked(bodies: list[dict], tag: str) -> int:
    return sum(1 for b in bodies if f"{tag} document" in json.dumps(b["messages"]))


REEXECUTE = """
import sys, dagster as dg
from dataflow_assets.runner import instance, QUIET
inst = instance()
job = dg.build_reconstructable_job("dataflow_assets.definitions", "stages_job", reconstructable_args=("text_judge",))
with dg.execute_job(job, instance=inst, reexecution_options=dg.ReexecutionOptions.from_failure(sys.argv[1], inst),
                    tags={"dagster/partition": sys.argv[2]}, run_config=QUIET) as r:
    print("success", r.success)
"""


@pytest.mark.slow
def test_killed_llm_run_frees_its_pool_slot_and_reexecutes_from_failure(dataflow_home, tmp_path):
    with LoopbackLLMServer(latency=1.0) as srv:
        env = _env(dataflow_home, srv)
        inst = _instance(dataflow_home)
        inst.event_log_storage.set_concurrency_slots("llm", 1)  # `dagster instance concurrency set llm 1`
        big = _docs(tmp_path / "big.jsonl", 64, "killed")
        proc = subprocess.Popen([*CLI, "run", "text_judge", "--input", str(big)], cwd=tmp_path, env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and srv.completed < 16 and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.4)  # the client persists the first wave of answers; the next wave is in flight
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 inside the LLM stage
        proc.wait()
        time.sleep(1.5)  # in-flight replies land; their answers are cached
        [killed] = inst.get_runs()
        assert killed.status == dg.DagsterRunStatus.STARTED  # what Dagster leaves behind
        assert [s.run_id for s in inst.event_log_storage.get_concurrency_info("llm").claimed_slots] == [killed.run_id]
        from resources.llm import GenerationCache

        cached = len(GenerationCache(dataflow_home / "cache" / "llm.sqlite"))
        assert 0 < cached < 64

        # the next run starts within seconds and finishes
        small = _docs(tmp_path / "small.jsonl", 3, "next")
        start = time.monotonic()
        before = len(srv.bodies)
        nxt = subprocess.Popen([*CLI, "run", "text_judge", "--input", str(small)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first_request = None
        while nxt.poll() is None and time.monotonic() - start < 120:
            if first_request is None and _asked(srv.bodies[before:], "next"):
                first_request = time.monotonic() - start
            time.sleep(0.05)
        if nxt.poll() is None:
            nxt.kill()
            pytest.fail("the next run is still blocked after 120 s")
        _, err = nxt.communicate()
        total = time.monotonic() - start
        assert nxt.returncode == 0, err[-2000:]
        first_request = first_request if first_request is not None else total
        print(f"\nrecovery: next run's first LLM request {first_request:.1f} s after start, finished in {total:.1f} s")
        assert first_request < 60
        killed = inst.get_run_by_id(killed.run_id)
        assert killed.status == dg.DagsterRunStatus.FAILURE
        assert inst.event_log_storage.get_concurrency_info("llm").claimed_slots == []

        # re-executing the killed run from failure asks only for the answers not cached before the kill
        mark = len(srv.bodies)
        t0 = time.monotonic()
        again = subprocess.run([sys.executable, "-c", REEXECUTE, killed.run_id, killed.tags["dagster/partition"]], cwd=tmp_path, env=env,
                               check=False, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and again.stdout.strip().endswith("True"), again.stderr[-3000:]
        print(f"re-execution from failure: {time.monotonic() - t0:.1f} s, {_asked(srv.bodies[mark:], 'killed')} answer requests for {64 - cached} uncached rows")
        assert _asked(srv.bodies[mark:], "killed") == 64 - cached
        from resources.storage import ParquetStore

        key = killed.tags["dagster/partition"]
        judged = ParquetStore().read("text_judge", "quality", key)
        assert judged.height == 64 and judged["quality_score"].null_count() == 0


def _hold_llm_slot(inst: dg.DagsterInstance) -> str:
    """A STARTED run owned by this (live) test process that holds the only `llm` slot."""
    import uuid

    from dagster._core.storage.dagster_run import DagsterRun

    from dataflow_assets.liveness import owner_tags

    run_id = str(uuid.uuid4())
    inst.add_run(DagsterRun(job_name="holder", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=owner_tags()))
    inst.event_log_storage.set_concurrency_slots("llm", 1)
    assert inst.event_log_storage.claim_concurrency_slot("llm", run_id, "holder__step").is_claimed
    return run_id


@pytest.mark.slow
def test_run_waiting_on_a_live_pool_holder_gives_up_with_one_line(dataflow_home, tmp_path):
    with LoopbackLLMServer() as srv:
        inst = _instance(dataflow_home)
        holder = _hold_llm_slot(inst)
        start = time.monotonic()
        res = subprocess.run([*CLI, "run", "text_judge", "--input", str(_docs(tmp_path / "a.jsonl", 3, "wait"))], cwd=tmp_path,
                             env=_env(dataflow_home, srv, DATAFLOW_POOL_WAIT_S="3"), check=False, capture_output=True, text=True, timeout=180)
        took = time.monotonic() - start
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stdout + res.stderr
    [line] = [ln for ln in res.stdout.splitlines() if ln.startswith("FAILED")]
    assert "pool 'llm'" in line and holder[:8] in line and "DATAFLOW_POOL_WAIT_S" in line
    assert srv.requests == 0
    print(f"\ngave up after {took:.1f} s (bound 3 s + CLI start-up)")
    # the holder is alive: it was neither failed nor robbed of its slot
    assert inst.get_run_by_id(holder).status == dg.DagsterRunStatus.STARTED
    assert [s.run_id for s in inst.event_log_storage.get_concurrency_info("llm").claimed_slots] == [holder]


@pytest.mark.slow
def test_sigterm_stops_an_llm_run_cleanly(dataflow_home, tmp_path):
    with LoopbackLLMServer(latency=1.0) as srv:
        inst = _instance(dataflow_home)
        inst.event_log_storage.set_concurrency_slots("llm", 1)
        proc = subprocess.Popen([*CLI, "run", "text_judge", "--input", str(_docs(tmp_path / "a.jsonl", 64, "term"))], cwd=tmp_path,
                                env=_env(dataflow_home, srv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and srv.requests < 4 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - t0
    print(f"\nSIGTERM -> exit in {stopped:.1f} s")
    assert proc.returncode not in (0, -signal.SIGTERM), (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err[-2000:])
    [run] = inst.get_runs()
    assert run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    # the stopped LLM stage was not retried (Dagster retries an interrupted step that has a RetryPolicy)
    assert not inst.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY).records
    assert srv.requests < 64
    assert inst.event_log_storage.get_concurrency_info("llm").claimed_slots == []


HOLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("select count(*) from p.stage").fetchone()[0], flush=True)
sys.stdin.readline()
print(con.execute("select count(*) from p.stage").fetchone()[0], flush=True)
"""


@pytest.mark.slow
def test_sql_readers_never_break_catalog_refreshes(dataflow_home, tmp_path):
    """16 `dataflow sql` calls (2 at a time) while the catalog is refreshed over and over in another
    process, and a `duckdb -readonly`-style session held open all along: 0 failures."""
    from resources.storage import ParquetStore

    store = ParquetStore()
    for i in range(3):
        store.write("p", "stage", f"k{i}", pl.DataFrame({"_id": [f"{i}-{j}" for j in range(100)], "x": list(range(100))}))
    store.refresh_catalog("p", ["stage"])
    env = _env(dataflow_home)
    held = subprocess.Popen([sys.executable, "-c", HOLD, str(store.catalog_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert held.stdout.readline().strip() == "300"
    stop = threading.Event()
    refreshes = [0]
    refresh_errors: list[str] = []

    def refresher():
        while not stop.is_set():
            try:
                store.refresh_catalog("p", ["stage"])
                refreshes[0] += 1
            except Exception as err:  # noqa: BLE001 - counted, then asserted to be none
                refresh_errors.append(repr(err))

    t = threading.Thread(target=refresher)
    t.start()
    failures = []
    try:
        for _ in range(8):
            calls = [subprocess.Popen([*CLI, "sql", "select count(*) as n from p.stage"], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            for c in calls:
                out, err = c.communicate(timeout=120)
                if c.returncode != 0 or "300" not in out:
                    failures.append(err[-500:])
    finally:
        stop.set()
        t.join()
    out, _ = held.communicate("\n", timeout=60)
    assert out.strip() == "300"  # the open session still reads its snapshot
    print(f"\n16 sql calls, {refreshes[0]} refreshes, {len(failures)} sql failures, {len(refresh_errors)} refresh failures")
    assert not failures and not refresh_errors, (failures[:2], refresh_errors[:2])
    assert refreshes[0] >= 5


def test_catalog_refresh_with_a_writer_session_open_still_succeeds(dataflow_home):
    """Even a read-write DuckDB session left open on the catalog in another process (which takes
    DuckDB's exclusive lock) does not fail the refresh: it writes a copy and renames it into place."""
    import duckdb

    from resources.storage import ParquetStore

    store = ParquetStore()
    store.write("p", "stage", "k0", pl.DataFrame({"_id": ["a"], "x": [1]}))
    store.refresh_catalog("p", ["stage"])
    squatter = subprocess.Popen([sys.executable, "-c", HOLD.replace("read_only=True", "read_only=False").replace("300", "1"), str(store.catalog_path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert squatter.stdout.readline().strip() == "1"
    store.write("p", "other", "k0", pl.DataFrame({"_id": ["a"], "y": [2]}))
    assert store.refresh_catalog("p", ["stage", "other"]) == ["p.stage", "p.other"]
    squatter.communicate("\n", timeout=60)
    con = duckdb.connect(str(store.catalog_path), read_only=True)
    assert con.execute("select y from p.other").fetchone() == (2,)
    con.close()


def test_catalog_lock_is_bounded(dataflow_home):
    from resources.storage import LockTimeout, ParquetStore, file_lock

    store = ParquetStore()
    lock = store.catalog_path.with_suffix(".lock")
    ready, release = threading.Event(), threading.Event()

    def hold():
        with file_lock(lock):
            ready.set()
            release.wait(10)

    # a lock held by another thread's open file description blocks this one as another process would
    t = threading.Thread(target=hold)
    t.start()
    ready.wait(5)
    start = time.monotonic()
    with pytest.raises(LockTimeout, match="still locked"), store.catalog_lock(timeout_s=0.5):
        pass
    assert 0.4 < time.monotonic() - start < 5
    release.set()
    t.join()


@pytest.mark.slow
def test_four_runs_at_once_on_a_fresh_home_all_succeed(tmp_path):
    home = tmp_path / "fresh"  # nothing exists yet: no instance, no registry, no catalog
    procs = []
    for i in range(4):
        path = tmp_path / f"in{i}.jsonl"
        path.write_text("".join(json.dumps({"text": f"Run {i} document {j}: the quick brown fox jumps over the lazy dog again."}) + "\n" for j in range(5)))
        procs.append(subprocess.Popen([*CLI, "run", "text_pt", "--input", str(path)], cwd=tmp_path,
                                      env={**_env(home), "DAGSTER_HOME": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for rc, err in results:
        assert "already exists" not in err and "Traceback" not in err, err[-2000:]
    # each run may fail its kept-share gate on such tiny inputs; what must not happen is a crash
    assert all(rc in (0, 1) for rc, _ in results), results
    inst = _instance(home)
    runs = inst.get_runs(filters=dg.RunsFilter(tags={"dataflow/pipeline": "text_pt"}))
    assert len(runs) == 4 and all(r.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE) for r in runs)
    assert all(any(e.dagster_event and e.dagster_event.event_type_value == "STEP_SUCCESS" for e in inst.all_logs(r.run_id)) for r in runs)


@pytest.mark.slow
def test_empty_file_is_zero_records_not_a_failure(dataflow_home, tmp_path):
    from dataflow_assets.runner import run_pipeline

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    summary = run_pipeline("text_pt", [empty])
    assert summary.success, (summary.failures, summary.checks_failed)
    assert summary.records == 0 and summary.rows_out == 0 and summary.invariant_holds()
    res = subprocess.run([*CLI, "run", "text_pt", "--input", str(empty)], cwd=tmp_path, env=_env(dataflow_home), check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "0 records" in res.stdout


@pytest.mark.slow
def test_unreadable_file_shows_its_reason_and_counts_in_the_summary(dataflow_home, tmp_path):
    from dataflow_assets.runner import run_pipeline

    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"this is not gzip")
    summary = run_pipeline("text_pt", [bad])
    assert not summary.success
    assert summary.quarantined >= 1 and summary.invariant_holds()
    assert any("gzip" in e for e in summary.file_errors), summary.file_errors
    assert summary.export is None and summary.export_note  # nothing of this run was exported
    res = subprocess.run([*CLI, "run", "text_pt", "--input", str(bad)], cwd=tmp_path, env=_env(dataflow_home), check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "quarantined: 1" in res.stdout or "quarantined: 2" in res.stdout
    assert "gzip" in res.stdout and "FAILED text_pt/source (partition bad.jsonl.gz-" in res.stdout
    assert "export:" not in res.stdout and "Traceback" not in res.stdout + res.stderr


@pytest.mark.slow
def test_a_failed_catalog_step_is_reported_and_no_stale_export_path(dataflow_home, tmp_path, monkeypatch):
    """The catalog lock held elsewhere past its bound: the catalog step fails, the run says so in a
    FAILED line and reports no export path (the previous export is stale for this run)."""
    from dataflow_assets.demo import write_demo_corpus
    from dataflow_assets.runner import run_pipeline
    from resources.storage import ParquetStore, file_lock

    first = run_pipeline("text_pt", [write_demo_corpus(tmp_path / "a.jsonl")])
    assert first.success and first.export
    monkeypatch.setenv("DATAFLOW_CATALOG_LOCK_TIMEOUT_S", "1")
    ready, release = threading.Event(), threading.Event()

    def hold():
        with file_lock(ParquetStore().catalog_path.with_suffix(".lock")):
            ready.set()
            release.wait(120)

    t = threading.Thread(target=hold)
    t.start()
    ready.wait(10)
    try:
        second = run_pipeline("text_pt", [write_demo_corpus(tmp_path / "b.jsonl")])
    finally:
        release.set()
        t.join()
    assert not second.success and second.export is None
    assert any(f.startswith("text_pt/catalog") and "still locked" in f for f in second.failures), second.failures
    assert second.export_note and "catalog step failed" in second.export_note


@dg.asset(pool="llm")
def pooled_step() -> None:
    return None


def test_a_step_blocked_on_a_pool_inside_a_run_gives_up(dataflow_home):
    """The race the pre-run wait cannot see: the slot is taken once the run has started. Dagster's
    in-process executor then spins at full CPU, deferring SIGTERM, forever; the guard stops the run
    after the bound with a message naming the pool and its holder."""
    from dataflow_assets.liveness import RunAborted, RunGuard, owner_tags

    inst = _instance(dataflow_home)
    holder = _hold_llm_slot(inst)
    start = time.monotonic()
    with RunGuard(inst, timeout_s=2, poll_s=0.5) as guard:
        try:
            result = dg.materialize([pooled_step], instance=inst, tags=owner_tags(), raise_on_error=False,
                                    run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}})
            ok = result.success
        except RunAborted:
            ok = False
    took = time.monotonic() - start
    print(f"\nblocked step stopped after {took:.1f} s (bound 2 s)")
    assert not ok and took < 30
    assert guard.reason and "pool 'llm'" in guard.reason and holder[:8] in guard.reason
    run = next(r for r in inst.get_runs() if r.run_id != holder)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert [s.run_id for s in inst.event_log_storage.get_concurrency_info("llm").claimed_slots] == [holder]
