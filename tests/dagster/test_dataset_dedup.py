"""Dataset-wide exact and MinHash dedup through the real runner (`run_pipeline`) on a temp
DATAFLOW_HOME: planted duplicates across two input files and across `--rows-per-shard` slices of
one file, `--output` holding only the run's own rows, order independence, incremental decisions,
and `trace` naming the twin."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest

from dataflow_assets import dedup
from dataflow_assets.factory import exports_folder
from dataflow_assets.pipelines import ShippedPipeline
from dataflow_assets.runner import (
    RunSummary,
    materialize_partition,
    reapply_stale_dedup,
    register_shards,
    run_pipeline,
)
from dataflow_assets.trace import format_trace, trace_row
from operators.base import Pipeline
from operators.text.dedup import ExactDedupFilter, MinhashDedupFilter
from operators.text.filters import WordCountFilter
from operators.text.refiners import WhitespaceNormalizer
from resources.storage import ParquetStore
from tests.conftest import shared


class DocDedup(Pipeline):
    input_schema = {"text": pl.String}

    def __init__(self, name: str = "dedup_docs"):
        self.name = name
        self.whitespace = WhitespaceNormalizer()
        self.exact_dedup = ExactDedupFilter()
        self.minhash_dedup = MinhashDedupFilter(threshold=0.7)
        self.words = WordCountFilter(min_words=20)  # a stage after dedup: sees only kept rows

    def forward(self, frame):
        frame = self.whitespace(frame, text="text")
        frame = self.exact_dedup(frame, text="text")
        frame = self.minhash_dedup(frame, text="text")
        return self.words(frame, text="text")


class QuestionDedup(Pipeline):
    """An SFT-style pipeline: dedup on the `problem` column, not `text`."""

    name = "dedup_questions"
    input_schema = {"problem": pl.String}

    def __init__(self):
        self.exact_dedup = ExactDedupFilter(strip_punct=True)
        self.near_dedup = MinhashDedupFilter(threshold=0.7, shingle_size=3)

    def forward(self, frame):
        return self.near_dedup(self.exact_dedup(frame, text="problem"), text="problem")


RES = {"store": ParquetStore()}


def spec_for(name: str = "dedup_docs") -> ShippedPipeline:
    return ShippedPipeline(name, lambda: DocDedup(name), "dataset-wide dedup test pipeline")


def _near(text: str, rng: random.Random) -> str:
    w = text.split()
    start = rng.randrange(len(w) - len(w) // 20)
    for j in range(start, start + len(w) // 20, 2):
        w[j] = "changed"
    return " ".join(w)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    c4 = pl.read_parquet(shared("c4_validation_2k", "c4_validation_2k.parquet")).get_column("text").to_list()
    return [t for t in c4 if 150 < len(t.split()) < 600][:60]


def _write(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
    return path


def _planted_files(tmp_path: Path, docs: list[str]) -> tuple[Path, Path, dict]:
    """a.jsonl: 40 documents; b.jsonl: 20 new ones, 5 exact copies of a's (case and spacing
    changed), 5 near copies of a's, and one exact copy of its own first document."""
    rng = random.Random(1)
    a = docs[:40]
    exact = ["  " + t.upper().replace(" ", "   ") for t in a[:5]]
    near = [_near(t, rng) for t in a[5:10]]
    b = docs[40:60] + exact + near + [docs[40]]
    planted = {"exact_of_a": exact, "near_of_a": near}
    return _write(tmp_path / "a.jsonl", a), _write(tmp_path / "b.jsonl", b), planted


def _source_ids(home: Path, pipeline: str, partition: str) -> pl.DataFrame:
    return pl.read_parquet(home / "data" / pipeline / "source" / f"{partition}.parquet")


def _dropped(home: Path, pipeline: str, stage: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in (home / "data" / pipeline / stage / "_dropped").glob("*.parquet")])


def _normalised(texts: list[str]) -> list[str]:
    return [" ".join(t.lower().split()) for t in texts]


