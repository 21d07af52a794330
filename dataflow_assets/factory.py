"""`pipeline_assets()`: a traced `Pipeline` -> one Dagster asset per stage, plus its source, export and catalog.

Assets (all in the group named after the pipeline, keys `<pipeline>/<name>`):
- `source`   reads the partition's input shard, quarantines malformed rows, adds `_id`;
- one asset per operator call in `forward()`, keyed by the operator's attribute name; it reads its
  upstream's Parquet file, runs that one operator, writes its own file, and reports rows in/out,
  drops by reason, LLM calls/cache hits/tokens, wall time, a preview and score summaries; its
  quality gates run in the same step and are blocking;
- `dataset`  the training-ready export of the partition (jsonl + parquet + manifest);
- `catalog`  (unpartitioned, pool `duckdb_catalog`) refreshes the DuckDB views and assembles the
  full export from every partition.

LLM operators get their client by one mechanism: `pipeline.bind_llm(context.resources.llm.client())`
when their stage executes (definitions load before any resource exists).
"""


import dataclasses
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import dagster as dg
import polars as pl

from dataflow_assets import dedup, progress
from dataflow_assets.checks import Gate, GateInput, gates_for
from dataflow_assets.liveness import StageInterrupted
from dataflow_assets.partitions import shard_partitions
from operators.base import ID, Pipeline, Stage, output_of, stable_hash, with_row_ids
from operators.io import QUARANTINE_SCHEMA, InputError, read_input
from resources.storage import (
    QUARANTINE,
    ParquetStore,
    ShardRegistry,
    atomic_path,
    file_sha256,
    home,
    link_atomic,
    write_text_atomic,
)

LLM_POOL = "llm"
CATALOG_POOL = "duckdb_catalog"
SOURCE = "source"
DATASET = "dataset"
CATALOG = "catalog"
PREVIEW_ROWS = 5


