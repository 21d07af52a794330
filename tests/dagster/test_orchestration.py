"""Partitions, backfills, sensors, corrupt shards, row tracing and the CLI on the shipped text pipeline."""

import json
from datetime import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from dataflow_assets.demo import demo_corpus, write_demo_corpus
from dataflow_assets.runner import backfill, instance, register_shards, run_pipeline
from dataflow_assets.pipelines import shipped
from dataflow_assets.trace import format_trace, trace_row
from sensors.inputs import input_sensor

REPO = Path(__file__).resolve().parents[2]


def _split_corpus(tmp_path: Path) -> list[Path]:
    docs = demo_corpus()
    a, b = tmp_path / "part_a.jsonl", tmp_path / "part_b.jsonl"
    # interleaved, so each half keeps good documents after dataset-wide dedup
    a.write_text("\n".join(json.dumps(d) for d in docs[::2]) + "\n")
    b.write_text("\n".join(json.dumps(d) for d in docs[1::2]) + "\n")
    return [a, b]


def test_run_pipeline_on_demo_corpus_accounts_for_every_record(dataflow_home):
    path = write_demo_corpus(dataflow_home / "corpus.jsonl")
    summary = run_pipeline("text_pt", [path])
    assert summary.success, summary.checks_failed
    assert summary.records == len(demo_corpus()) + 3 and summary.quarantined == 3
    assert summary.invariant_holds()
    dropped = {r for s in summary.stages.values() for r in s.dropped}
    assert {"wrong_language", "exact_duplicate", "near_duplicate"} <= dropped, dropped
    kept = pl.read_parquet(summary.export).get_column("text").to_list()
    assert 5 <= len(kept) <= 12
    assert not any("Lorem ipsum" in t or "BUY NOW" in t for t in kept)
    con = duckdb.connect(str(dataflow_home / "catalog.duckdb"), read_only=True)
    assert con.execute("select count(*) from text_pt.minhash_dedup").fetchone()[0] == len(kept)
    assert con.execute("select count(*) from text_pt.quarantine").fetchone()[0] == 3
    con.close()


def test_trace_shows_where_and_why_a_row_was_dropped(dataflow_home):
    path = write_demo_corpus(dataflow_home / "corpus.jsonl")
    run_pipeline("text_pt", [path])
    store_source = pl.read_parquet(next((dataflow_home / "data" / "text_pt" / "source").glob("*.parquet")))
    french = store_source.filter(pl.col("text").str.starts_with("La ville")).get_column("_id")[0]
    steps = trace_row("text_pt", french)
    language = next(s for s in steps if s["stage"] == "language")
    assert language["status"] == "dropped" and language["reason"] == "wrong_language"
    assert all(s["status"].startswith("absent") for s in steps[steps.index(language) + 1 :])
    good = store_source.filter(pl.col("text").str.starts_with("Sourdough")).get_column("_id")[0]
    kept_steps = trace_row("text_pt", good)
    assert all(s["status"] == "present" for s in kept_steps)
    assert "[minhash_dedup] present" in format_trace(kept_steps)