def test_duplicates_across_two_files_are_dropped_and_name_their_twin(dataflow_home, tmp_path, docs):
    a, b, planted = _planted_files(tmp_path, docs)
    spec = spec_for()
    summary = run_pipeline(spec, [a, b], output=tmp_path / "out.jsonl", res=RES)
    assert summary.success, summary.failures
    out = pl.read_ndjson(tmp_path / "out.jsonl").get_column("text").to_list()
    assert len(out) == 60  # 40 + 20: every planted copy dropped, nothing else
    assert sorted(out) == sorted(docs[:60])
    key_a, key_b = summary.partitions
    src_a, src_b = _source_ids(dataflow_home, "dedup_docs", key_a), _source_ids(dataflow_home, "dedup_docs", key_b)
    # each cross-file copy records the `_id` (and partition) of the a.jsonl row it duplicates
    exact = _dropped(dataflow_home, "dedup_docs", "exact_dedup")
    near = _dropped(dataflow_home, "dedup_docs", "minhash_dedup")
    assert exact.height == 6 and near.height == 5
    a_ids = src_a.get_column("_id").to_list()
    by_id = dict(zip(src_b.get_column("_id"), src_b.get_column("text")))
    for row in exact.iter_rows(named=True):
        text = by_id[row["_id"]]
        if text in planted["exact_of_a"]:
            assert row["duplicate_of"] == a_ids[planted["exact_of_a"].index(text)] and row["duplicate_partition"] == key_a
        else:  # b's copy of its own first document
            assert row["duplicate_partition"] == key_b and text == docs[40]
    for row in near.iter_rows(named=True):
        assert row["duplicate_of"] == a_ids[5 + planted["near_of_a"].index(by_id[row["_id"]])]
        assert row["duplicate_partition"] == key_a and row["reason"] == "near_duplicate"
    # `dataflow trace` names the twin
    dup = near.get_column("_id")[0]
    steps = trace_row("dedup_docs", dup, obj=spec.pipeline)
    step = next(s for s in steps if s["stage"] == "minhash_dedup")
    assert step["status"] == "dropped" and step["duplicate_of"]["_id"] == near.get_column("duplicate_of")[0]
    assert step["duplicate_of"]["partition"] == key_a and step["duplicate_of"]["text"] in docs[5:10]
    assert f"duplicate of {step['duplicate_of']['_id']} (partition {key_a})" in format_trace(steps)


def test_output_holds_only_this_runs_rows_after_dataset_wide_dedup(dataflow_home, tmp_path, docs):
    a, b, _ = _planted_files(tmp_path, docs)
    spec = spec_for()
    first = run_pipeline(spec, [a], output=tmp_path / "a_out.jsonl", res=RES)
    assert first.success and len((tmp_path / "a_out.jsonl").read_text().splitlines()) == 40
    second = run_pipeline(spec, [b], output=tmp_path / "b_out.jsonl", res=RES)
    assert second.success, second.failures
    out = pl.read_ndjson(tmp_path / "b_out.jsonl").get_column("text").to_list()
    assert sorted(out) == sorted(docs[40:60])  # b's rows only, without the copies of a's
    assert not set(_normalised(out)) & set(_normalised(docs[:40]))
    dataset = pl.read_parquet(exports_folder("dedup_docs") / "dataset.parquet").get_column("text").to_list()
    assert sorted(dataset) == sorted(docs[:60])  # the `dataset` export holds every partition
    # incremental: the second run decided b alone; a's decision file was not rewritten
    state = json.loads((dataflow_home / "data" / "dedup_docs" / "minhash_dedup" / "_decisions" / "state.json").read_text())
    assert set(state) == {first.partitions[0], second.partitions[0]}


@pytest.mark.slow  # several partitions through Dagster: ~1 min on a loaded machine
def test_rows_per_shard_slices_keep_what_one_partition_keeps(dataflow_home, tmp_path, docs):
    rng = random.Random(7)
    texts = list(docs[:50])
    for i in (3, 11, 20, 33):  # copies planted in later slices
        texts.insert(rng.randrange(30, len(texts)), docs[i].lower())
    for i in (5, 14, 27):
        texts.insert(rng.randrange(35, len(texts)), _near(docs[i], rng))
    path = _write(tmp_path / "one.jsonl", texts)
    sliced = run_pipeline(spec_for("dedup_sliced"), [path], rows_per_shard=12, output=tmp_path / "sliced.jsonl", res=RES)
    whole = run_pipeline(spec_for("dedup_whole"), [path], output=tmp_path / "whole.jsonl", res=RES)
    assert sliced.success and whole.success and len(sliced.partitions) == 5
    kept_sliced = pl.read_ndjson(tmp_path / "sliced.jsonl").get_column("text").to_list()
    kept_whole = pl.read_ndjson(tmp_path / "whole.jsonl").get_column("text").to_list()
    in_memory = DocDedup()(pl.DataFrame({"text": texts})).get_column("text").to_list()
    assert sorted(kept_sliced) == sorted(kept_whole) == sorted(in_memory) == sorted(docs[:50])
    assert sliced.stages["exact_dedup"].dropped == {"exact_duplicate": 4}
    assert sliced.stages["minhash_dedup"].dropped == {"near_duplicate": 3}


