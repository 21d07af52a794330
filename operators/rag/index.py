"""A retrieval index over a passage corpus: BM25 (bm25s) plus, when the optional offline embedding
model is installed, dense vectors (all-MiniLM-L6-v2), with hybrid ranking by reciprocal rank fusion.

Why bm25s: DuckDB's full-text-search extension would have to be downloaded at run time (extension
downloads are unreachable here, and no pip package ships `fts` pinned to our DuckDB), while bm25s is
a maintained pure-Python/NumPy library on PyPI with sparse-matrix scoring and save/load. tantivy
would also work but needs a schema and a writer process for what is, here, a read-only index.

Storage: `$DATAFLOW_HOME/indexes/<key>/`, where `key` hashes the index format version, the encoder
and every (passage id, text) pair, so rebuilding for an unchanged corpus finds the finished index
and costs nothing; any changed passage gives a new key. Files: `ids.json`, `bm25/` (bm25s),
`dense.npy` (L2-normalised float32), `DONE` written last (a crashed build is never reused).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from operators.base import stable_hash

INDEX_VERSION = "rag-index-v1"
RRF_K = 60


def index_root() -> Path:
    return Path(os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser().resolve() / "indexes"


def corpus_key(ids: Sequence[str], texts: Sequence[str], dense_model: str | None) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for i, t in zip(ids, texts):
        h.update(str(i).encode() + b"\x00" + (t or "").encode() + b"\x01")
    return stable_hash(INDEX_VERSION, dense_model, h.hexdigest(), length=20)


def _tokenize(texts: Sequence[str]):
    import bm25s

    return bm25s.tokenize(list(texts), lower=True, stopwords="en", show_progress=False)


@dataclass
class RetrievalIndex:
    path: Path
    ids: list[str]
    bm25: Any
    dense: np.ndarray | None
    encoder: Any = None
    built: bool = False  # False: an existing index was reused

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], *, encoder: Any = None, dense: bool = True, root: Path | None = None) -> RetrievalIndex:
        """Build (or reuse) the index of this corpus under `root` (default `$DATAFLOW_HOME/indexes`).
        `encoder`: an object with `embed(list[str]) -> normalised array` (see operators/core/embeddings.py),
        used only when `dense`."""
        import bm25s

        ids, texts = [str(i) for i in ids], [t or "" for t in texts]
        if len(set(ids)) != len(ids):
            raise ValueError("passage ids must be unique to build a retrieval index")
        model = getattr(encoder, "model_name", None) or (type(encoder).__qualname__ if encoder is not None else None)
        root = root or index_root()
        path = root / corpus_key(ids, texts, model if dense and encoder is not None else None)
        if (path / "DONE").exists():
            return cls.load(path, encoder=encoder)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            (tmp / "ids.json").write_text(json.dumps(ids))
            retriever = bm25s.BM25()
            if ids:
                retriever.index(_tokenize(texts), show_progress=False)
                retriever.save(str(tmp / "bm25"))
            if dense and encoder is not None and ids:
                np.save(tmp / "dense.npy", encoder.embed(texts).astype(np.float32))
            (tmp / "DONE").write_text(json.dumps({"passages": len(ids), "dense": model}))
            try:
                os.replace(tmp, path)
            except OSError:  # another process finished the same index first: use it
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        out = cls.load(path, encoder=encoder)
        out.built = True
        return out

    @classmethod
    def load(cls, path: Path, encoder: Any = None) -> RetrievalIndex:
        import bm25s

        path = Path(path)
        ids = json.loads((path / "ids.json").read_text())
        bm25 = bm25s.BM25.load(str(path / "bm25")) if (path / "bm25").exists() else None
        dense = np.load(path / "dense.npy") if (path / "dense.npy").exists() else None
        return cls(path, ids, bm25, dense, encoder)

    # -- search ---------------------------------------------------------------------------
    def search_bm25(self, queries: Sequence[str], k: int) -> list[list[str]]:
        if self.bm25 is None or not self.ids:
            return [[] for _ in queries]
        k = min(k, len(self.ids))
        docs, _ = self.bm25.retrieve(_tokenize(queries), k=k, show_progress=False)
        return [[self.ids[j] for j in row] for row in np.asarray(docs)]

    def search_dense(self, queries: Sequence[str], k: int) -> list[list[str]]:
        if self.dense is None or self.encoder is None:
            raise RuntimeError("this index has no dense vectors (built without the embedding model)")
        q = self.encoder.embed(list(queries))
        sims = q @ self.dense.T
        k = min(k, len(self.ids))
        top = np.argsort(-sims, axis=1)[:, :k]
        return [[self.ids[j] for j in row] for row in top]

    def search_hybrid(self, queries: Sequence[str], k: int, depth: int = 50) -> list[list[str]]:
        """Reciprocal rank fusion of BM25 and dense rankings (each to `depth`); BM25 alone
        when the index has no dense vectors."""
        lex = self.search_bm25(queries, depth)
        if self.dense is None or self.encoder is None:
            return [r[:k] for r in lex]
        den = self.search_dense(queries, depth)
        out = []
        for a, b in zip(lex, den):
            score: dict[str, float] = {}
            for ranking in (a, b):
                for rank, pid in enumerate(ranking):
                    score[pid] = score.get(pid, 0.0) + 1.0 / (RRF_K + rank + 1)
            out.append(sorted(score, key=lambda p: -score[p])[:k])
        return out

    def search(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid") -> list[list[str]]:
        if mode == "bm25":
            return self.search_bm25(queries, k)
        if mode == "dense":
            return self.search_dense(queries, k)
        if mode == "hybrid":
            return self.search_hybrid(queries, k)
        raise ValueError(f"unknown retrieval mode {mode!r} (bm25, dense, hybrid)")
