"""Running a shipped pipeline on input files through Dagster from Python or the CLI.

`run_pipeline()` registers each input file (or each slice of `rows_per_shard` records) as a dynamic
partition, materialises every stage of each partition as a run of the pipeline's named job
`<pipeline>_stages` against the project's persistent instance (re-executable from the UI), then refreshes
the catalog and assembles the export (a run of `<pipeline>_catalog`). It returns a
`RunSummary` with rows in/out per stage, drops by reason and quarantined rows.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import dagster as dg

from dataflow_assets import dedup
from dataflow_assets.factory import DATASET, SOURCE, exports_folder, split_catalog
from dataflow_assets.liveness import INTERRUPTED, PoolWaitTimeout, RunAborted, RunGuard, owner_tags, reap_dead_runs, wait_for_pools
from dataflow_assets.pipelines import ShippedPipeline, shipped
from resources.storage import QUARANTINE, ParquetStore, Shard, ShardRegistry, dagster_home, setup_lock

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # failures reach the user as one FAILED line each, not as a stack trace


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
    failures: list[str] = field(default_factory=list)  # "<pipeline>/<stage> (partition K): why", one per failed step
    file_errors: list[str] = field(default_factory=list)  # "<file>: why" for inputs that could not be read at all
    export_note: str | None = None  # why the export was not (fully) rewritten

    @property
    def rows_out(self) -> int:
        last = [s for s in self.stages.values() if s.stage not in (SOURCE, DATASET)]
        return last[-1].rows_out if last else 0

    def invariant_holds(self) -> bool:
        """records in = rows out + rows dropped (by reason) + rows quarantined."""
        dropped = sum(n for s in self.stages.values() for n in s.dropped.values())
        return self.records == self.rows_out + dropped + self.quarantined


_INSTANCES: dict[tuple[str, int, int], dg.DagsterInstance] = {}


def instance() -> dg.DagsterInstance:
    """The project's persistent Dagster instance (DAGSTER_HOME inside the project home). Created under
    the project's setup lock: processes starting at once on a fresh home would otherwise race to create
    the same SQLite tables (`table snapshots already exists`). One per home and process (a command asks
    for it several times: ~0.3 s each to build its storages again); a home made anew at the same path
    (a new dagster.yaml) gets a new one."""
    path = dagster_home()
    os.environ["DAGSTER_HOME"] = str(path)
    st = (path / "dagster.yaml").stat()
    key = (str(path), st.st_ino, st.st_mtime_ns)
    inst = _INSTANCES.get(key)
    if inst is None:
        with setup_lock():
            inst = dg.DagsterInstance.get()
            inst.run_storage, inst.event_log_storage, inst.schedule_storage  # noqa: B018 - creates their tables now
        _INSTANCES[key] = inst
    return inst


def resources() -> dict[str, Any]:
    from dataflow_assets.definitions import resources_for_env

    return resources_for_env()


class MissingInput(FileNotFoundError):
    """An input path that does not exist (checked before any partition is registered)."""


def check_inputs(inputs: Sequence[Path]) -> None:
    """Fail before registering anything when an input path does not exist, so a typo never becomes
    a permanent failed partition."""
    for path in inputs:
        path = Path(path)
        if os.path.lexists(path) and not path.exists():
            raise MissingInput(f"input {path}: a broken symbolic link or a symlink loop; give the file it should point to")
        if not path.exists():
            raise MissingInput(f"input {path}: no such file; check the path (relative paths start at {Path.cwd()})")


def register_shards(spec: ShippedPipeline, inputs: Sequence[Path], rows_per_shard: int | None = None) -> list[Shard]:
    """Add each input (or each `rows_per_shard` slice of it) to the shard registry and the instance."""
    from operators.io import count_records

    check_inputs(inputs)
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
    from dataflow_assets.partitions import sync_partitions

    sync_partitions(instance(), spec.name)  # every shard record gets its Dagster partition
    return shards


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
        with guarded_runs(summary, on_event) as guard:
            for shard in shards:
                guard.wait(spec)
                result = materialize_partition(spec, shard.key, res)
                summary.success &= result.success
                _collect_events(summary, result.all_events)
                _collect_failures(summary, spec, shard.key, result.all_events)
            reapply_stale_dedup(summary, spec, res)
        finish_catalog(summary, spec, res)
    finally:
        if on_event:
            progress.LISTENERS.remove(on_event)
    if output and summary.export:
        # exactly the rows from this run's inputs, after dataset-wide dedup (not the whole dataset)
        _write_output(dedup.partition_rows(name, summary.partitions, exports_folder(name)), Path(output))
        summary.export = str(output)
    return summary


def _collect_events(summary: RunSummary, events: Sequence[dg.DagsterEvent]) -> None:
    for event in events:
        if not event.is_step_materialization:
            continue
        mat = event.step_materialization_data.materialization
        stage = mat.asset_key.path[-1]
        meta = {k: v.value for k, v in mat.metadata.items()}
        if stage == SOURCE:
            _source_accounting(summary, meta)
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


# --------------------------------------------------------------------------- one run model (issue 10 §1)

LOCATION = "dataflow"  # workspace.yaml's code location: the UI finds the jobs of CLI runs there
DEFINITIONS_MODULE = "dataflow_assets.definitions"
REPO_ROOT = Path(__file__).resolve().parents[1]


def job_origin(job_name: str) -> Any:
    """Where the UI finds a CLI run's job: `<job_name>` in the `dataflow` location of workspace.yaml
    (`dataflow ui`), so "Re-execute" and "Re-execute from failure" work on runs the CLI started."""
    import sys

    from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE, working_directory=str(REPO_ROOT))
    location = ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=target, location_name=LOCATION)
    return RemoteRepositoryOrigin(location, "__repository__").get_job_origin(job_name)


def run_named_job(
    spec: ShippedPipeline,
    kind: str,
    *,
    partition: str | None = None,
    stages: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    res: dict[str, Any] | None = None,
) -> Any:
    """Run `<pipeline>_<kind>` (kind: `stages` or `catalog`), the pipeline's named job, in this process
    (the definitions' in-process executor) against the project's instance, for one partition and
    optionally some stage assets only. A shipped pipeline's run records the job's origin in the
    `dataflow` code location, exactly like a run launched from the UI; a pipeline that is not shipped
    (or a resources override) runs the same named job built from its own `Definitions`."""
    from dagster._core.execution.api import execute_run

    inst = instance()
    job_name = f"{spec.name}_{kind}"
    selection = [dg.AssetKey([spec.name, s]) for s in stages or ()] or None
    run_tags = {"dataflow/pipeline": spec.name, **owner_tags(), **(tags or {})}
    if res is None and shipped().get(spec.name) is spec:
        recon = dg.build_reconstructable_job(DEFINITIONS_MODULE, f"{kind}_job", reconstructable_args=(spec.name,))
        job_def = recon.get_definition()
        if partition is not None:
            with dg.partition_loading_context(dynamic_partitions_store=inst):
                run_tags.update(job_def.get_tags_for_partition_key(partition, selected_asset_keys=selection))
        run = inst.create_run_for_job(
            job_def=job_def,
            run_config=QUIET,
            tags={**job_def.run_tags, **run_tags},
            asset_selection=frozenset(selection) if selection else None,
            remote_job_origin=job_origin(job_name),
            job_code_origin=recon.get_python_origin(),
        )
        return execute_run(recon, run, inst, raise_on_error=False)
    from dataflow_assets.definitions import executor, pipeline_jobs

    defs = dg.Definitions(assets=spec.assets, jobs=pipeline_jobs(spec), resources=res or resources(), executor=executor())
    return defs.resolve_job_def(job_name).execute_in_process(
        instance=inst, partition_key=partition, asset_selection=selection, tags=run_tags, run_config=QUIET, raise_on_error=False
    )


def materialize_partition(spec: ShippedPipeline, key: str, res: dict[str, Any] | None = None) -> Any:
    """Every stage of one partition: a run of `<pipeline>_stages`."""
    return run_named_job(spec, "stages", partition=key, res=res)


def refresh_catalog(spec: ShippedPipeline, res: dict[str, Any] | None = None) -> Any:
    """The catalog views and the assembled export: a run of `<pipeline>_catalog` (tagged with the pipeline)."""
    return run_named_job(spec, "catalog", res=res)


def daemon_running(inst: dg.DagsterInstance, within_s: float = 90.0) -> bool:
    """A `dagster-daemon` (as `dataflow ui` starts) whose backfill and run-queue daemons beat recently."""
    import time

    beats = inst.get_daemon_heartbeats()
    now = time.time()
    return all(k in beats and now - beats[k].timestamp < within_s for k in ("BACKFILL", "QUEUED_RUN_COORDINATOR"))


def submit_backfill(spec: ShippedPipeline, keys: Sequence[str], stages: Sequence[str] | None, tags: dict[str, str]) -> Any:
    """A Dagster asset backfill of the pipeline's stage assets over `keys` (what the UI's "Launch
    backfill" creates), recorded in the instance so the UI lists it with its runs."""
    import time

    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from dataflow_assets.definitions import pipeline_definitions

    names = list(stages) if stages else [a.key.path[-1] for a in split_catalog(spec.assets)[0]]
    inst = instance()
    with dg.partition_loading_context(dynamic_partitions_store=inst):
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=make_new_backfill_id(),
            asset_graph=pipeline_definitions(spec.name).resolve_asset_graph(),
            partition_names=list(keys),
            asset_selection=[dg.AssetKey([spec.name, s]) for s in names],
            backfill_timestamp=time.time(),
            tags=tags,
            dynamic_partitions_store=inst,
            all_partitions=False,
            title=f"dataflow backfill {spec.name}",
            description=f"{len(keys)} partition(s) of {spec.name} from the CLI",
            run_config=None,
        )
    inst.add_backfill(backfill)
    return backfill


