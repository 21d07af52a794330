"""Gopher repetition filters (Rae et al. 2021, Table A1), computed as datatrove's
GopherRepetitionFilter does: paragraphs split on 2+ newlines, lines on newline runs, n-grams over
the spaCy-like word tokens of `word_tokens`, the top n-gram by count then first occurrence, and
duplicate n-grams by datatrove's left-to-right scan.

Line and paragraph duplication are Polars list expressions. The n-gram statistics hash every
token once (Polars), then build n-gram hashes with numpy array arithmetic over the whole batch,
only at positions whose (n-1)-gram repeats, and count them with one packed sort per n (Polars'
radix sort, ~3x numpy's). When a GopherQualityFilter ran just before on the same texts, its
token hashes and lengths are reused instead of tokenising again (`recall_tokens` in _common.py):
tokenising is the costliest step of both filters. The one
sequential step, datatrove's duplicate scan, runs in Python over the positions of repeated
n-grams only, and only for documents whose union bound exceeds the threshold. Documents are
processed in chunks of `chunk_words` words so memory stays bounded.

Agreement with datatrove 0.10 on the 2,000 C4 validation documents (tests/operators/text,
datatrove's own filter): 1,998 of 2,000 keep/drop decisions agree (99.9%); the 2 others are
documents we drop on a top-n-gram or duplicate-n-gram fraction a hair above its threshold because
our tokens differ from spaCy's on a few chunks (see `GopherQualityFilter`), which changes an
n-gram's character count by one or two.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import polars as pl

from operators.base import Filter, register
from operators.text._common import (
    TOKEN_HASH_SEED,
    compute,
    duplicate_lengths,
    duplicate_stats,
    line_runs_list,
    paragraphs_list,
    recall_tokens,
    safe_div,
    word_tokens,
)

GOPHER_TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))
GOPHER_DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
_MULT = np.uint64(0x9E3779B97F4A7C15)
_DOC_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


def _word_arrays(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per word token (`word_tokens`, spaCy-like, as datatrove splits words) of every text, in
    order: document index, 64-bit hash, length; plus the number of tokens of each text."""
    frame = pl.DataFrame({"t": texts.fill_null("")}).with_row_index("doc")
    flat = (
        frame.lazy()
        .select("doc", word_tokens(pl.col("t")).alias("w"))
        .explode("w")
        .filter(pl.col("w").is_not_null())
        .select(
            pl.col("doc").cast(pl.UInt32), pl.col("w").hash(seed=TOKEN_HASH_SEED).alias("h"), pl.col("w").str.len_chars().alias("l")
        )
        .collect()
    )
    doc = flat.get_column("doc").to_numpy()
    counts = np.bincount(doc, minlength=len(texts)).astype(np.int64)
    return doc, flat.get_column("h").to_numpy(), flat.get_column("l").to_numpy(), counts


