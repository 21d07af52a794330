"""Benchmark of streaming ingest (operators/io.py). One command:

    .venv/bin/python benchmarks/ingest.py [--rows 1000000] [--slices 20] [--bad-every 100000]

Generates a JSONL file of `--rows` documents (one malformed line every `--bad-every`, so the
quarantine path is on the clock too) and its gzip copy, then for each:

1. whole: `read_input(path)` of the whole file, in a fresh process;
2. one process: `count_records(path)` (what `dataflow run --rows-per-shard` calls at registration;
   it builds and caches the record index), then each of `--slices` slices `read_input(path, start,
   stop)` in turn, in the same process, as `dataflow run` reads its shards;
3. a process each: the same from a fresh cache, with every slice in its own fresh process, as a
   parallel backfill would (each also pays opening the cached indexes), which shows each slice's
   peak RSS.

Reported: total sliced time (index + every slice) vs the whole read (target <= 1.5x), the peak
RSS of each slice process above its baseline after imports (target: flat across slices, i.e.
max/min close to 1 and far below the whole read's), and the rows + quarantined = records check.
Times are wall seconds measured inside each process (imports excluded); on a shared machine they
are noisy. Prints a table, then as the last line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rss import peak_rss_mb, rss_mb  # noqa: E402

REQUIRED = {"text": "String", "url": "String"}


def generate(path: Path, rows: int, bad_every: int) -> int:
    """A JSONL file of `rows` lines (web-text-like documents); every `bad_every`-th line is malformed."""
    import polars as pl

    frame = (
        pl.DataFrame({"n": pl.int_range(rows, eager=True)})
        .with_columns(
            text=pl.format(
                "Document {} about topic {}. " + "The quick brown fox jumps over the lazy dog near river {}. " * 3,
                pl.col("n"), pl.col("n") % 977, pl.col("n") % 31, pl.col("n") % 57, pl.col("n") % 13,
            ),
            url=pl.format("https://example.org/{}/{}", pl.col("n") % 101, pl.col("n")),
            score=(pl.col("n") % 1000) / 1000.0,
        )
    )
    frame.write_ndjson(path)
    bad = 0
    if bad_every:
        # rewrite in place: truncate every bad_every-th line into broken JSON of the same length
        data = bytearray(path.read_bytes())
        start, line = 0, 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if line % bad_every == bad_every // 2:
                data[end - 2 : end] = b"  "  # drop the closing quote and brace
                bad += 1
            start, line = end + 1, line + 1
        path.write_bytes(bytes(data))
    return bad


def worker(argv: list[str]) -> None:
    """Run in a fresh process: one measured call, printed as JSON."""
    import polars as pl

    from operators.io import count_records, read_input

    mode, path = argv[0], argv[1]
    required = {k: getattr(pl, v) for k, v in REQUIRED.items()}
    # first-call set-up (Polars' lazy imports and thread pool, the reader's code paths), paid by every
    # process alike, whole or slice, and the same for any reader: warm it on a one-line file first
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm.jsonl"
        warm.write_text('{"text": "warm-up", "url": "u"}\n' * 100)
        read_input(warm, required)
    base = rss_mb()
    t = time.perf_counter()
    out: dict = {}
    if mode == "count":
        out["records"] = count_records(path)
    elif mode == "sequential":  # what `dataflow run --rows-per-shard` does: register (count), then each shard in turn
        n, slices = count_records(path), int(argv[2])
        size = -(-n // slices)
        out.update(index_s=time.perf_counter() - t, records=n, slice_s=[])
        for s in range(0, n, size):
            u = time.perf_counter()
            read_input(path, required, start=s, stop=s + size)
            out["slice_s"].append(time.perf_counter() - u)
    else:
        start, stop = (int(argv[2]), int(argv[3])) if mode == "slice" else (None, None)
        res = read_input(path, required, start=start, stop=stop)
        out.update(records=res.records, rows=res.frame.height, quarantined=res.quarantined)
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_above_base_mb"] = out["peak_rss_mb"] - base
    print(json.dumps(out))


def run(args: list[str], home: Path) -> dict:
    env = {**os.environ, "DATAFLOW_HOME": str(home)}
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(path: Path, rows: int, slices: int, tmp: Path) -> dict:
    home = tmp / f"home-{path.name}"
    shutil.rmtree(home, ignore_errors=True)
    whole = run(["whole", str(path)], home)
    seq = run(["sequential", str(path), str(slices)], home)
    shutil.rmtree(home, ignore_errors=True)  # the per-process slices build their own index again
    count = run(["count", str(path)], home)
    size = -(-count["records"] // slices)
    parts = [run(["slice", str(path), str(s), str(s + size)], home) for s in range(0, count["records"], size)]
    sliced_s = count["seconds"] + sum(p["seconds"] for p in parts)
    rss = [p["rss_above_base_mb"] for p in parts]
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "records": count["records"],
        "whole_s": round(whole["seconds"], 3),
        "index_s": round(count["seconds"], 3),
        "slices_s": round(sum(p["seconds"] for p in parts), 3),
        "sliced_total_s": round(sliced_s, 3),
        "ratio_sliced_vs_whole": round(sliced_s / whole["seconds"], 3),
        "one_process_total_s": round(seq["seconds"], 3),
        "one_process_index_s": round(seq["index_s"], 3),
        "ratio_one_process_vs_whole": round(seq["seconds"] / whole["seconds"], 3),
        "one_process_peak_rss_above_base_mb": round(seq["rss_above_base_mb"], 1),
        "slice_s_min_max": [round(min(p["seconds"] for p in parts), 3), round(max(p["seconds"] for p in parts), 3)],
        "whole_rss_above_base_mb": round(whole["rss_above_base_mb"], 1),
        "slice_rss_above_base_mb": [round(r, 1) for r in rss],
        "slice_rss_max_over_min": round(max(rss) / max(min(rss), 1e-9), 3),
        "accounted": sum(p["rows"] + p["quarantined"] for p in parts) == sum(p["records"] for p in parts) == count["records"]
        and whole["rows"] + whole["quarantined"] == whole["records"] == count["records"],
        "quarantined_whole": whole["quarantined"],
        "quarantined_slices": sum(p["quarantined"] for p in parts),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--bad-every", type=int, default=100_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dataflow-ingest-"))
    try:
        plain = tmp / "docs.jsonl"
        t = time.perf_counter()
        bad = generate(plain, args.rows, args.bad_every)
        packed = tmp / "docs.jsonl.gz"
        with open(plain, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
        print(f"generated {args.rows:,} lines ({plain.stat().st_size / 1e6:.0f} MB, gzip {packed.stat().st_size / 1e6:.0f} MB, {bad} malformed) in {time.perf_counter() - t:.1f} s")
        results = [bench(plain, args.rows, args.slices, tmp), bench(packed, args.rows, args.slices, tmp)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'':<14}{'whole':>8} | {'index + slices, one process':>29} | {'index + slices, a process each':>38} | {'RSS above base, MB':>30} |")
    print(
        f"{'file':<14}{'s':>8} | {'index s':>8}{'total s':>10}{'ratio':>8}   | {'index s':>8}{'slices s':>10}{'total s':>10}{'ratio':>8}   |"
        f"{'whole':>7}{'slice min/max':>15}{'seq':>6}   | accounted"
    )
    for r in results:
        rss = r["slice_rss_above_base_mb"]
        print(
            f"{r['file']:<14}{r['whole_s']:>8.2f} | {r['one_process_index_s']:>8.2f}{r['one_process_total_s']:>10.2f}{r['ratio_one_process_vs_whole']:>8.2f}   |"
            f" {r['index_s']:>8.2f}{r['slices_s']:>10.2f}{r['sliced_total_s']:>10.2f}{r['ratio_sliced_vs_whole']:>8.2f}   |"
            f"{r['whole_rss_above_base_mb']:>7.0f}{min(rss):>8.0f} / {max(rss):<5.0f}{r['one_process_peak_rss_above_base_mb']:>6.0f}   | {r['accounted']}"
        )
    print("targets: ratio <= 1.5 (index + all slices vs one whole-file read); slice RSS flat (max/min close to 1), far below the whole read's")
    print(json.dumps({"rows": args.rows, "slices": args.slices, "malformed": bad, "results": results, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
