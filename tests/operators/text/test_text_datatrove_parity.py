"""Agreement with datatrove, checked by running datatrove's own code (the `bench` extra) on the
2,000 real C4 validation documents: its filters' keep/drop decisions, its word tokenizer and its
punctuation set."""

from __future__ import annotations

import polars as pl
import pytest

from operators.text._common import DATATROVE_PUNCTUATION_CLASS, word_tokens
from operators.text.filters import C4QualityFilter, GopherQualityFilter
from operators.text.repetition import GopherRepetitionFilter


def _datatrove():
    pytest.importorskip("datatrove", reason="datatrove (the `bench` extra) is the reference implementation")
    pytest.importorskip("spacy", reason="datatrove's Gopher filters tokenise with spaCy")
    import datatrove

    return datatrove


def _agreement(ours_op, theirs, texts: list[str]) -> tuple[float, int]:
    from datatrove.data import Document

    keep_theirs = [theirs.filter(Document(text=t, id=str(i))) is True for i, t in enumerate(texts)]
    out = ours_op(pl.DataFrame({"text": texts}).with_row_index("i"))
    kept = set(out.get_column("i").to_list())
    keep_ours = [i in kept for i in range(len(texts))]
    return sum(a == b for a, b in zip(keep_ours, keep_theirs)) / len(texts), sum(keep_theirs)


def test_punctuation_class_is_datatroves_set():
    _datatrove()
    from datatrove.utils.text import PUNCTUATION_SET

    chars = pl.Series([chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF])
    inside = chars.filter(chars.str.contains("^[" + DATATROVE_PUNCTUATION_CLASS + "]$"))
    assert set(inside.to_list()) == PUNCTUATION_SET


def test_word_tokens_match_datatrove_spacy_tokens(c4_frame):
    _datatrove()
    from datatrove.utils.text import split_into_words

    texts = c4_frame.get_column("text").head(200).to_list()
    ours = pl.DataFrame({"t": texts}).select(word_tokens(pl.col("t"))).to_series().to_list()
    same = total = 0
    for t, mine in zip(texts, ours):
        theirs = split_into_words(t, "en")
        total += len(theirs)
        same += len(theirs) - abs(len(theirs) - len(mine))
    assert same / total >= 0.99


@pytest.mark.slow  # datatrove takes ~30 s per filter on 2,000 documents
@pytest.mark.parametrize(
    "name,target",
    [("gopher_quality", 0.99), ("gopher_repetition", 0.99), ("c4_quality", 0.99)],
)
def test_keep_drop_agreement_with_datatrove_on_2000_c4_docs(c4_frame, name, target):
    _datatrove()
    from datatrove.pipeline import filters as dt

    ours, theirs = {
        "gopher_quality": (GopherQualityFilter(), dt.GopherQualityFilter()),
        "gopher_repetition": (GopherRepetitionFilter(), dt.GopherRepetitionFilter()),
        "c4_quality": (C4QualityFilter(), dt.C4QualityFilter()),
    }[name]
    texts = c4_frame.get_column("text").to_list()
    agree, kept = _agreement(ours, theirs, texts)
    assert len(texts) == 2000 and 100 < kept < 2000
    assert agree >= target, agree


def test_gopher_filters_agree_with_datatrove_on_c4_sample(c4_frame):
    _datatrove()
    from datatrove.pipeline import filters as dt

    texts = c4_frame.get_column("text").head(300).to_list()
    assert _agreement(GopherQualityFilter(), dt.GopherQualityFilter(), texts)[0] >= 0.98
    assert _agreement(GopherRepetitionFilter(), dt.GopherRepetitionFilter(), texts)[0] >= 0.99