def ngram_repetition(
    texts: pl.Series,
    top_ns: Iterable[int] = (2, 3, 4),
    dup_ns: Iterable[int] = (5, 6, 7, 8, 9, 10),
    chunk_words: int = 2_000_000,
    dup_bounds: Mapping[int, float] | None = None,
    words: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Character counts behind Gopher's n-gram rules, one value per text, as datatrove's
    GopherRepetitionFilter computes them over the text's word tokens (`word_tokens`):

    - `top_{n}`: datatrove's `find_top_duplicate`: the most frequent word n-gram (ties: the one
      that occurs first, as `Counter.most_common`), its count times its length as
      " ".join(ngram); a text without a repeated n-gram scores its first n-gram; 0 when the text
      has fewer than n words.
    - `dup_{n}`: datatrove's `find_all_duplicate`: scanning left to right, an n-gram already seen
      adds its characters ("".join, spaces excluded) and the scan jumps n words ahead (the
      skipped n-grams are not recorded as seen).

    The n-gram hashing and counting is vectorised (numpy over the whole batch). The left-to-right
    scan for `dup_{n}` is sequential by nature; it runs in Python over the positions of repeated
    n-grams only. With `dup_bounds` ({n: max fraction of len(text)}) it runs only for texts whose
    union bound (characters of all words covered by a repeated n-gram, which the scan never
    exceeds) is above the bound: the others keep that bound, which decides the same way.
    `words` = (tokens per text, token hashes, token lengths) of all texts or of the leading ones,
    as `recall_tokens` returns them, skips tokenising those texts.
    """
    top_ns, dup_ns = tuple(top_ns), tuple(dup_ns)
    n_docs = len(texts)
    out = {f"top_{n}": np.zeros(n_docs, dtype=np.int64) for n in top_ns}
    out.update({f"dup_{n}": np.zeros(n_docs, dtype=np.int64) for n in dup_ns})
    if n_docs == 0:
        return out
    if words is not None and len(words[0]) < n_docs:  # tokens of the leading texts only
        k = len(words[0])
        head = ngram_repetition(texts.head(k), top_ns, dup_ns, chunk_words, dup_bounds, words)
        tail = ngram_repetition(texts.slice(k), top_ns, dup_ns, chunk_words, dup_bounds)
        return {key: np.concatenate([head[key], tail[key]]) for key in out}
    lengths = texts.fill_null("").str.len_chars().to_numpy().astype(np.int64)
    # chunk boundaries on documents, ~chunk_words words each (a word is at most ~1 char + space)
    cum = np.cumsum(lengths // 5 + 1)
    if words is not None:
        tok_start = np.concatenate(([0], np.cumsum(words[0])))
    start = 0
    while start < n_docs:
        stop = int(np.searchsorted(cum, cum[start] - (lengths[start] // 5 + 1) + chunk_words, side="right"))
        stop = max(stop, start + 1)
        arrays = None
        if words is not None:
            counts = words[0][start:stop]
            lo = int(tok_start[start])
            hi = lo + int(counts.sum())
            doc = np.repeat(np.arange(len(counts), dtype=np.uint32), counts)
            arrays = (doc, words[1][lo:hi], words[2][lo:hi], counts)
        _ngram_chunk(texts.slice(start, stop - start), start, top_ns, dup_ns, out, lengths[start:stop], dup_bounds, arrays)
        start = stop
    return out


def _scan_duplicates(pos: np.ndarray, grp: np.ndarray, doc: np.ndarray, n: int, cs: np.ndarray) -> dict[int, int]:
    """datatrove's left-to-right duplicate scan, over the positions of repeated n-grams only
    (sorted by position; `grp` names the n-gram, `doc` the text): the other positions hold
    n-grams that never repeat, so visiting them changes nothing."""
    found: dict[int, int] = {}
    cur, skip, seen = -1, -1, set()
    for p, k, d in zip(pos.tolist(), grp.tolist(), doc.tolist()):
        if d != cur:
            cur, skip, seen = d, -1, set()
            found[d] = 0
        if p < skip:
            continue
        if k in seen:
            found[d] += int(cs[p + n] - cs[p])
            skip = p + n
        else:
            seen.add(k)
    return found


def _sorted(a: np.ndarray) -> np.ndarray:
    """`np.sort(a)` for an integer array, by Polars' sort (a radix sort for integers: ~3x faster
    than numpy's on millions of 64-bit keys, one thread)."""
    return pl.Series(a).sort().to_numpy()


def _in_order(idx: np.ndarray, size: int) -> np.ndarray:
    """`np.sort(idx)` for distinct indices in [0, size), by one boolean mask (linear, no sort)."""
    mask = np.zeros(size, dtype=bool)
    mask[idx] = True
    return np.flatnonzero(mask)


