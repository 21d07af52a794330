"""Gopher repetition statistics against datatrove's own functions (`find_top_duplicate`,
`find_all_duplicate`, `get_n_grams` from datatrove.pipeline.filters.gopher_repetition_filter),
applied to the same word tokens, so any difference is in our n-gram counting."""

from __future__ import annotations

import random

import polars as pl
import pytest

from operators.text._common import word_tokens
from operators.text.repetition import (
    DuplicateNgramCharFractionFilter,
    GopherRepetitionFilter,
    TopNgramCharFractionFilter,
    ngram_repetition,
)


def _datatrove_repetition():
    pytest.importorskip("datatrove", reason="datatrove (the `bench` extra) is the reference implementation")
    from datatrove.pipeline.filters import gopher_repetition_filter as grf

    return grf


def _tokens(texts: list[str]) -> list[list[str]]:
    return pl.DataFrame({"t": texts}).select(word_tokens(pl.col("t"))).to_series().to_list()


def _check_against_datatrove(texts, chunk_words=2_000_000):
    grf = _datatrove_repetition()
    stats = ngram_repetition(pl.Series(texts), top_ns=(2, 3, 4), dup_ns=(5, 6, 8, 10), chunk_words=chunk_words)
    for i, words in enumerate(_tokens(texts)):
        for n in (2, 3, 4):
            grams = grf.get_n_grams(words, n)
            want = grf.find_top_duplicate(grams) if grams else 0
            assert stats[f"top_{n}"][i] == want, (texts[i], n)
        for n in (5, 6, 8, 10):
            assert stats[f"dup_{n}"][i] == grf.find_all_duplicate(words, n), (texts[i], n)


def test_ngram_statistics_hand_checked():
    stats = ngram_repetition(pl.Series(["a b c a b c a b c", "", "x", "a bb ccc dddd eeeee"]), top_ns=(2, 3), dup_ns=(5,))
    # top 2-gram "a b" x3 -> 3 * 3 chars; top 3-gram "a b c" x3 -> 3 * 5
    # no repeat: the FIRST n-gram counts once ("a bb" = 4 chars), not the longest ("dddd eeeee")
    assert stats["top_2"].tolist() == [9, 0, 0, 4]
    assert stats["top_3"].tolist() == [15, 0, 0, 8]  # "a bb ccc"
    # left-to-right scan: "abcab" at word 3 repeats word 0 -> 5 chars, then jump to word 8 (end)
    assert stats["dup_5"].tolist() == [5, 0, 0, 0]


def test_top_ngram_ties_take_the_first_to_occur():
    _datatrove_repetition()
    # "x y" and "long words" both occur twice; "x y" occurs first
    text = "x y long words x y long words"
    stats = ngram_repetition(pl.Series([text]), top_ns=(2,), dup_ns=())
    assert stats["top_2"][0] == 2 * len("x y")
    _check_against_datatrove([text])


def test_ngram_statistics_match_datatrove_on_real_docs(c4_frame):
    _check_against_datatrove(c4_frame.get_column("text").head(300).to_list(), chunk_words=20_000)


def test_ngram_statistics_match_datatrove_on_odd_texts():
    rng = random.Random(3)
    vocab = ["a", "b", "the", "cat", "é", "日本", "-", "...", "x", "don't", "(see", "end."]
    seps = [" ", "  ", "\n", "\n\n", "\t", "\u00a0", "\u3000", "\u2003", " \u200b "]
    texts = ["", "   ", "one", "a a a a a a a a a a a a", "x y x y x y x y x y z"]
    for _ in range(300):
        k = rng.randrange(0, 80)
        texts.append("".join(rng.choice(vocab) + rng.choice(seps) for _ in range(k)))
    for chunk in (50, 1_000_000):
        _check_against_datatrove(texts, chunk_words=chunk)


def test_dup_bounds_only_skip_texts_that_cannot_exceed_them():
    rng = random.Random(7)
    texts = [" ".join(rng.choice(["a", "b", "c", "d"]) for _ in range(rng.randrange(5, 120))) for _ in range(200)]
    exact = ngram_repetition(pl.Series(texts), top_ns=(), dup_ns=(5, 7))
    bounded = ngram_repetition(pl.Series(texts), top_ns=(), dup_ns=(5, 7), dup_bounds={5: 0.15, 7: 0.13})
    length = pl.Series(texts).str.len_chars().to_numpy()
    for n, thr in ((5, 0.15), (7, 0.13)):
        assert ((exact[f"dup_{n}"] / length > thr) == (bounded[f"dup_{n}"] / length > thr)).all()
        assert (bounded[f"dup_{n}"] >= exact[f"dup_{n}"]).all()


