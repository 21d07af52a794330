from __future__ import annotations

import polars as pl
import pytest

from operators.text import filters as F


def scores(op, *texts, **cols):
    frame = pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})
    out = op(frame, score="s", **cols) if "score" in op.writes else op(frame, **cols)
    return out


def score_of(op, text):
    """The measured value of one text, whatever the decision (keep everything: thresholds off)."""
    frame = pl.DataFrame({"text": [text]})
    return frame.select(op.value({"text": "text"}).alias("v")).item()


def kept(op, *texts):
    frame = pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})
    return op(frame).get_column("text").to_list()


TEXT = "The cat sat on the mat.\n- item one\n- item two...\n#tag #tag2 and more words here"


def test_word_and_length_measures():
    assert score_of(F.WordCountFilter(), TEXT) == 18
    assert score_of(F.MeanWordLengthFilter(), "ab abcd") == 3.0
    assert score_of(F.CharCountFilter(), "héllo") == 5
    assert score_of(F.LongWordFilter(), "a abcdef abc") == 6
    assert score_of(F.MaxLineLengthFilter(), "ab\nabcd\n") == 4
    assert score_of(F.MeanLineLengthFilter(), "ab\nabcd") == 3.0
    assert score_of(F.LineCountFilter(), "a\n\n  \nb") == 2
    assert kept(F.WordCountFilter(min_words=3, max_words=4), "a b", "a b c", "a b c d e") == ["a b c"]


def test_symbol_bullet_ellipsis_ratios():
    # 18 words; 2 "#" and 1 "..." -> gopher: max(2/18, 1/18)
    assert score_of(F.SymbolWordRatioFilter(), TEXT) == pytest.approx(2 / 18)
    assert score_of(F.SymbolWordRatioFilter(mode="words"), TEXT) == pytest.approx(3 / 18)
    assert score_of(F.BulletLineRatioFilter(), TEXT) == pytest.approx(2 / 4)
    assert score_of(F.EllipsisLineRatioFilter(), TEXT) == pytest.approx(1 / 4)
    assert score_of(F.EllipsisLineRatioFilter(), "a…  \nb") == pytest.approx(1 / 2)
    assert score_of(F.EllipsisLineRatioFilter(rstrip=False), "a…  \nb") == 0.0


def test_alpha_stopword_lorem_curly():
    assert score_of(F.AlphaWordRatioFilter(), "abc 123 a1 ... é") == pytest.approx(3 / 5)
    assert score_of(F.StopWordFilter(), "The cat of the house, and") == 3  # of, the, and ("The" is case-sensitive)
    assert score_of(F.StopWordFilter(substring=True), "other bee") == 2  # "the" in other, "be" in bee
    assert kept(F.StopWordFilter(), "cats of dogs", "cats of the dogs") == ["cats of the dogs"]
    assert score_of(F.LoremIpsumFilter(), "Lorem, ipsum dolor") == pytest.approx(1 / len("lorem ipsum dolor"))
    assert kept(F.LoremIpsumFilter(), "lorem ipsum dolor", "plain text") == ["plain text"]
    assert score_of(F.CurlyBracketFilter(), "{a}bcd") == pytest.approx(2 / 6)


def test_javascript_policy_lines():
    text = "Please enable JavaScript.\nGood content here.\nRead our Privacy Policy.\nMore."
    assert score_of(F.JavascriptLineFilter(), text) == 0.25
    assert score_of(F.PolicyLineFilter(), text) == 0.25
    assert kept(F.PolicyLineFilter(max_ratio=0.2), text) == []


def test_fineweb_line_measures():
    text = "A short line.\nAnother line without a stop\n\nThis is a considerably longer line that ends with a period.\nx"
    assert score_of(F.LinePunctuationRatioFilter(), text) == pytest.approx(2 / 4)
    assert score_of(F.ShortLineRatioFilter(), text) == pytest.approx(3 / 4)  # "A short line.", "Another ...", "x"
    assert score_of(F.ListRatioFilter(), "a\nb\nc d") == pytest.approx(2 / 4)
    dup = "same line\nsame line\nother"
    assert score_of(F.DuplicateLineCharFractionFilter(fineweb=True), dup) == pytest.approx(9 / (len(dup) - 2))


def test_gopher_line_paragraph_duplication():
    text = "para one\nline x\n\npara two\n\npara one\nline x\n\nline x"
    # paragraphs: ["para one\nline x", "para two", "para one\nline x", "line x"] -> 1 duplicate
    assert score_of(F.DuplicateParagraphFractionFilter(), text) == 0.25
    assert score_of(F.DuplicateParagraphCharFractionFilter(), text) == pytest.approx(15 / len(text))
    # lines: para one, line x, para two, para one, line x, line x -> 3 duplicates
    assert score_of(F.DuplicateLineFractionFilter(), text) == 0.5
    assert score_of(F.DuplicateLineCharFractionFilter(), text) == pytest.approx((8 + 6 + 6) / len(text))