def _group(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal 64-bit keys: (order, starts, counts) where `order` lists the indices of `key`
    group by group, each group in ascending index order, `starts` are the groups' offsets in
    `order` and `counts` their sizes.

    One plain sort of packed words (the key's high bits, then the index in the low bits) instead
    of an argsort: equal keys come out together with their indices ascending. Two different
    keys whose high bits agree (rare) are detected against the full key and re-sorted exactly."""
    k = len(key)
    bits = max(1, int(k - 1).bit_length())
    low = np.uint64((1 << bits) - 1)
    packed = _sorted((key & ~low) | np.arange(k, dtype=np.uint64))
    order = (packed & low).view(np.int64)  # the indices (< 2**63): a view, no copy
    del packed
    full = key[order]
    same = full[1:] == full[:-1]
    hi = full >> np.uint64(bits)
    same_hi = hi[1:] == hi[:-1]
    bad = same_hi & ~same
    if bad.any():  # high-bit collision of different keys: sort those runs by (run, key, index)
        run_start = np.concatenate(([True], ~same_hi))
        run_id = np.cumsum(run_start) - 1
        bad_runs = np.unique(run_id[1:][bad])
        sel = np.nonzero(np.isin(run_id, bad_runs))[0]
        sub = order[sel]
        o = np.lexsort((sub, key[sub], run_id[sel]))
        order[sel] = sub[o]
        full = key[order]
        same = full[1:] == full[:-1]
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    counts = np.diff(np.append(starts, k))
    return order, starts, counts


def _ngram_chunk(texts, offset, top_ns, dup_ns, out, lengths, dup_bounds, arrays=None) -> None:
    doc, h, ln, counts = _word_arrays(texts) if arrays is None else arrays
    m, n_docs = len(doc), len(texts)
    if m == 0:
        return
    cs = np.zeros(m + 1, dtype=np.int64)  # characters before each token (int64 sums of the lengths)
    np.cumsum(ln, dtype=np.int64, out=cs[1:])
    word_end = np.cumsum(counts)
    rem = word_end[doc] - np.arange(m)  # words from each position to the end of its text
    has_words = np.nonzero(counts > 0)[0]
    word_start = (word_end - counts)[has_words]
    max_n = max(top_ns + dup_ns, default=1)
    # candidates: positions whose (n-1)-gram is repeated in its text; an n-gram can only repeat
    # where its prefix does, so the counting shrinks quickly with n. `g` is the hash of the
    # n-gram starting at each candidate, built up n by n.
    cand = np.nonzero(rem >= 2)[0]
    g = h[cand]
    with np.errstate(over="ignore"):
        for n in range(2, max_n + 1):
            if len(cand):
                if n > 2:  # (every candidate has rem >= 2)
                    keep = rem[cand] >= n
                    cand, g = cand[keep], g[keep]
                g = g * _MULT + h[cand + (n - 1)]
            if n in top_ns:
                best = np.zeros(n_docs, dtype=np.int64)
                # texts without a repeated n-gram: their first n-gram (count 1)
                first = word_start[counts[has_words] >= n]
                best[doc[first]] = cs[first + n] - cs[first] + (n - 1)
            if len(cand) == 0:
                if n in top_ns:
                    out[f"top_{n}"][offset : offset + n_docs] = best
                if not any(x > n for x in top_ns):
                    break
                continue
            d = doc[cand]
            order, starts, cnt = _group(g ^ (d.astype(np.uint64) * _DOC_MIX))
            rep_group = cnt > 1
            member = np.repeat(rep_group, cnt)  # per entry of `order`: its n-gram repeats
            sel = _in_order(order[member], len(cand))  # candidates whose n-gram repeats, in position order
            if n in top_ns:
                if rep_group.any():  # the most frequent repeated n-gram, then the first to occur
                    p = cand[order[starts[rep_group]]]  # each repeated n-gram's first position
                    c = cnt[rep_group].astype(np.int64)
                    dp = doc[p]
                    top_count = np.zeros(n_docs, dtype=np.int64)
                    np.maximum.at(top_count, dp, c)
                    is_top = c == top_count[dp]
                    first_pos = np.full(n_docs, m, dtype=np.int64)
                    np.minimum.at(first_pos, dp[is_top], p[is_top])
                    has_rep = top_count > 0
                    fp = first_pos[has_rep]
                    best[has_rep] = (cs[fp + n] - cs[fp] + (n - 1)) * top_count[has_rep]
                out[f"top_{n}"][offset : offset + n_docs] = best
            if n in dup_ns:
                later = np.ones(len(order), dtype=bool)
                later[starts] = False  # not the first occurrence in its text
                if later.any():
                    s = cand[_in_order(order[later], len(cand))]
                    # words covered by the repeated n-grams [s, s + n): merge overlapping spans
                    run = np.flatnonzero(np.concatenate(([True], s[1:] >= s[:-1] + n)))
                    last = np.append(run[1:], len(s)) - 1
                    chars = cs[s[last] + n] - cs[s[run]]
                    bound = np.bincount(doc[s[run]], weights=chars, minlength=n_docs).astype(np.int64)
                    # texts whose bound could exceed the threshold get datatrove's exact scan
                    need = bound > 0
                    if dup_bounds is not None and n in dup_bounds:
                        need &= bound > dup_bounds[n] * lengths
                    if need.any():
                        gid = np.empty(len(cand), dtype=np.int64)  # the n-gram of each candidate
                        gid[order] = np.repeat(np.arange(len(starts)), cnt)
                        pos, grp = cand[sel], gid[sel]  # in position order
                        keep = need[doc[pos]]
                        pos, grp = pos[keep], grp[keep]
                        for d, chars_d in _scan_duplicates(pos, grp, doc[pos], n, cs).items():
                            bound[d] = chars_d
                    out[f"dup_{n}"][offset : offset + n_docs] = bound
            cand, g = cand[sel], g[sel]


def _pairs(pairs) -> tuple[tuple[int, float], ...]:
    return tuple((int(n), float(f)) for n, f in pairs)


class _NgramFilter(Filter):
    """Base (not registered) of the n-gram filters: computes the batch statistics in `run`."""

    reads = {"text": "text"}

    def fractions(self, frame: pl.DataFrame, col: str, top, dup, exact: bool = False, words=None) -> dict[str, pl.Series]:
        """Fractions of len(text); with `exact=False` a `dup_{n}` fraction is exact only where it
        could exceed its threshold (see `ngram_repetition`), enough to decide. `words`: the
        texts' tokens (see `ngram_repetition`), else taken from a Gopher quality filter that just
        ran on these texts (`recall_tokens`), else tokenised here."""
        if words is None:
            words = recall_tokens(frame.get_column(col))
        stats = ngram_repetition(
            frame.get_column(col),
            [n for n, _ in top],
            [n for n, _ in dup],
            dup_bounds=None if exact else dict(dup),
            words=words,
        )
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
        exact = bool(cols.get("score"))  # a written score is exact; a decision needs less
        frac = self.fractions(frame, cols["text"], [], [(self.n, self.max_fraction)], exact)[f"dup_{self.n}"]
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

    def line_lists(self, col: str) -> list[dict[str, pl.Expr]]:
        """The paragraph and line lists the line rules read, then the lengths of their repeated
        items, as intermediate columns (`compute`'s staged `pre`): each computed once, not once
        per statistic that reads it."""
        t = pl.col(col)
        lists, dups = {}, {}
        if self.dup_para_frac is not None or self.dup_para_char_frac is not None:
            lists["_gopher_paras"] = paragraphs_list(t)
            dups["_gopher_para_dups"] = duplicate_lengths(pl.col("_gopher_paras"))
        if self.dup_line_frac is not None or self.dup_line_char_frac is not None:
            lists["_gopher_lines"] = line_runs_list(t)
            dups["_gopher_line_dups"] = duplicate_lengths(pl.col("_gopher_lines"))
        return [lists, dups]

    def line_conditions(self, col: str, shared: bool = False) -> dict[str, pl.Expr]:
        """Line / paragraph rules; `shared=True`: read the lists of `line_lists` from columns."""
        t = pl.col(col)
        length = t.str.len_chars()
        out: dict[str, pl.Expr] = {"empty": length > 0}
        if self.dup_para_frac is not None or self.dup_para_char_frac is not None:
            shared_cols = (pl.col("_gopher_paras"), pl.col("_gopher_para_dups"))
            n, n_dup, chars = duplicate_stats(*shared_cols) if shared else duplicate_stats(paragraphs_list(t))
            if self.dup_para_frac is not None:
                out["dup_para_frac"] = safe_div(n_dup, n) <= self.dup_para_frac
            if self.dup_para_char_frac is not None:
                out["dup_para_char_frac"] = safe_div(chars, length) <= self.dup_para_char_frac
        if self.dup_line_frac is not None or self.dup_line_char_frac is not None:
            shared_cols = (pl.col("_gopher_lines"), pl.col("_gopher_line_dups"))
            n, n_dup, chars = duplicate_stats(*shared_cols) if shared else duplicate_stats(line_runs_list(t))
            if self.dup_line_frac is not None:
                out["dup_line_frac"] = safe_div(n_dup, n) <= self.dup_line_frac
            if self.dup_line_char_frac is not None:
                out["dup_line_char_frac"] = safe_div(chars, length) <= self.dup_line_char_frac
        return out

    def run(self, frame: pl.DataFrame, cols: Mapping[str, str | None]) -> pl.DataFrame:
        col = cols["text"]
        words = recall_tokens(frame.get_column(col))
        conds = self.line_conditions(col)
        if frame.height == 0:
            return self.apply_keep(frame, conds)
        # n-gram statistics only for rows that pass the cheap line rules (as datatrove's early exits)
        evaluated = compute(frame, self.line_conditions(col, shared=True), pre=self.line_lists(col))
        conds = {k: evaluated.get_column(k) for k in evaluated.columns}
        ok = evaluated.select(pl.all_horizontal(pl.all().fill_null(False)).alias("ok")).to_series()
        sub = frame.filter(ok)
        if words is not None:  # the tokens of the (leading) rows that passed
            counts, h, ln = words
            mask = ok.head(len(counts)).fill_null(False).to_numpy()
            if not mask.all():  # (else all of them, as they are)
                per_token = np.repeat(mask, counts)
                words = (counts[mask], h[per_token], ln[per_token])
        frac = self.fractions(sub, col, self.top_n_grams, self.dup_n_grams, words=words)
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
