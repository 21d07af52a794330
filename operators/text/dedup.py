"""Document deduplication: exact (hash of the normalised text) and MinHash-LSH near-duplicates.

The MinHash is our own numpy implementation, vectorised over the whole batch: words are hashed
once by Polars, word n-gram shingles are combined with numpy uint64 arithmetic, and the
`num_perm` hash functions (random odd-multiplier affine maps mod 2^32) are applied to blocks of at most
`block_shingles` shingles, reduced per document with `np.minimum.reduceat`; memory stays bounded by
the block size (plus the signature matrix, num_perm x 4 bytes per document). LSH banding,
candidate verification (estimated Jaccard >= threshold) and clustering (connected components by
vectorised label propagation) are numpy/Polars too.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl

from operators.base import ID, Filter, register

_MULT = np.uint64(0x9E3779B97F4A7C15)


def _normalise(text: pl.Expr, lowercase: bool, strip_punct: bool) -> pl.Expr:
    if lowercase:
        text = text.str.to_lowercase()
    if strip_punct:
        text = text.str.replace_all(r"[\p{P}\p{S}]+", " ")
    return text.str.replace_all(r"\s+", " ").str.strip_chars(" ")


def _representative_ids(frame: pl.DataFrame, rep_index: np.ndarray) -> pl.Series:
    """The cluster id of each row: the `_id` of its representative row, else its row index."""
    if ID in frame.columns:
        return frame.get_column(ID).gather(rep_index)
    return pl.Series(rep_index.astype(np.int64))


def _duplicates_report(frame: pl.DataFrame, rep_index: np.ndarray) -> pl.DataFrame | None:
    if ID not in frame.columns:
        return None
    dup = np.nonzero(rep_index != np.arange(len(rep_index)))[0]
    ids = frame.get_column(ID)
    return pl.DataFrame({ID: ids.gather(dup), "duplicate_of": ids.gather(rep_index[dup])})


@register
class ExactDedupFilter(Filter):
    """Exact deduplication: rows whose normalised `text` (lowercased, whitespace collapsed and,
    with `strip_punct`, punctuation removed) equals an earlier row's are dropped (reason
    exact_duplicate); the first occurrence is kept. Writes the duplicate-group id (the `_id` of
    the kept first occurrence, or its row index without `_id`) to the optional `group` column;
    the report's `extra["duplicates"]` maps every dropped `_id` to the `_id` it duplicates.
    Hashing is Polars' 64-bit hash (stable within one run). Use before MinHash dedup."""

    reads = {"text": "text"}
    writes = {"group": None}

    def __init__(self, lowercase: bool = True, strip_punct: bool = False):
        self.lowercase, self.strip_punct = lowercase, strip_punct

    def run(self, frame, cols):
        key = frame.select(_normalise(pl.col(cols["text"]).fill_null(""), self.lowercase, self.strip_punct).hash(11))
        key = key.to_series()
        first = pl.DataFrame({"k": key}).with_row_index("i").select(pl.col("i").first().over("k")).to_series()
        rep = first.to_numpy().astype(np.int64) if frame.height else np.zeros(0, dtype=np.int64)
        if cols.get("group"):
            frame = frame.with_columns(_representative_ids(frame, rep).alias(cols["group"]))
        self.last_report.extra["duplicates"] = _duplicates_report(frame, rep)
        return self.apply_keep(frame, {"exact_duplicate": pl.Series(rep == np.arange(len(rep)))})


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positive + false negative probability mass (datasketch's
    rule, equal weights)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def shingle_hashes(
    texts: pl.Series, shingle_size: int = 5, lowercase: bool = True, strip_punct: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the word `shingle_size`-gram shingles of every text, concatenated, and the
    per-text offsets (len(texts) + 1). A text shorter than `shingle_size` words gives one shingle
    (all its words); an empty text gives none."""
    words = pl.DataFrame({"t": texts.fill_null("")}).select(
        _normalise(pl.col("t"), lowercase, strip_punct).str.split(" ").alias("w")
    )
    counts = (
        words.select(pl.when(pl.col("w").list.first() == "").then(0).otherwise(pl.col("w").list.len()))
        .to_series()
        .to_numpy()
        .astype(np.int64)
    )
    flat = words.explode("w").filter(pl.col("w") != "").get_column("w").hash(seed=3).to_numpy()
    word_off = np.concatenate(([0], np.cumsum(counts)))
    n = shingle_size
    m = len(flat)
    n_shingles = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    off = np.concatenate(([0], np.cumsum(n_shingles)))
    out = np.empty(int(off[-1]), dtype=np.uint64)
    if m:
        doc = np.repeat(np.arange(len(counts)), counts)
        with np.errstate(over="ignore"):
            g = flat.copy()
            short = np.nonzero((counts > 0) & (counts < n))[0]
            for k in range(2, n + 1):
                kk = m - k + 1
                if kk <= 0:
                    break
                g = g[:kk] * _MULT + flat[k - 1 :]
                # texts with exactly k words (< n): their one shingle is the k-gram at their start
                exact = short[counts[short] == k]
                if len(exact):
                    out[off[exact]] = g[word_off[exact]]
            sel1 = short[counts[short] == 1]
            if len(sel1):
                out[off[sel1]] = flat[word_off[sel1]]
            if m - n + 1 > 0:
                valid = doc[: m - n + 1] == doc[n - 1 :]
                # valid starts come in document order: exactly the shingle slots of long texts
                slot_is_long = np.repeat(counts >= n, n_shingles)
                out[slot_is_long] = (g if n > 1 else flat)[valid]
    x = ((out >> np.uint64(32)) ^ out).astype(np.uint32)
    return x, off


def minhash_signatures(
    x: np.ndarray, off: np.ndarray, num_perm: int = 128, seed: int = 1, block_shingles: int = 32_768
) -> np.ndarray:
    """MinHash signatures (len(off) - 1, num_perm) uint32 of the 32-bit shingle hashes `x` grouped
    by `off`: h_i(x) = (a_i * x + b_i) mod 2^32 with random odd a_i (a bijection of the already
    random 32-bit shingle hash per permutation), computed as a (num_perm, block) uint32 matrix per
    block and reduced per document with `np.minimum.reduceat`. Texts without shingles get the
    all-0xFFFFFFFF signature."""
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, 2**31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1))[:, None]
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32)[:, None]
    n_docs = len(off) - 1
    sig = np.full((num_perm, n_docs), np.iinfo(np.uint32).max, dtype=np.uint32)
    counts = np.diff(off)
    nonempty = np.nonzero(counts > 0)[0]
    ends = off[nonempty + 1]

    def hashed(rows: np.ndarray) -> np.ndarray:
        v = a * rows[None, :]
        v += b
        return v

    i = 0
    with np.errstate(over="ignore"):
        while i < len(nonempty):
            d0 = nonempty[i]
            j = max(int(np.searchsorted(ends, off[d0] + block_shingles, side="right")), i + 1)
            docs = nonempty[i:j]
            s0, s1 = int(off[docs[0]]), int(off[docs[-1] + 1])
            if j == i + 1 and s1 - s0 > block_shingles:  # one long document: min over sub-blocks
                acc = sig[:, d0].copy()
                for c in range(s0, s1, block_shingles):
                    acc = np.minimum(acc, hashed(x[c : min(c + block_shingles, s1)]).min(axis=1))
                sig[:, d0] = acc
            else:
                sig[:, docs] = np.minimum.reduceat(hashed(x[s0:s1]), off[docs] - s0, axis=1)
            i = j
    return np.ascontiguousarray(sig.T)


def minhash_clusters(
    sig: np.ndarray, bands: int, rows: int, threshold: float | None, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Cluster representative (the smallest row index of its cluster) of every row: rows sharing
    an LSH band bucket are linked to the bucket's first row when their estimated Jaccard
    (fraction of equal signature values) is >= `threshold`; clusters are connected components."""
    n = sig.shape[0]
    labels = np.arange(n, dtype=np.int64)
    if n == 0:
        return labels
    idx = np.arange(n, dtype=np.int64) if eligible is None else np.nonzero(eligible)[0]
    if len(idx) < 2:
        return labels
    us, vs = [], []
    with np.errstate(over="ignore"):
        for band in range(bands):
            cols = sig[idx, band * rows : (band + 1) * rows].astype(np.uint64)
            key = np.zeros(len(idx), dtype=np.uint64)
            for c in range(cols.shape[1]):
                key = key * _MULT + cols[:, c] + np.uint64(band + 1)
            first = pl.DataFrame({"k": key, "i": idx}).select(pl.col("i").first().over("k")).to_series().to_numpy()
            linked = first != idx
            if linked.any():
                us.append(idx[linked])
                vs.append(first[linked])
    if not us:
        return labels
    pairs = pl.DataFrame({"u": np.concatenate(us), "v": np.concatenate(vs)}).unique()
    u, v = pairs.get_column("u").to_numpy(), pairs.get_column("v").to_numpy()
    if threshold is not None and len(u):
        sim = np.empty(len(u))
        for s in range(0, len(u), 100_000):  # bounded memory
            sim[s : s + 100_000] = (sig[u[s : s + 100_000]] == sig[v[s : s + 100_000]]).mean(axis=1)
        keep = sim >= threshold
        u, v = u[keep], v[keep]
    if len(u) == 0:
        return labels
    while True:  # label propagation with pointer jumping: converges to the component minimum
        m = np.minimum(labels[u], labels[v])
        new = labels.copy()
        np.minimum.at(new, u, m)
        np.minimum.at(new, v, m)
        new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


@register
class MinhashDedupFilter(Filter):
    """MinHash-LSH near-duplicate removal (Broder 1997; as in datatrove's minhash stages, in one
    process): word `shingle_size`-grams of the normalised `text` (lowercased, punctuation removed,
    whitespace collapsed), `num_perm` MinHash values per document, LSH with `bands` x `rows`
    chosen for `threshold` (datasketch's optimum) unless given, candidate pairs verified by
    estimated Jaccard >= `threshold`, then connected components. Keeps the first document of each
    cluster and drops the others (reason near_duplicate). Writes the cluster id (the `_id` of the
    kept representative, or its row index) to `cluster`; `extra["duplicates"]` maps dropped `_id`
    to representative `_id`. Numpy-vectorised in blocks of `block_shingles` shingles (bounded
    memory: ~num_perm x 4 bytes per shingle of a block, plus num_perm x 4 bytes per document)."""

    reads = {"text": "text"}
    writes = {"cluster": "minhash_cluster"}

    def __init__(
        self,
        threshold: float = 0.7,
        num_perm: int = 128,
        shingle_size: int = 5,
        bands: int | None = None,
        rows: int | None = None,
        seed: int = 1,
        lowercase: bool = True,
        strip_punct: bool = True,
        block_shingles: int = 32_768,
    ):
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither")
        if bands is not None and bands * rows > num_perm:
            raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm = {num_perm}")
        self.threshold, self.num_perm, self.shingle_size = threshold, num_perm, shingle_size
        self.bands, self.rows = (bands, rows) if bands is not None else lsh_params(threshold, num_perm)
        self.seed, self.lowercase, self.strip_punct, self.block_shingles = seed, lowercase, strip_punct, block_shingles

    def cluster_representatives(self, texts: pl.Series, chunk_docs: int = 5_000) -> np.ndarray:
        """Representative row index of every text; signatures are computed `chunk_docs` texts at
        a time so only one chunk's words and shingles are in memory."""
        sigs, eligible = [], []
        for start in range(0, len(texts), chunk_docs):
            x, off = shingle_hashes(texts.slice(start, chunk_docs), self.shingle_size, self.lowercase, self.strip_punct)
            sigs.append(minhash_signatures(x, off, self.num_perm, self.seed, self.block_shingles))
            eligible.append(np.diff(off) > 0)
            del x
        if not sigs:
            return np.zeros(0, dtype=np.int64)
        sig = np.concatenate(sigs) if len(sigs) > 1 else sigs[0]
        return minhash_clusters(sig, self.bands, self.rows, self.threshold, eligible=np.concatenate(eligible))

    def run(self, frame, cols):
        rep = self.cluster_representatives(frame.get_column(cols["text"]))
        frame = frame.with_columns(_representative_ids(frame, rep).alias(cols["cluster"]))
        self.last_report.extra["duplicates"] = _duplicates_report(frame, rep)
        self.last_report.extra["clusters_with_duplicates"] = int(len(np.unique(rep[rep != np.arange(len(rep))])))
        return self.apply_keep(frame, {"near_duplicate": pl.Series(rep == np.arange(len(rep)), dtype=pl.Boolean)})
