"""Dataset-wide deduplication: a dedup stage split in two around one unpartitioned step.

Any stage whose operator is a `DatasetDedupFilter` (`ExactDedupFilter`, `MinhashDedupFilter`, on
any column) becomes three assets instead of one:

    <pipeline>/<stage>_signatures  partitioned: the upstream rows' keys (exact hash; MinHash signature
                                   and LSH band keys) -> data/<pipeline>/<stage>/_signatures/<partition>.parquet
    <pipeline>/<stage>_index       unpartitioned, the dataset-wide step: decides, for every partition
                                   whose decision is missing or stale, which of its rows duplicate an
                                   earlier row -> data/<pipeline>/<stage>/_decisions/<partition>.parquet
    <pipeline>/<stage>             partitioned (the stage itself): drops the decided rows, recording for
                                   each the `_id` (and partition) of the row it duplicates.

The order is the shard registry's registration order (then row order): the earliest registered
shard and row wins, so the kept set does not depend on the order partitions materialise in. A
partition's decision depends only on the partitions registered before it, so it is remembered with
a fingerprint of its own signatures and of that prefix: appending a shard decides that shard alone
(its keys against its own earlier rows, plus a lookup of its band keys / hashes in the earlier
partitions' signature files, reading only the signatures of matched rows); a shard materialised out
of order (a parallel backfill) re-decides the later partitions, and `stale_applications()` lists
the partitions whose applied decision is no longer current, which the runner re-applies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import dagster as dg
import polars as pl

from operators.base import ID, Stage
from operators.text.dedup import DatasetDedupFilter
from resources.storage import (
    UNPARTITIONED,
    ParquetStore,
    ShardRegistry,
    file_lock,
    write_parquet_atomic,
    write_text_atomic,
)

SIGNATURES = "_signatures"
DECISIONS = "_decisions"


def is_dataset_wide(stage: Stage) -> bool:
    """Whether `stage` deduplicates across every partition (its operator is a `DatasetDedupFilter`)."""
    return isinstance(stage.operator, DatasetDedupFilter)


def signatures_name(stage: Stage | str) -> str:
    return f"{getattr(stage, 'name', stage)}_signatures"


def index_name(stage: Stage | str) -> str:
    return f"{getattr(stage, 'name', stage)}_index"


# --------------------------------------------------------------------------- files


def _folder(store: ParquetStore, pipeline: str, stage: str) -> Path:
    return store.base / pipeline / stage


def signatures_path(store: ParquetStore, pipeline: str, stage: str, partition: str | None) -> Path:
    return _folder(store, pipeline, stage) / SIGNATURES / f"{partition or UNPARTITIONED}.parquet"


def decision_path(store: ParquetStore, pipeline: str, stage: str, partition: str | None) -> Path:
    return _folder(store, pipeline, stage) / DECISIONS / f"{partition or UNPARTITIONED}.parquet"


def _applied_path(store: ParquetStore, pipeline: str, stage: str, partition: str | None) -> Path:
    return _folder(store, pipeline, stage) / DECISIONS / f"{partition or UNPARTITIONED}.applied"


def _state_path(store: ParquetStore, pipeline: str, stage: str) -> Path:
    return _folder(store, pipeline, stage) / DECISIONS / "state.json"


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _load_state(store: ParquetStore, pipeline: str, stage: str) -> dict[str, Any]:
    path = _state_path(store, pipeline, stage)
    return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------- the three steps


def write_signatures(store: ParquetStore, pipeline: str, stage: Stage, partition: str | None, frame: pl.DataFrame) -> pl.DataFrame:
    """Step 1 (per partition): persist the keys of `frame`'s rows."""
    op: DatasetDedupFilter = stage.operator  # type: ignore[assignment]
    cols = op.resolve(stage.columns)
    for role, col in op.input_columns(cols):
        if col not in frame.columns:
            raise KeyError(f"{stage.name}: missing column {col!r} (role {role!r})")
    sig = op.signatures(frame, cols)
    write_parquet_atomic(sig, signatures_path(store, pipeline, stage.name, partition))
    return sig