def finish_backfill(backfill: Any, ok_keys: Sequence[str], failed_keys: Sequence[str]) -> None:
    """Record what a backfill the CLI executed itself did, as the backfill daemon would: the partitions
    materialised and failed, and the final status."""
    import time

    from dagster._core.execution.asset_backfill import AssetBackfillData
    from dagster._core.execution.backfill import BulkActionStatus

    from dataflow_assets.definitions import pipeline_definitions

    inst = instance()
    graph = pipeline_definitions(backfill.asset_selection[0].path[0]).resolve_asset_graph()
    data = backfill.asset_backfill_data

    def subset(keys: Sequence[str]) -> Any:
        if not keys:
            return data.target_subset - data.target_subset
        with dg.partition_loading_context(dynamic_partitions_store=inst):
            return AssetBackfillData.from_asset_partitions(
                asset_graph=graph, partition_names=list(keys), asset_selection=list(backfill.asset_selection),
                dynamic_partitions_store=inst, all_partitions=False, backfill_start_timestamp=backfill.backfill_timestamp,
            ).target_subset

    done = data._replace(requested_subset=data.target_subset, materialized_subset=subset(ok_keys), failed_and_downstream_subset=subset(failed_keys))
    with dg.partition_loading_context(dynamic_partitions_store=inst):
        updated = backfill.with_asset_backfill_data(done, dynamic_partitions_store=inst, asset_graph=graph)
    status = BulkActionStatus.COMPLETED_FAILED if failed_keys else BulkActionStatus.COMPLETED_SUCCESS
    inst.update_backfill(updated.with_status(status).with_end_timestamp(time.time()))