def test_backfill_runs_partitions_in_parallel_with_multiprocess_executor(dataflow_home, tmp_path):
    files = _split_corpus(tmp_path)
    spec = shipped()["text_pt"]
    shards = register_shards(spec, files)
    summary = backfill("text_pt", [s.key for s in shards], parallel=2)
    assert summary.success, (summary.checks_failed, summary.failures)
    # a Dagster backfill (as the UI's), executed here since no daemon is up: one named-job run per partition
    backfills = instance().get_backfills()
    assert len(backfills) == 1 and backfills[0].status.value == "COMPLETED_SUCCESS"
    runs = instance().get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfills[0].backfill_id}))
    assert len(runs) == 2 and all(r.is_success and r.job_name == "text_pt_stages" for r in runs)
    assert {r.tags["dagster/partition"] for r in runs} == {s.key for s in shards}
    from dagster._core.execution.asset_backfill import AssetBackfillStatus

    from dataflow_assets.definitions import pipeline_definitions

    status = backfills[0].asset_backfill_data.get_backfill_status_per_asset_key(pipeline_definitions("text_pt").resolve_asset_graph())
    partitioned = {s.asset_key.path[-1]: s for s in status if hasattr(s, "partitions_counts_by_status")}
    assert set(partitioned) >= {"source", "minhash_dedup", "dataset"}  # what the UI's backfill page counts
    assert all(s.partitions_counts_by_status.get(AssetBackfillStatus.MATERIALIZED) == 2 for s in partitioned.values())
    catalog = instance().get_runs(filters=dg.RunsFilter(tags={"dataflow/pipeline": "text_pt"}))
    assert "text_pt_catalog" in {r.job_name for r in catalog} and "__ephemeral_asset_job__" not in {r.job_name for r in catalog}
    con = duckdb.connect(str(dataflow_home / "catalog.duckdb"), read_only=True)
    parts = con.execute("select count(distinct filename) from text_pt.source").fetchone()[0]
    con.close()
    assert parts == 2
    assert summary.stages["source"].rows_out == len(demo_corpus())

    # re-run one stage of one partition (`dataflow rerun`): only that asset is materialised again
    again = backfill("text_pt", [shards[0].key], parallel=1, stages=["minhash_dedup"])
    assert again.success and set(again.stages) == {"minhash_dedup"}
    latest = instance().get_runs(filters=dg.RunsFilter(tags={"dagster/partition": shards[0].key}), limit=1)[0]
    assert latest.asset_selection == {dg.AssetKey(["text_pt", "minhash_dedup"])}


def test_corrupt_shard_fails_its_source_and_other_partitions_go_on(dataflow_home, tmp_path):
    good = write_demo_corpus(tmp_path / "good.jsonl")
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"this is not gzip")
    summary = run_pipeline("text_pt", [good, bad])
    assert not summary.success
    exports = pl.read_parquet(dataflow_home / "exports" / "text_pt" / "dataset.parquet")
    assert exports.height > 0  # the good partition made it through
    quarantine = pl.read_parquet(list((dataflow_home / "data" / "text_pt" / "_quarantine").glob("bad*.parquet"))[0])
    assert quarantine.get_column("reason")[0].endswith("not a valid gzip file (Not a gzipped file (b'th'))")
    runs = instance().get_runs()
    failed = [r for r in runs if r.is_failure]
    assert len(failed) == 1 and failed[0].tags["dagster/partition"].startswith("bad.jsonl.gz")


def test_input_sensor_adds_partitions_once_and_reports_vanished_files(dataflow_home, monkeypatch, tmp_path):
    inbox = tmp_path / "inbox"
    monkeypatch.setenv("DATAFLOW_INPUTS", str(inbox))
    folder = inbox / "text_pt"
    folder.mkdir(parents=True)
    write_demo_corpus(folder / "a.jsonl")
    (folder / "notes.txt").write_text("ignored: not an input format")
    from dataflow_assets.definitions import defs

    sensor = input_sensor("text_pt")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    inst = instance()

    def tick(cursor):
        with dg.partition_loading_context(dynamic_partitions_store=inst):
            return sensor.evaluate_tick(dg.build_sensor_context(instance=inst, cursor=cursor, definitions=defs))

    settling = tick(None)  # first sight: size and mtime must hold still for one more tick
    assert settling.run_requests == [] and "still settling" in settling.skip_message
    assert inst.get_dynamic_partitions("text_pt_shards") == []
    first = tick(settling.cursor)
    assert [r.partition_key.startswith("a.jsonl-") for r in first.run_requests] == [True]
    assert first.run_requests[0].tags["dataflow/pipeline"] == "text_pt"
    assert inst.get_dynamic_partitions("text_pt_shards") == [first.run_requests[0].partition_key]
    second = tick(first.cursor)  # a restart with the same cursor repeats nothing
    assert second.run_requests == [] and "no new or changed files" in second.skip_message
    os.utime(folder / "a.jsonl", (time.time() + 5, time.time() + 5))  # touched, same content
    touched = tick(second.cursor)
    assert tick(touched.cursor).run_requests == [] and touched.run_requests == []
    (folder / "a.jsonl").write_text((folder / "a.jsonl").read_text() + json.dumps({"text": "one more document"}) + "\n")
    write_demo_corpus(folder / "b.jsonl")
    growing = tick(second.cursor)
    assert growing.run_requests == []
    with (folder / "b.jsonl").open("a") as f:  # still being written: its size changed since the last tick
        f.write(json.dumps({"text": "appended while the sensor watched"}) + "\n")
    third = tick(growing.cursor)
    assert [r.partition_key.split("-")[0] for r in third.run_requests] == ["a.jsonl"]
    fourth = tick(third.cursor)  # b.jsonl held still for a tick: now it starts
    assert [r.partition_key.split("-")[0] for r in fourth.run_requests] == ["b.jsonl"]
    (folder / "b.jsonl").unlink()
    fifth = tick(fourth.cursor)
    assert "1 vanished" in fifth.skip_message
    assert any(v.endswith("b.jsonl") for v in json.loads(fifth.cursor)["vanished"])


