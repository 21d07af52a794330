"""Gopher repetition filters (Rae et al. 2021, Table A1; datatrove GopherRepetitionFilter).

Line and paragraph duplication are Polars list expressions. The n-gram statistics hash every
whitespace word once (Polars), then build n-gram hashes with numpy array arithmetic over the whole
batch and count them with Polars hash tables: no per-document Python loop. Documents are processed
in chunks of `chunk_words` words so memory stays bounded.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import polars as pl

from operators.base import Filter, register
from operators.text._common import compute, duplicate_stats, line_runs_list, paragraphs_list, safe_div

GOPHER_TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
GOPHER_DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
_MULT = np.uint64(0x9E3779B97F4A7C15)
_DOC_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


def _word_arrays(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per word of every text (in order): document index, 64-bit hash, length; plus word counts."""
    frame = pl.DataFrame({"t": texts.fill_null("")}).with_row_index("doc")
    words = frame.select(
        "doc", pl.col("t").str.replace_all(r"\s+", " ").str.strip_chars(" ").str.split(" ").alias("w")
    )
    counts = words.select(
        pl.when(pl.col("w").list.first() == "").then(0).otherwise(pl.col("w").list.len()).alias("n")
    ).to_series().to_numpy()
    flat = words.explode("w").filter(pl.col("w").is_not_null() & (pl.col("w") != ""))
    flat = flat.select(
        pl.col("doc").cast(pl.UInt32), pl.col("w").hash(seed=7).alias("h"), pl.col("w").str.len_chars().alias("l")
    )
    return (
        flat.get_column("doc").to_numpy(),
        flat.get_column("h").to_numpy(),
        flat.get_column("l").to_numpy().astype(np.int64),
        counts.astype(np.int64),
    )