def test_ngram_filters_and_gopher_repetition():
    normal = " ".join(f"word{i}" for i in range(200))
    spam = " ".join(["buy cheap pills now"] * 30)
    frame = pl.DataFrame({"text": [normal, spam]})
    out = TopNgramCharFractionFilter(n=2)(frame, score="top2")
    assert out.get_column("text").to_list() == [normal]
    assert out.get_column("top2")[0] == pytest.approx(len("word0 word1") / len(normal))  # no repeat: first 2-gram
    out = DuplicateNgramCharFractionFilter(n=5)(frame, score="dup5")
    assert out.height == 1 and out.get_column("dup5")[0] == 0.0
    op = GopherRepetitionFilter()
    lines = "\n".join(["same line here"] * 5 + ["other"])
    out = op(pl.DataFrame({"text": [normal, spam, lines, ""]}))
    assert out.get_column("text").to_list() == [normal]
    assert op.last_report.dropped == {"top_2_gram": 1, "dup_line_frac": 1, "empty": 1}


def test_no_repeat_document_is_not_dropped_for_its_longest_ngram():
    # 5 distinct words: datatrove's top-2 score is 4 chars ("a bb") of 19 -> 0.21 > 0.20 would drop
    # under the old "longest n-gram" rule (10 chars); the first n-gram is what datatrove counts
    words = "a bb ccc dddd eeeee"
    out = TopNgramCharFractionFilter(n=2, max_fraction=0.3)(pl.DataFrame({"text": [words]}), score="s")
    assert out.get_column("s")[0] == pytest.approx(4 / len(words))


def _repetitive_docs() -> list[str]:
    rng = random.Random(3)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "the", "big", "red", "barn", "with", "two", "dogs"]
    docs = []
    for i in range(40):  # some repeat whole sentences (dropped by the n-gram rules), some do not
        sent = " ".join(rng.choice(words) for _ in range(12)) + "."
        body = [sent] * (1 + i % 4) + [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(8)]
        docs.append(" ".join(body))
    return docs


def test_repetition_reuses_the_tokens_of_gopher_quality_and_decides_the_same(c4_frame, monkeypatch):
    from operators.text import _common, repetition
    from operators.text.filters import GopherQualityFilter

    frame = pl.concat([c4_frame.head(400), pl.DataFrame({"text": _repetitive_docs()})])
    quality, rep = GopherQualityFilter(), GopherRepetitionFilter()
    passed = quality(frame, text="text")
    assert _common.recall_tokens(passed.get_column("text")) is not None  # (and empties the slot)
    fresh = rep(passed, text="text")  # nothing left to reuse: tokenises
    fresh_dropped = dict(rep.last_report.dropped)
    assert sum(fresh_dropped.values()) > 0  # the n-gram rules do drop rows here

    quality(frame, text="text")  # leaves its tokens
    assert _common._token_slot is not None

    def no_tokenising(texts):
        raise AssertionError("tokenised again although Gopher quality left its tokens")

    monkeypatch.setattr(repetition, "_word_arrays", no_tokenising)
    reused = rep(passed, text="text")
    assert _common._token_slot is None  # taken once
    assert reused.equals(fresh)
    assert dict(rep.last_report.dropped) == fresh_dropped


def test_repetition_tokenises_when_the_texts_changed_after_gopher_quality(c4_frame):
    from operators.text import _common
    from operators.text.filters import GopherQualityFilter

    frame = pl.concat([c4_frame.head(200), pl.DataFrame({"text": _repetitive_docs()})])
    passed = GopherQualityFilter()(frame, text="text")
    # a stage in between rewrites one text and reorders the rows: the tokens left would be stale
    first = pl.int_range(pl.len()) == 0
    changed = passed.with_columns(pl.when(first).then(pl.lit("x " * 60)).otherwise(pl.col("text")).alias("text"))
    changed = changed.reverse()
    assert _common._token_slot is not None
    rep = GopherRepetitionFilter()
    got = rep(changed, text="text")
    got_dropped = dict(rep.last_report.dropped)
    assert _common._token_slot is None
    want = rep(changed, text="text")  # slot empty: tokenised
    assert got.equals(want)
    assert got_dropped == dict(rep.last_report.dropped)
    assert "x " * 60 not in got.get_column("text").to_list()


def test_repetition_reuses_the_leading_tokens_when_the_slot_holds_only_part(c4_frame, monkeypatch):
    from operators.text import _common, repetition
    from operators.text.filters import GopherQualityFilter

    frame = pl.concat([pl.DataFrame({"text": _repetitive_docs()}), c4_frame.head(300)])
    passed = GopherQualityFilter()(frame, text="text")
    rep = GopherRepetitionFilter()
    want = rep(passed, text="text")  # nothing left to reuse (the slot is taken by this call)
    want_dropped = dict(rep.last_report.dropped)

    monkeypatch.setattr(_common, "TOKEN_SLOT_MAX_TOKENS", 20_000)  # ~40 of the texts' tokens fit
    GopherQualityFilter()(frame, text="text")
    held = len(_common._token_slot[1])
    assert 0 < held < passed.height
    assert _common._token_slot[1].sum() <= 20_000
    tokenised = []
    real = repetition._word_arrays
    monkeypatch.setattr(repetition, "_word_arrays", lambda texts: tokenised.append(len(texts)) or real(texts))
    got = rep(passed, text="text")
    assert got.equals(want)
    assert dict(rep.last_report.dropped) == want_dropped
    assert 0 < sum(tokenised) <= passed.height - held  # only the texts the slot did not hold