@pytest.mark.slow  # several partitions through Dagster: ~1 min on a loaded machine
def test_kept_set_does_not_depend_on_materialisation_order(dataflow_home, tmp_path, docs):
    a, b, _ = _planted_files(tmp_path, docs)
    c = _write(tmp_path / "c.jsonl", [docs[41].lower(), docs[0] + " ", docs[59]])  # copies of b's, a's
    forward = run_pipeline(spec_for("dedup_forward"), [a, b, c], res=RES)
    spec = spec_for("dedup_reverse")
    shards = register_shards(spec, [a, b, c])
    summary = RunSummary(spec.name, [s.key for s in shards])
    for shard in reversed(shards):  # c, then b, then a: each decided with what exists so far
        assert materialize_partition(spec, shard.key, RES).success
    store = ParquetStore()
    stages = spec.pipeline.trace()
    stale = dedup.stale_applications(store, spec.name, stages)
    assert set(stale) == {shards[1].key, shards[2].key}  # b and c applied decisions made before a existed
    reapply_stale_dedup(summary, spec, RES)
    assert summary.success and dedup.stale_applications(store, spec.name, stages) == {}

    def kept(name: str) -> list[str]:
        files = [dataflow_home / "data" / name / "words" / f"{s.key}.parquet" for s in shards]
        return sorted(pl.concat([pl.read_parquet(f) for f in files]).get_column("_id").to_list())

    assert kept("dedup_reverse") == kept("dedup_forward")
    assert forward.stages["words"].rows_out == 60


def test_dedup_on_a_question_column_across_files(dataflow_home, tmp_path):
    path = shared("dataflow_examples", "example", "GeneralTextPipeline", "math_100.jsonl")
    problems = [json.loads(line)["problem"] for line in path.read_text().splitlines() if line.strip()]
    first = _write(tmp_path / "q1.jsonl", problems[:60], "problem")
    copies = [p.upper() + "?" for p in problems[:6]]  # case and punctuation differ: exact after normalising
    second = _write(tmp_path / "q2.jsonl", problems[60:] + copies, "problem")
    spec = ShippedPipeline("dedup_questions", QuestionDedup, "questions")
    summary = run_pipeline(spec, [first, second], output=tmp_path / "out.jsonl", res=RES)
    assert summary.success, summary.failures
    out = pl.read_ndjson(tmp_path / "out.jsonl").get_column("problem").to_list()
    expected = QuestionDedup()(pl.DataFrame({"problem": problems + copies})).get_column("problem").to_list()
    assert sorted(out) == sorted(expected)
    assert not set(copies) & set(out)
    assert summary.stages["exact_dedup"].dropped.get("exact_duplicate", 0) >= 6


@pytest.mark.slow
def test_parallel_backfill_of_text_pt_keeps_each_document_once(dataflow_home, tmp_path):
    """text_pt's own exact + MinHash stages across three files, backfilled two at a time in the
    reverse of their registration order: decisions made before an earlier shard existed are
    re-applied, and every GOOD document of the demo survives exactly once."""
    from dataflow_assets.demo import GOOD, JUNK
    from dataflow_assets.pipelines import shipped
    from dataflow_assets.runner import backfill

    near = GOOD[3].replace("last spring", "last summer").replace("weekly", "monthly")
    # each file also holds junk the rules drop, so text_pt's kept-share gate sees a normal shard
    a = _write(tmp_path / "a.jsonl", GOOD[:6] + JUNK[:2])
    b = _write(tmp_path / "b.jsonl", GOOD[6:] + [GOOD[1], near] + JUNK[2:4])
    c = _write(tmp_path / "c.jsonl", [GOOD[7].upper(), GOOD[0]] + JUNK[4:6])
    shards = register_shards(shipped()["text_pt"], [a, b, c])
    summary = backfill("text_pt", [s.key for s in reversed(shards)], parallel=2)
    assert summary.success, summary.failures
    kept = pl.read_parquet(exports_folder("text_pt") / "dataset.parquet").get_column("text").to_list()
    assert sorted(kept) == sorted(GOOD)
    assert dedup.stale_applications(ParquetStore(), "text_pt", shipped()["text_pt"].pipeline.trace()) == {}