def wait_for_backfill(backfill_id: str, poll_s: float = 2.0, timeout_s: float | None = None) -> Any:
    """Follow a backfill the daemon executes until it is no longer in progress."""
    import time

    from dagster._core.execution.backfill import BulkActionStatus

    inst = instance()
    start = time.monotonic()
    while True:
        current = inst.get_backfill(backfill_id)
        if current.status not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING):
            return current
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return current
        time.sleep(poll_s)


def backfill(
    name: str,
    partitions: Sequence[str] | None = None,
    *,
    parallel: int = 2,
    stages: Sequence[str] | None = None,
) -> RunSummary:
    """A Dagster backfill of `name` over many partitions (all registered shards when `partitions` is
    None), the same record the UI's "Launch backfill" creates: a running `dagster-daemon` (as in
    `dataflow ui`) executes it and this call waits; with none up, this process executes it, `parallel`
    partition runs at a time (each a run of `<pipeline>_stages` tagged with the backfill), then records
    the outcome in the backfill. Then the catalog is refreshed. `stages` limits the runs to some stage
    assets (`dataflow rerun`)."""
    import multiprocessing
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
    summary = RunSummary(name, keys)
    tags = {"dataflow/pipeline": name, **owner_tags()}
    bf = None
    with guarded_runs(summary) as guard:
        guard.wait(spec)
        bf = submit_backfill(spec, keys, stages, tags)
        if daemon_running(inst):
            wait_for_backfill(bf.backfill_id)
        else:
            jobs = [(name, k, bf.backfill_id, tuple(stages or ())) for k in keys]
            if parallel <= 1 or len(keys) == 1:
                runs = [_execute_partition(j) for j in jobs]
            else:  # one process per partition run (Dagster's run setup is not thread-safe)
                with ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
                    runs = list(pool.map(_execute_partition, jobs))
            finish_backfill(bf, [k for k, (_, ok) in zip(keys, runs) if ok], [k for k, (_, ok) in zip(keys, runs) if not ok])
    if bf is None:  # stopped before the backfill was submitted (see summary.failures)
        return summary
    for run in inst.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": bf.backfill_id})):
        summary.success &= run.is_success
        events = [r.dagster_event for r in inst.all_logs(run.run_id) if r.dagster_event]
        _collect_events(summary, events)
        _collect_failures(summary, spec, run.tags.get("dagster/partition"), events)
    reapply_stale_dedup(summary, spec)
    finish_catalog(summary, spec)
    return summary