def partition_order(pipeline: str, store: ParquetStore, stage: str) -> list[str]:
    """Partitions with signatures, in registration order (then any unregistered ones by name)."""
    folder = _folder(store, pipeline, stage) / SIGNATURES
    present = {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()
    registered = [k for k in ShardRegistry().in_registration_order(pipeline) if k in present]
    return registered + sorted(present - set(registered))


def decide_dataset(store: ParquetStore, pipeline: str, stage: Stage, order: Sequence[str] | None = None) -> dict[str, Any]:
    """Step 2 (dataset-wide): (re)decide every partition whose decision is missing or stale; under a
    file lock, so concurrent runs queue. Returns what it did."""
    op: DatasetDedupFilter = stage.operator  # type: ignore[assignment]
    name = stage.name
    start = time.perf_counter()
    with file_lock(_folder(store, pipeline, name) / DECISIONS / ".lock"):
        keys = list(order) if order is not None else partition_order(pipeline, store, name)
        sig_paths = {k: signatures_path(store, pipeline, name, k) for k in keys}
        keys = [k for k in keys if sig_paths[k].exists()]
        state = _load_state(store, pipeline, name)
        prefix = hashlib.blake2b(digest_size=16)
        decided, changed, dropped = [], [], 0
        for i, key in enumerate(keys):
            want = {"self": _fingerprint(sig_paths[key]), "prefix": prefix.hexdigest()}
            prefix.update(f"{key}\0{want['self']}\n".encode())
            path = decision_path(store, pipeline, name, key)
            old = state.get(key, {})
            if {k: old.get(k) for k in want} == want and path.exists():
                dropped += int(old.get("dropped", 0))
                continue
            earlier = keys[:i]
            decision = op.decide(pl.read_parquet(sig_paths[key]), (pl.scan_parquet(sig_paths[k]) for k in earlier))
            lookup = pl.DataFrame({"twin_source": list(range(-1, len(earlier))), "duplicate_partition": [key, *earlier]},
                                  schema={"twin_source": pl.Int32, "duplicate_partition": pl.String})
            decision = decision.join(lookup, on="twin_source", how="left").select(ID, "duplicate_of", "duplicate_partition", "row", "twin_row")
            digest = hashlib.blake2b(decision.select(ID, "duplicate_of", "duplicate_partition").write_csv().encode(), digest_size=16).hexdigest()
            write_parquet_atomic(decision, path)
            if old.get("digest") not in (None, digest):
                changed.append(key)
            state[key] = {**want, "digest": digest, "dropped": decision.height}
            decided.append(key)
            dropped += decision.height
        for gone in set(state) - set(keys):
            state.pop(gone)
        write_text_atomic(json.dumps(state, indent=1), _state_path(store, pipeline, name))
    return {
        "partitions": len(keys),
        "decided": decided,
        "redecided_with_new_result": changed,
        "rows_dropped_dataset_wide": dropped,
        "seconds": round(time.perf_counter() - start, 3),
    }


@contextlib.contextmanager
def applying(store: ParquetStore, pipeline: str, stage: Stage, partition: str | None) -> Iterator[pl.DataFrame]:
    """Step 3 (per partition): while the block runs, the stage's operator drops the rows the
    dataset-wide step decided for `partition` (instead of deciding within the partition alone);
    afterwards the applied decision's digest is recorded."""
    op: DatasetDedupFilter = stage.operator  # type: ignore[assignment]
    name = stage.name
    path = decision_path(store, pipeline, name, partition)
    state = _load_state(store, pipeline, name).get(partition or UNPARTITIONED)
    sig = signatures_path(store, pipeline, name, partition)
    if state is None or not path.exists() or not sig.exists() or state.get("self") != _fingerprint(sig):
        raise dg.Failure(
            description=f"{pipeline}/{name}: no current dataset-wide decision for partition {partition!r}; "
            f"materialise {pipeline}/{signatures_name(name)} and {pipeline}/{index_name(name)} first",
            allow_retries=False,
        )
    decision = pl.read_parquet(path)
    with op.decided(decision):
        yield decision
    write_text_atomic(state["digest"], _applied_path(store, pipeline, name, partition))


def stage_context(store: ParquetStore, pipeline: str, stage: Stage, partition: str | None) -> contextlib.AbstractContextManager:
    """What the factory wraps a stage's run in: `applying()` for a dataset-wide dedup stage, else nothing."""
    return applying(store, pipeline, stage, partition) if is_dataset_wide(stage) else contextlib.nullcontext()


def extra_deps(stage: Stage, key: Callable[[str], dg.AssetKey]) -> list[dg.AssetKey]:
    """The stage asset's extra upstream: its dataset-wide index, for a dedup stage."""
    return [key(index_name(stage))] if is_dataset_wide(stage) else []


def automation(stage: Stage, key: Callable[[str], dg.AssetKey], condition: dg.AutomationCondition) -> dg.AutomationCondition:
    """The stage asset's automation condition; a dedup stage ignores its (unpartitioned) index, whose
    every update would otherwise make every partition re-apply: appending a shard changes no earlier
    decision, and the ones that do change are re-applied by `dataflow run` / backfill."""
    return condition.ignore(dg.AssetSelection.assets(key(index_name(stage)))) if is_dataset_wide(stage) else condition


def stale_applications(store: ParquetStore, pipeline: str, stages: Sequence[Stage]) -> dict[str, str]:
    """Partition -> the first dataset-wide dedup stage whose applied decision is no longer the
    current one (a partition registered earlier materialised later, or changed)."""
    stale: dict[str, str] = {}
    for stage in stages:
        if not is_dataset_wide(stage):
            continue
        for key, entry in _load_state(store, pipeline, stage.name).items():
            applied = _applied_path(store, pipeline, stage.name, key)
            if key not in stale and (not applied.exists() or applied.read_text() != entry.get("digest")):
                if store.path(pipeline, stage.name, key).exists():  # applied before, with another decision
                    stale[key] = stage.name
    return stale


def refresh_decisions(store: ParquetStore, pipeline: str, stages: Sequence[Stage]) -> dict[str, str]:
    """Bring every dataset-wide decision up to date (a no-op lookup when nothing changed; after a
    partition was removed, the later ones are re-decided), then return `stale_applications()`."""
    for stage in stages:
        if is_dataset_wide(stage) and (_folder(store, pipeline, stage.name) / SIGNATURES).exists():
            decide_dataset(store, pipeline, stage)
    return stale_applications(store, pipeline, stages)


def partition_rows(pipeline: str, partitions: Sequence[str], exports: Path) -> pl.DataFrame:
    """The exported rows of exactly these partitions (what `dataflow run --output` writes)."""
    files = [exports / "partitions" / f"{k}.parquet" for k in partitions]
    files = [f for f in files if f.exists()]
    if not files:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


# --------------------------------------------------------------------------- assets


def dataset_wide_assets(
    pipeline: str,
    stage: Stage,
    upstream: str,
    parts: dg.PartitionsDefinition | None,
    key: Callable[[str], dg.AssetKey],
    partition_of: Callable[[dg.AssetExecutionContext], str | None],
) -> list[dg.AssetsDefinition]:
    """The signatures asset (partitioned) and the dataset-wide index asset (unpartitioned) of a
    dedup `stage`; the stage's own asset (the factory's) applies the decision."""
    op = stage.operator
    version = stage.code_version()

    @dg.asset(
        key=key(signatures_name(stage)),
        deps=[key(upstream)],
        group_name=pipeline,
        partitions_def=parts,
        code_version=version,
        kinds={"polars", "parquet"},
        required_resource_keys={"store"},
        description=f"{type(op).__name__} signatures of {pipeline}/{upstream} for one shard, for the dataset-wide {stage.name}.",
    )
    def signatures(context) -> dg.MaterializeResult:  # unannotated: postponed annotations are strings to Dagster
        store: ParquetStore = context.resources.store
        partition = partition_of(context)
        start = time.perf_counter()
        sig = write_signatures(store, pipeline, stage, partition, store.read(pipeline, upstream, partition))
        path = signatures_path(store, pipeline, stage.name, partition)
        return dg.MaterializeResult(
            metadata={"rows": sig.height, "path": str(path), "bytes": path.stat().st_size, "wall_time_s": round(time.perf_counter() - start, 3)}
        )

    @dg.asset(
        key=key(index_name(stage)),
        deps=[key(signatures_name(stage))],
        group_name=pipeline,
        code_version=version,
        kinds={"polars", "parquet"},
        required_resource_keys={"store"},
        description=f"Dataset-wide {stage.name}: which rows of each shard duplicate an earlier row of any shard "
        "(earliest registered shard and row wins); decides only new or stale shards.",
    )
    def index(context) -> dg.MaterializeResult:
        store: ParquetStore = context.resources.store
        store.end_hand_off()  # the dataset-wide step holds every shard's keys: no stage frame beside them
        result = decide_dataset(store, pipeline, stage)
        return dg.MaterializeResult(
            metadata={
                "partitions": result["partitions"],
                "partitions_decided": dg.MetadataValue.json(result["decided"]),
                "redecided_with_new_result": dg.MetadataValue.json(result["redecided_with_new_result"]),
                "rows_dropped_dataset_wide": result["rows_dropped_dataset_wide"],
                "wall_time_s": result["seconds"],
            }
        )

    return [signatures, index]


def reapply_selection(pipeline: str, stages: Sequence[Stage], first: str, dataset: str = "dataset") -> list[dg.AssetKey]:
    """The assets to re-materialise for a partition whose decision at dedup stage `first` changed:
    that stage and every later stage (with the signatures and index of later dedup stages), and the
    partition's export."""
    names = [s.name for s in stages]
    selected: list[dg.AssetKey] = []
    for stage in stages[names.index(first) :]:
        if is_dataset_wide(stage) and stage.name != first:
            selected += [dg.AssetKey([pipeline, signatures_name(stage)]), dg.AssetKey([pipeline, index_name(stage)])]
        selected.append(dg.AssetKey([pipeline, stage.name]))
    return [*selected, dg.AssetKey([pipeline, dataset])]
