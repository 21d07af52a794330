from __future__ import annotations

from collections import Counter

import polars as pl
import pytest

from operators.text.langid import LanguageFilter, LanguageIdentifier
from operators.text.repetition import (
    DuplicateNgramCharFractionFilter,
    GopherRepetitionFilter,
    TopNgramCharFractionFilter,
    ngram_repetition,
)


def ref_top(words, n):  # datatrove's find_top_duplicate (most frequent n-gram, count x length)
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0
    c = Counter(grams)
    best = max(c.values())
    return max(len(g) * k for g, k in c.items() if k == best)


def ref_dup_union(words, n):  # characters of words covered by an n-gram seen earlier
    seen, covered = set(), set()
    for i in range(len(words) - n + 1):
        g = tuple(words[i : i + n])
        if g in seen:
            covered.update(range(i, i + n))
        seen.add(g)
    return sum(len(words[j]) for j in covered)


def test_ngram_statistics_hand_checked():
    text = "a b c a b c a b c"
    stats = ngram_repetition(pl.Series([text, "", "x"]), top_ns=(2, 3), dup_ns=(5,))
    # top 2-gram "a b" x3 -> 3 * 3 chars; top 3-gram "a b c" x3 -> 3 * 5
    assert stats["top_2"].tolist() == [9, 0, 0]
    assert stats["top_3"].tolist() == [15, 0, 0]
    # 5-grams: positions 0..4; repeats start at 3 and 4 ("a b c a b" at 3 == at 0) -> words 3..8 covered
    assert stats["dup_5"].tolist() == [6, 0, 0]


def test_ngram_statistics_match_reference_on_real_docs(c4_frame):
    texts = c4_frame.get_column("text").head(300).to_list()
    stats = ngram_repetition(pl.Series(texts), top_ns=(2, 3, 4), dup_ns=(5, 8, 10), chunk_words=20_000)
    for i, t in enumerate(texts):
        w = t.split()
        for n in (2, 3, 4):
            assert stats[f"top_{n}"][i] == ref_top(w, n)
        for n in (5, 8, 10):
            assert stats[f"dup_{n}"][i] == ref_dup_union(w, n)


def test_ngram_filters_and_gopher_repetition():
    normal = " ".join(f"word{i}" for i in range(200))
    spam = " ".join(["buy cheap pills now"] * 30)
    frame = pl.DataFrame({"text": [normal, spam]})
    out = TopNgramCharFractionFilter(n=2)(frame, score="top2")
    assert out.get_column("text").to_list() == [normal]
    assert out.get_column("top2")[0] == pytest.approx(len("word198 word199") / len(normal))  # ties: the longest
    out = DuplicateNgramCharFractionFilter(n=5)(frame, score="dup5")
    assert out.height == 1 and out.get_column("dup5")[0] == 0.0
    op = GopherRepetitionFilter()
    lines = "\n".join(["same line here"] * 5 + ["other"])
    out = op(pl.DataFrame({"text": [normal, spam, lines, ""]}))
    assert out.get_column("text").to_list() == [normal]
    assert op.last_report.dropped == {"top_2_gram": 1, "dup_line_frac": 1, "empty": 1}


@pytest.fixture(scope="module")
def lang_frame():
    return pl.DataFrame(
        {
            "text": [
                "The weather is lovely today and we are going to the park with our children.",
                "Das Wetter ist heute schön und wir gehen mit unseren Kindern in den Park.",
                "Il fait beau aujourd'hui et nous allons au parc avec nos enfants.",
                "",
            ]
        }
    )


def test_language_identifier(lang_frame):
    out = LanguageIdentifier(languages=("en", "de", "fr", "es"))(lang_frame)
    assert out.get_column("language").to_list() == ["en", "de", "fr", None]
    conf = out.get_column("language_confidence").to_list()
    assert all(c > 0.5 for c in conf[:3]) and conf[3] == 0.0


def test_language_filter(lang_frame):
    op = LanguageFilter(keep=("en",), languages=("en", "de", "fr", "es"))
    out = op(lang_frame, language="lang")
    assert out.get_column("text").to_list() == [lang_frame.get_column("text")[0]]
    assert out.get_column("lang").to_list() == ["en"]
    assert op.last_report.dropped == {"wrong_language": 3}
