"""The fast paths of the text operators give the same values as their straightforward versions:
the packed-sort grouping of n-gram hashes, the row-chunked `compute`, and the early-stopping
"at least k words" test of the C4 line cleaner. (The n-gram statistics are checked against
datatrove's own functions in test_text_repetition.py.)"""

from __future__ import annotations

import random
import re

import numpy as np
import polars as pl
import pytest

from operators.text._common import compute, duplicate_stats, line_runs_list, word_count
from operators.text.refiners import C4LineCleaner, c4_clean_lines
from operators.text.repetition import _group

# Rust regex's \s (Unicode White_Space), what the C4 line cleaner splits words on
_WS_RE = re.compile(r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def _words(text: str) -> list[str]:
    return [w for w in _WS_RE.split(text) if w]


def _check_group(key: np.ndarray) -> None:
    order, starts, counts = _group(key)
    assert sorted(order.tolist()) == list(range(len(key)))
    groups = np.split(order, starts[1:])
    assert [len(g) for g in groups] == counts.tolist()
    seen = set()
    for g in groups:
        assert (np.diff(g) > 0).all()  # ascending indices within a group
        assert len(set(key[g].tolist())) == 1
        assert key[g[0]] not in seen
        seen.add(key[g[0]])
    assert len(seen) == len(np.unique(key))


def test_group_matches_unique():
    rng = np.random.default_rng(0)
    _check_group(rng.integers(0, 50, 2000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    _check_group(np.array([7], dtype=np.uint64))


def test_group_resolves_keys_that_share_their_high_bits():
    # 16 keys -> 4 index bits: keys differing only in their low 4 bits collide in the packed sort
    base = np.uint64(0xABCDEF0123456780)
    key = np.array([base | np.uint64(i % 3) for i in range(16)], dtype=np.uint64)
    key[5] = np.uint64(0x1111111111111110)
    _check_group(key)
    rng = np.random.default_rng(1)
    many = (rng.integers(0, 4, 5000, dtype=np.uint64) << np.uint64(40)) | rng.integers(0, 8, 5000, dtype=np.uint64)
    _check_group(many)


def test_compute_in_row_chunks_equals_one_pass():
    rng = random.Random(5)
    texts = ["\n".join(rng.choice(["a b c.", "x", "", "a b c.", "d e"]) for _ in range(rng.randrange(0, 9)))
             for _ in range(101)] + [None]
    frame = pl.DataFrame({"text": texts})
    t = pl.col("text")
    n, n_dup, chars = duplicate_stats(line_runs_list(t))
    exprs = {"w": word_count(t), "n": n, "d": n_dup, "c": chars, "clean": c4_clean_lines(t).list.join("\n")}
    whole = frame.lazy().select(**exprs).collect()
    for rows in (1, 7, 50, 1000):
        assert compute(frame, exprs, chunk_rows=rows).equals(whole)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_c4_min_words_per_line_early_stop(k):
    lines = ["one.", "one two.", "one two three.", " a\tb  c. ", "a\u00a0b c.", "a b c d e.", "a b c d e f g.",
             "  ", "x"]
    frame = pl.DataFrame({"text": ["\n".join(lines)]})
    out = C4LineCleaner(min_words_per_line=k, filter_no_terminal_punct=False)(frame, text="text")
    expected = [ln.strip() for ln in lines if len(_words(ln)) >= k]
    assert out.get_column("text")[0] == "\n".join(expected).strip()