# --------------------------------------------------------------------------- metadata helpers


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def preview(frame: pl.DataFrame, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """A small Dagster table of the first rows (strings truncated; nested values as JSON)."""
    head = frame.head(rows)
    columns = [dg.TableColumn(c, "number" if head.schema[c].is_numeric() else "string") for c in head.columns]
    records = [
        dg.TableRecord({c: (_cell(v) if head.schema[c].is_numeric() or v is None else str(_cell(v))) for c, v in r.items()})
        for r in head.iter_rows(named=True)
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def score_summaries(frame: pl.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """Quantile summary (a text histogram) of each numeric column the stage wrote."""
    out = {}
    for col in columns:
        if col in frame.columns and frame.schema[col].is_numeric() and frame.height:
            s = frame.get_column(col).drop_nulls()
            if s.len():
                qs = {f"p{int(q * 100)}": float(s.quantile(q)) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}
                out[f"scores/{col}"] = dg.MetadataValue.json({**qs, "mean": float(s.mean()), "nulls": frame.height - s.len()})
    return out


def column_schema(schema: dict[str, Any]) -> dg.TableSchema:
    """A Dagster table schema (`dagster/column_schema`) from a Polars schema."""
    return dg.TableSchema(columns=[dg.TableColumn(str(c), str(t)) for c, t in schema.items()])


def table_metadata(schema: dict[str, Any], rows: int | None = None) -> dict[str, Any]:
    """Dagster's standard table metadata: `dagster/column_schema` and (after a run) `dagster/row_count`,
    which the UI shows in the asset's header, its columns tab and its row-count plot."""
    meta: dict[str, Any] = {"dagster/column_schema": dg.MetadataValue.table_schema(column_schema(schema))}
    if rows is not None:
        meta["dagster/row_count"] = dg.MetadataValue.int(rows)
    return meta


def dropped_preview(frame_in: pl.DataFrame, dropped_ids: pl.DataFrame | None, rows: int = PREVIEW_ROWS) -> dg.MetadataValue | None:
    """A sample of the rows a filter dropped, each with its reason (first `rows` of every reason)."""
    if dropped_ids is None or dropped_ids.height == 0 or ID not in frame_in.columns:
        return None
    sample = dropped_ids.filter(pl.int_range(pl.len()).over("reason") < rows).head(rows * 4)
    joined = sample.join(frame_in, on=ID, how="left")
    return preview(joined.select("reason", pl.exclude("reason")), rows * 4)


def llm_provenance(out: pl.DataFrame, writes: Sequence[str]) -> dict[str, Any]:
    """Model(s) and prompt version(s) that produced an LLM stage's columns (from the `<col>_meta` structs)."""
    models, prompts = set(), set()
    for col in writes:
        dtype = out.schema.get(col)
        if col.endswith("_meta") and isinstance(dtype, pl.Struct) and out.height:
            fields = {f.name for f in dtype.fields}
            meta = out.get_column(col).struct
            if "model" in fields:
                models.update(m for m in meta.field("model").unique().to_list() if m)
            if "template" in fields:
                prompts.update(t for t in meta.field("template").unique().to_list() if t)
    return {"llm_model": ", ".join(sorted(models)) or "none", "prompt_version": ", ".join(sorted(prompts)) or "none"}


def stage_metadata(stage: Stage, frame_in: pl.DataFrame, out: pl.DataFrame, seconds: float, partition: str | None = None) -> dict[str, Any]:
    """Materialisation metadata of a stage. Its keys never repeat the definition's (`operator`,
    `config`, ...), which the UI would otherwise hide behind the latest materialisation's values."""
    report = stage.operator.last_report
    added = [c for c in out.columns if c not in frame_in.columns]
    meta: dict[str, Any] = {
        "partition": partition or "all",
        "rows_in": frame_in.height,
        "rows_out": out.height,
        "rows_dropped": frame_in.height - out.height,
        "dropped_by_reason": dg.MetadataValue.json(report.dropped if report else {}),
        "columns_added": ", ".join(added) or "none",
        "wall_time_s": round(seconds, 3),
        "preview": preview(out),
        **table_metadata(dict(out.schema), out.height),
        **score_summaries(out, stage.writes),
    }
    dropped = dropped_preview(frame_in, report.dropped_ids if report else None)
    if dropped is not None:
        meta["dropped_preview"] = dropped
    if report and report.modified is not None:
        meta["rows_modified"] = report.modified
    if stage.operator.needs_llm:
        meta.update(llm_provenance(out, stage.writes))
    if report and report.llm:
        llm = report.llm
        meta.update(
            {
                "llm_calls": llm.get("calls", 0),
                "llm_cache_hits": llm.get("cache_hits", 0),
                "llm_errors": dg.MetadataValue.json(llm.get("errors", {})),
                "tokens_in": llm.get("tokens_in", 0),
                "tokens_out": llm.get("tokens_out", 0),
            }
        )
        if "cost_usd" in llm:
            meta["est_cost_usd"] = float(llm["cost_usd"])
        if "http_retries" in llm:
            meta["llm_http_retries"] = int(llm["http_retries"])
    return meta


def exports_folder(pipeline: str) -> Path:
    """Where a pipeline's training-ready export lives: `dataset.{parquet,jsonl}`, `manifest.json`
    and `partitions/` (one export per partition)."""
    return home() / "exports" / pipeline


def split_catalog(assets: Sequence[dg.AssetsDefinition]) -> tuple[list[dg.AssetsDefinition], list[dg.AssetsDefinition]]:
    """(the partitioned assets source -> stages -> dataset, the unpartitioned catalog asset)."""
    stages = [a for a in assets if a.key.path[-1] != CATALOG]
    return stages, [a for a in assets if a.key.path[-1] == CATALOG]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


# --------------------------------------------------------------------------- the factory


def quarantine_file(path: str, reason: str) -> pl.DataFrame:
    return pl.DataFrame([{"file": path, "row": 0, "field": None, "reason": reason, "raw": ""}], schema=QUARANTINE_SCHEMA)


# Transient infrastructure failures (a model server restarting, a full disk) get op-level retries;
# per-row LLM errors are handled inside the client and never fail a stage.
LLM_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
AUTOMATION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


def partition_of(context: dg.AssetExecutionContext) -> str | None:
    return context.partition_key if context.has_partition_key else None


def pipeline_assets(
    pipeline: Pipeline,
    *,
    gates: Sequence[Gate] = (),
    rename: dict[str, str] | None = None,
    partitioned: bool = True,
    empty_filter: str | None = None,
) -> list[dg.AssetsDefinition]:
    """Turn `pipeline` into Dagster assets: source -> one asset per stage -> dataset, and the catalog.

    `gates` are extra quality checks attached to named stages (on top of schema / non_empty /
    unique_id on every stage). `rename` maps input fields to the pipeline's column names.
    `empty_filter` ("warn", the default, or "block"; else the pipeline's `empty_filter` attribute):
    whether a filter that empties a shard warns or blocks its downstream.
    """
    name = pipeline.pipeline_name
    empty_filter = empty_filter or getattr(pipeline, "empty_filter", "warn")
    owners = owners_of(pipeline)
    stages = pipeline.trace()
    parts = shard_partitions(name) if partitioned else None
    final = output_of(stages, type(pipeline).__name__)
    required = dict(pipeline.input_schema)

    def key(stage: str) -> dg.AssetKey:
        return dg.AssetKey([name, stage])

    # -- source ---------------------------------------------------------------------------
    # A pipeline that reads another pipeline's export (`upstream = "text_pt"`) keeps its rows' `_id`s
    # and declares that export as its source's upstream asset, so the graph and `dataflow trace` link them.
    upstream = getattr(pipeline, "upstream", None)
    source_deps = [dg.AssetDep(dg.AssetKey([upstream, DATASET]), partition_mapping=dg.AllPartitionMapping())] if upstream else None

    @dg.asset(
        key=key(SOURCE),
        deps=source_deps,
        group_name=name,
        partitions_def=parts,
        code_version=stable_hash(required, rename, upstream, "source-v1"),
        kinds={"polars", "parquet"},
        owners=owners or None,
        required_resource_keys={"store"},
        description=f"Input rows of {name} for one shard, with a stable `_id`; malformed rows go to {name}.quarantine.",
    )
    def source(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        store: ParquetStore = context.resources.store
        partition = partition_of(context)
        try:
            shard = ShardRegistry().get(name, partition or "all")
        except KeyError:
            raise dg.Failure(
                description=f"{name}: partition {partition!r} has no shard record (added by hand in the UI?), so there is "
                f"nothing to read; add inputs with `dataflow run {name} --input FILE` or drop files into inputs/{name}/",
                allow_retries=False,
            ) from None
        start = time.perf_counter()
        try:
            result = read_input(shard.path, required, rename=rename, start=shard.start, stop=shard.stop)
        except InputError as err:
            # nothing readable: record the file in quarantine, fail this partition only, never retry
            store.write(name, QUARANTINE, partition, quarantine_file(shard.path, str(err)))
            raise dg.Failure(description=str(err), metadata={"input_file": shard.path}, allow_retries=False) from err
        if upstream and ID in result.frame.columns and result.frame.get_column(ID).is_not_null().all():
            frame = result.frame.select(ID, pl.exclude(ID))  # rows of the upstream export keep their `_id`
        else:
            frame = with_row_ids(result.frame, source=Path(shard.path).name + (f"@{shard.start}" if shard.start else ""))
        store.write(name, SOURCE, partition, frame, hand_off=True)
        store.write(name, QUARANTINE, partition, result.quarantine)
        reasons = result.quarantine.group_by("reason").len().sort("len", descending=True) if result.quarantined else None
        if result.quarantined:
            context.log.warning(f"{shard.path}: {result.quarantined} malformed record(s) quarantined")
        progress.notify(pipeline=name, stage=SOURCE, rows=frame.height, quarantined=result.quarantined)
        return dg.MaterializeResult(
            metadata={
                "input_file": shard.path,
                "input_sha256": file_sha256(shard.path),
                "records_read": result.records,
                "rows_out": frame.height,
                "rows_quarantined": result.quarantined,
                "quarantine_reasons": dg.MetadataValue.json({r: n for r, n in reasons.iter_rows()} if reasons is not None else {}),
                "wall_time_s": round(time.perf_counter() - start, 3),
                "preview": preview(frame),
                **table_metadata(dict(frame.schema), frame.height),
            }
        )

    assets: list[dg.AssetsDefinition] = [source]
    for stage in stages:
        if dedup.is_dataset_wide(stage):  # dedup across every partition: signatures -> index -> the stage applies
            assets.extend(dedup.dataset_wide_assets(name, stage, stage.upstream or SOURCE, parts, key, partition_of))
        assets.append(_stage_asset(name, stage, parts, key, [*gates], empty_filter, owners))

    # -- dataset (export of one partition) --------------------------------------------------
    @dg.asset(
        key=key(DATASET),
        deps=[key(final)],
        group_name=name,
        partitions_def=parts,
        code_version="dataset-v1",
        automation_condition=AUTOMATION,
        kinds={"parquet", "json"},
        owners=owners or None,
        required_resource_keys={"store"},
        description=f"Training-ready export of {name} for one shard (jsonl + parquet + manifest): the output of its last stage, `{final}`.",
    )
    def dataset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        store: ParquetStore = context.resources.store
        partition = partition_of(context)
        frame = store.read(name, final, partition)
        store.end_hand_off()  # the last stage's frame stays with this step only, not through the catalog step
        shard = ShardRegistry().get(name, partition or "all")
        folder = exports_folder(name) / "partitions"
        stem = partition or "all"
        # the export is the last stage's file as written (linked, not encoded again: 2 x ~0.6 s at 100k docs)
        link_atomic(store.path(name, final, partition), folder / f"{stem}.parquet")
        store.write(name, DATASET, partition, frame, same_as=final)
        with atomic_path(folder / f"{stem}.jsonl") as tmp:  # streamed to the file: a partition's JSON text never sits
            frame.write_ndjson(tmp)  # in memory as one Python string (with it, 100k C4 docs peaked at 2.7 GB in this step)
        manifest = build_manifest(pipeline, stages, store, partition, frame, shard.path, (shard.start, shard.stop))
        write_text_atomic(json.dumps(manifest, indent=2), folder / f"{stem}.manifest.json")
        progress.notify(pipeline=name, stage=DATASET, rows=frame.height)
        return dg.MaterializeResult(
            metadata={
                "partition": stem,
                "rows": frame.height,
                "path": str(folder / f"{stem}.parquet"),
                "manifest": dg.MetadataValue.json(manifest["rows"]),
                **table_metadata(dict(frame.schema), frame.height),
            }
        )

    # -- catalog + assembled export ------------------------------------------------------
    @dg.asset(
        key=key(CATALOG),
        deps=[key(DATASET)],  # lineage: the export; its views also span every stage's files
        group_name=name,
        pool=CATALOG_POOL,
        code_version="catalog-v1",
        kinds={"duckdb"},
        required_resource_keys={"store"},
        description=f"DuckDB views {name}.<stage> over every partition, and the assembled export of {name}.",
    )
    def catalog(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        store: ParquetStore = context.resources.store
        with store.catalog_lock():  # views and the assembled export change together, under one bounded lock
            views = store.refresh_catalog(name, [SOURCE, QUARANTINE, *[s.name for s in stages], DATASET])
            out = assemble_export(name)
        return dg.MaterializeResult(
            metadata={"views": ", ".join(views), "catalog": str(store.catalog_path), **out}
        )

    return [*assets, dataset, catalog]


def stage_gates(stage: Stage, extra_gates: list[Gate], empty_filter: str = "warn") -> list[Gate]:
    """The checks of one stage: schema / non_empty / unique_id plus the pipeline's gates for it. A
    filter may legitimately empty a shard, so with `empty_filter="warn"` (the default; a pipeline sets
    `empty_filter = "block"` to change it) its `non_empty` check warns instead of blocking; schema and
    uniqueness always block."""
    gates = gates_for(stage.name, extra_gates)
    if stage.operator.kind == "filter" and empty_filter == "warn":
        gates = [dataclasses.replace(g, blocking=False) if g.name == "non_empty" else g for g in gates]
    return gates


def owners_of(pipeline: Pipeline) -> list[str]:
    """Asset owners: `$DATAFLOW_OWNERS` (comma-separated emails or `team:name`), else the pipeline's
    `owners` attribute."""
    env = os.environ.get("DATAFLOW_OWNERS", "")
    return [o.strip() for o in env.split(",") if o.strip()] or list(getattr(pipeline, "owners", ()) or ())


def stage_definition_metadata(stage: Stage) -> dict[str, Any]:
    """What the asset page shows before any run: the operator, its configuration, columns, output
    schema and, for LLM stages, the prompt template's version and sampling parameters."""
    op = stage.operator
    meta: dict[str, Any] = {
        "operator": repr(op),
        "operator_class": f"{type(op).__module__}.{type(op).__qualname__}",
        "config": dg.MetadataValue.json(_jsonable(op.config())),
        "kind": op.kind,
        "reads": ", ".join(stage.reads),
        "writes": ", ".join(stage.writes),
        **table_metadata(dict(stage.schema)),
    }
    template = getattr(op, "template", None)
    if op.needs_llm and template is not None:
        meta["prompt_template"] = f"{getattr(template, 'name', '')}@{getattr(template, 'version', '')}"
        meta["prompt_version"] = str(getattr(template, "version", ""))
    params = getattr(op, "params", None)
    if op.needs_llm and params is not None:
        meta["sampling"] = dg.MetadataValue.json(_jsonable(getattr(params, "__dict__", repr(params))))
    return meta


def _stage_asset(name: str, stage: Stage, parts, key, extra_gates: list[Gate], empty_filter: str = "warn", owners: Sequence[str] = ()) -> dg.AssetsDefinition:
    op = stage.operator
    upstream = stage.upstream or SOURCE
    gates = stage_gates(stage, extra_gates, empty_filter)
    doc = inspect.getdoc(type(op)) or ""
    retry = LLM_RETRY if op.needs_llm else None

    @dg.asset(
        key=key(stage.name),
        deps=[key(upstream), *dedup.extra_deps(stage, key)],
        group_name=name,
        partitions_def=parts,
        code_version=stage.code_version(),
        pool=LLM_POOL if op.needs_llm else None,
        retry_policy=retry,
        automation_condition=dedup.automation(stage, key, AUTOMATION),
        kinds={"polars", "parquet"},
        tags={"domain": op.domain or "custom", "operator_kind": op.kind, "needs_llm": "yes" if op.needs_llm else "no"},
        owners=list(owners) or None,
        check_specs=[g.spec(key(stage.name)) for g in gates],
        required_resource_keys={"store", "llm"} if op.needs_llm else {"store"},
        description=f"**{type(op).__name__}** (`{stage.name}`)\n\n{doc}",
        metadata=stage_definition_metadata(stage),
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        if retry is None:
            return _materialize(context)
        try:
            return _materialize(context)
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as err:  # Dagster would retry a stopped stage
            raise StageInterrupted(stage.name) from err

    def _materialize(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        store: ParquetStore = context.resources.store
        partition = partition_of(context)
        frame = store.read(name, upstream, partition)
        llm_before = None
        if op.needs_llm:
            op.llm = context.resources.llm.client()  # the one binding mechanism, as Pipeline.bind_llm
            llm_before = _llm_stats(context.resources.llm)
        start = time.perf_counter()
        with dedup.stage_context(store, name, stage, partition):  # a dataset-wide dedup applies its index's decision
            out = stage.run(frame)
        seconds = time.perf_counter() - start
        if llm_before is not None and op.last_report is not None:
            after = _llm_stats(context.resources.llm)
            op.last_report.llm["cost_usd"] = round(after.get("est_cost_usd", 0.0) - llm_before.get("est_cost_usd", 0.0), 6)
            op.last_report.llm["http_retries"] = after.get("retries", 0) - llm_before.get("retries", 0)
        metadata = stage_metadata(stage, frame, out, seconds, partition)
        rows_in, unchanged = frame.height, out.schema == frame.schema and out.equals(frame)
        del frame  # the input is not needed past here: its memory is free before the output is encoded
        store.write(name, stage.name, partition, out, hand_off=True, same_as=upstream if unchanged else None)
        report = op.last_report
        if report is not None and report.dropped_ids is not None:
            store.write(name, f"{stage.name}/_dropped", partition, report.dropped_ids.with_columns(pl.lit(stage.name).alias("stage")))
        source_rows = store.row_count(name, SOURCE, partition) or 0
        data = GateInput(out, source_rows, stage.writes, input_rows=rows_in)
        results = [_with_partition(g.evaluate(key(stage.name), data), partition) for g in gates]
        for r in results:
            if not r.passed:
                log = context.log.error if r.severity == dg.AssetCheckSeverity.ERROR else context.log.warning
                log(f"{name}/{stage.name} [{partition or 'all'}]: quality gate {r.check_name!r} failed ({dict(r.metadata)})")
        progress.notify(pipeline=name, stage=stage.name, rows=out.height, rows_in=rows_in)
        return dg.MaterializeResult(metadata=metadata, check_results=results)

    return _asset


def _with_partition(result: dg.AssetCheckResult, partition: str | None) -> dg.AssetCheckResult:
    """The check result, saying which partition it evaluated."""
    return dg.AssetCheckResult(
        asset_key=result.asset_key,
        check_name=result.check_name,
        passed=result.passed,
        severity=result.severity,
        metadata={"partition": partition or "all", **(result.metadata or {})},
        description=result.description,
    )


def _llm_stats(resource: Any) -> dict[str, Any]:
    stats = getattr(resource, "stats", None)
    return dict(stats()) if callable(stats) else {}


# --------------------------------------------------------------------------- export


def build_manifest(pipeline: Pipeline, stages: list[Stage], store: ParquetStore, partition, frame, input_path, row_slice) -> dict:
    """Everything needed to reproduce and audit a dataset: configuration, code versions, input hash,
    rows per stage, models and prompt versions used."""
    name = pipeline.pipeline_name
    models, prompts = set(), set()
    for col, dtype in frame.schema.items():
        if col.endswith("_meta") and isinstance(dtype, pl.Struct):
            fields = {f.name for f in dtype.fields}
            if "model" in fields:
                models.update(m for m in frame.get_column(col).struct.field("model").unique().to_list() if m)
            if "template" in fields:
                prompts.update(t for t in frame.get_column(col).struct.field("template").unique().to_list() if t)
    return {
        "pipeline": name,
        "class": f"{type(pipeline).__module__}.{type(pipeline).__qualname__}",
        "partition": partition,
        "input": {"file": input_path, "sha256": file_sha256(input_path), "slice": list(row_slice)},
        "stages": [
            {
                "name": s.name,
                "operator": f"{type(s.operator).__module__}.{type(s.operator).__qualname__}",
                "config": _jsonable(s.operator.config()),
                "columns": s.columns,
                "code_version": s.code_version(),
            }
            for s in stages
        ],
        "rows": {
            SOURCE: store.row_count(name, SOURCE, partition),
            QUARANTINE: store.row_count(name, QUARANTINE, partition),
            **{s.name: store.row_count(name, s.name, partition) for s in stages},
        },
        "models": sorted(models),
        "prompt_versions": sorted(prompts),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def assemble_export(name: str) -> dict[str, Any]:
    """Concatenate every partition's export into `exports/<name>/dataset.{parquet,jsonl}` + manifest.json."""
    folder = exports_folder(name)
    files = sorted((folder / "partitions").glob("*.parquet"))
    if not files:
        return {"export_rows": 0}
    if len(files) == 1 and files[0].with_suffix(".jsonl").exists():  # one partition: its files are the export
        link_atomic(files[0], folder / "dataset.parquet")
        link_atomic(files[0].with_suffix(".jsonl"), folder / "dataset.jsonl")
    else:  # streamed (sink_*), so memory stays bounded by Polars' batches, not by the whole dataset
        lazy = pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed")
        for target, sink in (("dataset.parquet", lazy.sink_parquet), ("dataset.jsonl", lazy.sink_ndjson)):
            with atomic_path(folder / target) as tmp:
                sink(tmp)
    rows = pl.scan_parquet(folder / "dataset.parquet").select(pl.len()).collect().item()
    manifests = [json.loads(f.with_suffix(".manifest.json").read_text()) for f in files if f.with_suffix(".manifest.json").exists()]
    write_text_atomic(json.dumps({"pipeline": name, "rows": rows, "partitions": manifests}, indent=2), folder / "manifest.json")
    return {"export_rows": rows, "export_path": str(folder / "dataset.parquet")}
