"""Sensors and schedules: new input files become partitions and runs.

Each shipped pipeline gets
- `<pipeline>_input_sensor` (running by default): watches `<home>/inputs/<pipeline>/` (or
  `$DATAFLOW_INPUTS/<pipeline>/`). A file is identified by path; it is (re)processed when its size +
  mtime change, have stayed the same across two ticks (a file being copied is not read half written)
  *and* its content hash differs from the one in the cursor, so a restart neither misses nor repeats
  files and a mere `touch` costs nothing. Files that disappear are reported in the tick's log and the
  cursor, not silently ignored.
- `dataflow_automation_sensor` (running by default): evaluates the assets' automation conditions.
- `<pipeline>_schedule`: nightly re-run of every registered shard (off by default; enable it in the UI
  or set `default_status=RUNNING`). Unchanged stages cost nothing: the generation cache answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from dataflow_assets.partitions import sync_partitions
from operators.io import InputError, detect_format
from resources.storage import ShardRegistry, file_sha256, home

INPUT_JOB = "{pipeline}_stages"


def inputs_folder(pipeline: str) -> Path:
    base = Path(os.environ["DATAFLOW_INPUTS"]) if os.environ.get("DATAFLOW_INPUTS") else home() / "inputs"
    return base / pipeline


def sensor_interval_s(default: int = 30) -> int:
    """Seconds between sensor ticks: `$DATAFLOW_SENSOR_INTERVAL_S` (tests and busy inboxes), else `default`."""
    try:
        return max(1, int(os.environ.get("DATAFLOW_SENSOR_INTERVAL_S", default)))
    except ValueError:
        return default


def scan(
    folder: Path, previous: dict[str, dict[str, Any]], pending: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, dict[str, Any]], list[Path], list[str], dict[str, dict[str, Any]]]:
    """Compare the folder with the cursor: returns (new cursor, files to process, files that vanished,
    files still settling).

    A new or changed file starts only once its size and mtime are the same on two consecutive
    ticks (`pending` holds what the last tick saw), so a file still being copied is never read half
    written. A file whose size and mtime are unchanged since it was processed costs nothing; one whose
    content hash is unchanged (a `touch`) is not processed again."""
    pending = pending or {}
    current: dict[str, dict[str, Any]] = {}
    settling: dict[str, dict[str, Any]] = {}
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
        if pending.get(key) != entry:  # first sight of this size + mtime: wait one tick
            settling[key] = entry
            if prev:
                current[key] = prev
            continue
        entry["sha256"] = file_sha256(path)
        current[key] = entry
        if not prev or prev.get("sha256") != entry["sha256"]:
            changed.append(path)
    vanished = sorted(set(previous) - set(current))
    return current, changed, vanished, settling


def input_sensor(pipeline: str, job_name: str | None = None, minimum_interval_seconds: int | None = None) -> dg.SensorDefinition:
    """A sensor that adds a dynamic partition per new or changed input file (once its size and mtime
    are stable across two ticks) and requests its run. Running by default."""

    @dg.sensor(
        name=f"{pipeline}_input_sensor",
        job_name=job_name or INPUT_JOB.format(pipeline=pipeline),
        minimum_interval_seconds=minimum_interval_seconds or sensor_interval_s(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New or changed files in {inputs_folder(pipeline)} become {pipeline} partitions and runs "
        "(once their size and mtime are stable across two ticks).",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        state = json.loads(context.cursor) if context.cursor else {"files": {}, "vanished": []}
        folder = inputs_folder(pipeline)
        files, changed, vanished, settling = scan(folder, state["files"], state.get("pending"))
        registry = ShardRegistry()
        keys, requests = [], []
        for path in changed:
            shard = registry.add(pipeline, path)
            keys.append(shard.key)
            sha = files[str(path.resolve())]["sha256"]
            requests.append(
                dg.RunRequest(
                    run_key=f"{shard.key}:{sha[:16]}",
                    partition_key=shard.key,
                    tags={"dataflow/input": str(path), "dataflow/pipeline": pipeline},
                )
            )
        for gone in vanished:
            context.log.warning(f"{pipeline}: input file disappeared: {gone} (its partition and outputs are kept)")
        # add them now, so the run requests below name partitions that exist (and repair any drift)
        drift = sync_partitions(context.instance, pipeline)
        if drift.orphans:
            context.log.warning(f"{pipeline}: partition(s) {drift.orphans} have no shard record (added by hand?): nothing to read")
        cursor = json.dumps(
            {"files": files, "pending": settling, "vanished": sorted(set(state.get("vanished", [])) | set(vanished))}
        )
        why = f"no new or changed files in {folder}"
        if settling:
            why = f"{len(settling)} file(s) in {folder} still settling (size/mtime must be stable across two ticks)"
        return dg.SensorResult(
            run_requests=requests,
            cursor=cursor,
            skip_reason=None if requests else dg.SkipReason(why + (f"; {len(vanished)} vanished" if vanished else "")),
        )

    return _sensor


def automation_sensor(minimum_interval_seconds: int | None = None) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the assets' automation conditions (eager, behind passed blocking checks); running by
    default, so `dataflow ui` propagates new data downstream without a click."""
    return dg.AutomationConditionSensorDefinition(
        "dataflow_automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds or sensor_interval_s(),
        description="Materialises stale or missing partitions whose automation condition holds (eager).",
    )


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
