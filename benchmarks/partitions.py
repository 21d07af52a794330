"""Memory stays bounded by one partition: a large input split into row-slice shards processes with
flat peak RSS, while the same input as one partition grows with the input.

    .venv/bin/python benchmarks/partitions.py [--docs 1000000] [--rows-per-shard 50000]

Builds one Parquet file of N documents (C4 lines from ../shared/data when present, else generated
text), then in separate processes runs a rule-based pipeline through Dagster (`run_pipeline`, one
`materialize()` per partition) (a) split into shards of `--rows-per-shard` rows and (b) as one
partition. Prints peak RSS after each shard, the ratio between the two, and as the last line one JSON
object with the figures. Each run gets its own DATAFLOW_HOME under a temporary folder.

(c) dataset-wide dedup (`--dedup-docs`, default 1,000,000, in `--dedup-shards` 20 shards): distinct
documents of 3-6 random C4 lines, with planted copies of documents of earlier shards (exact: case and
spacing changed; near: every other word of a 5% span replaced), through a pipeline of exact +
MinHash dedup (dataset-wide: signatures per shard, one index step, the shard applies). Reports
peak RSS (target <= 1.5 GB), the time of each shard, and recall/precision on the planted pairs.
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
import json, os, sys, time
from benchmarks.rss import peak_rss_mb
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
        peaks.append(peak_rss_mb())

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
    "peak_rss_mb": peak_rss_mb(),
}))
"""


