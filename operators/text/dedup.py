"""Document deduplication: exact (hash of the normalised text) and MinHash-LSH near-duplicates,
inside one frame or across a whole dataset.

Both filters split their work in three, so the Dagster layer can run them dataset-wide
(`dataflow_assets/dedup.py`): `signatures()` computes small per-row keys (the exact hash; the
MinHash signature and its LSH band keys), `decide()` compares one frame's keys with its own earlier
rows and with the keys of any number of earlier frames, and `apply_decision()` drops the rows
decided to be duplicates. Calling the filter on one frame is `decide()` with no earlier frame, so
the dataset-wide result on a dataset split in shards equals the in-frame result on the shards
concatenated in order (same rule, same recall).

The rule: a row is a duplicate when an earlier row (earlier frame, or earlier in the same frame) is
its twin: same normalised text (exact), or sharing an LSH bucket and an estimated Jaccard
similarity >= `threshold` (near). A row's decision depends only on the rows before it, so adding a
later shard never changes an earlier shard's kept set, and the kept set does not depend on the
order in which shards are processed. Each dropped row records the `_id` of its earliest twin
(`duplicate_of`).

The MinHash is our own numpy implementation, vectorised over the whole batch: words are hashed once
by Polars, word n-gram shingles are combined with numpy uint64 arithmetic and folded to 32 bits, and
every key goes through MurmurHash3's avalanche finaliser (a bijection, so structured keys such as
arithmetic progressions look random: without it multiply-shift underestimates their Jaccard by ~15%,
see the tests), then the `num_perm` hash functions are Dietzfelbinger's multiply-add-shift family
h(x) = ((a*x + b) mod 2^64) >> 32 with random 64-bit a, b (strongly universal for 32-bit keys; the
former (a*x + b) mod 2^32 returned the low bits, which depend only on the input's low bits). Signatures are computed in blocks of at most
`block_shingles` shingles and reduced per document with `np.minimum.reduceat`. LSH bucket members
are verified pairwise (every member against every earlier member, not only the bucket's first row);
rows with identical signatures are collapsed first, so boilerplate copies do not make quadratic
buckets.

Hashes are Polars' (stable within one Polars version), so the Polars version is part of the code
version: upgrading Polars marks these stages stale and their signatures are recomputed.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import ClassVar, Iterable, Iterator

import numpy as np
import polars as pl

from operators.base import ID, Filter, register
from operators.text._common import compute

_MULT = np.uint64(0x9E3779B97F4A7C15)
_VERIFY_CHUNK = 50_000

# What `decide()` returns: one row per duplicate. `row` is the row's position in the new frame;
# the twin is in the new frame (`twin_source` = -1) or in earlier frame number `twin_source`, at
# position `twin_row`; `duplicate_of` is the twin's `_id` (null when the frames carry no `_id`).
DECISION_SCHEMA = {
    "row": pl.Int64,
    ID: pl.String,
    "twin_source": pl.Int32,
    "twin_row": pl.Int64,
    "duplicate_of": pl.String,
}


def _normalise(text: pl.Expr, lowercase: bool, strip_punct: bool) -> pl.Expr:
    if lowercase:
        text = text.str.to_lowercase()
    if strip_punct:
        text = text.str.replace_all(r"[\p{P}\p{S}]+", " ")
    return text.str.replace_all(r"\s+", " ").str.strip_chars(" ")


def _ids(frame: pl.DataFrame) -> pl.Series:
    return frame.get_column(ID).cast(pl.String) if ID in frame.columns else pl.Series(ID, [None] * frame.height, dtype=pl.String)


def _empty_decision() -> pl.DataFrame:
    return pl.DataFrame(schema=DECISION_SCHEMA)


def _as_lazy(frames: Iterable[pl.DataFrame | pl.LazyFrame]) -> Iterable[pl.LazyFrame]:
    for f in frames:
        yield f.lazy() if isinstance(f, pl.DataFrame) else f


def _earliest(candidates: list[pl.DataFrame]) -> pl.DataFrame:
    """Per `row`, the earliest twin: smallest (twin_source, twin_row) over earlier frames."""
    if not candidates:
        return pl.DataFrame(schema={"row": pl.Int64, "twin_source": pl.Int32, "twin_row": pl.Int64, "duplicate_of": pl.String})
    return (
        pl.concat(candidates)
        .sort("twin_source", "twin_row")
        .unique(subset="row", keep="first", maintain_order=True)
    )


class DatasetDedupFilter(Filter):
    """Base of the dedup filters that also run across a whole dataset (see the module docstring):
    `signatures()` -> `decide()` -> `apply_decision()`. Subclasses set `reason`."""

    reason: ClassVar[str] = "duplicate"
    # the role whose output column names the row's duplicate group on kept rows
    group_role: ClassVar[str] = "group"
    _decision: pl.DataFrame | None = None

    def signatures(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        """Row-aligned keys of `frame` (with `_id`): what a partition persists for the dataset-wide step."""
        raise NotImplementedError

    def decide(self, new: pl.DataFrame, earlier: Iterable[pl.DataFrame | pl.LazyFrame] = ()) -> pl.DataFrame:
        """The duplicate rows of `new` (signatures) given the signatures of earlier frames, in order
        (`DECISION_SCHEMA`)."""
        raise NotImplementedError

    def version_parts(self) -> list:
        # signatures use Polars' hash, which is stable only within one Polars version
        return [*super().version_parts(), "polars", pl.__version__]

    def apply_decision(self, frame: pl.DataFrame, cols: dict[str, str | None], decision: pl.DataFrame) -> pl.DataFrame:
        """Drop the rows of `decision` (matched by `_id`, or by position when `frame` has no `_id`);
        record `duplicate_of` (and `duplicate_partition` when the decision has it) for every dropped row."""
        extra = [c for c in ("duplicate_of", "duplicate_partition") if c in decision.columns]
        if ID in frame.columns:
            dropped = frame.get_column(ID).is_in(decision.get_column(ID).drop_nulls().implode())
        else:
            dropped = pl.Series(np.isin(np.arange(frame.height), decision.get_column("row").to_numpy()))
        group = cols.get(self.group_role)
        if group:
            own = frame.get_column(ID) if ID in frame.columns else pl.Series(np.arange(frame.height, dtype=np.int64))
            frame = frame.with_columns(own.alias(group))
        out = self.apply_keep(frame, {self.reason: ~dropped})
        report = self.last_report
        if ID in frame.columns:
            report.extra["duplicates"] = decision.select(ID, *extra)
            if report.dropped_ids is not None and extra:
                report.dropped_ids = report.dropped_ids.join(decision.select(ID, *extra), on=ID, how="left")
        else:
            report.extra["duplicates"] = None
        twin = [c for c in ("twin_source", "duplicate_partition", "twin_row") if c in decision.columns]
        report.extra["clusters_with_duplicates"] = int(decision.select(pl.struct(twin).n_unique()).item()) if decision.height else 0
        return out

    @contextlib.contextmanager
    def decided(self, decision: pl.DataFrame) -> Iterator[None]:
        """Within the block, calls apply `decision` (made dataset-wide) instead of deciding within the frame."""
        self._decision = decision
        try:
            yield
        finally:
            self._decision = None

    def run(self, frame, cols):
        decision = self._decision
        if decision is None:
            decision = self.decide(self.signatures(frame, cols))
        return self.apply_decision(frame, cols, decision)


# --------------------------------------------------------------------------- exact


@register
class ExactDedupFilter(DatasetDedupFilter):
    """Exact deduplication: rows whose normalised `text` (lowercased, whitespace collapsed and,
    with `strip_punct`, punctuation removed) equals an earlier row's are dropped (reason
    exact_duplicate); the first occurrence is kept. Under Dagster the comparison spans every
    partition of the pipeline (earliest registered shard and row wins). Writes the row's own `_id`
    (its duplicate-group id; the row index without `_id`) to the optional `group` column; every
    dropped row records the `_id` it duplicates (`duplicate_of` in the `_dropped` table and in
    `extra["duplicates"]`). Signature: Polars' 64-bit hash of the normalised text. Use before
    MinHash dedup, on any text column (documents, instructions, questions)."""

    reads = {"text": "text"}
    writes = {"group": None}
    reason = "exact_duplicate"

    def __init__(self, lowercase: bool = True, strip_punct: bool = False):
        self.lowercase, self.strip_punct = lowercase, strip_punct

    def signatures(self, frame, cols):
        key = _normalise(pl.col(cols["text"]).fill_null(""), self.lowercase, self.strip_punct).hash(11)
        # slice by slice: the normalised copies of one slice's texts are alive at a time (100k docs: +490 MB)
        return pl.DataFrame({ID: _ids(frame), "key": compute(frame, {"key": key}).get_column("key")})

    def decide(self, new, earlier=()):
        if new.height == 0:
            return _empty_decision()
        k = new.select(pl.col("key"), pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col(ID))
        keys = k.get_column("key").unique().implode()
        found = []
        for src, lf in enumerate(_as_lazy(earlier)):
            hit = (
                lf.select("key", ID)
                .with_row_index("twin_row")
                .filter(pl.col("key").is_in(keys))
                .group_by("key")
                .agg(pl.col("twin_row").min().cast(pl.Int64), pl.col(ID).sort_by("twin_row").first().alias("duplicate_of"))
                .with_columns(pl.lit(src, dtype=pl.Int32).alias("twin_source"))
                .collect()
            )
            if hit.height:
                found.append(hit)
        prior = (
            pl.concat(found).sort("twin_source").unique(subset="key", keep="first", maintain_order=True)
            if found
            else pl.DataFrame(schema={"key": pl.UInt64, "twin_row": pl.Int64, "duplicate_of": pl.String, "twin_source": pl.Int32})
        )
        first = k.group_by("key").agg(pl.col("row").min().alias("first_row"), pl.col(ID).sort_by("row").first().alias("first_id"))
        return (
            k.join(first, on="key")
            .join(prior, on="key", how="left")
            .filter(pl.col("twin_source").is_not_null() | (pl.col("row") != pl.col("first_row")))
            .select(
                "row",
                ID,
                pl.col("twin_source").fill_null(-1).cast(pl.Int32),
                pl.coalesce("twin_row", "first_row").cast(pl.Int64).alias("twin_row"),
                pl.when(pl.col("twin_source").is_not_null()).then(pl.col("duplicate_of")).otherwise(pl.col("first_id")).alias("duplicate_of"),
            )
            .sort("row")
        )


# --------------------------------------------------------------------------- MinHash


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive + false negative probability mass of
    LSH with `bands` bands of `rows` rows at `threshold` (the rule of datasketch's `MinHashLSH`,
    same search order and tie-break). The integrands are polynomials of degree <= num_perm, so
    Gauss-Legendre quadrature with max(64, num_perm) nodes integrates them exactly."""
    nodes, weights = np.polynomial.legendre.leggauss(max(64, num_perm))

    def integral(f, lo: float, hi: float) -> float:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        return float((hi - lo) / 2 * np.dot(weights, f(s)))

    best, opt = float("inf"), (1, 1)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = integral(lambda s, r=r, b=b: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = integral(lambda s, r=r, b=b: (1 - s**r) ** b, threshold, 1.0)
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


def shingle_words(texts: pl.Series, lowercase: bool = True, strip_punct: bool = True) -> pl.Series:
    """The normalised words of every text (a list column): what the shingles are made of."""
    return pl.DataFrame({"t": texts.fill_null("")}).select(
        _normalise(pl.col("t"), lowercase, strip_punct).str.split(" ").list.eval(pl.element().filter(pl.element() != "")).alias("w")
    ).to_series()


def shingle_hashes(
    texts: pl.Series, shingle_size: int = 5, lowercase: bool = True, strip_punct: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the word `shingle_size`-gram shingles of every text, concatenated, and the
    per-text offsets (len(texts) + 1). A text shorter than `shingle_size` words gives one shingle
    (all its words); an empty or null text gives none."""
    words = shingle_words(texts, lowercase, strip_punct)
    counts = words.list.len().to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls().hash(seed=3).to_numpy()
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


def fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche. Applied to every
    shingle hash before the permutations, so structured keys (e.g. arithmetic progressions, on which
    multiply-shift alone underestimates Jaccard by ~15%) behave like random ones."""
    h = np.asarray(x, dtype=np.uint32).copy()
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def hash_family(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): `num_perm` random 64-bit multipliers and offsets of h(x) = ((a*x + b) mod 2^64) >> 32."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def minhash_signatures(
    x: np.ndarray, off: np.ndarray, num_perm: int = 128, seed: int = 1, block_shingles: int = 8_192
) -> np.ndarray:
    """MinHash signatures (len(off) - 1, num_perm) uint32 of the 32-bit shingle hashes `x` grouped
    by `off`: each key is mixed by `fmix32`, then hashed by the multiply-add-shift family of
    `hash_family` (the shift commutes with the minimum, so it is applied once per signature value,
    not per shingle). Texts without shingles get the all-0xFFFFFFFF signature."""
    a, b = hash_family(num_perm, seed)
    a, b = a[:, None], b[:, None]
    n_docs = len(off) - 1
    sig = np.full((num_perm, n_docs), np.iinfo(np.uint64).max, dtype=np.uint64)
    counts = np.diff(off)
    nonempty = np.nonzero(counts > 0)[0]
    ends = off[nonempty + 1]
    x64 = fmix32(x).astype(np.uint64)

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
                    acc = np.minimum(acc, hashed(x64[c : min(c + block_shingles, s1)]).min(axis=1))
                sig[:, d0] = acc
            else:
                sig[:, docs] = np.minimum.reduceat(hashed(x64[s0:s1]), off[docs] - s0, axis=1)
            i = j
    return np.ascontiguousarray((sig >> np.uint64(32)).astype(np.uint32).T)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 LSH bucket keys: band j hashes signature values [j*rows, (j+1)*rows)."""
    n = sig.shape[0]
    cols = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    key = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in range(rows):
            key = key * _MULT + cols[:, :, c] + np.uint64(1)
    return key


def _verify(sig_a: np.ndarray, ia: np.ndarray, sig_b: np.ndarray, ib: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which pairs (sig_a[ia], sig_b[ib]) have estimated Jaccard >= threshold (in bounded chunks)."""
    if threshold is None or len(ia) == 0:
        return np.ones(len(ia), dtype=bool)
    ok = np.empty(len(ia), dtype=bool)
    for s in range(0, len(ia), _VERIFY_CHUNK):
        ok[s : s + _VERIFY_CHUNK] = (sig_a[ia[s : s + _VERIFY_CHUNK]] == sig_b[ib[s : s + _VERIFY_CHUNK]]).mean(axis=1) >= threshold
    return ok


def _long_bands(keys: np.ndarray, rows: np.ndarray, name: str) -> pl.DataFrame:
    b = keys.shape[1]
    return pl.DataFrame(
        {name: np.repeat(rows, b).astype(np.int64), "band": np.tile(np.arange(b, dtype=np.int16), len(rows)), "key": keys[rows].reshape(-1)}
    )


@register
class MinhashDedupFilter(DatasetDedupFilter):
    """MinHash-LSH near-duplicate removal (Broder 1997): word `shingle_size`-grams of the
    normalised `text` (lowercased, punctuation removed, whitespace collapsed), `num_perm` MinHash
    values per document (multiply-add-shift hashes, see the module docstring), LSH with `bands` x
    `rows` chosen for `threshold` unless given (datasketch's optimum with false positive / negative
    weights `lsh_weights`, default 0.3 / 0.7 since candidates are verified: 16 x 8 at 0.7 and 128
    permutations, recall 0.971 vs 0.959 for datasketch's 14 x 9 on benchmarks/minhash.py's
    planted pairs, precision unchanged). A document is dropped
    (reason near_duplicate) when an earlier document shares an LSH bucket with it and their
    estimated Jaccard is >= `threshold` (every bucket member is verified; `verify=False` accepts
    every bucket collision, as datatrove does); the first document of a group is kept. Under
    Dagster the comparison spans every partition (earliest registered shard and row wins). Writes
    the row's own `_id` (cluster id) to `cluster`; each dropped row records the `_id` of its
    earliest verified twin (`duplicate_of`). Memory is bounded by `block_shingles` shingles (x
    num_perm x 8 bytes) plus num_perm x 4 bytes per document. Use after exact dedup, on any
    text column."""

    reads = {"text": "text"}
    writes = {"cluster": "minhash_cluster"}
    reason = "near_duplicate"
    group_role = "cluster"

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
        block_shingles: int = 8_192,
        verify: bool = True,
        lsh_weights: tuple[float, float] = (0.3, 0.7),
    ):
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither")
        if bands is not None and bands * rows > num_perm:
            raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm = {num_perm}")
        self.threshold, self.num_perm, self.shingle_size = threshold, num_perm, shingle_size
        # candidates are verified, so the LSH shape leans to recall: false negatives weigh 0.7 (datasketch: 0.5)
        self.bands, self.rows = (bands, rows) if bands is not None else lsh_params(threshold, num_perm, *lsh_weights)
        self.seed, self.lowercase, self.strip_punct, self.block_shingles = seed, lowercase, strip_punct, block_shingles
        self.verify = verify

    # -- signatures ------------------------------------------------------------------
    def signature_matrix(self, texts: pl.Series, chunk_docs: int = 5_000) -> tuple[np.ndarray, np.ndarray]:
        """(MinHash signatures (n, num_perm) uint32, whether each text has shingles); computed
        `chunk_docs` texts at a time so only one chunk's words and shingles are in memory."""
        sigs, eligible = [], []
        for start in range(0, len(texts), chunk_docs):
            x, off = shingle_hashes(texts.slice(start, chunk_docs), self.shingle_size, self.lowercase, self.strip_punct)
            sigs.append(minhash_signatures(x, off, self.num_perm, self.seed, self.block_shingles))
            eligible.append(np.diff(off) > 0)
            del x
        if not sigs:
            return np.zeros((0, self.num_perm), dtype=np.uint32), np.zeros(0, dtype=bool)
        return (np.concatenate(sigs) if len(sigs) > 1 else sigs[0]), np.concatenate(eligible)

    def signatures(self, frame, cols):
        sig, eligible = self.signature_matrix(frame.get_column(cols["text"]))
        keys = band_keys(sig, self.bands, self.rows)
        return pl.DataFrame(
            {
                ID: _ids(frame),
                "eligible": eligible,
                "bands": pl.Series("bands", keys, dtype=pl.Array(pl.UInt64, self.bands)),
                "sig": pl.Series("sig", sig, dtype=pl.Array(pl.UInt32, self.num_perm)),
            }
        )

    # -- decision --------------------------------------------------------------------
    def decide(self, new, earlier=()):
        n = new.height
        if n == 0:
            return _empty_decision()
        thr = self.threshold if self.verify else None
        ids = new.get_column(ID).to_numpy()
        sig = new.get_column("sig").to_numpy()
        keys = new.get_column("bands").to_numpy()
        el = np.nonzero(new.get_column("eligible").to_numpy())[0]
        if len(el) == 0:
            return _empty_decision()
        # rows with a signature identical to an earlier row's: their twin follows from that row's
        void = np.ascontiguousarray(sig[el]).view(np.dtype((np.void, sig.shape[1] * sig.itemsize))).ravel()
        _, first_idx, inverse = np.unique(void, return_index=True, return_inverse=True)
        same = el[first_idx[inverse.ravel()]]
        reps = el[same == el]
        long = _long_bands(keys, reps, "row")
        # (1) earlier frames: candidates share a (band, key); verified on the earlier frame's signatures
        found: list[pl.DataFrame] = []
        for src, lf in enumerate(_as_lazy(earlier)):
            ef = lf.select("eligible", "bands").with_row_index("twin_row").filter(pl.col("eligible")).collect()
            if ef.height == 0:
                continue
            elong = pl.DataFrame(
                {
                    "twin_row": np.repeat(ef.get_column("twin_row").to_numpy().astype(np.int64), self.bands),
                    "band": np.tile(np.arange(self.bands, dtype=np.int16), ef.height),
                    "key": ef.get_column("bands").to_numpy().reshape(-1),
                }
            )
            pairs = long.join(elong, on=["band", "key"]).select("row", "twin_row").unique()
            if pairs.height == 0:
                continue
            wanted = pairs.get_column("twin_row").unique().sort()
            twins = (
                lf.select(ID, "sig").with_row_index("twin_row").filter(pl.col("twin_row").cast(pl.Int64).is_in(wanted.implode())).collect()
            )
            pos = pl.DataFrame({"twin_row": twins.get_column("twin_row").cast(pl.Int64), "p": np.arange(twins.height)})
            pairs = pairs.join(pos, on="twin_row")
            ok = _verify(sig, pairs.get_column("row").to_numpy(), twins.get_column("sig").to_numpy(), pairs.get_column("p").to_numpy(), thr)
            pairs = pairs.filter(pl.Series(ok))
            if pairs.height:
                tid = twins.get_column(ID).gather(pairs.get_column("p"))
                found.append(
                    pairs.select("row", pl.lit(src, dtype=pl.Int32).alias("twin_source"), "twin_row").with_columns(tid.alias("duplicate_of"))
                )
        # (2) earlier rows of the same frame: every pair of bucket members, verified
        inner = long.join(long, on=["band", "key"], suffix="_t").filter(pl.col("row_t") < pl.col("row")).select("row", "row_t").unique()
        if inner.height:
            ok = _verify(sig, inner.get_column("row").to_numpy(), sig, inner.get_column("row_t").to_numpy(), thr)
            inner = inner.filter(pl.Series(ok))
        if inner.height:
            found.append(
                inner.select(
                    "row",
                    pl.lit(-1, dtype=pl.Int32).alias("twin_source"),
                    pl.col("row_t").alias("twin_row"),
                ).with_columns(pl.Series("duplicate_of", ids[inner.get_column("row_t").to_numpy()], dtype=pl.String))
            )
        # earliest twin: any earlier frame before the same frame (-1 sorts first, so map it to +inf)
        best = _earliest(
            [f.with_columns(pl.when(pl.col("twin_source") < 0).then(2**31 - 1).otherwise(pl.col("twin_source")).cast(pl.Int32).alias("twin_source")) for f in found]
        ).with_columns(pl.when(pl.col("twin_source") == 2**31 - 1).then(-1).otherwise(pl.col("twin_source")).cast(pl.Int32).alias("twin_source"))
        # rows identical in signature to an earlier row r0 of this frame: r0's twin if r0 is dropped, else r0
        copies = np.nonzero(same != el)[0]
        if len(copies):
            r0 = pl.DataFrame({"row": el[copies].astype(np.int64), "r0": same[copies].astype(np.int64)})
            r0 = r0.with_columns(pl.Series("r0_id", ids[r0.get_column("r0").to_numpy()], dtype=pl.String))
            via = r0.join(best.rename({"row": "r0"}), on="r0", how="left").select(
                "row",
                pl.col("twin_source").fill_null(-1).cast(pl.Int32),
                pl.coalesce("twin_row", "r0").cast(pl.Int64).alias("twin_row"),
                pl.when(pl.col("twin_row").is_null()).then(pl.col("r0_id")).otherwise(pl.col("duplicate_of")).alias("duplicate_of"),
            )
            best = pl.concat([best, via])
        best = best.sort("row")
        return best.with_columns(pl.Series(ID, ids[best.get_column("row").to_numpy()], dtype=pl.String)).select(list(DECISION_SCHEMA))

    def cluster_representatives(self, texts: pl.Series) -> np.ndarray:
        """For every text, its own index when kept, else the index of its earliest verified twin."""
        frame = pl.DataFrame({"text": texts})
        dec = self.decide(self.signatures(frame, {"text": "text"}))
        rep = np.arange(len(texts), dtype=np.int64)
        rep[dec.get_column("row").to_numpy()] = dec.get_column("twin_row").to_numpy()
        return rep