def ngram_repetition(
    texts: pl.Series,
    top_ns: Iterable[int] = (2, 3, 4),
    dup_ns: Iterable[int] = (5, 6, 7, 8, 9, 10),
    chunk_words: int = 4_000_000,
) -> dict[str, np.ndarray]:
    """Character counts behind Gopher's n-gram rules, one value per text:

    - `top_{n}`: for the most frequent word n-gram (ties: the longest), its count times its
      length in characters as " ".join(ngram) (datatrove's `find_top_duplicate`); 0 when the text
      has fewer than n words.
    - `dup_{n}`: characters ("".join, i.e. spaces excluded) of the words covered by an n-gram that
      already occurred earlier in the text (the Gopher paper's "fraction of characters in duplicate
      n-grams"; datatrove's greedy left-to-right scan counts a subset of these words, so this is
      slightly stricter on heavily repeated texts).
    """
    top_ns, dup_ns = tuple(top_ns), tuple(dup_ns)
    n_docs = len(texts)
    out = {f"top_{n}": np.zeros(n_docs, dtype=np.int64) for n in top_ns}
    out.update({f"dup_{n}": np.zeros(n_docs, dtype=np.int64) for n in dup_ns})
    if n_docs == 0:
        return out
    lengths = texts.fill_null("").str.len_chars().to_numpy().astype(np.int64)
    # chunk boundaries on documents, ~chunk_words words each (a word is at most ~1 char + space)
    cum = np.cumsum(lengths // 5 + 1)
    start = 0
    while start < n_docs:
        stop = int(np.searchsorted(cum, cum[start] - (lengths[start] // 5 + 1) + chunk_words, side="right"))
        stop = max(stop, start + 1)
        _ngram_chunk(texts.slice(start, stop - start), start, top_ns, dup_ns, out)
        start = stop
    return out


def _ngram_chunk(texts, offset, top_ns, dup_ns, out) -> None:
    doc, h, ln, _ = _word_arrays(texts)
    m, n_docs = len(doc), len(texts)
    if m == 0:
        return
    cs = np.concatenate(([0], np.cumsum(ln)))
    doc_key = doc.astype(np.uint64) * _DOC_MIX
    # candidates: positions whose (n-1)-gram is repeated in its text; an n-gram can only repeat
    # where its prefix does, so the counting shrinks quickly with n.
    cand = np.arange(m)
    with np.errstate(over="ignore"):
        g = h.copy()  # hash of the n-gram starting at each position, built up n by n
        for n in range(2, max(top_ns + dup_ns, default=1) + 1):
            k = m - n + 1
            if k <= 0:
                break
            g = g[:k] * _MULT + h[n - 1 :]
            valid = doc[:k] == doc[n - 1 :]
            cand = cand[cand < k]
            cand = cand[valid[cand]]
            if len(cand) == 0 and n not in top_ns:
                break
            key = g[cand] ^ doc_key[cand]
            _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
            cnt = counts[inverse]
            if n in top_ns:
                vidx = np.nonzero(valid)[0]
                if len(vidx):
                    chars = cs[vidx + n] - cs[vidx] + (n - 1)  # count 1 for every valid n-gram
                    best = np.zeros(n_docs, dtype=np.int64)
                    _segment_max(best, doc[vidx], chars)
                    rep_c, rep_n = cand[cnt > 1], cnt[cnt > 1]
                    if len(rep_c):  # texts with a repeated n-gram: the most frequent, then longest
                        top_count = np.zeros(n_docs, dtype=np.int64)
                        _segment_max(top_count, doc[rep_c], rep_n)
                        is_top = rep_n == top_count[doc[rep_c]]
                        rc = rep_c[is_top]
                        v = (cs[rc + n] - cs[rc] + (n - 1)) * rep_n[is_top]
                        has_rep = top_count > 0
                        best[has_rep] = 0
                        _segment_max(best, doc[rc], v)
                    out[f"top_{n}"][offset : offset + n_docs] = best
            if n in dup_ns and len(cand):
                rep = first[inverse] != np.arange(len(cand))  # not the first occurrence in its text
                if rep.any():
                    starts = np.zeros(m + 1, dtype=np.int64)
                    starts[cand[rep] + 1] = 1
                    cstarts = np.cumsum(starts)  # cstarts[j + 1] = repeated starts at positions <= j
                    pos = np.arange(m)
                    covered = (cstarts[pos + 1] - cstarts[np.maximum(pos - n + 1, 0)]) > 0
                    out[f"dup_{n}"][offset : offset + n_docs] = np.bincount(
                        doc[covered], weights=ln[covered], minlength=n_docs
                    ).astype(np.int64)
            cand = cand[cnt > 1]


def _segment_max(best: np.ndarray, d: np.ndarray, v: np.ndarray) -> None:
    """best[d] = max(best[d], v) for document indices `d` sorted ascending (positions come in
    document order), as one vectorised segment maximum."""
    if len(d) == 0:
        return
    starts = np.concatenate(([0], np.nonzero(np.diff(d))[0] + 1))
    seg = np.maximum.reduceat(v, starts)
    best[d[starts]] = np.maximum(best[d[starts]], seg)


def _pairs(pairs) -> tuple[tuple[int, float], ...]:
    return tuple((int(n), float(f)) for n, f in pairs)


class _NgramFilter(Filter):
    """Base (not registered) of the n-gram filters: computes the batch statistics in `run`."""

    reads = {"text": "text"}

    def fractions(self, frame: pl.DataFrame, col: str, top, dup) -> dict[str, pl.Series]:
        stats = ngram_repetition(frame.get_column(col), [n for n, _ in top], [n for n, _ in dup])
        length = frame.get_column(col).fill_null("").str.len_chars().cast(pl.Float64).to_numpy()
        denom = np.where(length > 0, length, 1.0)
        return {k: pl.Series(k, v / denom) for k, v in stats.items()}


@register
class TopNgramCharFractionFilter(_NgramFilter):
    """Gopher "top n-gram character fraction": keep documents where the most frequent word
    n-gram covers at most `max_fraction` of the characters (count x length / len(text)). Gopher
    thresholds: n=2 -> 0.20, n=3 -> 0.18, n=4 -> 0.16 (the defaults follow `n`). Reads `text`;
    writes the fraction to the optional `score` column. Batched numpy/Polars hashing, no row loop."""

    writes = {"score": None}

    def __init__(self, n: int = 2, max_fraction: float | None = None):
        self.n = n
        self.max_fraction = max_fraction if max_fraction is not None else dict(GOPHER_TOP_NGRAMS).get(n, 0.2)

    def run(self, frame, cols):
        frac = self.fractions(frame, cols["text"], [(self.n, self.max_fraction)], [])[f"top_{self.n}"]
        if cols.get("score"):
            frame = frame.with_columns(frac.alias(cols["score"]))
        return self.apply_keep(frame, {f"top_{self.n}_gram": frac <= self.max_fraction})


@register
class DuplicateNgramCharFractionFilter(_NgramFilter):
    """Gopher "duplicate n-gram character fraction": keep documents where the words covered by
    word n-grams that occurred earlier in the document hold at most `max_fraction` of the
    characters. Gopher thresholds: n=5..10 -> 0.15, 0.14, 0.13, 0.12, 0.11, 0.10 (the defaults
    follow `n`). Reads `text`; writes the fraction to the optional `score` column."""

    writes = {"score": None}

    def __init__(self, n: int = 5, max_fraction: float | None = None):
        self.n = n
        self.max_fraction = max_fraction if max_fraction is not None else dict(GOPHER_DUP_NGRAMS).get(n, 0.1)

    def run(self, frame, cols):
        frac = self.fractions(frame, cols["text"], [], [(self.n, self.max_fraction)])[f"dup_{self.n}"]
        if cols.get("score"):
            frame = frame.with_columns(frac.alias(cols["score"]))
        return self.apply_keep(frame, {f"duplicated_{self.n}_n_grams": frac <= self.max_fraction})


@register
class GopherRepetitionFilter(_NgramFilter):
    """All of Gopher's repetition rules in one pass (datatrove GopherRepetitionFilter):
    duplicate paragraph fraction <= 0.3 and duplicate paragraph character fraction <= 0.2
    (paragraphs split on 2+ newlines), duplicate line fraction <= 0.3 and character fraction
    <= 0.2 (lines split on newline runs), top 2/3/4-gram character fraction <= 0.20/0.18/0.16,
    duplicate 5..10-gram character fraction <= 0.15 .. 0.10. Reads `text`; drops with reasons
    empty, dup_para_frac, dup_para_char_frac, dup_line_frac, dup_line_char_frac, top_{n}_gram,
    duplicated_{n}_n_grams. Writes nothing. The n-gram part hashes words in batches (numpy +
    Polars); set a threshold to None to skip that rule."""

    writes = {}

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: tuple = GOPHER_TOP_NGRAMS,
        dup_n_grams: tuple = GOPHER_DUP_NGRAMS,
    ):
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams, self.dup_n_grams = _pairs(top_n_grams or ()), _pairs(dup_n_grams or ())

    def line_conditions(self, col: str) -> dict[str, pl.Expr]:
        t = pl.col(col)
        length = t.str.len_chars()
        out: dict[str, pl.Expr] = {"empty": length > 0}
        if self.dup_para_frac is not None or self.dup_para_char_frac is not None:
            n, n_dup, chars = duplicate_stats(paragraphs_list(t))
            if self.dup_para_frac is not None:
                out["dup_para_frac"] = safe_div(n_dup, n) <= self.dup_para_frac
            if self.dup_para_char_frac is not None:
                out["dup_para_char_frac"] = safe_div(chars, length) <= self.dup_para_char_frac
        if self.dup_line_frac is not None or self.dup_line_char_frac is not None:
            n, n_dup, chars = duplicate_stats(line_runs_list(t))
            if self.dup_line_frac is not None:
                out["dup_line_frac"] = safe_div(n_dup, n) <= self.dup_line_frac
            if self.dup_line_char_frac is not None:
                out["dup_line_char_frac"] = safe_div(chars, length) <= self.dup_line_char_frac
        return out

    def run(self, frame: pl.DataFrame, cols: Mapping[str, str | None]) -> pl.DataFrame:
        col = cols["text"]
        conds = self.line_conditions(col)
        if frame.height == 0:
            return self.apply_keep(frame, conds)
        # n-gram statistics only for rows that pass the cheap line rules (as datatrove's early exits)
        evaluated = compute(frame, conds)
        conds = {k: evaluated.get_column(k) for k in evaluated.columns}
        ok = evaluated.select(pl.all_horizontal(pl.all().fill_null(False)).alias("ok")).to_series()
        sub = frame.filter(ok)
        frac = self.fractions(sub, col, self.top_n_grams, self.dup_n_grams)
        n_total = frame.height
        positions = np.nonzero(ok.to_numpy())[0]
        for n, thr in self.top_n_grams:
            conds[f"top_{n}_gram"] = _scatter(n_total, positions, frac[f"top_{n}"].to_numpy() <= thr)
        for n, thr in self.dup_n_grams:
            conds[f"duplicated_{n}_n_grams"] = _scatter(n_total, positions, frac[f"dup_{n}"].to_numpy() <= thr)
        return self.apply_keep(frame, conds)


def _scatter(n: int, positions: np.ndarray, values: np.ndarray) -> pl.Series:
    full = np.ones(n, dtype=bool)  # rows already dropped by an earlier rule: reason comes first anyway
    full[positions] = values
    return pl.Series(full)
