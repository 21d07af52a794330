"""Running a shipped pipeline on input files through Dagster from Python or the CLI.

`run_pipeline()` registers each input file (or each slice of `rows_per_shard` records) as a dynamic
partition, materialises every stage of each partition with `dagster.materialize()` against the
project's persistent instance, then refreshes the catalog and assembles the export. It returns a
`RunSummary` with rows in/out per stage, drops by reason and quarantined rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import dagster as dg

from dataflow_assets.factory import DATASET, SOURCE, exports_folder, split_catalog
from dataflow_assets.pipelines import ShippedPipeline, shipped
from resources.storage import QUARANTINE, Shard, ShardRegistry, dagster_home

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class StageSummary:
    stage: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    cache_hits: int = 0
    seconds: float = 0.0


@dataclass
class RunSummary:
    pipeline: str
    partitions: list[str]
    records: int = 0
    quarantined: int = 0
    stages: dict[str, StageSummary] = field(default_factory=dict)
    checks_failed: list[str] = field(default_factory=list)
    export: str | None = None
    success: bool = True

    @property
    def rows_out(self) -> int:
        last = [s for s in self.stages.values() if s.stage not in (SOURCE, DATASET)]
        return last[-1].rows_out if last else 0

    def invariant_holds(self) -> bool:
        """records in = rows out + rows dropped (by reason) + rows quarantined."""
        dropped = sum(n for s in self.stages.values() for n in s.dropped.values())
        return self.records == self.rows_out + dropped + self.quarantined


def instance() -> dg.DagsterInstance:
    """The project's persistent Dagster instance (DAGSTER_HOME inside the project home)."""
    os.environ["DAGSTER_HOME"] = str(dagster_home())
    return dg.DagsterInstance.get()


def resources() -> dict[str, Any]:
    from dataflow_assets.definitions import resources_for_env

    return resources_for_env()


def register_shards(spec: ShippedPipeline, inputs: Sequence[Path], rows_per_shard: int | None = None) -> list[Shard]:
    """Add each input (or each `rows_per_shard` slice of it) to the shard registry and the instance."""
    from operators.io import count_records

    registry = ShardRegistry()
    shards = []
    for path in inputs:
        path = Path(path)
        if rows_per_shard:
            total = count_records(path)
            for start in range(0, max(total, 1), rows_per_shard):
                shards.append(registry.add(spec.name, path, start, start + rows_per_shard))
        else:
            shards.append(registry.add(spec.name, path))
    inst = instance()
    inst.add_dynamic_partitions(f"{spec.name}_shards", [s.key for s in shards])
    return shards


def materialize_partition(spec: ShippedPipeline, key: str, res: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        split_catalog(spec.assets)[0],
        partition_key=key,
        instance=instance(),
        resources=res or resources(),
        run_config=QUIET,
        raise_on_error=False,
        tags={"dataflow/pipeline": spec.name},
    )


