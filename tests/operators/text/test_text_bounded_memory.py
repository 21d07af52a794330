"""The text operators that work slice by slice (bounded memory) give exactly what one pass over the
whole frame gives: Gopher quality (decisions, dropped ids and the token hashes it leaves for
Gopher repetition), language id in batches, and the text refiners; a refiner empties the token slot."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from operators.base import ID, with_row_ids
from operators.text import _common, langid
from operators.text.filters import GopherQualityFilter
from operators.text.refiners import C4LineCleaner, HtmlTagRemover, WhitespaceNormalizer


@pytest.fixture()
def docs(c4_frame) -> pl.DataFrame:
    extra = pl.DataFrame({"text": [None, "", "<p>short</p>", "word " * 80]}, schema={"text": pl.String})
    return with_row_ids(pl.concat([c4_frame.head(700), extra]), source="bounded")


def _gopher(frame: pl.DataFrame):
    op = GopherQualityFilter()
    out = op(frame, text="text")
    slot = _common._token_slot
    _common.forget_tokens()
    return out, op.last_report, slot


def test_gopher_quality_in_slices_equals_one_pass_and_leaves_the_same_tokens(docs, monkeypatch):
    one_out, one_rep, one_slot = _gopher(docs)  # 704 rows < one slice
    monkeypatch.setattr(_common, "COMPUTE_CHUNK_ROWS", 97)
    out, rep, slot = _gopher(docs)
    assert out.equals(one_out)
    assert rep.dropped == one_rep.dropped and rep.dropped_ids.equals(one_rep.dropped_ids)
    assert sum(rep.dropped.values()) > 0
    assert one_slot is not None and slot is not None
    assert slot[0].equals(one_slot[0]) and len(slot[0]) == out.height
    for a, b in zip(slot[1:], one_slot[1:]):
        np.testing.assert_array_equal(a, b)


def test_gopher_quality_slot_keeps_the_leading_texts_that_fit_across_slices(docs, monkeypatch):
    monkeypatch.setattr(_common, "COMPUTE_CHUNK_ROWS", 50)
    monkeypatch.setattr(_common, "TOKEN_SLOT_MAX_TOKENS", 30_000)
    out, _, slot = _gopher(docs)
    counts = slot[1]
    assert 0 < len(counts) < out.height and counts.sum() <= 30_000
    # exactly the leading kept texts whose tokens fit: the next one would not
    full = _common.word_tokens(pl.col("text"))
    want = out.head(len(counts) + 1).select(full.list.len()).to_series().to_numpy()
    np.testing.assert_array_equal(counts, want[:-1])
    assert want.sum() > 30_000
    assert slot[0].equals(out.get_column("text").head(len(counts)))


def test_language_batches_equal_one_batch(docs, monkeypatch):
    texts = docs.get_column("text")
    whole = langid.detect_languages(texts, languages=("en", "de"))
    monkeypatch.setattr(langid, "BATCH_ROWS", 64)
    assert langid.detect_languages(texts, languages=("en", "de")).equals(whole)
    assert whole.height == texts.len()


@pytest.mark.parametrize("op", [HtmlTagRemover(), WhitespaceNormalizer(), C4LineCleaner()], ids=lambda o: o.display_name)
def test_refiners_in_slices_equal_one_expression(docs, monkeypatch, op):
    html = docs.with_columns(("<div>" + pl.col("text") + "</div>  <br>x").alias("text"))
    want = html.with_columns(op.refine(pl.col("text"), {"text": "text"}).alias("text"))
    monkeypatch.setattr(_common, "COMPUTE_CHUNK_ROWS", 101)
    got = op(html, text="text")
    assert got.equals(want)
    assert got.columns == [ID, "text"]
    assert op.last_report.modified == int(html.get_column("text").ne_missing(want.get_column("text")).sum())


def test_a_refiner_empties_the_token_slot(docs):
    GopherQualityFilter()(docs, text="text")
    assert _common._token_slot is not None
    WhitespaceNormalizer()(docs.head(3), text="text")
    assert _common._token_slot is None


def test_gopher_quality_without_sharing_decides_the_same_and_leaves_nothing(docs):
    shared, _, slot = _gopher(docs)
    assert slot is not None
    op = GopherQualityFilter(share_tokens=False)
    out = op(docs, text="text")
    assert out.equals(shared)
    assert _common._token_slot is None
    assert "share_tokens" not in op.c  # not a threshold
