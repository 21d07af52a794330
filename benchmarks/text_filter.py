"""Benchmark: our text filter chain and MinHash dedup vs datatrove, on documents built from C4.

    .venv/bin/python benchmarks/text_filter.py [--docs N] [--dt-filter-docs M] [--dt-dedup-docs K]

Documents: the 2,000 real C4 validation documents, then documents made of C4 lines sampled at
random (as many lines as a random C4 document has, at least 8) ending with a distinct "Reference #k." line, so
that no two are near duplicates by construction; interleaved, ~2% planted exact duplicates and
~5% planted near duplicates (a window of 5% of a document's words, every second word replaced) of
random earlier documents, with the ground truth kept. The corpus is built once and written to a Parquet
file (plus the ground truth as JSON) in a temporary folder; every measurement runs in its own subprocess
that reads only the text column it needs from that file, so its peak RSS (VmHWM of that child) is the
operator's plus one Arrow copy of the texts, not the benchmark's Python lists. datatrove is run on a prefix of the documents when
it is too slow (its docs/s is measured on that prefix and stated as such).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
C4 = ROOT / ".." / "shared" / "data" / "c4_validation_2k" / "c4_validation_2k.parquet"
FILTER_STAGES = ["gopher_quality", "c4_lines", "c4_quality", "gopher_repetition", "fineweb_quality"]


def build_docs(n: int, seed: int = 0):
    import polars as pl

    base = pl.read_parquet(C4).get_column("text").to_list()
    rng = random.Random(seed)
    pool = [line for t in base for line in t.split("\n") if line.strip()]
    n_lines = [len(t.split("\n")) for t in base]
    docs: list[str] = []
    truth = {"exact": [], "near": []}  # (index of planted doc, index of its source)
    next_base = 0
    for i in range(n):
        r = rng.random()
        if i > 10 and r < 0.07:  # planted duplicate of a random earlier document
            src = rng.randrange(i)
            text = docs[src]
            kind = "exact" if r < 0.02 else "near"
            if kind == "near":
                w = text.split(" ")
                span = max(2, len(w) // 20)
                start = rng.randrange(max(1, len(w) - span))
                for j in range(start, min(len(w), start + span), 2):
                    w[j] = rng.choice(["alpha", "beta", "gamma", "delta", "omega"])
                text = " ".join(w)
            truth[kind].append((i, src))
        elif next_base < len(base):
            text, next_base = base[next_base], next_base + 1
        else:
            k = max(8, rng.choice(n_lines))  # >= 8 lines: two such documents share little
            text = "\n".join(rng.sample(pool, k)) + f"\nReference #{i}."
        docs.append(text)
    return docs, truth


def write_corpus(n: int, folder: str) -> str:
    """Build the corpus once and write it to `folder`/docs.parquet (+ truth.json)."""
    import polars as pl

    docs, truth = build_docs(n)
    path = os.path.join(folder, "docs.parquet")
    pl.DataFrame({"text": docs}).write_parquet(path, compression="zstd", row_group_size=10_000)
    with open(os.path.join(folder, "truth.json"), "w") as f:
        json.dump(truth, f)
    return path


def load_texts(path: str, n: int | None = None):
    """The first `n` texts of the corpus as a Polars frame with one `text` column."""
    import polars as pl

    lf = pl.scan_parquet(path).select("text")
    return (lf.head(n) if n is not None else lf).collect()


def load_truth(path: str) -> dict:
    with open(os.path.join(os.path.dirname(path), "truth.json")) as f:
        return {k: [tuple(x) for x in v] for k, v in json.load(f).items()}


# --------------------------------------------------------------------------- workers


def work_ours_filter(path: str, n: int) -> dict:
    from dataflow_assets.pipelines.text_pt import TextPretrainPipeline

    frame = load_texts(path, n)
    p = TextPretrainPipeline()
    rss_before = _rss_now_mb()
    t = time.perf_counter()
    for name in FILTER_STAGES:
        frame = getattr(p, name)(frame, text="text")
    sec = time.perf_counter() - t
    return {"docs": n, "seconds": sec, "kept": frame.height, "rss_before_mb": rss_before}


def _dt_filters():
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    return [GopherQualityFilter(), C4QualityFilter(), GopherRepetitionFilter()]


def work_dt_filter(path: str, n: int) -> dict:
    from datatrove.data import Document

    docs = load_texts(path, n).get_column("text").to_list()
    filters = _dt_filters()
    for f in filters:  # load the tokenizer outside the timing
        f.filter(Document(text="Warm up the tokenizer, please. " * 30, id="w"))
    rss_before = _rss_now_mb()
    t = time.perf_counter()
    kept = 0
    for i, text in enumerate(docs):
        doc = Document(text=text, id=str(i))
        ok = True
        for f in filters:
            r = f.filter(doc)
            if r is not True and (r is False or r[0] is False):
                ok = False
                break
        kept += ok
    return {"docs": n, "seconds": time.perf_counter() - t, "kept": kept, "rss_before_mb": rss_before}


def _rss_now_mb() -> float:
    """Current resident set size (MB): the data loaded before the timed part."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _scores(removed: set[int], truth: dict) -> dict:
    near = {i for i, _ in truth["near"]}
    exact = {i for i, _ in truth["exact"]}
    planted = near | exact
    tp = len(removed & planted)
    return {
        "removed": len(removed),
        "near_recall": len(removed & near) / max(1, len(near)),
        "exact_recall": len(removed & exact) / max(1, len(exact)),
        "precision": tp / max(1, len(removed)),
    }


