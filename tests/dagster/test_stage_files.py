"""How stage files are written and handed on: the frame kept for the next stage, links for stages that
changed nothing, the export linked to the last stage's file, one Dagster instance per home."""

import os
import shutil

import polars as pl
import pytest

from dataflow_assets.demo import write_demo_corpus
from dataflow_assets.pipelines import shipped
from dataflow_assets.runner import instance, run_pipeline
from resources.storage import ParquetStore, write_parquet_atomic


@pytest.fixture
def store(dataflow_home) -> ParquetStore:
    ParquetStore.end_hand_off()
    yield ParquetStore()
    ParquetStore.end_hand_off()


def test_the_next_read_gets_the_handed_off_frame_while_the_file_is_the_one_written(store):
    frame = pl.DataFrame({"_id": ["a", "b"], "text": ["one", "two"]})
    store.write("p", "s1", "k", frame, hand_off=True)
    assert store.read("p", "s1", "k") is frame  # no decode
    assert pl.read_parquet(store.path("p", "s1", "k")).equals(frame)

    other = pl.DataFrame({"_id": ["c"], "text": ["three"]})
    write_parquet_atomic(other, store.path("p", "s1", "k"))  # another process rewrites the file
    got = store.read("p", "s1", "k")
    assert got is not frame and got.equals(other)


def test_only_the_last_handed_off_frame_is_kept(store):
    a = pl.DataFrame({"_id": ["a"], "text": ["one"]})
    b = pl.DataFrame({"_id": ["b"], "text": ["two"]})
    store.write("p", "s1", "k", a, hand_off=True)
    store.write("p", "s2", "k", b, hand_off=True)
    assert store.read("p", "s2", "k") is b
    got = store.read("p", "s1", "k")
    assert got is not a and got.equals(a)
    store.end_hand_off()
    assert store.read("p", "s2", "k") is not b


def test_an_unchanged_stage_links_its_upstream_file_and_a_later_rewrite_leaves_it_alone(store):
    frame = pl.DataFrame({"_id": ["a", "b"], "text": ["one", "two"]})
    up = store.write("p", "up", "k", frame)
    down = store.write("p", "down", "k", frame, same_as="up")
    assert os.stat(up).st_ino == os.stat(down).st_ino
    store.write("p", "up", "k", pl.DataFrame({"_id": ["z"], "text": ["new"]}))  # upstream re-materialised
    assert pl.read_parquet(down).equals(frame)
    assert pl.read_parquet(up).get_column("_id").to_list() == ["z"]


def test_a_run_links_unchanged_stages_and_the_export_to_the_last_stage(dataflow_home):
    summary = run_pipeline("text_pt", [write_demo_corpus(dataflow_home / "corpus.jsonl")])
    assert summary.success, summary.checks_failed
    data = dataflow_home / "data" / "text_pt"
    key = next((data / "source").glob("*.parquet")).name

    def ino(stage: str) -> int:
        return os.stat(data / stage / key).st_ino

    # a stage's file is its upstream's exactly when the stage changed nothing (both cases occur)
    linked = {}
    for stage in shipped()["text_pt"].pipeline.check():
        up = stage.upstream or "source"
        same = pl.read_parquet(data / stage.name / key).equals(pl.read_parquet(data / up / key))
        assert (ino(stage.name) == ino(up)) == same, stage.name
        linked[stage.name] = same
    assert any(linked.values()) and not all(linked.values()), linked
    # the dataset stage and the export are the last stage's bytes
    exports = dataflow_home / "exports" / "text_pt"
    assert ino("dataset") == ino("minhash_dedup")
    assert os.stat(exports / "dataset.parquet").st_ino == ino("minhash_dedup")
    assert pl.read_parquet(exports / "dataset.parquet").equals(pl.read_parquet(data / "minhash_dedup" / key))
    assert pl.read_ndjson(exports / "dataset.jsonl").height == summary.rows_out

    # a second run rewrites the files; the first run's export is not changed through a shared inode
    before = pl.read_parquet(exports / "dataset.parquet")
    assert run_pipeline("text_pt", [write_demo_corpus(dataflow_home / "corpus.jsonl")]).success
    assert pl.read_parquet(exports / "dataset.parquet").equals(before)


def test_one_instance_per_home_and_a_new_one_for_a_home_made_anew(dataflow_home):
    first = instance()
    assert instance() is first
    shutil.rmtree(dataflow_home / "dagster")
    (dataflow_home / "dagster").mkdir()
    (dataflow_home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    second = instance()
    assert second is not first
    assert second.get_runs() == []
