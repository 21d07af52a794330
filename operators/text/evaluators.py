"""Score-only text evaluators: they add columns and drop nothing."""

from __future__ import annotations

import polars as pl

from operators.base import Evaluator, register
from operators.text._common import (
    GOPHER_STOP_WORDS,
    line_count,
    non_space_chars,
    nonempty_line_count,
    safe_div,
    word_count,
)
from operators.text.filters import _bullet_line_ratio, _ellipsis_line_ratio, _stop_word_count


@register
class TextStatistics(Evaluator):
    """Basic statistics of `text`, one column each: characters (`chars`), whitespace words
    (`words`), lines (`lines`, split on newline), non-empty lines (`nonempty_lines`), mean word
    length (`mean_word_length`), fraction of letters among non-space characters (`alpha_ratio`),
    fraction of digits (`digit_ratio`). Writes nothing unless a column name is given for a role
    (all default to the names above); reads `text`. Use for dashboards and threshold tuning."""

    reads = {"text": "text"}
    writes = {
        "chars": "chars",
        "words": "words",
        "lines": "lines",
        "nonempty_lines": "nonempty_lines",
        "mean_word_length": "mean_word_length",
        "alpha_ratio": "alpha_ratio",
        "digit_ratio": "digit_ratio",
    }

    def __init__(self):
        pass

    def scores(self, cols):
        t = pl.col(cols["text"])
        nsc = non_space_chars(t)
        exprs = {
            "chars": t.str.len_chars(),
            "words": word_count(t),
            "lines": line_count(t),
            "nonempty_lines": nonempty_line_count(t),
            "mean_word_length": safe_div(nsc, word_count(t)),
            "alpha_ratio": safe_div(t.str.count_matches(r"\p{L}"), nsc),
            "digit_ratio": safe_div(t.str.count_matches(r"\p{Nd}"), nsc),
        }
        return [e.alias(cols[role]) for role, e in exprs.items() if cols.get(role)]


@register
class GopherQualityScore(Evaluator):
    """A Gopher quality composite in [0, 1] written to `score`: the fraction of Gopher's nine
    quality rules the document passes (word count 50..100,000, mean word length 3..10, "#" and
    ellipsis ratios <= 0.1, bullet lines <= 0.9, ellipsis lines <= 0.3, alphabetic words >= 0.8,
    >= 2 stop words). 1.0 means `gopher_quality_filter` would keep it. Reads `text`. Use to rank
    or sample documents instead of hard filtering."""

    reads = {"text": "text"}
    writes = {"score": "gopher_quality_score"}

    def __init__(self):
        pass

    def scores(self, cols):
        t = pl.col(cols["text"])
        words = word_count(t)
        mean_len = safe_div(non_space_chars(t), words)
        rules = [
            words.is_between(50, 100_000),
            mean_len.is_between(3, 10),
            safe_div(t.str.count_matches("#", literal=True), words) <= 0.1,
            safe_div(t.str.count_matches(r"\.\.\.|…"), words) <= 0.1,
            _bullet_line_ratio(t, ("•", "-"), True) <= 0.9,
            _ellipsis_line_ratio(t, ("...", "…"), True) <= 0.3,
            safe_div(t.str.count_matches(r"\S*\p{L}\S*"), words) >= 0.8,
            _stop_word_count(t, GOPHER_STOP_WORDS, False) >= 2,
        ]
        passed = pl.sum_horizontal([r.fill_null(False).cast(pl.Float64) for r in rules])
        return [(passed / len(rules)).alias(cols["score"])]


@register
class RepetitionScore(Evaluator):
    """Line-level repetition of `text`: fraction of lines repeating an earlier line (`line_dup`)
    and fraction of characters in such lines (`line_dup_chars`), lines split on newline runs as
    in Gopher. Reads `text`; writes both columns. Use to inspect boilerplate before choosing
    `gopher_repetition_filter` thresholds."""

    reads = {"text": "text"}
    writes = {"line_dup": "line_dup_fraction", "line_dup_chars": "line_dup_char_fraction"}

    def __init__(self):
        pass

    def scores(self, cols):
        from operators.text._common import duplicate_stats, line_runs_list

        t = pl.col(cols["text"])
        n, n_dup, chars = duplicate_stats(line_runs_list(t))
        return [
            safe_div(n_dup, n).alias(cols["line_dup"]),
            safe_div(chars, t.str.len_chars()).alias(cols["line_dup_chars"]),
        ]
