"""Memory stays bounded by one partition: a large input split into row-slice shards processes with
flat peak RSS, while the same input as one partition grows with the input.

    .venv/bin/python benchmarks/partitions.py [--docs 1000000] [--rows-per-shard 50000]

Builds one Parquet file of N documents (C4 lines from ../shared/data when present, else generated
text), then in separate processes runs a rule-based pipeline through Dagster (`run_pipeline`, one
`materialize()` per partition) (a) split into shards of `--rows-per-shard` rows and (b) as one
partition. Prints peak RSS after each shard, the ratio between the two, and as the last line one JSON
object with the figures. Each run gets its own DATAFLOW_HOME under a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
C4 = Path(os.environ.get("DATAFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "c4_validation_2k" / "c4_validation_2k.parquet"


def build_input(path: Path, docs: int) -> str:
    import polars as pl

    if C4.exists():
        lines = (
            pl.read_parquet(C4).select(pl.col("text").str.split("\n")).explode("text")
            .filter(pl.col("text").str.len_chars() > 80).get_column("text")
        )
        source = f"C4 lines ({C4})"
    else:
        words = "river town bridge market mill railway library reading room window table history students garden compost soil water".split()
        lines = pl.Series([" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(5000)])
        source = "generated text (../shared/data absent)"
    idx = pl.int_range(docs, eager=True)
    frame = pl.DataFrame({"text": lines.gather(idx % lines.len()) + " (doc " + idx.cast(pl.String) + ")"})
    frame.write_parquet(path, row_group_size=20_000)
    return source


WORKER = """
import json, os, resource, sys, time
from pathlib import Path
import polars as pl
from dataflow_assets.pipelines import ShippedPipeline
from dataflow_assets import progress
from dataflow_assets.runner import run_pipeline
from operators.base import Pipeline
from operators.text.dedup import ExactDedupFilter
from operators.text.filters import MeanWordLengthFilter, WordCountFilter
from operators.text.refiners import UrlRemover, WhitespaceNormalizer


class Bench(Pipeline):
    name = "bench_partitions"
    input_schema = {"text": pl.String}

    def __init__(self):
        self.urls = UrlRemover()
        self.whitespace = WhitespaceNormalizer()
        self.words = WordCountFilter(min_words=5)
        self.word_length = MeanWordLengthFilter()
        self.exact_dedup = ExactDedupFilter()

    def forward(self, frame):
        frame = self.whitespace(self.urls(frame))
        return self.exact_dedup(self.word_length(self.words(frame)))


peaks = []
def on_event(event):
    if event["stage"] == "dataset":
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

spec = ShippedPipeline("bench_partitions", Bench, "benchmark pipeline")
rows = int(sys.argv[2]) or None
start = time.perf_counter()
summary = run_pipeline(spec, [Path(sys.argv[1])], rows_per_shard=rows, on_event=on_event)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "partitions": len(summary.partitions),
    "records": summary.records,
    "rows_out": summary.rows_out,
    "success": summary.success,
    "peak_rss_mb_after_each_partition": [round(p, 1) for p in peaks],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run(path: Path, rows_per_shard: int, home: Path) -> dict:
    env = {**os.environ, "DATAFLOW_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(path), str(rows_per_shard)], env=env, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dataflow-bench-") as tmp:
        tmp = Path(tmp)
        path = tmp / "docs.parquet"
        t0 = time.perf_counter()
        source = build_input(path, args.docs)
        print(f"input: {args.docs:,} documents from {source}, {path.stat().st_size / 1e6:.0f} MB parquet, built in {time.perf_counter() - t0:.1f}s")
        sharded = run(path, args.rows_per_shard, tmp / "sharded")
        whole = run(path, 0, tmp / "whole")
    curve = sharded["peak_rss_mb_after_each_partition"]
    first, last = curve[0], curve[-1]
    print(f"\n{'run':<28}{'partitions':>11}{'seconds':>10}{'docs/s':>10}{'peak RSS MB':>13}")
    for name, r in (("sharded", sharded), ("one partition", whole)):
        print(f"{name:<28}{r['partitions']:>11}{r['seconds']:>10.1f}{r['records'] / r['seconds']:>10.0f}{r['peak_rss_mb']:>13.0f}")
    print(f"\npeak RSS after shard 1: {first:.0f} MB, after shard {len(curve)}: {last:.0f} MB (growth x{last / first:.2f})")
    print(f"one partition / sharded peak RSS: x{whole['peak_rss_mb'] / sharded['peak_rss_mb']:.2f}")
    figures = {
        "docs": args.docs,
        "rows_per_shard": args.rows_per_shard,
        "sharded": sharded,
        "one_partition": whole,
        "sharded_rss_growth_first_to_last": last / first,
        "whole_over_sharded_peak_rss": whole["peak_rss_mb"] / sharded["peak_rss_mb"],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
