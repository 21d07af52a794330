"""Automation out of the box: `dagster-daemon` on the shipped definitions (the `dataflow` location of
workspace.yaml, as `dataflow ui` runs it) with nothing switched on by hand. A file dropped into
`<DATAFLOW_HOME>/inputs/text_pt/` is picked up by `text_pt_input_sensor` (running by default) once its
size and mtime held still across two ticks, becomes a partition, and is materialised through to the
partition's `dataset` export without a click.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from dataflow_assets.demo import write_demo_corpus
from tests.ui.test_backfill_daemon import _describe, _ours, _tail
from tests.ui.test_webserver import _stop, prepare_instance, write_workspace

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 420  # daemon start, code server, two sensor ticks, queue, the run itself on a shared machine


def test_dropped_file_is_materialised_to_the_dataset_without_a_click(dataflow_home, tmp_path):
    dagster_home = dataflow_home / "dagster"
    prepare_instance(dagster_home)  # the default queued run coordinator: the daemon dequeues
    workspace = write_workspace(tmp_path, {"dataflow": "dataflow_assets.definitions"})
    env = {
        **os.environ,
        "DATAFLOW_HOME": str(dataflow_home),
        "DAGSTER_HOME": str(dagster_home),
        "DATAFLOW_SENSOR_INTERVAL_S": "5",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.pop("DATAFLOW_INPUTS", None)
    log = open(tmp_path / "daemon.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        inbox = dataflow_home / "inputs" / "text_pt"
        inbox.mkdir(parents=True)
        write_demo_corpus(tmp_path / "staging.jsonl").rename(inbox / "dropped.jsonl")  # dropped whole, like a mv
        deadline = time.monotonic() + TIMEOUT_S
        exports = dataflow_home / "exports" / "text_pt" / "partitions"
        with dg.DagsterInstance.get() as inst:
            while True:
                assert proc.poll() is None, f"dagster-daemon exited {proc.returncode}:\n{_tail(log)}"
                done = sorted(exports.glob("dropped.jsonl-*.parquet")) if exports.exists() else []
                runs = inst.get_runs()
                failed = [r for r in runs if r.is_failure]
                assert not failed, f"{[(r.job_name, r.tags.get('dagster/partition')) for r in failed]}\n{_tail(log)}"
                if done and any(r.is_success and r.job_name == "text_pt_stages" for r in runs):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"no dataset export within {TIMEOUT_S} s; runs: {[(r.job_name, r.status) for r in runs]}\n{_tail(log)}")
                time.sleep(3)
            key = done[0].stem
            assert inst.get_dynamic_partitions("text_pt_shards") == [key]
            run = next(r for r in inst.get_runs() if r.job_name == "text_pt_stages")
            assert run.tags["dagster/partition"] == key and "dagster/sensor_name" in run.tags
            assert run.tags["dagster/sensor_name"] == "text_pt_input_sensor"
            event = inst.get_latest_materialization_event(dg.AssetKey(["text_pt", "dataset"]))
            assert event is not None and event.asset_materialization.partition == key
            ticks = inst.get_ticks(
                next(s for s in inst.all_instigator_state() if s.name == "text_pt_input_sensor").instigator_origin_id,
                next(s for s in inst.all_instigator_state() if s.name == "text_pt_input_sensor").selector_id,
            )
        # the first tick that saw the file only noted it (size/mtime settling); a later one started it
        assert any("still settling" in (t.skip_reason or "") for t in ticks), [(t.status, t.skip_reason) for t in ticks]
    finally:
        _stop(proc)
        log.close()
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
        assert not leftovers, f"processes outlived the dagster-daemon process group: {described}"