def _execute_partition(args: tuple[str, str, str, tuple[str, ...]]) -> tuple[str, bool]:
    name, key, backfill_id, stages = args
    result = run_named_job(shipped()[name], "stages", partition=key, stages=stages, tags={"dagster/backfill": backfill_id})
    return result.run_id, result.success


# --------------------------------------------------------------------------- robust runs (issue 9)


class _Guard:
    """What `guarded_runs` yields: `wait(spec)` before each partition run waits (within
    DATAFLOW_POOL_WAIT_S) for a free slot in the pools the run's stages use, reaping dead runs."""

    def __init__(self, inst: dg.DagsterInstance, on_event: Callable[[dict[str, Any]], None] | None, run_guard: Any, summary: RunSummary):
        self.inst = inst
        self.on_event = on_event
        self.run_guard = run_guard
        self.summary = summary

    def wait(self, spec: ShippedPipeline) -> None:
        if self.run_guard.reason:  # the guard stopped the previous partition's run: stop here too
            raise RunAborted()
        if _interrupted(self.summary):  # SIGTERM/Ctrl-C stopped the previous partition's run
            raise KeyboardInterrupt

        pools = {a.node_def.pool for a in split_catalog(spec.assets)[0] if getattr(a.node_def, "pool", None)}
        wait_for_pools(self.inst, pools, on_wait=lambda msg: self.on_event and self.on_event({"stage": "waiting", "message": msg, "rows": 0}))


@contextlib.contextmanager
def guarded_runs(summary: RunSummary, on_event: Callable[[dict[str, Any]], None] | None = None):
    """Around the partition runs of one command: dead runs are marked failed and their pool slots freed
    first; a `RunGuard` watches the runs (a step stuck on a pool past the bound, or SIGTERM while
    Dagster defers it, stops the run); a stopped or timed-out run becomes a FAILED line in `summary`."""
    inst = instance()
    reap_dead_runs(inst)
    guard = RunGuard(inst)
    stopped = "export not rewritten: the run was stopped before every partition ran"
    try:
        with guard:
            yield _Guard(inst, on_event, guard, summary)
            if guard.reason:  # the guard stopped the last partition's run
                raise RunAborted()
            if _interrupted(summary):  # Dagster swallowed the interrupt into a failed run: stop here too
                raise KeyboardInterrupt
    except PoolWaitTimeout as err:
        summary.success = False
        summary.failures.append(f"{summary.pipeline}: {err}")
        summary.export_note = stopped
    except RunAborted:
        summary.success = False
        summary.export_note = stopped
        if not guard.reason:
            raise KeyboardInterrupt from None
        summary.failures.append(f"{summary.pipeline}: {guard.reason}")
    except KeyboardInterrupt:
        summary.success = False
        summary.export_note = stopped
        raise
    finally:
        reap_dead_runs(inst)


_INTERRUPTS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt", "RunAborted", INTERRUPTED)


def _interrupted(summary: RunSummary) -> bool:
    return any(name in line for line in summary.failures for name in _INTERRUPTS)


def _source_accounting(summary: RunSummary, meta: dict[str, Any]) -> None:
    """Records in and quarantined rows of one partition's source. A file with no record at all (empty)
    gets a file-level quarantine row from the reader: that row is a note about the file, not a record,
    so it goes to `file_errors` and records in = rows out + dropped + quarantined still holds (0 = 0)."""
    records, quarantined = int(meta.get("records_read", 0)), int(meta.get("rows_quarantined", 0))
    if records == 0 and quarantined and not int(meta.get("rows_out", 0)):
        reasons = ", ".join(sorted(meta.get("quarantine_reasons") or {})) or "no records"
        summary.file_errors.append(f"{meta.get('input_file', '?')}: {reasons} (0 records)")
        quarantined = 0
    summary.records += records
    summary.quarantined += quarantined