def refresh_catalog(spec: ShippedPipeline, res: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(split_catalog(spec.assets)[1], instance=instance(), resources=res or resources(), run_config=QUIET, raise_on_error=False)


def run_pipeline(
    name: "str | ShippedPipeline",
    inputs: Sequence[Path],
    *,
    output: Path | None = None,
    rows_per_shard: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    res: dict[str, Any] | None = None,
) -> RunSummary:
    if isinstance(name, ShippedPipeline):
        spec, name = name, name.name
    else:
        specs = shipped()
        if name not in specs:
            raise KeyError(f"unknown pipeline {name!r}; shipped pipelines: {sorted(specs)}")
        spec = specs[name]
    shards = register_shards(spec, inputs, rows_per_shard)
    summary = RunSummary(name, [s.key for s in shards])
    from dataflow_assets import progress

    if on_event:
        progress.LISTENERS.append(on_event)
    try:
        for shard in shards:
            result = materialize_partition(spec, shard.key, res)
            summary.success &= result.success
            _collect_events(summary, result.all_events)
        cat = refresh_catalog(spec, res)
        summary.success &= cat.success
    finally:
        if on_event:
            progress.LISTENERS.remove(on_event)
    export = exports_folder(name) / "dataset.parquet"
    summary.export = str(export) if export.exists() else None
    if output and export.exists():
        _write_output(export, Path(output))
        summary.export = str(output)
    return summary


def backfill(
    name: str,
    partitions: Sequence[str] | None = None,
    *,
    parallel: int = 2,
    stages: Sequence[str] | None = None,
) -> RunSummary:
    """Run the stages job of `name` for many partitions (all registered shards when `partitions` is
    None), `parallel` runs at a time, each with the multiprocess executor; then refresh the catalog.
    `stages` limits the run to some stage assets (e.g. re-run one stage of one partition)."""
    import multiprocessing
    import uuid
    from concurrent.futures import ProcessPoolExecutor

    spec = shipped()[name]
    keys = list(partitions) if partitions else [s.key for s in ShardRegistry().all(name)]
    if not keys:
        raise ValueError(f"{name}: no partitions to run; add inputs with `dataflow run` or the input sensor")
    inst = instance()
    known = set(inst.get_dynamic_partitions(f"{name}_shards"))
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise KeyError(f"{name}: unknown partition(s) {unknown}; known: {sorted(known)}")
    tag = uuid.uuid4().hex[:8]
    summary = RunSummary(name, keys)
    # One process per partition run (Dagster's run setup is not thread-safe); each run uses the
    # multiprocess executor of the definitions, so stages of a run can also go in parallel.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, parallel), mp_context=ctx) as pool:
        runs = list(pool.map(_execute_partition, [(name, k, tag, tuple(stages or ())) for k in keys]))
    for run_id, ok in runs:
        summary.success &= ok
        _collect_events(summary, [r.dagster_event for r in inst.all_logs(run_id) if r.dagster_event])
    summary.success &= refresh_catalog(spec).success
    export = exports_folder(name) / "dataset.parquet"
    summary.export = str(export) if export.exists() else None
    return summary


def _execute_partition(args: tuple[str, str, str, tuple[str, ...]]) -> tuple[str, bool]:
    name, key, tag, stages = args
    job = dg.build_reconstructable_job("dataflow_assets.definitions", "stages_job", reconstructable_args=(name,))
    with dg.execute_job(
        job,
        instance=instance(),
        tags={"dagster/partition": key, "dataflow/backfill": tag, "dataflow/pipeline": name},
        asset_selection=[dg.AssetKey([name, s]) for s in stages] or None,
        run_config=QUIET,
    ) as result:
        return result.run_id, result.success


def _collect_events(summary: RunSummary, events: Sequence[dg.DagsterEvent]) -> None:
    for event in events:
        if not event.is_step_materialization:
            continue
        mat = event.step_materialization_data.materialization
        stage = mat.asset_key.path[-1]
        meta = {k: v.value for k, v in mat.metadata.items()}
        if stage == SOURCE:
            summary.records += int(meta.get("records_read", 0))
            summary.quarantined += int(meta.get("rows_quarantined", 0))
            rows_in = rows_out = int(meta.get("rows_out", 0))
        else:
            rows_in, rows_out = int(meta.get("rows_in", meta.get("rows", 0))), int(meta.get("rows_out", meta.get("rows", 0)))
        s = summary.stages.setdefault(stage, StageSummary(stage, 0, 0))
        s.rows_in += rows_in
        s.rows_out += rows_out
        for reason, n in (meta.get("dropped_by_reason") or {}).items():
            s.dropped[reason] = s.dropped.get(reason, 0) + int(n)
        s.llm_calls += int(meta.get("llm_calls", 0))
        s.cache_hits += int(meta.get("llm_cache_hits", 0))
        s.seconds += float(meta.get("wall_time_s", 0.0))
    for event in events:
        if event.event_type_value != "ASSET_CHECK_EVALUATION":
            continue
        ev = event.event_specific_data
        if not ev.passed:
            summary.checks_failed.append(f"{'/'.join(ev.asset_key.path)}:{ev.check_name}")


def _write_output(export: Path, output: Path) -> None:
    import polars as pl

    frame = pl.read_parquet(export)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".parquet":
        frame.write_parquet(output)
    elif output.suffix in (".jsonl", ".ndjson"):
        frame.write_ndjson(output)
    elif output.suffix == ".csv":
        frame.select(pl.col(c).cast(pl.String) if frame.schema[c].is_nested() else pl.col(c) for c in frame.columns).write_csv(output)
    else:
        raise ValueError(f"{output}: output must end in .parquet, .jsonl or .csv")


def summary_json(summary: RunSummary) -> str:
    return json.dumps(
        {
            "pipeline": summary.pipeline,
            "partitions": summary.partitions,
            "records": summary.records,
            "quarantined": summary.quarantined,
            "rows_out": summary.rows_out,
            "stages": {k: vars(v) for k, v in summary.stages.items()},
            "checks_failed": summary.checks_failed,
            "export": summary.export,
            "success": summary.success,
        }
    )


__all__ = ["RunSummary", "run_pipeline", "instance", "register_shards", "materialize_partition", "refresh_catalog", "QUARANTINE"]