def build_dedup_input(path: Path, docs: int, shards: int, seed: int = 0) -> dict:
    """`docs` documents in one Parquet file (columns text, doc), written one shard at a time. Each
    document is 6-10 random C4 sentences (30-300 characters) (a pure function of its number, so a copy's source is
    regenerated rather than kept in memory); 1% of each later shard are exact copies (case and
    spacing changed) and 1% near copies of documents of earlier shards. Returns the planted pairs
    (copy doc, source doc) by kind."""
    import random

    import polars as pl

    if C4.exists():
        pool = (
            pl.read_parquet(C4).select(pl.col("text").str.replace_all("\n", ". ").str.split(". ")).explode("text")
            .filter(pl.col("text").str.len_chars().is_between(30, 300)).unique(maintain_order=True).get_column("text").to_list()
        )
    else:
        words = "river town bridge market mill railway library reading room window table history students garden compost soil water".split()
        wr = random.Random(seed)
        pool = [" ".join(wr.choice(words) for _ in range(12)) for _ in range(50_000)]

    def text(doc: int) -> str:
        r = random.Random(doc * 7919 + seed)
        return ". ".join(r.sample(pool, r.randint(6, 10))) + f". Document {doc}."

    rng = random.Random(seed)
    per = docs // shards
    truth: dict[str, list[tuple[int, int]]] = {"exact": [], "near": []}
    parts, planted = [], set()
    with tempfile.TemporaryDirectory(prefix="dedup-input-") as tmp:
        for shard in range(shards):
            start = shard * per
            chunk = [text(start + i) for i in range(per)]
            for n, i in enumerate(rng.sample(range(per), per // 50) if shard else []):
                src = rng.randrange(start)
                while src in planted:  # the source must be an original document
                    src = rng.randrange(start)
                planted.add(start + i)
                if n % 2 == 0:
                    chunk[i] = "  " + text(src).upper().replace(" ", "  ")
                    truth["exact"].append((start + i, src))
                else:
                    w = text(src).split(" ")
                    span = max(2, len(w) // 20)
                    s0 = rng.randrange(max(1, len(w) - span))
                    for j in range(s0, min(len(w), s0 + span), 2):
                        w[j] = rng.choice(["alpha", "beta", "gamma", "delta", "omega"])
                    chunk[i] = " ".join(w)
                    truth["near"].append((start + i, src))
            f = Path(tmp) / f"{shard:03d}.parquet"
            pl.DataFrame({"text": chunk, "doc": pl.int_range(start, start + per, eager=True)}).write_parquet(f)
            parts.append(f)
        pl.concat([pl.scan_parquet(f) for f in parts]).sink_parquet(path, row_group_size=20_000)
    return truth


DEDUP_WORKER = """
import json, sys, time
from benchmarks.rss import peak_rss_mb
from pathlib import Path
import polars as pl
from dataflow_assets import progress
from dataflow_assets.pipelines import ShippedPipeline
from dataflow_assets.runner import run_pipeline
from operators.base import Pipeline
from operators.text.dedup import ExactDedupFilter, MinhashDedupFilter
from resources.storage import ParquetStore, home


class DedupBench(Pipeline):
    name = "bench_dedup"
    input_schema = {"text": pl.String}

    def __init__(self):
        self.exact_dedup = ExactDedupFilter()
        self.minhash_dedup = MinhashDedupFilter(threshold=0.7)

    def forward(self, frame):
        return self.minhash_dedup(self.exact_dedup(frame, text="text"), text="text")


times, last = [], [time.perf_counter()]
def on_event(event):
    if event["stage"] == "dataset":
        now = time.perf_counter()
        times.append(round(now - last[0], 2))
        last[0] = now

spec = ShippedPipeline("bench_dedup", DedupBench, "dataset-wide dedup benchmark")
start = time.perf_counter()
summary = run_pipeline(spec, [Path(sys.argv[1])], rows_per_shard=int(sys.argv[2]), on_event=on_event, res={"store": ParquetStore()})
seconds = time.perf_counter() - start
peak = peak_rss_mb()
data = home() / "data" / "bench_dedup"
docs = pl.scan_parquet(data / "source" / "*.parquet").select("_id", "doc")
dropped = {}
for stage in ("exact_dedup", "minhash_dedup"):
    ids = pl.scan_parquet(data / stage / "_dropped" / "*.parquet").select("_id")
    dropped[stage] = docs.join(ids, on="_id").select("doc").collect().get_column("doc").to_list()
print(json.dumps({
    "seconds": seconds, "partitions": len(summary.partitions), "records": summary.records, "rows_out": summary.rows_out,
    "success": summary.success, "failures": summary.failures[:3], "peak_rss_mb": peak, "seconds_per_shard": times, "dropped": dropped,
}))
"""


def run_dedup(path: Path, rows_per_shard: int, home: Path) -> dict:
    env = {**os.environ, "DATAFLOW_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", DEDUP_WORKER, str(path), str(rows_per_shard)], env=env, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"dedup worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def dedup_scores(result: dict, truth: dict) -> dict:
    exact, near = {c for c, _ in truth["exact"]}, {c for c, _ in truth["near"]}
    removed = set(result["dropped"]["exact_dedup"]) | set(result["dropped"]["minhash_dedup"])
    planted = exact | near
    return {
        "planted_exact": len(exact),
        "planted_near": len(near),
        "removed": len(removed),
        "exact_recall": len(removed & exact) / max(1, len(exact)),
        "near_recall": len(removed & near) / max(1, len(near)),
        "precision": len(removed & planted) / max(1, len(removed)),
    }


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
    parser.add_argument("--dedup-docs", type=int, default=1_000_000, help="documents of the dataset-wide dedup run (0: skip it)")
    parser.add_argument("--dedup-shards", type=int, default=20)
    parser.add_argument("--only-dedup", action="store_true", help="run only the dataset-wide dedup scenario")
    args = parser.parse_args()
    dedup = None
    with tempfile.TemporaryDirectory(prefix="dataflow-bench-") as tmp:
        tmp = Path(tmp)
        if args.dedup_docs:
            dpath = tmp / "dedup_docs.parquet"
            t0 = time.perf_counter()
            truth = build_dedup_input(dpath, args.dedup_docs, args.dedup_shards)
            print(f"dedup input: {args.dedup_docs:,} documents in {args.dedup_shards} shards, {len(truth['exact'])} exact + {len(truth['near'])} near "
                  f"copies planted across shards, {dpath.stat().st_size / 1e6:.0f} MB parquet, built in {time.perf_counter() - t0:.1f}s")
            result = run_dedup(dpath, args.dedup_docs // args.dedup_shards, tmp / "dedup")
            dedup = {k: v for k, v in result.items() if k != "dropped"} | dedup_scores(result, truth)
            print(f"dataset-wide dedup: {dedup['partitions']} shards in {dedup['seconds']:.0f}s, peak RSS {dedup['peak_rss_mb']:.0f} MB "
                  f"(target <= 1536), exact recall {dedup['exact_recall']:.4f}, near recall {dedup['near_recall']:.4f}, precision {dedup['precision']:.4f}")
            print(f"seconds per shard: {dedup['seconds_per_shard']}")
            dpath.unlink()
        if args.only_dedup:
            print(json.dumps({"dedup": dedup}))
            return
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
        "dedup": dedup,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
