"""The shortcuts of the Gopher filters give the values of their straightforward versions: the
symbol-word statistics of GopherQualityFilter (tested only on tokens without a letter), the
staged intermediate columns of `compute`, the mask-based position order of the n-gram kernel,
and the repetition filter's shared tokens when some rows fail the line rules."""

from __future__ import annotations

import numpy as np
import polars as pl

from operators.text._common import DATATROVE_PUNCTUATION_CLASS, compute, word_tokens
from operators.text.filters import GopherQualityFilter
from operators.text.repetition import GopherRepetitionFilter, _in_order


def test_no_letter_is_a_datatrove_punctuation_character():
    """GopherQualityFilter counts a token holding a letter as a non-symbol word without testing it:
    right only while no letter is in the punctuation class."""
    chars = pl.Series([chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF])
    punct = chars.filter(chars.str.contains("^[" + DATATROVE_PUNCTUATION_CLASS + "]$"))
    assert len(punct) > 200
    assert punct.str.contains(r"\p{L}").sum() == 0


def test_quality_word_statistics_equal_the_direct_per_token_ones(c4_frame):
    """non-symbol words, their mean length and the alpha-word count as GopherQualityFilter derives
    them == the same counted over every token directly (on the 2,000 C4 documents)."""
    el = pl.element()
    real = el.str.contains("[^" + DATATROVE_PUNCTUATION_CLASS + "]")
    tokens = word_tokens(pl.col("text"))
    direct = c4_frame.select(
        real_words=tokens.list.eval(el.filter(real)).list.len(),
        real_chars=tokens.list.eval(el.filter(real).str.len_chars()).list.sum().cast(pl.Int64),
        alpha_words=tokens.list.eval(el.str.contains(r"\p{L}")).list.sum().cast(pl.Int64),
    )
    f = GopherQualityFilter()
    pre = f.prepare(pl.col("text"))
    assert isinstance(pre, list) and len(pre) == 2  # the staged form is what `run` computes
    st = compute(c4_frame, f.stats(pl.col("text"), **{k: pl.col(k) for stage in pre for k in stage}), pre=pre)
    ours = st.select(
        real_words=pl.col("words") - pl.col("non_alpha_words") + pl.col("non_alpha_real_lens").list.len(),
        real_chars=(pl.col("token_chars") - pl.col("non_alpha_chars") + pl.col("non_alpha_real_lens").list.sum()).cast(pl.Int64),
        alpha_words=(pl.col("words") - pl.col("non_alpha_words")).cast(pl.Int64),
    )
    assert ours.equals(direct)
    assert (direct.get_column("real_words") < st.get_column("words")).any()  # symbol words do occur
    # the expression form (no intermediate columns) gives the same statistics
    plain = compute(c4_frame, f.stats(pl.col("text")))
    assert plain.equals(st)


def test_in_order_is_a_sort_of_distinct_indices():
    rng = np.random.default_rng(3)
    for size in (1, 7, 1000, 100_000):
        idx = rng.permutation(size)[: rng.integers(0, size + 1)]
        assert np.array_equal(_in_order(idx, size), np.sort(idx))


def test_repetition_with_shared_tokens_when_rows_fail_the_line_rules(c4_frame, monkeypatch):
    """Tokens left by Gopher quality, then rows dropped by the line rules (duplicated lines added):
    the same decisions and dropped ids as the repetition filter tokenising itself."""
    texts = c4_frame.get_column("text").head(300).to_list()
    texts[5] = "same line here\n" * 40 + texts[5]
    texts[17] = "\n\n".join(["a repeated paragraph of words"] * 20) + texts[17]
    frame = pl.DataFrame({"text": texts}).with_row_index("_id")
    kept = GopherQualityFilter()(frame, text="text")
    assert {5, 17} <= set(kept.get_column("_id").to_list())
    from operators.text import repetition

    real = repetition._word_arrays
    tokenised = []
    monkeypatch.setattr(repetition, "_word_arrays", lambda t: tokenised.append(len(t)) or real(t))
    shared_op = GopherRepetitionFilter()
    shared = shared_op(kept, text="text")  # takes the tokens the quality filter left
    assert tokenised == []
    GopherQualityFilter(share_tokens=False)(frame, text="text")  # empties the slot
    own_op = GopherRepetitionFilter()
    own = own_op(kept, text="text")
    assert tokenised  # this one tokenised
    assert shared.equals(own)
    assert shared_op.last_report.dropped_ids.equals(own_op.last_report.dropped_ids)
    reasons = dict(own_op.last_report.dropped_ids.iter_rows())
    assert reasons.get(5, "").startswith("dup_line") and reasons.get(17, "").startswith("dup_para")


def test_lorem_ipsum_pattern_is_the_lowercased_search():
    """C4's lorem-ipsum test without lowercasing the text: only ASCII capitals and "İ" lowercase
    into one of its characters (over all code points), and texts mixing them agree."""
    from operators.text.filters import _LOREM_IPSUM

    chars = pl.Series([chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF])
    low = chars.str.to_lowercase()
    into = chars.filter(low.str.contains("[lorem ipsu]") & ~chars.str.contains("^[lLoOrReEmMiIpPsSuU ]$"))
    assert into.to_list() == ["\u0130"]
    texts = pl.Series(["Lorem Ipsum dolor", "LOREM IPSUM", "lorem \u0130psum", "lorem  ipsum", "xlorem ipsumx", "", None, "lorem ipſum"])
    assert texts.str.contains(_LOREM_IPSUM).to_list() == texts.str.to_lowercase().str.contains("lorem ipsum", literal=True).to_list()


def test_line_counts_equal_the_multiline_patterns(c4_frame):
    """Non-empty lines and bullet lines counted from "\\n" == the multi-line `^` patterns."""
    from operators.text._common import nonempty_line_count

    extra = ["", "-", " -x\n-\n\n \u2022", "\n-", "a\r\n-", "\u2028-", "x\n  \n\t\n y", "\n", " \n \n", None]
    frame = pl.concat([c4_frame, pl.DataFrame({"text": extra})])
    t = pl.col("text")
    got = frame.select(
        nonempty=nonempty_line_count(t),
        bullets=compute(frame, GopherQualityFilter().stats(t)).get_column("bullet_lines"),
    )
    want = frame.select(
        nonempty=t.str.count_matches(r"(?m)^[^\n]*\S[^\n]*$"),
        bullets=t.str.count_matches(r"(?m)^[^\S\n]*(?:•|-)"),
    )
    assert got.equals(want)