def _prefix_truth(truth: dict, n: int) -> dict:
    return {k: [(i, s) for i, s in v if i < n] for k, v in truth.items()}


def work_ours_minhash(path: str, n: int) -> dict:
    import numpy as np

    from dataflow_assets.pipelines.text_pt import TextPretrainPipeline

    truth = load_truth(path)
    series = load_texts(path, n).get_column("text")
    op = TextPretrainPipeline().minhash_dedup
    rss_before = _rss_now_mb()
    t = time.perf_counter()
    rep = op.cluster_representatives(series)
    sec = time.perf_counter() - t
    removed = set(np.nonzero(rep != np.arange(len(rep)))[0].tolist())
    return {"docs": n, "seconds": sec, **_scores(removed, _prefix_truth(truth, n)), "rss_before_mb": rss_before,
            "threshold": op.threshold, "num_perm": op.num_perm, "bands": op.bands, "rows": op.rows}


def work_dt_minhash(path: str, n: int) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )

    truth = load_truth(path)
    docs = load_texts(path, n).get_column("text").to_list()
    from datatrove.utils.hashing import HashConfig

    # sha1: datatrove's default xxhash path passes str to xxhash 4.x, which rejects it
    cfg = MinhashConfig(hash_config=HashConfig(hash_fc="sha1"))
    rss_before = _rss_now_mb()
    with tempfile.TemporaryDirectory() as tmp:
        sigs, buckets, clusters = (os.path.join(tmp, x) for x in ("sigs", "buckets", "clusters"))
        t = time.perf_counter()
        documents = [Document(text=d, id=str(i)) for i, d in enumerate(docs)]
        sig = MinhashDedupSignature(output_folder=sigs, config=cfg)
        sig.run((d for d in documents), rank=0, world_size=1)
        for b in range(cfg.num_buckets):
            MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=cfg).run(
                None, rank=b, world_size=cfg.num_buckets
            )
        MinhashDedupCluster(input_folder=buckets, output_folder=clusters, config=cfg).run(None, 0, 1)
        kept = {
            int(d.id)
            for d in MinhashDedupFilter(input_folder=clusters).run(
                (Document(text=x, id=str(i)) for i, x in enumerate(docs)), rank=0, world_size=1
            )
        }
        sec = time.perf_counter() - t
    removed = set(range(len(docs))) - kept
    return {"docs": n, "seconds": sec, **_scores(removed, _prefix_truth(truth, n)),
            "num_buckets": cfg.num_buckets, "hashes_per_bucket": cfg.hashes_per_bucket, "rss_before_mb": rss_before}


