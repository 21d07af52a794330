"""A backfill over several partitions, launched the way the UI launches one: start `dagster-daemon`
and `dagster-webserver` on one temporary DAGSTER_HOME (default run coordinator: the daemon's run
queue dequeues the runs, its backfill daemon drives the backfill), register three input shards of
the toy pipeline and their dynamic partitions, then send the UI's "Materialize -> Launch backfill"
mutation (`launchPartitionBackfill` with `partitionNames` + `assetSelection`, a pure asset backfill)
for every stage asset of the three partitions, and follow `partitionBackfillOrError` until the
backfill completes. One run per partition must succeed, tagged with the backfill, and each
partition's `toy/min_words` Parquet file must be written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import polars as pl
import pytest

from resources.storage import ShardRegistry
from tests.ui.test_webserver import ADD_PARTITION_M, EVENTS_Q, WORKSPACE_Q, GraphQL, _free_port, _stop, prepare_instance, write_workspace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "toy"  # tests/dagster/toy_defs.py: source -> lower -> {chars, min_words} -> dataset, catalog
LOCATION = "toy"
STAGES = ["source", "lower", "chars", "min_words", "dataset"]  # every toy asset but the unpartitioned catalog
STARTUP_S = 120  # both processes, their code servers and the daemon's first heartbeats
BACKFILL_S = 240  # the backfill daemon ticks every 30 s; the machine is slow and shared

DAEMON_Q = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy lastHeartbeatTime } } } }
"""

BACKFILL_M = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack } } }
"""

BACKFILL_Q = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill {
    id status isAssetBackfill numPartitions partitionNames
    error { message stack }
    runs { runId status tags { key value } }
    assetBackfillData { assetBackfillStatuses { __typename
      ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted numPartitionsInProgress
                                           numPartitionsMaterialized numPartitionsFailed } } } }
  ... on BackfillNotFoundError { message }
  ... on PythonError { message } } }
"""

ALL_RUNS_Q = """
{ runsOrError { __typename ... on Runs { results { runId status tags { key value } } } } }
"""

DONE = {"COMPLETED", "COMPLETED_SUCCESS"}  # job backfills end COMPLETED, asset backfills COMPLETED_SUCCESS
BROKEN = {"FAILED", "COMPLETED_FAILED", "CANCELED", "CANCELING", "FAILING"}


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-3000:]


def _ours(dagster_home: Path) -> list[int]:
    """Processes still alive with this test's DAGSTER_HOME in their environment (code servers, run workers)."""
    marker = f"DAGSTER_HOME={dagster_home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def _describe(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"{pid} (gone)"
    fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
    return f"{pid} state={fields[0]} ppid={fields[1]} pgid={fields[2]} sid={fields[3]}: {cmd[:200]}"


