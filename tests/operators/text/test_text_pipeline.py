from __future__ import annotations

import polars as pl

from dataflow_assets.pipelines.text_pt import TextPretrainPipeline
from operators.base import with_row_ids


def test_pipeline_check_lists_stages():
    stages = TextPretrainPipeline().check()
    names = [s.name for s in stages]
    assert names[0] == "html" and names[-1] == "minhash_dedup" and "exact_dedup" in names
    assert "minhash_cluster" in stages[-1].writes


def test_pipeline_on_real_c4_docs(c4_frame):
    docs = c4_frame.head(120)
    frame = with_row_ids(pl.concat([docs, docs.head(10)]), source="t")  # rows 120..129 repeat rows 0..9
    first_ids = frame.get_column("_id").head(10).to_list()
    p = TextPretrainPipeline()
    out = p(frame)
    reports = dict(p.stage_reports())
    kept_first = out.filter(pl.col("_id").is_in(first_ids)).height
    assert kept_first > 0
    # every surviving original's copy reaches exact dedup and is dropped there
    assert reports["exact_dedup"].dropped == {"exact_duplicate": kept_first}
    assert reports["minhash_dedup"].dropped == {}
    assert 40 < out.height < 120
    assert out.get_column("text").is_unique().all()
    assert sum(reports["gopher_quality"].dropped.values()) > 0
    assert set(out.columns) >= {"_id", "text", "minhash_cluster"}
    assert out.get_column("minhash_cluster").to_list() == out.get_column("_id").to_list()