def _collect_failures(summary: RunSummary, spec: ShippedPipeline, partition: str | None, events: Sequence[dg.DagsterEvent]) -> None:
    """One line per failed step ("<pipeline>/<stage> (partition K): why"); for a source step that
    could not read its file at all, the file-level reason and its quarantine rows go in the counts."""
    store = ParquetStore()
    for event in events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        stage = (event.step_key or "").split("__", 1)[-1]
        key = partition or (event.partition if getattr(event, "partition", None) else None) or "?"
        data = event.event_specific_data
        why = ""
        if getattr(data, "user_failure_data", None) is not None and data.user_failure_data.description:
            why = data.user_failure_data.description
        elif getattr(data, "error", None) is not None:
            err = data.error
            while err.cause is not None and err.cls_name in ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"):
                err = err.cause  # the user's exception, not Dagster's wrapper
            message = (err.message or "").strip().removeprefix("dagster._core.errors.").removeprefix(f"{err.cls_name}: ")
            if err.cls_name == "DagsterAssetCheckFailedError":  # "N blocking asset check failed ...:\n<asset>: <check>"
                why = "blocking quality gate failed: " + "; ".join(message.splitlines()[1:] or [message])
            else:
                why = f"{err.cls_name}: {message}" if err.cls_name else message
        where = f" (partition {key})" if key != "-" else ""
        summary.failures.append(f"{spec.name}/{stage}{where}: {why.splitlines()[0] if why else 'failed'}")
        if stage == SOURCE and key != "?":
            quarantine = store.path(spec.name, QUARANTINE, key)
            if quarantine.exists():
                import polars as pl

                rows = pl.read_parquet(quarantine)
                summary.records += rows.height
                summary.quarantined += rows.height
                summary.file_errors += [f"{r['file']}: {r['reason']}" for r in rows.head(3).iter_rows(named=True)]


def finish_catalog(summary: RunSummary, spec: ShippedPipeline, res: dict[str, Any] | None = None) -> None:
    """Refresh the catalog and assemble the export, unless every partition of the run failed: then the
    export is left as it was (only the views are refreshed, so the quarantine can be queried) and the
    summary says so. The export path is reported only when this run's catalog step wrote it."""
    if summary.export_note:  # the run was stopped: leave the export as it was
        return
    ok_partitions = len(summary.partitions) - len({f.split("(partition ", 1)[1].split(")", 1)[0] for f in summary.failures if "(partition " in f})
    if summary.failures and ok_partitions <= 0:
        summary.export_note = "export not rewritten: no partition of this run succeeded"
        with contextlib.suppress(Exception):
            ParquetStore().refresh_catalog(spec.name, [SOURCE, QUARANTINE, *[s.name for s in spec.pipeline.trace()], DATASET])
        return
    cat = refresh_catalog(spec, res)
    summary.success &= cat.success
    if not cat.success:
        _collect_failures(summary, spec, "-", cat.all_events)
        summary.export_note = "export not updated: the catalog step failed (see the FAILED line)"
        return
    export = exports_folder(spec.name) / "dataset.parquet"
    summary.export = str(export) if export.exists() else None
    if summary.failures:
        summary.export_note = "failed partitions are not updated in the export"


def reapply_stale_dedup(summary: RunSummary, spec: ShippedPipeline, res: dict[str, Any] | None = None) -> None:
    """Re-apply dataset-wide dedup where a partition's decision changed after it was applied (a shard
    registered earlier materialised later, as in a parallel backfill): that stage onward, per partition."""
    stages = spec.pipeline.trace()
    for key, first in dedup.refresh_decisions(ParquetStore(), spec.name, stages).items():
        selection = dedup.reapply_selection(spec.name, stages, first, DATASET)
        result = run_named_job(  # a run of `<pipeline>_stages` like every CLI run (re-executable from the UI)
            spec, "stages", partition=key, stages=[k.path[-1] for k in selection], tags={"dataflow/dedup": "reapply"}, res=res
        )
        summary.success &= result.success
        _collect_failures(summary, spec, key, result.all_events)


def _write_output(export: "Path | Any", output: Path) -> None:
    import polars as pl

    frame = export if isinstance(export, pl.DataFrame) else pl.read_parquet(export)
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
            "failures": summary.failures,
            "file_errors": summary.file_errors,
            "export_note": summary.export_note,
        }
    )


__all__ = ["RunSummary", "run_pipeline", "instance", "register_shards", "materialize_partition", "refresh_catalog", "QUARANTINE"]