@pytest.fixture
def ui_and_daemon(dataflow_home: Path, tmp_path: Path):
    """`dagster-daemon run` + `dagster-webserver` on one DAGSTER_HOME, the toy pipeline as their code location."""
    # no run_coordinator/run_launcher: the default queued coordinator, dequeued by the daemon
    dagster_home = dataflow_home / "dagster"
    prepare_instance(dagster_home)
    workspace = write_workspace(tmp_path, {LOCATION: "tests.dagster.toy_defs"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    port = _free_port()
    commands = {
        "dagster-daemon": [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
        "dagster-webserver": [sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
    }
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for name, cmd in commands.items():
            logs[name] = open(tmp_path / f"{name}.log", "w+")
            # each in its own process group: its code server and run workers go with it at teardown
            procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True)

        gql = GraphQL(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + STARTUP_S
        repo_name, heartbeats = None, {}
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    pytest.skip(f"{name} could not start (exit {proc.returncode}):\n{_tail(logs[name])}")
            try:
                if repo_name is None:
                    entries = gql(WORKSPACE_Q, timeout=10)["workspaceOrError"]["locationEntries"]
                    loaded = {e["name"]: e["locationOrLoadError"] for e in entries}.get(LOCATION) or {}
                    assert loaded.get("__typename") != "PythonError", loaded  # a broken toy_defs is a failure, not a skip
                    if loaded.get("__typename") == "RepositoryLocation":
                        repo_name = loaded["repositories"][0]["name"]
                if repo_name is not None:  # the UI's "Daemons" page: backfill daemon and run queue alive
                    statuses = gql(DAEMON_Q, timeout=10)["instance"]["daemonHealth"]["allDaemonStatuses"]
                    heartbeats = {s["daemonType"]: s["healthy"] for s in statuses}
                    if heartbeats.get("BACKFILL") and heartbeats.get("QUEUED_RUN_COORDINATOR"):
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                which = "dagster-webserver" if repo_name is None else "dagster-daemon"
                pytest.skip(
                    f"{which} not ready within {STARTUP_S} s (daemon heartbeats: {heartbeats}):\n{_tail(logs[which])}"
                )
            time.sleep(1)
        yield gql, {"repositoryLocationName": LOCATION, "repositoryName": repo_name}, logs
    finally:
        for proc in procs.values():
            _stop(proc)
        for log in logs.values():
            log.close()
        # the groups' members die asynchronously after SIGKILL; one still alive after that left its group
        leftovers = _ours(dagster_home)
        grace = time.monotonic() + 10
        while leftovers and time.monotonic() < grace:
            time.sleep(0.5)
            leftovers = _ours(dagster_home)
        described = [_describe(pid) for pid in leftovers]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not leftovers, f"processes outlived the dagster-daemon/dagster-webserver process groups: {described}"


def _shards(tmp_path: Path) -> list[str]:
    """Three small jsonl inputs, registered as shards of the toy pipeline; returns their partition keys."""
    docs = [
        ["The quick brown fox", "jumps over the lazy dog", "hi", "A third long enough document"],
        ["Another shard with text", "short", "Four words right here"],
        ["Last shard first doc", "Last shard second doc", "ok", "three words here", "one more long one"],
    ]
    keys = []
    for i, texts in enumerate(docs):
        path = tmp_path / "inputs" / f"part-{i}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        keys.append(ShardRegistry().add(PIPELINE, path).key)
    return keys


def test_backfill_of_three_partitions_through_graphql(ui_and_daemon, dataflow_home, tmp_path):
    gql, selector, logs = ui_and_daemon
    keys = _shards(tmp_path)
    assert len(set(keys)) == 3, keys
    for key in keys:
        added = gql(ADD_PARTITION_M, {"sel": selector, "name": f"{PIPELINE}_shards", "key": key})["addDynamicPartition"]
        assert added["__typename"] == "AddDynamicPartitionSuccess", added

    # what the asset graph's "Materialize" button sends for a multi-partition selection (Launch backfill)
    params = {
        "partitionNames": keys,
        "assetSelection": [{"path": [PIPELINE, s]} for s in STAGES],
        "fromFailure": False,
        "tags": [],
    }
    launched = gql(BACKFILL_M, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    started = time.monotonic()

    deadline = time.monotonic() + BACKFILL_S
    while True:
        backfill = gql(BACKFILL_Q, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] in DONE or backfill["status"] in BROKEN:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"backfill {backfill_id} still {backfill['status']} after {BACKFILL_S} s; runs: "
                f"{[(r['runId'][:8], r['status']) for r in backfill['runs']]}\ndaemon log:\n{_tail(logs['dagster-daemon'])}"
            )
        time.sleep(3)

    runs = backfill["runs"]
    print(f"backfill {backfill_id}: {backfill['status']} after {time.monotonic() - started:.0f} s, {len(runs)} run(s)")
    if backfill["status"] not in DONE:
        details = []
        for run in runs:
            if run["status"] != "SUCCESS":
                events = gql(EVENTS_Q, {"id": run["runId"]})["logsForRun"].get("events", [])
                details.append(f"run {run['runId']}: {run['status']}\n" + "\n".join(str(e) for e in events[-15:]))
        pytest.fail(f"backfill {backfill_id} ended {backfill['status']}: {backfill['error']}\n" + "\n".join(details))

    assert backfill["isAssetBackfill"] and sorted(backfill["partitionNames"]) == sorted(keys), backfill
    # one run per partition, all stage assets of the partition in it
    tags = [{t["key"]: t["value"] for t in r["tags"]} for r in runs]
    assert [r["status"] for r in runs] == ["SUCCESS"] * 3, [(r["runId"], r["status"]) for r in runs]
    assert all(t.get("dagster/backfill") == backfill_id for t in tags), tags
    assert sorted(t.get("dagster/partition") for t in tags) == sorted(keys), tags

    counts = {tuple(s["assetKey"]["path"]): s for s in backfill["assetBackfillData"]["assetBackfillStatuses"]}
    assert set(counts) == {(PIPELINE, s) for s in STAGES}, counts
    for path, c in counts.items():
        assert (c["numPartitionsTargeted"], c["numPartitionsMaterialized"], c["numPartitionsFailed"]) == (3, 3, 0), (path, c)

    # no run of the instance failed (nothing else ran beside the backfill's runs, or it succeeded too)
    every = gql(ALL_RUNS_Q)["runsOrError"]["results"]
    assert all(r["status"] == "SUCCESS" for r in every), [(r["runId"], r["status"]) for r in every]

    store = dataflow_home / "data" / PIPELINE / "min_words"
    for key in keys:
        path = store / f"{key}.parquet"
        assert path.exists(), f"{path} missing; present: {sorted(p.name for p in store.glob('*'))}"
        frame = pl.read_parquet(path)
        assert frame.height >= 2 and frame.get_column("text").str.split(" ").list.len().min() >= 3, frame