def test_automation_runs_by_default_and_schedules_stay_off():
    from dataflow_assets.definitions import defs

    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    assert sensors["dataflow_automation_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert all(sensors[f"{p}_input_sensor"].default_status == dg.DefaultSensorStatus.RUNNING for p in shipped())
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in repo.schedule_defs)
    assert defs.resolve_job_def("text_pt_stages").executor_def.name == "in_process"


def test_definitions_validate_and_cli_run(dataflow_home, tmp_path):
    env = {**os.environ, "DATAFLOW_HOME": str(dataflow_home)}
    bindir = Path(sys.executable).parent
    validate = subprocess.run([bindir / "dagster", "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert validate.returncode == 0, validate.stderr[-2000:]
    corpus = write_demo_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "out.jsonl"
    run = subprocess.run([bindir / "dataflow", "run", "text_pt", "--input", str(corpus), "--output", str(out), "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["quarantined"] == 3 and summary["records"] == len(demo_corpus()) + 3
    assert len(out.read_text().splitlines()) == summary["rows_out"] > 0
    assert "minhash_dedup" in run.stdout and "quarantined" in run.stdout
    kept_id = json.loads(out.read_text().splitlines()[0])["_id"]
    trace = subprocess.run([bindir / "dataflow", "trace", "text_pt", "--id", kept_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert trace.returncode == 0, trace.stderr[-2000:]
    assert "[source] present" in trace.stdout and "[minhash_dedup] present" in trace.stdout
    ops = subprocess.run([bindir / "dataflow", "operators", "--json", "--domain", "text"], env=env, capture_output=True, text=True, timeout=120)
    listed = json.loads(ops.stdout)
    assert len(listed) >= 50 and all(o["doc"] and o["domain"] == "text" for o in listed)


def test_rows_per_shard_slices_one_file_into_partitions(dataflow_home, tmp_path):
    path = write_demo_corpus(tmp_path / "corpus.jsonl")
    summary = run_pipeline("text_pt", [path], rows_per_shard=16)
    records = len(demo_corpus()) + 3
    assert len(summary.partitions) == 2 and all("@" in k for k in summary.partitions)
    assert summary.records == records and summary.invariant_holds()
    con = duckdb.connect(str(dataflow_home / "catalog.duckdb"), read_only=True)
    per_part = con.execute("select count(distinct filename), count(*) from text_pt.source").fetchone()
    con.close()
    assert per_part == (2, records - 3)


def test_nightly_schedule_is_off_by_default_and_requests_every_shard(dataflow_home, tmp_path):
    from dataflow_assets.definitions import defs

    files = _split_corpus(tmp_path)
    shards = register_shards(shipped()["text_pt"], files)
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("text_pt_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.partition_loading_context(dynamic_partitions_store=instance()):
        requests = schedule.evaluate_tick(dg.build_schedule_context(instance=instance(), repository_def=repo, scheduled_execution_time=datetime(2026, 11, 26, 3))).run_requests
    assert sorted(r.partition_key for r in requests) == sorted(s.key for s in shards)
    assert {r.run_key.split(":")[1] for r in requests} == {"20261126"}


def test_text_judge_reads_text_pt_export_keeping_ids_and_trace_follows_both(dataflow_home, tmp_path):
    """Lineage across pipelines: text_judge's source declares text_pt's dataset as its upstream asset,
    rows from text_pt's export keep their `_id`, and `trace_row` follows one row through both."""
    from dataflow_assets.definitions import pipeline_definitions
    from resources.llm import LLMResource
    from resources.storage import ParquetStore
    from tests.llm_server import LoopbackLLMServer

    judge_graph = pipeline_definitions("text_judge").resolve_asset_graph()
    assert dg.AssetKey(["text_pt", "dataset"]) in judge_graph.get(dg.AssetKey(["text_judge", "source"])).parent_keys
    pt_graph = pipeline_definitions("text_pt").resolve_asset_graph()
    assert pt_graph.get(dg.AssetKey(["text_pt", "catalog"])).parent_keys == {dg.AssetKey(["text_pt", "dataset"])}

    kept = run_pipeline("text_pt", [write_demo_corpus(tmp_path / "corpus.jsonl")])
    assert kept.success, kept.failures
    export = pl.read_parquet(kept.export).head(3).select("_id", "text")
    judge_in = tmp_path / "judge_input.jsonl"
    export.write_ndjson(judge_in)
    with LoopbackLLMServer() as srv:
        res = {"store": ParquetStore(), "llm": LLMResource(backend="openai", base_url=srv.base_url, model="echo", max_concurrency=4, timeout_s=10)}
        judged = run_pipeline("text_judge", [judge_in], res=res)
    assert judged.success, (judged.checks_failed, judged.failures)
    source = pl.read_parquet(next((dataflow_home / "data" / "text_judge" / "source").glob("*.parquet")))
    assert sorted(source.get_column("_id")) == sorted(export.get_column("_id"))  # the same rows, the same ids
    row_id = export.get_column("_id")[0]
    steps = trace_row("text_judge", row_id)
    stages = [s["stage"] for s in steps]
    assert stages[0] == "text_pt/source" and "text_pt/minhash_dedup" in stages and "quality" in stages
    assert all(s["status"] == "present" for s in steps), [(s["stage"], s["status"]) for s in steps]
    runs = instance().get_runs(filters=dg.RunsFilter(tags={"dataflow/pipeline": "text_judge"}))
    assert {r.job_name for r in runs} == {"text_judge_stages", "text_judge_catalog"}  # named jobs, never ephemeral


def test_partition_truth_stays_in_step_between_dagster_and_the_shard_record(dataflow_home, tmp_path, monkeypatch):
    from dataflow_assets.partitions import sync_partitions
    from dataflow_assets.runner import materialize_partition
    from resources.storage import ShardRegistry

    inst = instance()
    a = write_demo_corpus(tmp_path / "a.jsonl")
    drifted = ShardRegistry().add("text_pt", a)  # a shard record whose Dagster partition was never added
    inst.add_dynamic_partitions("text_pt_shards", ["by-hand"])  # a partition added in the UI: no record
    sync = sync_partitions(inst, "text_pt")
    assert sync.added == [drifted.key] and sync.orphans == ["by-hand"]
    assert set(inst.get_dynamic_partitions("text_pt_shards")) == {drifted.key, "by-hand"}
    assert sync_partitions(inst, "text_pt").added == []  # idempotent
    # registering through the runner or the sensor always leaves both records in step
    shards = register_shards(shipped()["text_pt"], [write_demo_corpus(tmp_path / "b.jsonl")])
    assert shards[0].key in inst.get_dynamic_partitions("text_pt_shards")
    # the orphan fails its source with one clear line instead of a KeyError trace
    result = materialize_partition(shipped()["text_pt"], "by-hand")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "has no shard record" in failure.event_specific_data.user_failure_data.description
