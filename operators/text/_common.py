"""Shared pieces of the text operators: vectorised Polars expressions for word / line statistics
and `ThresholdFilter`, the base of every "measure a value, keep rows within [min, max]" filter.

Everything here builds Polars expressions; nothing loops over rows in Python.
"""

from __future__ import annotations

from typing import Mapping

import polars as pl

from operators.base import Filter

# Gopher / datatrove stop words (Rae et al. 2021, Table A1).
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# C4 (datatrove's POLICY_SUBSTRINGS, from tensorflow_datasets c4_utils).
C4_POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
CITATION_PATTERN = r"\[\d*\]|\[edit\]|\[citation needed\]"
# FineWeb's default terminal punctuation (a compact subset of datatrove's TERMINAL_PUNCTUATION
# that covers Latin, CJK, Arabic, Devanagari and Ethiopic sentence enders).
TERMINAL_PUNCTUATION = ".!?。！？؟۔।॥።᙮‼⁇⁈⁉﹒﹗．｡…"


def re_escape_class(chars: str) -> str:
    """Escape characters for use inside a regex character class."""
    return "".join("\\" + c if c in "\\]^-[" else c for c in chars)


def alternation(words: tuple[str, ...] | list[str]) -> str:
    import re

    return "|".join(re.escape(w) for w in words)


# --------------------------------------------------------------------------- expressions


def word_count(text: pl.Expr) -> pl.Expr:
    """Whitespace-separated tokens (Python's `str.split()`)."""
    return text.str.count_matches(r"\S+")


def non_space_chars(text: pl.Expr) -> pl.Expr:
    return text.str.len_chars() - text.str.count_matches(r"\s")


def line_count(text: pl.Expr) -> pl.Expr:
    """Lines as `text.split("\\n")` counts them (an empty text has one empty line)."""
    return text.str.count_matches("\n") + 1


def nonempty_line_count(text: pl.Expr) -> pl.Expr:
    """Lines holding at least one non-whitespace character."""
    return text.str.count_matches(r"(?m)^[^\n]*\S[^\n]*$")


def safe_div(num: pl.Expr, den: pl.Expr, empty: float = 0.0) -> pl.Expr:
    """num / den with 0 / 0 -> `empty` (no when/then: that would evaluate `den` twice)."""
    return (num.cast(pl.Float64) / den.cast(pl.Float64)).fill_nan(empty)


COMPUTE_CHUNK_ROWS = 10_000


def compute(frame: pl.DataFrame, exprs: Mapping[str, pl.Expr], chunk_rows: int | None = None) -> pl.DataFrame:
    """Evaluate named expressions once each, in parallel (Polars' streaming engine splits the rows
    into morsels across threads; row order is kept). Frames longer than `chunk_rows` (default
    COMPUTE_CHUNK_ROWS) are evaluated slice by slice, so the intermediate lists (lines, words) of
    only one slice are alive at a time: bounded memory, same values (every expression is row-wise)."""
    if frame.height == 0:
        return frame.lazy().select(**exprs).collect()
    rows = chunk_rows or COMPUTE_CHUNK_ROWS
    if frame.height <= rows:
        return frame.lazy().select(**exprs).collect(engine="streaming")
    parts = [
        frame.slice(i, rows).lazy().select(**exprs).collect(engine="streaming") for i in range(0, frame.height, rows)
    ]
    return pl.concat(parts, rechunk=False)


def lines_list(text: pl.Expr, nonempty: bool = False) -> pl.Expr:
    lines = text.str.split("\n")
    if nonempty:
        lines = lines.list.eval(pl.element().filter(pl.element().str.contains(r"\S")))
    return lines


def duplicate_stats(items: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(number of items, number of repeated items, characters in repeated items) of a list column:
    an item is repeated when an equal item came before it (datatrove's `find_duplicates`)."""
    n = items.list.len()
    # one pass per list: the lengths of the repeated items give both their number and characters
    dup_lens = items.list.eval(pl.element().filter(~pl.element().is_first_distinct()).str.len_chars())
    n_dup = dup_lens.list.len()
    dup_chars = dup_lens.list.sum()
    return n, n_dup, dup_chars


def paragraphs_list(text: pl.Expr) -> pl.Expr:
    """Paragraphs split on two or more newlines after stripping the text (Gopher repetition)."""
    return text.str.strip_chars().str.replace_all(r"\n{2,}", "\x00").str.split("\x00")


def line_runs_list(text: pl.Expr) -> pl.Expr:
    """Lines split on runs of newlines (Gopher repetition: `re.split("\\n+")`)."""
    # only runs of 2+ newlines need collapsing (rare matches: one fast scan)
    return text.str.replace_all(r"\n{2,}", "\n").str.split("\n")


# --------------------------------------------------------------------------- filter base


class ThresholdFilter(Filter):
    """Base (not registered): measure one value per row and keep rows with min <= value <= max.

    Subclasses implement `measure(text)` and set `self.min_value` / `self.max_value` in `__init__`.
    When the optional `score` role is given, the measured value is written to that column.
    """

    reads = {"text": "text"}
    writes = {"score": None}
    min_value: float | None = None
    max_value: float | None = None
    # a row whose text is null is dropped (its measure is null)

    def measure(self, text: pl.Expr) -> pl.Expr:
        raise NotImplementedError

    def value(self, cols: Mapping[str, str | None]) -> pl.Expr:
        return self.measure(pl.col(cols["text"]))

    def scores(self, cols):
        if cols.get("score"):
            return [self.value(cols).alias(cols["score"])]
        return []

    def run(self, frame, cols):
        val = compute(frame, {"v": self.value(cols)}).get_column("v")
        if cols.get("score"):
            frame = frame.with_columns(val.alias(cols["score"]))
        return self.apply_keep(frame, {self.display_name: self.bounds(val)})

    def bounds(self, val):
        cond = pl.lit(True) if isinstance(val, pl.Expr) else pl.Series([True] * len(val), dtype=pl.Boolean)
        if self.min_value is not None:
            cond = cond & (val >= self.min_value)
        if self.max_value is not None:
            cond = cond & (val <= self.max_value)
        return cond

    def keep(self, cols):
        return self.bounds(pl.col(cols["score"]) if cols.get("score") else self.value(cols))


class StatsFilter(Filter):
    """Base (not registered) of the rule-set filters: `stats(text)` names the (expensive) per-row
    statistics, each computed once and in parallel; `decide(stats)` turns them into reason ->
    keep conditions (cheap arithmetic on the statistics)."""

    reads = {"text": "text"}
    writes = {}

    def stats(self, text: pl.Expr) -> dict[str, pl.Expr]:
        raise NotImplementedError

    def decide(self, s: Mapping[str, pl.Expr]) -> dict[str, pl.Expr]:
        raise NotImplementedError

    def keep(self, cols):
        return self.decide(self.stats(pl.col(cols["text"])))

    def run(self, frame, cols):
        st = compute(frame, self.stats(pl.col(cols["text"])))
        dec = st.select(**self.decide({k: pl.col(k) for k in st.columns}))
        return self.apply_keep(frame, {k: dec.get_column(k) for k in dec.columns})