def work_corpus(path: str, n: int) -> dict:
    """Build the corpus in a child, so the parent (whose peak RSS the workers would otherwise
    inherit through ru_maxrss) stays small."""
    write_corpus(n, os.path.dirname(path))
    return {"docs": n}


def _peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM (reset at exec, unlike ru_maxrss, which a child
    inherits from its parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


WORKERS = {
    "corpus": work_corpus,
    "ours_filter": work_ours_filter,
    "dt_filter": work_dt_filter,
    "ours_minhash": work_ours_minhash,
    "dt_minhash": work_dt_minhash,
}


def run_child(name: str, *args, timeout: int = 3000) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--dt-filter-docs", type=int, default=1000, help="datatrove filter subset size")
    ap.add_argument("--dt-dedup-docs", type=int, default=5000, help="datatrove minhash subset size")
    ap.add_argument("--worker", nargs="+")
    args = ap.parse_args()
    if args.worker:
        import logging

        logging.disable(logging.WARNING)
        try:
            from loguru import logger

            logger.remove()
        except ImportError:
            pass
        name, path, num = args.worker
        res = WORKERS[name](path, int(num))
        res["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(res))
        return

    n = args.docs
    dt_f, dt_d = min(n, args.dt_filter_docs), min(n, args.dt_dedup_docs)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = os.path.join(tmp, "docs.parquet")
        built = run_child("corpus", path, n)
        if "error" in built:
            raise SystemExit(built["error"])
        build_s = time.perf_counter() - t
        res = {
            "docs": n,
            "corpus_build_seconds": build_s,
            "ours_filter": run_child("ours_filter", path, n),
            "dt_filter": run_child("dt_filter", path, dt_f),
            "ours_minhash": run_child("ours_minhash", path, n),
            "ours_minhash_on_dt_subset": run_child("ours_minhash", path, dt_d),
            "dt_minhash": run_child("dt_minhash", path, dt_d),
        }
    for key in ("ours_filter", "dt_filter", "ours_minhash", "ours_minhash_on_dt_subset", "dt_minhash"):
        r = res[key]
        if "seconds" in r:
            r["docs_per_s"] = r["docs"] / r["seconds"] if r["seconds"] else float("inf")
    ok = all("docs_per_s" in res[k] for k in ("ours_filter", "dt_filter", "ours_minhash", "dt_minhash"))
    if ok:
        res["filter_speedup"] = res["ours_filter"]["docs_per_s"] / res["dt_filter"]["docs_per_s"]
        res["minhash_speedup"] = res["ours_minhash"]["docs_per_s"] / res["dt_minhash"]["docs_per_s"]
    print(f"{'run':28} {'docs':>8} {'seconds':>9} {'docs/s':>10} {'peak MB':>8} {'loaded MB':>9}  extra")
    for key in ("ours_filter", "dt_filter", "ours_minhash", "ours_minhash_on_dt_subset", "dt_minhash"):
        r = res[key]
        if "error" in r:
            print(f"{key:28} ERROR {r['error'][-300:]}")
            continue
        extra = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                 if k in ("kept", "near_recall", "exact_recall", "precision", "removed")}
        print(f"{key:28} {r['docs']:>8} {r['seconds']:>9.2f} {r['docs_per_s']:>10.1f} {r['peak_rss_mb']:>8.0f} "
              f"{r.get('rss_before_mb', float('nan')):>9.0f}  {extra}")
    if ok:
        print(f"filter chain speed-up vs datatrove (Gopher+C4+GopherRepetition, on {dt_f} docs): "
              f"{res['filter_speedup']:.1f}x")
        print(f"MinHash speed-up vs datatrove (4 stages, on {dt_d} docs): {res['minhash_speedup']:.1f}x")
    print("datatrove docs/s are measured on the first dt_filter / dt_minhash docs (a prefix of the same corpus); "
          "ours on all of them. peak MB = VmHWM (peak RSS) of each run's own process; loaded MB = RSS after "
          "loading the texts, before the timed part.")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