def test_word_shape_ratios():
    assert score_of(F.UniqueWordRatioFilter(), "a A b a") == 0.5
    assert score_of(F.CapitalizedWordRatioFilter(), "FREE money NOW!! Click A") == pytest.approx(2 / 5)
    assert score_of(F.SentenceCountFilter(), "One. Two! Three? four") == 4
    assert score_of(F.DigitRatioFilter(), "ab 12") == 0.5
    assert score_of(F.UppercaseRatioFilter(), "ABcd") == 0.5
    assert score_of(F.AlphaCharRatioFilter(), "ab 1.") == 0.5
    assert score_of(F.PunctuationRatioFilter(), "ab, c.") == pytest.approx(2 / 5)
    assert score_of(F.WhitespaceRatioFilter(), "a b ") == 0.5
    assert score_of(F.NonAsciiRatioFilter(), "aé") == 0.5
    assert score_of(F.SpecialCharRatioFilter(), "ab$%") == 0.5
    assert score_of(F.UrlRatioFilter(), "see https://a.b/c now ok") == 0.25
    assert kept(F.EmptyTextFilter(), "  \n", "x", None) == ["x"]
    assert kept(F.KeywordFilter(keywords=["casino"]), "best Casino deals", "casinos", "clean") == ["casinos", "clean"]


def test_filter_writes_score_and_reports_reason():
    op = F.WordCountFilter(min_words=2)
    out = op(pl.DataFrame({"text": ["one", "one two"]}), score="n_words")
    assert out.to_dict(as_series=False) == {"text": ["one two"], "n_words": [2]}
    assert op.last_report.dropped == {"word_count_filter": 1}


def test_gopher_quality_filter_reasons():
    good = ("The history of the town is long and that is why we have to write with care. " * 6).strip()
    short = "The cat and the dog."
    hashes = " ".join(["#tagged these several words of the"] * 20)
    op = F.GopherQualityFilter()
    out = op(pl.DataFrame({"text": [good, short, hashes]}))
    assert out.get_column("text").to_list() == [good]
    assert op.last_report.dropped == {"gopher_short_doc": 1, "gopher_too_many_hashes": 1}


def test_c4_quality_filter_reasons():
    lines = ["This is a proper sentence number %d." % i for i in range(5)]
    good = "\n".join(lines)
    few = "\n".join(lines[:3])
    curly = good + "\nSome code {x} in a sentence here."
    lorem = good + "\nLorem ipsum dolor sit amet."
    op = F.C4QualityFilter()
    out = op(pl.DataFrame({"text": [good, few, curly, lorem]}))
    assert out.get_column("text").to_list() == [good]
    assert op.last_report.dropped == {"too_few_sentences": 1, "curly_bracket": 1, "lorem_ipsum": 1}


def test_fineweb_quality_filter_reasons():
    good = "\n".join("This is line number %d of a normal paragraph of text." % i for i in range(5))
    listy = "\n".join("item %d" % i for i in range(20))
    op = F.FinewebQualityFilter()
    out = op(pl.DataFrame({"text": [good, listy, ""]}))
    assert out.get_column("text").to_list() == [good]
    assert op.last_report.dropped == {"line_punct_ratio": 1, "empty": 1}


# --------------------------------------------------------------------------- real documents


def test_matches_data_prep_kit_doc_quality_columns(dpk_frame):
    """data-prep-kit's doc_quality transform precomputed these columns on real CommonCrawl pages."""
    ops = {
        "docq_total_words": F.WordCountFilter(None, None),
        "docq_mean_word_len": F.MeanWordLengthFilter(None, None),
        "docq_symbol_to_word_ratio": F.SymbolWordRatioFilter(mode="words"),
        "docq_bullet_point_ratio": F.BulletLineRatioFilter(bullets=("-", "*"), lstrip=False),
        "docq_ellipsis_line_ratio": F.EllipsisLineRatioFilter(ellipses=("...",), rstrip=False),
        "docq_alphabet_word_ratio": F.AlphaWordRatioFilter(),
        "docq_lorem_ipsum_ratio": F.LoremIpsumFilter(),
        "docq_curly_bracket_ratio": F.CurlyBracketFilter(),
    }
    t = {"text": "contents"}
    ours = dpk_frame.select(**{k: op.value(t) for k, op in ops.items()})
    for col in ops:
        assert ours.get_column(col).to_list() == pytest.approx(dpk_frame.get_column(col).cast(pl.Float64).to_list()), col
    common = dpk_frame.select(F.StopWordFilter(substring=True).value(t) >= 2).to_series()
    expected = dpk_frame.get_column("docq_contain_common_en_words") | (dpk_frame.get_column("ft_lang") != "en")
    assert (common | (dpk_frame.get_column("ft_lang") != "en")).to_list() == expected.to_list()
    sent = dpk_frame.select(F.SentenceCountFilter().value(t)).to_series()
    assert sent.to_list() == dpk_frame.get_column("docq_sentence_count").to_list()


def test_real_dolma_documents_measured(dolma_frame):
    wc = dolma_frame.select(F.WordCountFilter().value({"text": "text"})).to_series().to_list()
    assert wc == [len(t.split()) for t in dolma_frame.get_column("text").to_list()]
    out = F.GopherQualityFilter()(dolma_frame)
    assert 0 < out.height <= dolma_frame.height
