"""Sensors and schedules: new input files become partitions and runs.

Each shipped pipeline gets
- `<pipeline>_input_sensor`: watches `<home>/inputs/<pipeline>/` (or `$DATAFLOW_INPUTS/<pipeline>/`).
  A file is identified by path; it is (re)processed when its size + mtime change *and* its content
  hash differs from the one in the cursor, so a restart neither misses nor repeats files and a mere
  `touch` costs nothing. Files that disappear are reported in the tick's log and the cursor, not
  silently ignored.
- `<pipeline>_schedule`: nightly re-run of every registered shard (off by default; enable it in the UI
  or set `default_status=RUNNING`). Unchanged stages cost nothing: the generation cache answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from operators.io import InputError, detect_format
from resources.storage import ShardRegistry, file_sha256, home

INPUT_JOB = "{pipeline}_stages"


def inputs_folder(pipeline: str) -> Path:
    base = Path(os.environ["DATAFLOW_INPUTS"]) if os.environ.get("DATAFLOW_INPUTS") else home() / "inputs"
    return base / pipeline


def scan(folder: Path, previous: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[Path], list[str]]:
    """Compare the folder with the cursor: returns (new cursor, files to process, files that vanished)."""
    current: dict[str, dict[str, Any]] = {}
    changed: list[Path] = []
    for path in sorted(folder.glob("*")) if folder.exists() else []:
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            detect_format(path)
        except InputError:
            continue
        st = path.stat()
        key = str(path.resolve())
        prev = previous.get(key)
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if prev and prev["size"] == entry["size"] and prev["mtime_ns"] == entry["mtime_ns"]:
            current[key] = prev
            continue
        entry["sha256"] = file_sha256(path)
        current[key] = entry
        if not prev or prev.get("sha256") != entry["sha256"]:
            changed.append(path)
    vanished = sorted(set(previous) - set(current))
    return current, changed, vanished


def input_sensor(pipeline: str, job_name: str | None = None, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    """A sensor that adds a dynamic partition per new or changed input file and requests its run."""

    @dg.sensor(
        name=f"{pipeline}_input_sensor",
        job_name=job_name or INPUT_JOB.format(pipeline=pipeline),
        minimum_interval_seconds=minimum_interval_seconds,
        description=f"New or changed files in {inputs_folder(pipeline)} become {pipeline} partitions and runs.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = json.loads(context.cursor) if context.cursor else {"files": {}, "vanished": []}
        folder = inputs_folder(pipeline)
        files, changed, vanished = scan(folder, state["files"])
        registry = ShardRegistry()
        keys, requests = [], []
        for path in changed:
            shard = registry.add(pipeline, path)
            keys.append(shard.key)
            sha = files[str(path.resolve())]["sha256"]
            requests.append(dg.RunRequest(run_key=f"{shard.key}:{sha[:16]}", partition_key=shard.key, tags={"dataflow/input": str(path)}))
        for gone in vanished:
            context.log.warning(f"{pipeline}: input file disappeared: {gone} (its partition and outputs are kept)")
        if keys:  # add them now, so the run requests below name partitions that exist
            context.instance.add_dynamic_partitions(f"{pipeline}_shards", keys)
        cursor = json.dumps({"files": files, "vanished": sorted(set(state.get("vanished", [])) | set(vanished))})
        return dg.SensorResult(
            run_requests=requests,
            cursor=cursor,
            skip_reason=None if requests else dg.SkipReason(f"no new or changed files in {folder}" + (f"; {len(vanished)} vanished" if vanished else "")),
        )

    return _sensor


def nightly_schedule(pipeline: str, job_name: str | None = None, cron: str = "0 3 * * *") -> dg.ScheduleDefinition:
    """Re-run every registered shard of `pipeline` once a night (stopped by default)."""

    @dg.schedule(
        name=f"{pipeline}_schedule",
        cron_schedule=cron,
        job_name=job_name or INPUT_JOB.format(pipeline=pipeline),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Nightly re-run of every {pipeline} shard; cached stages make no LLM calls.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        try:
            stamp = context.scheduled_execution_time.strftime("%Y%m%d")
        except Exception:  # noqa: BLE001 - evaluated outside a tick (tests, ad-hoc): no scheduled time
            stamp = "manual"
        for shard in ShardRegistry().all(pipeline):
            yield dg.RunRequest(run_key=f"{shard.key}:{stamp}", partition_key=shard.key)

    return _schedule
