"""MinHash near-duplicate removal on equal work: ours vs datatrove vs rensa vs datasketch.

    .venv/bin/python benchmarks/minhash.py [--docs 10000] [--skip datasketch,...]

Every tool gets the same documents (C4 validation texts from ../shared/data, then documents
assembled from C4 lines, with planted exact and near duplicates of earlier documents), one
thread each (POLARS_MAX_THREADS=RAYON_NUM_THREADS=OMP_NUM_THREADS=1, each in its own process), and
is timed from the texts to the keep/drop decision:

- ours        `MinhashDedupFilter` (threshold 0.7, 128 permutations, 5-word shingles, LSH 14 x 9,
              candidates verified by estimated Jaccard);
- datatrove   its four MinHash stages (signature, buckets, cluster, filter; 5-gram, 14 x 8 hashes,
              sha1), candidates not verified;
- rensa       `RMinHashDeduplicator(threshold=0.7, num_perm=128, use_lsh=True)` on the same
              normalised 5-word shingles (candidates verified); `rensa_core` times rensa alone on
              shingle lists built beforehand (the shingling in Python is left out);
- datasketch  `MinHash` + `MinHashLSH(threshold=0.7, num_perm=128)` on the same shingles, each
              document queried against the earlier ones and verified by `MinHash.jaccard`.

Recall is over the planted near (and exact) pairs: the later document of each pair dropped;
precision is the share of dropped documents that are planted copies. Timings on a shared machine
are noisy. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
C4 = Path(os.environ.get("DATAFLOW_SHARED_DATA", REPO.parent / "shared" / "data")) / "c4_validation_2k" / "c4_validation_2k.parquet"
THREADS = {"POLARS_MAX_THREADS": "1", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def build_docs(n: int, seed: int = 0) -> tuple[list[str], dict[str, list[tuple[int, int]]]]:
    """`n` documents: C4 texts, then documents of >= 8 random C4 lines; 2% exact and 5% near
    copies of a random earlier document (near: every other word of a 5% span replaced)."""
    import polars as pl

    base = pl.read_parquet(C4).get_column("text").to_list()
    rng = random.Random(seed)
    pool = [line for t in base for line in t.split("\n") if line.strip()]
    docs: list[str] = []
    truth: dict[str, list[tuple[int, int]]] = {"exact": [], "near": []}
    next_base = 0
    for i in range(n):
        r = rng.random()
        if i > 10 and r < 0.07:
            src = rng.randrange(i)
            text, kind = docs[src], "exact" if r < 0.02 else "near"
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
            text = "\n".join(rng.sample(pool, rng.randint(8, 30))) + f"\nReference #{i}."
        docs.append(text)
    return docs, truth


def _shingle_lists(docs: list[str]) -> list[list[str]]:
    """The normalised 5-word shingles of every document, as ours computes them (for rensa, datasketch)."""
    import polars as pl

    from operators.text.dedup import shingle_words

    out = []
    for words in shingle_words(pl.Series(docs)).to_list():
        out.append([" ".join(words[j : j + 5]) for j in range(len(words) - 4)] if len(words) >= 5 else ([" ".join(words)] if words else []))
    return out


# --------------------------------------------------------------------------- workers (one process each)


def work_ours(docs: list[str]) -> set[int]:
    import numpy as np
    import polars as pl

    from operators.text.dedup import MinhashDedupFilter

    rep = MinhashDedupFilter(threshold=0.7).cluster_representatives(pl.Series(docs))
    return set(np.nonzero(rep != np.arange(len(docs)))[0].tolist())


def work_ours_unverified(docs: list[str]) -> set[int]:
    import numpy as np
    import polars as pl

    from operators.text.dedup import MinhashDedupFilter

    rep = MinhashDedupFilter(threshold=0.7, verify=False).cluster_representatives(pl.Series(docs))
    return set(np.nonzero(rep != np.arange(len(docs)))[0].tolist())


def work_rensa(docs: list[str], shingles: list[list[str]] | None = None) -> set[int]:
    from rensa import RMinHashDeduplicator

    shingles = shingles if shingles is not None else _shingle_lists(docs)
    dedup = RMinHashDeduplicator(threshold=0.7, num_perm=128, use_lsh=True)
    keep = dedup.add_pairs((str(i), s) for i, s in enumerate(shingles) if s)
    kept_iter = iter(keep)
    return {i for i, s in enumerate(shingles) if s and not next(kept_iter)}


def work_datasketch(docs: list[str]) -> set[int]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.7, num_perm=128)
    hashes: dict[int, MinHash] = {}
    removed = set()
    for i, shingles in enumerate(_shingle_lists(docs)):
        if not shingles:
            continue
        m = MinHash(num_perm=128)
        m.update_batch([s.encode() for s in set(shingles)])
        if any(m.jaccard(hashes[c]) >= 0.7 for c in lsh.query(m)):
            removed.add(i)
        lsh.insert(i, m)
        hashes[i] = m
    return removed


def work_datatrove(docs: list[str]) -> set[int]:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(hash_config=HashConfig(hash_fc="sha1"))  # datatrove's xxhash path rejects str on xxhash 4.x
    with tempfile.TemporaryDirectory() as tmp:
        sigs, buckets, clusters = (os.path.join(tmp, x) for x in ("sigs", "buckets", "clusters"))
        MinhashDedupSignature(output_folder=sigs, config=cfg).run((Document(text=d, id=str(i)) for i, d in enumerate(docs)), rank=0, world_size=1)
        for b in range(cfg.num_buckets):
            MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=cfg).run(None, rank=b, world_size=cfg.num_buckets)
        MinhashDedupCluster(input_folder=buckets, output_folder=clusters, config=cfg).run(None, 0, 1)
        kept = {int(d.id) for d in MinhashDedupFilter(input_folder=clusters).run((Document(text=x, id=str(i)) for i, x in enumerate(docs)), rank=0, world_size=1)}
    return set(range(len(docs))) - kept


WORKERS = {
    "ours": work_ours,
    "ours_unverified": work_ours_unverified,
    "rensa": work_rensa,
    "datasketch": work_datasketch,
    "datatrove": work_datatrove,
}


def _preload(name: str) -> None:
    import numpy  # noqa: F401
    import polars  # noqa: F401

    import operators.text.dedup  # noqa: F401

    if name.startswith("rensa"):
        import rensa  # noqa: F401
    elif name == "datasketch":
        import datasketch  # noqa: F401
    elif name == "datatrove":
        import datatrove.pipeline.dedup.minhash  # noqa: F401
        import datatrove.utils.hashing  # noqa: F401


def _scores(removed: set[int], truth: dict) -> dict:
    near = {i for i, _ in truth["near"]}
    exact = {i for i, _ in truth["exact"]}
    planted = near | exact
    return {
        "removed": len(removed),
        "near_recall": round(len(removed & near) / max(1, len(near)), 4),
        "exact_recall": round(len(removed & exact) / max(1, len(exact)), 4),
        "precision": round(len(removed & planted) / max(1, len(removed)), 4),
    }


def child(name: str, path: str) -> dict:
    import logging

    logging.disable(logging.WARNING)
    with open(path) as f:
        data = json.load(f)
    docs, truth = data["docs"], {k: [tuple(x) for x in v] for k, v in data["truth"].items()}
    _preload(name)  # imports are not timed
    if name == "rensa_core":
        shingles = _shingle_lists(docs)
        start = time.perf_counter()
        removed = work_rensa(docs, shingles)
    else:
        start = time.perf_counter()
        removed = WORKERS[name](docs)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "docs_per_s": round(len(docs) / seconds, 1), **_scores(removed, truth)}


def run_child(name: str, path: str, timeout: int) -> dict:
    env = {**os.environ, **THREADS, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, path], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--skip", default="", help="comma-separated tools to leave out")
    ap.add_argument("--timeout", type=int, default=3000)
    ap.add_argument("--worker", nargs=2, metavar=("NAME", "CORPUS"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(child(*args.worker)))
        return
    if not C4.exists():
        raise SystemExit(f"C4 sample not found at {C4}: the benchmark needs ../shared/data")
    docs, truth = build_docs(args.docs)
    skip = {s for s in args.skip.split(",") if s}
    with tempfile.TemporaryDirectory(prefix="dataflow-minhash-") as tmp:
        path = os.path.join(tmp, "corpus.json")
        with open(path, "w") as f:
            json.dump({"docs": docs, "truth": truth}, f)
        names = [n for n in ("ours", "ours_unverified", "rensa", "rensa_core", "datasketch", "datatrove") if n not in skip]
        res = {name: run_child(name, path, args.timeout) for name in names}
    print(f"{args.docs:,} documents ({len(truth['near'])} planted near, {len(truth['exact'])} exact copies), one thread each\n")
    print(f"{'tool':<18}{'seconds':>9}{'docs/s':>10}{'near recall':>13}{'exact recall':>14}{'precision':>11}{'ours x':>8}")
    ours = res.get("ours", {}).get("seconds")
    for name, r in res.items():
        if "error" in r:
            print(f"{name:<18} error: {r['error']}")
            continue
        ratio = f"{r['seconds'] / ours:.1f}" if ours else "-"
        print(f"{name:<18}{r['seconds']:>9.2f}{r['docs_per_s']:>10.0f}{r['near_recall']:>13.3f}{r['exact_recall']:>14.3f}{r['precision']:>11.3f}{ratio:>8}")
    speedups = {f"ours_vs_{n}": round(r["seconds"] / ours, 2) for n, r in res.items() if n != "ours" and ours and "seconds" in r}
    print("\n" + ", ".join(f"{k}: {v}x" for k, v in speedups.items()) + "  (tool seconds / our seconds, same documents, one thread)")
    print(json.dumps({"docs": args.docs, "planted_near": len(truth["near"]), "planted_exact": len(truth["exact"]), "results": res, "speedups": speedups}))


if __name__ == "__main__":
    main()
