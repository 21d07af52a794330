"""Heuristic document filters for pre-training text (Gopher, C4, FineWeb and data-prep-kit rule
sets). Every filter is a set of Polars expressions; thresholds are configurable and default to the
published values. Each filter can write its measured value to an optional `score` column.

Words are whitespace-separated tokens (Python's `str.split()`); datatrove tokenises with spaCy, so
its word counts differ slightly on punctuation-heavy text.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from operators.base import Filter, register
from operators.text import _common
from operators.text._common import (
    ABBREVIATIONS,
    C4_POLICY_SUBSTRINGS,
    DATATROVE_PUNCTUATION_CLASS,
    GOPHER_STOP_WORDS,
    TERMINAL_PUNCTUATION,
    StatsFilter,
    ThresholdFilter,
    alternation,
    compute,
    duplicate_stats,
    line_count,
    line_runs_list,
    lines_list,
    non_space_chars,
    nonempty_line_count,
    paragraphs_list,
    pre_names,
    re_escape_class,
    remember_tokens,
    safe_div,
    splitlines_count,
    token_hashes,
    word_count,
    word_tokens,
)
from operators.text.refiners import URL_PATTERN, c4_clean_lines

# --------------------------------------------------------------------------- measure helpers


def _bullet_line_ratio(text: pl.Expr, bullets: tuple[str, ...], lstrip: bool) -> pl.Expr:
    lead = r"[^\S\n]*" if lstrip else ""
    pattern = r"(?m)^" + lead + "(?:" + alternation(bullets) + ")"
    return safe_div(text.str.count_matches(pattern), line_count(text))


def _ellipsis_line_ratio(text: pl.Expr, ellipses: tuple[str, ...], rstrip: bool) -> pl.Expr:
    trail = r"[^\S\n]*" if rstrip else ""
    pattern = "(?m)(?:" + alternation(ellipses) + ")" + trail + "$"
    return safe_div(text.str.count_matches(pattern), line_count(text))


def _stop_word_count(text: pl.Expr, stop_words: tuple[str, ...], substring: bool) -> pl.Expr:
    if substring:  # data-prep-kit: `text.count(word) > 0`
        total = pl.lit(0, dtype=pl.UInt32)
        for w in stop_words:
            total = total + text.str.contains(w, literal=True).cast(pl.UInt32)
        return total
    # distinct stop words present as words (datatrove: |set(words) & stop_words|; its spaCy tokens
    # split punctuation off, so "the," counts: word boundaries approximate that)
    pattern = r"\b(?:" + alternation(stop_words) + r")\b"
    return text.str.extract_all(pattern).list.n_unique().fill_null(0)


def _strip_symbol_words(text: pl.Expr) -> pl.Expr:
    """Remove words made only of punctuation / symbols (datatrove's non-symbol words). Whitespace
    is doubled first so each word owns a separator on both sides."""
    return text.str.replace_all(r"\s+", "  ").str.replace_all(r"(^|\s)[\p{P}\p{S}]+(\s|$)", "$1$2")


# --------------------------------------------------------------------------- single-rule filters


@register
class WordCountFilter(ThresholdFilter):
    """Keep documents whose number of whitespace-separated words lies in [min_words, max_words]
    (Gopher: 50 .. 100,000). Reads `text`; writes the word count to the optional `score` column.
    Use to drop stubs and giant dumps."""

    def __init__(self, min_words: int | None = 50, max_words: int | None = 100_000):
        self.min_value, self.max_value = min_words, max_words

    def measure(self, text):
        return word_count(text)


@register
class MeanWordLengthFilter(ThresholdFilter):
    """Keep documents whose mean word length (characters per whitespace word) lies in
    [min_length, max_length] (Gopher: 3 .. 10). Reads `text`; writes the mean to the optional
    `score` column (0 for a text without words). Catches gibberish and concatenated tokens."""

    def __init__(self, min_length: float | None = 3, max_length: float | None = 10):
        self.min_value, self.max_value = min_length, max_length

    def measure(self, text):
        return safe_div(non_space_chars(text), word_count(text))


@register
class SymbolWordRatioFilter(ThresholdFilter):
    """Keep documents whose symbol-to-word ratio is at most `max_ratio` (Gopher: 0.1).
    mode="gopher" (default, datatrove): max(#"#" / words, (#"..." + #"…") / words);
    mode="words" (data-prep-kit): fraction of words containing any of `symbols`.
    Reads `text`; writes the ratio to the optional `score` column."""

    def __init__(self, max_ratio: float = 0.1, mode: str = "gopher", symbols: tuple[str, ...] = ("#", "...")):
        if mode not in ("gopher", "words"):
            raise ValueError("mode must be 'gopher' or 'words'")
        self.max_value, self.mode, self.symbols = max_ratio, mode, tuple(symbols)

    def measure(self, text):
        words = word_count(text)
        if self.mode == "words":
            with_symbol = text.str.count_matches(r"\S*(?:" + alternation(self.symbols) + r")\S*")
            return safe_div(with_symbol, words)
        hashes = safe_div(text.str.count_matches("#", literal=True), words)
        ellipses = safe_div(text.str.count_matches(r"\.\.\.|…"), words)
        return pl.max_horizontal(hashes, ellipses)


@register
class EllipsisLineRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the lines end with an ellipsis ("..." or "…")
    (Gopher: 0.3). Lines are `text.split("\\n")`; `rstrip` ignores trailing spaces (datatrove).
    Reads `text`; writes the ratio to the optional `score` column. Catches truncated snippets."""

    def __init__(self, max_ratio: float = 0.3, ellipses: tuple[str, ...] = ("...", "…"), rstrip: bool = True):
        self.max_value, self.ellipses, self.rstrip = max_ratio, tuple(ellipses), rstrip

    def measure(self, text):
        return _ellipsis_line_ratio(text, self.ellipses, self.rstrip)


@register
class BulletLineRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the lines start with a bullet (Gopher: 0.9;
    bullets "•", "-", "*", "●", "▪", "◦", "‣"). `lstrip` ignores leading spaces (datatrove).
    Reads `text`; writes the ratio to the optional `score` column. Catches navigation lists."""

    def __init__(
        self,
        max_ratio: float = 0.9,
        bullets: tuple[str, ...] = ("•", "-", "*", "●", "▪", "◦", "‣"),
        lstrip: bool = True,
    ):
        self.max_value, self.bullets, self.lstrip = max_ratio, tuple(bullets), lstrip

    def measure(self, text):
        return _bullet_line_ratio(text, self.bullets, self.lstrip)


@register
class AlphaWordRatioFilter(ThresholdFilter):
    """Keep documents where at least `min_ratio` of the whitespace words contain an alphabetic
    character (Gopher: 0.8). Reads `text`; writes the ratio to the optional `score` column.
    Catches tables of numbers and symbol soup."""

    def __init__(self, min_ratio: float = 0.8):
        self.min_value = min_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"\S*\p{L}\S*"), word_count(text))


@register
class StopWordFilter(ThresholdFilter):
    """Keep documents that contain at least `min_stop_words` distinct stop words (Gopher: 2 of
    the, be, to, of, and, that, have, with), matched as whole case-sensitive words;
    `substring=True` follows data-prep-kit (any substring occurrence counts). Reads `text`;
    writes the count to the optional `score` column. A cheap "is this natural English" check."""

    def __init__(
        self,
        min_stop_words: int = 2,
        stop_words: tuple[str, ...] = GOPHER_STOP_WORDS,
        substring: bool = False,
    ):
        self.min_value, self.stop_words, self.substring = min_stop_words, tuple(stop_words), substring

    def measure(self, text):
        return _stop_word_count(text, self.stop_words, self.substring)


@register
class LoremIpsumFilter(ThresholdFilter):
    """Drop documents containing "lorem ipsum" placeholder text (C4). The score is data-prep-kit's
    ratio: occurrences of "lorem ipsum" in the normalised text (ASCII punctuation removed,
    lowercased, whitespace collapsed) over its length; rows are kept when it is <= `max_ratio`
    (default 0: any occurrence drops). Reads `text`; optional `score` column."""

    def __init__(self, max_ratio: float = 0.0):
        self.max_value = max_ratio

    def measure(self, text):
        norm = (
            text.str.replace_all(r"[!-/:-@\[-`{-~]", "")
            .str.to_lowercase()
            .str.strip_chars()
            .str.replace_all(r"\s+", " ")
        )
        return safe_div(norm.str.count_matches("lorem ipsum", literal=True), norm.str.len_chars())


@register
class CurlyBracketFilter(ThresholdFilter):
    """Drop documents with curly brackets (C4 removes any page containing "{", a sign of code).
    Score (data-prep-kit): (#"{" + #"}") / number of characters; kept when <= `max_ratio`
    (default 0: any bracket drops; raise it, e.g. 0.025, to tolerate a few). Reads `text`;
    optional `score` column."""

    def __init__(self, max_ratio: float = 0.0):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"[{}]"), text.str.len_chars())


@register
class JavascriptLineFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the non-empty lines mention "javascript"
    (case-insensitive). C4 drops such lines (see `c4_line_cleaner`); this filter drops pages that
    are mostly "please enable JavaScript" notices. Reads `text`; optional `score` column."""

    def __init__(self, max_ratio: float = 0.5):
        self.max_value = max_ratio

    def measure(self, text):
        n = text.str.count_matches(r"(?mi)^[^\n]*javascript[^\n]*$")
        return safe_div(n, nonempty_line_count(text))


@register
class PolicyLineFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the non-empty lines mention a policy phrase
    (C4's list: terms of use, privacy policy, cookie policy, uses cookies, use of cookies, use
    cookies; case-insensitive). Reads `text`; optional `score` column. Drops cookie banners and
    legal boilerplate pages; `c4_line_cleaner` removes single policy lines instead."""

    def __init__(self, max_ratio: float = 0.5, phrases: tuple[str, ...] = C4_POLICY_SUBSTRINGS):
        self.max_value, self.phrases = max_ratio, tuple(phrases)

    def measure(self, text):
        n = text.str.count_matches(r"(?mi)^[^\n]*(?:" + alternation(self.phrases) + r")[^\n]*$")
        return safe_div(n, nonempty_line_count(text))


@register
class LinePunctuationRatioFilter(ThresholdFilter):
    """Keep documents where at least `min_ratio` of the non-empty lines end with terminal
    punctuation (FineWeb: 0.12). `exclude_zero=True` keeps documents with no such line at all
    (FineWeb's line_punct_exclude_zero). Reads `text`; optional `score` column."""

    def __init__(self, min_ratio: float = 0.12, exclude_zero: bool = False, stop_chars: str = TERMINAL_PUNCTUATION):
        self.min_value, self.exclude_zero, self.stop_chars = min_ratio, exclude_zero, stop_chars

    def measure(self, text):
        ending = text.str.count_matches(r"(?m)[" + re_escape_class(self.stop_chars) + r"]$")
        return safe_div(ending, nonempty_line_count(text))

    def bounds(self, val):
        cond = super().bounds(val)
        return (cond | (val == 0)) if self.exclude_zero else cond


@register
class ShortLineRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the non-empty lines have at most `max_length`
    characters (FineWeb: 0.67 and 30). Reads `text`; optional `score` column. Drops menus,
    tag clouds and lists of titles."""

    def __init__(self, max_ratio: float = 0.67, max_length: int = 30):
        self.max_value, self.max_length = max_ratio, max_length

    def measure(self, text):
        k = self.max_length
        short = text.str.count_matches(r"(?m)^[^\n]{0,%d}$" % k) - text.str.count_matches(
            r"(?m)^[^\S\n]{0,%d}$" % k
        )
        return safe_div(short, nonempty_line_count(text))


@register
class ListRatioFilter(ThresholdFilter):
    """Keep documents whose newline-to-word ratio is at most `max_ratio` (FineWeb "list_ratio":
    0.3). Reads `text`; optional `score` column. Drops pages that are one word per line."""

    def __init__(self, max_ratio: float = 0.3):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches("\n", literal=True), word_count(text), empty=1.0)


@register
class DuplicateLineFractionFilter(ThresholdFilter):
    """Keep documents where at most `max_fraction` of the lines repeat an earlier line (Gopher:
    0.3; lines split on runs of newlines, exact matches). Reads `text`; optional `score` column."""

    def __init__(self, max_fraction: float = 0.3):
        self.max_value = max_fraction

    def measure(self, text):
        n, n_dup, _ = duplicate_stats(line_runs_list(text))
        return safe_div(n_dup, n)


@register
class DuplicateLineCharFractionFilter(ThresholdFilter):
    """Keep documents where at most `max_fraction` of the characters belong to lines repeating
    an earlier line (Gopher: 0.2, denominator len(text)). `fineweb=True` uses FineWeb's variant:
    non-empty lines only, denominator = characters excluding newlines, default threshold there
    is 0.01. Reads `text`; optional `score` column."""

    def __init__(self, max_fraction: float = 0.2, fineweb: bool = False):
        self.max_value, self.fineweb = max_fraction, fineweb

    def measure(self, text):
        if self.fineweb:
            items = lines_list(text, nonempty=True)
            _, _, chars = duplicate_stats(items)
            return safe_div(chars, text.str.len_chars() - text.str.count_matches("\n", literal=True))
        _, _, chars = duplicate_stats(line_runs_list(text))
        return safe_div(chars, text.str.len_chars())


@register
class DuplicateParagraphFractionFilter(ThresholdFilter):
    """Keep documents where at most `max_fraction` of the paragraphs (blocks split on two or more
    newlines) repeat an earlier paragraph (Gopher: 0.3). Reads `text`; optional `score` column."""

    def __init__(self, max_fraction: float = 0.3):
        self.max_value = max_fraction

    def measure(self, text):
        n, n_dup, _ = duplicate_stats(paragraphs_list(text))
        return safe_div(n_dup, n)


@register
class DuplicateParagraphCharFractionFilter(ThresholdFilter):
    """Keep documents where at most `max_fraction` of the characters belong to paragraphs
    repeating an earlier paragraph (Gopher: 0.2). Reads `text`; optional `score` column."""

    def __init__(self, max_fraction: float = 0.2):
        self.max_value = max_fraction

    def measure(self, text):
        _, _, chars = duplicate_stats(paragraphs_list(text))
        return safe_div(chars, text.str.len_chars())


@register
class UniqueWordRatioFilter(ThresholdFilter):
    """Keep documents whose ratio of distinct (lowercased) words to words lies in
    [min_ratio, max_ratio] (default >= 0.1). Reads `text`; optional `score` column. Low values
    mean the same few words over and over."""

    def __init__(self, min_ratio: float | None = 0.1, max_ratio: float | None = None):
        self.min_value, self.max_value = min_ratio, max_ratio

    def measure(self, text):
        words = text.str.to_lowercase().str.extract_all(r"\S+")
        return safe_div(words.list.n_unique(), words.list.len())


@register
class CapitalizedWordRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the words are fully upper-case (words with
    at least two letters, all cased letters upper: "FREE", "NEW!!"); default 0.3. Reads `text`;
    optional `score` column. Drops shouting spam and all-caps boilerplate."""

    def __init__(self, max_ratio: float = 0.3):
        self.max_value = max_ratio

    def measure(self, text):
        # each match consumes its trailing separator; pad separators so neighbours are counted
        caps = text.str.replace_all(r"\s+", "  ").str.count_matches(
            r"(?:^|\s)[^\s\p{Ll}]*\p{Lu}[^\s\p{Ll}]*\p{Lu}[^\s\p{Ll}]*(?:\s|$)"
        )
        return safe_div(caps, word_count(text))


@register
class SentenceCountFilter(ThresholdFilter):
    """Keep documents with at least `min_sentences` sentences (C4: 5; data-prep-kit counts with
    the regex \\b[^.!?]+[.!?]*) and at most `max_sentences`. Reads `text`; optional `score`."""

    def __init__(self, min_sentences: int | None = 5, max_sentences: int | None = None):
        self.min_value, self.max_value = min_sentences, max_sentences

    def measure(self, text):
        return text.str.count_matches(r"\b[^.!?]+[.!?]*")


@register
class SpecialCharRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the non-whitespace characters are neither
    letters, digits nor common punctuation (.,;:!?'"()-) (default 0.25). Reads `text`;
    optional `score` column. Catches encoding garbage, ASCII art and symbol spam."""

    def __init__(self, max_ratio: float = 0.25):
        self.max_value = max_ratio

    def measure(self, text):
        special = text.str.count_matches(r"[^\s\p{L}\p{N}\p{M}.,;:!?'\"()\-’“”‘]")
        return safe_div(special, non_space_chars(text))


@register
class DigitRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the non-whitespace characters are digits
    (default 0.3). Reads `text`; optional `score` column. Drops numeric tables and logs."""

    def __init__(self, max_ratio: float = 0.3):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"\p{Nd}"), non_space_chars(text))


@register
class UppercaseRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the letters are upper-case (default 0.4).
    Reads `text`; optional `score` column."""

    def __init__(self, max_ratio: float = 0.4):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"\p{Lu}"), text.str.count_matches(r"\p{L}"))


@register
class AlphaCharRatioFilter(ThresholdFilter):
    """Keep documents where at least `min_ratio` of the non-whitespace characters are letters
    (default 0.6). Reads `text`; optional `score` column."""

    def __init__(self, min_ratio: float = 0.6):
        self.min_value = min_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"\p{L}"), non_space_chars(text))


@register
class PunctuationRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the non-whitespace characters are Unicode
    punctuation (category P*; default 0.2). Reads `text`; optional `score` column."""

    def __init__(self, max_ratio: float = 0.2):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"\p{P}"), non_space_chars(text))


@register
class WhitespaceRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the characters are whitespace (default 0.5).
    Reads `text`; optional `score` column. Drops pages padded with blanks."""

    def __init__(self, max_ratio: float = 0.5):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"\s"), text.str.len_chars())


@register
class NonAsciiRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the characters are outside ASCII (default
    0.2). Reads `text`; optional `score` column. Use on English corpora to catch mojibake."""

    def __init__(self, max_ratio: float = 0.2):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(r"[^\x00-\x7F]"), text.str.len_chars())


@register
class CharCountFilter(ThresholdFilter):
    """Keep documents whose character count lies in [min_chars, max_chars] (default 100 ..
    1,000,000). Reads `text`; optional `score` column."""

    def __init__(self, min_chars: int | None = 100, max_chars: int | None = 1_000_000):
        self.min_value, self.max_value = min_chars, max_chars

    def measure(self, text):
        return text.str.len_chars()


@register
class MaxLineLengthFilter(ThresholdFilter):
    """Keep documents whose longest line has at most `max_length` characters (default 10,000).
    Reads `text`; optional `score` column (the longest line's length). Drops minified code and
    base64 blobs."""

    def __init__(self, max_length: int = 10_000):
        self.max_value = max_length

    def measure(self, text):
        return text.str.split("\n").list.eval(pl.element().str.len_chars()).list.max()


@register
class MeanLineLengthFilter(ThresholdFilter):
    """Keep documents whose mean line length (characters per line, newlines excluded) lies in
    [min_length, max_length] (default >= 10). Reads `text`; optional `score` column."""

    def __init__(self, min_length: float | None = 10, max_length: float | None = None):
        self.min_value, self.max_value = min_length, max_length

    def measure(self, text):
        return safe_div(text.str.len_chars() - text.str.count_matches("\n", literal=True), line_count(text))


@register
class LineCountFilter(ThresholdFilter):
    """Keep documents whose number of non-empty lines lies in [min_lines, max_lines] (default
    >= 1). Reads `text`; optional `score` column."""

    def __init__(self, min_lines: int | None = 1, max_lines: int | None = None):
        self.min_value, self.max_value = min_lines, max_lines

    def measure(self, text):
        return nonempty_line_count(text)


@register
class LongWordFilter(ThresholdFilter):
    """Keep documents whose longest whitespace word has at most `max_length` characters
    (default 1000, C4's limit for a line). Reads `text`; optional `score` column."""

    def __init__(self, max_length: int = 1000):
        self.max_value = max_length

    def measure(self, text):
        return text.str.extract_all(r"\S+").list.eval(pl.element().str.len_chars()).list.max().fill_null(0)


@register
class UrlRatioFilter(ThresholdFilter):
    """Keep documents where at most `max_ratio` of the words are URLs (default 0.2). Reads
    `text`; optional `score` column. Drops link farms."""

    def __init__(self, max_ratio: float = 0.2):
        self.max_value = max_ratio

    def measure(self, text):
        return safe_div(text.str.count_matches(URL_PATTERN), word_count(text))


@register
class EmptyTextFilter(ThresholdFilter):
    """Drop rows whose text is null, empty or whitespace only. Reads `text`; optional `score`
    column (number of non-whitespace characters). Use after refiners that may empty a text."""

    def __init__(self, min_chars: int = 1):
        self.min_value = min_chars

    def measure(self, text):
        return non_space_chars(text)


@register
class KeywordFilter(Filter):
    """Drop documents containing any of `keywords` (case-insensitive, whole words when
    `whole_words`). Reads `text`; writes the number of keyword hits to the optional `score`
    column. Use for block lists (bad words, spam phrases); the default list is empty."""

    reads = {"text": "text"}
    writes = {"score": None}

    def __init__(self, keywords: tuple[str, ...] | list[str] = (), whole_words: bool = True, max_hits: int = 0):
        self.keywords, self.whole_words, self.max_hits = tuple(keywords), whole_words, max_hits

    def _hits(self, cols):
        if not self.keywords:
            return pl.lit(0, dtype=pl.UInt32)
        pat = "(?:" + alternation(self.keywords) + ")"
        if self.whole_words:
            pat = r"\b" + pat + r"\b"
        return pl.col(cols["text"]).str.count_matches("(?i)" + pat)

    def scores(self, cols):
        return [self._hits(cols).alias(cols["score"])] if cols.get("score") else []

    def keep(self, cols):
        hits = pl.col(cols["score"]) if cols.get("score") else self._hits(cols)
        return pl.col(cols["text"]).is_not_null() & (hits <= self.max_hits)


# --------------------------------------------------------------------------- rule-set filters


@register
class GopherQualityFilter(StatsFilter):
    """Gopher's quality rules (Rae et al. 2021) exactly as datatrove's GopherQualityFilter applies
    them, one pass. Words are spaCy-like tokens (`word_tokens`: punctuation split off words, as
    datatrove's spaCy tokenizer does); "symbol words" are tokens made only of datatrove's
    punctuation characters. Rules: non-symbol words in [min_doc_words, max_doc_words]
    (50 .. 100,000), their mean length in [3, 10], "#" and ellipsis ("..." or "…") counts per
    token <= 0.1, lines (`str.splitlines`) starting with "•" or "-" <= 0.9, lines ending with an
    ellipsis <= 0.3, tokens holding a letter >= 0.8 of all tokens, at least 2 distinct stop words
    among the tokens. Reads `text`; drops with reasons gopher_short_doc, gopher_long_doc,
    gopher_below_avg_threshold, gopher_above_avg_threshold, gopher_too_many_hashes,
    gopher_too_many_ellipsis, gopher_too_many_bullets, gopher_too_many_end_ellipsis,
    gopher_below_alpha_threshold, gopher_enough_stop_words. Writes nothing (see the single-rule
    filters for score columns). Leaves the hashes / lengths of the kept texts' tokens for a
    GopherRepetitionFilter that runs next on the same texts (it then skips tokenising; run the two
    back to back for that); `share_tokens=False` skips that (no hashing, no ~240 MB held) where a
    stage in between rewrites the texts, as text_pt's C4 line cleaner does.

    Agreement with datatrove 0.10 (its own filter, run by tests/operators/text): 1,981 of the 2,000
    C4 validation documents get the same keep/drop (99.05%). All 19 others are decided by the
    alpha-word ratio within a token or two of 0.8 (17 we drop, 2 we keep), where our regex tokens
    differ from spaCy's: spaCy keeps some chunks whole that we split ("and/or", "w/", "well-",
    "2016-", file paths, chemical names like "4,4′-bis[N-(3-methylphenyl)...]") and splits a few
    we keep ("time.Once", "15g", "Dont" -> "Do" + "nt"); on that corpus the net effect is ~0.3%
    more non-alphabetic tokens than spaCy, which tips documents sitting on the threshold."""

    reads = {"text": "text"}
    writes = {}

    def __init__(
        self,
        min_doc_words: int | None = 50,
        max_doc_words: int | None = 100_000,
        min_avg_word_length: float | None = 3,
        max_avg_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines_ratio: float | None = 0.9,
        max_ellipsis_lines_ratio: float | None = 0.3,
        min_alpha_words_ratio: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: tuple[str, ...] = GOPHER_STOP_WORDS,
        share_tokens: bool = True,
    ):
        self.c = {k: v for k, v in self.config().items() if k not in ("stop_words", "share_tokens")}  # the thresholds, by name
        self.stop_words = tuple(stop_words)
        self.share_tokens = share_tokens

    def prepare(self, t):
        # the tokens, then the two lists read by several statistics (each computed once)
        el, tokens = pl.element(), pl.col("_gopher_tokens")
        return [
            {"_gopher_tokens": word_tokens(t)},
            {"_gopher_lens": tokens.list.eval(el.str.len_chars()), "_gopher_nonalpha": _non_alpha(tokens)},
        ]

    def run(self, frame, cols):
        """As `StatsFilter.run`, slice by slice (COMPUTE_CHUNK_ROWS rows: the token lists and per-token
        statistics of one slice are alive at a time, not the whole frame's), and leaves the token
        hashes / lengths of the leading kept texts for a Gopher repetition filter that runs next on
        them (`remember_tokens`, at most TOKEN_SLOT_MAX_TOKENS tokens)."""
        col = cols["text"]
        pre = self.prepare(pl.col(col))
        exprs = self.stats(pl.col(col), **{k: pl.col(k) for k in pre_names(pre)})
        # the token lengths are those of the statistics (the same expression as `token_hashes`')
        hashes = {"_tok_h": token_hashes(pl.col("_gopher_tokens"))[0], "_tok_l": pl.col("_gopher_lens")}
        # tokens the slot can still take; -1: full (or not sharing), no hashing
        budget = _common.TOKEN_SLOT_MAX_TOKENS if self.share_tokens else -1
        decisions, held = [], []
        rows_per_slice = _common.COMPUTE_CHUNK_ROWS
        for start in range(0, max(frame.height, 1), rows_per_slice):
            part = frame.slice(start, rows_per_slice)
            st = compute(part, {**exprs, **hashes} if budget >= 0 else exprs, pre=pre)
            dec = st.select(**self.decide({k: pl.col(k) for k in exprs}))
            decisions.append(dec)
            if budget >= 0:
                kept = dec.select(pl.all_horizontal(pl.all().fill_null(False))).to_series() if dec.width else None
                tok = st.select("_tok_h", "_tok_l") if kept is None else st.select("_tok_h", "_tok_l").filter(kept)
                counts = tok.get_column("_tok_h").list.len().fill_null(0).to_numpy().astype(np.int64)
                rows = int(np.searchsorted(np.cumsum(counts), budget, side="right"))
                if rows:
                    flat = tok.head(rows).explode("_tok_h", "_tok_l").drop_nulls()
                    held.append((counts[:rows], flat.get_column("_tok_h").to_numpy(), flat.get_column("_tok_l").to_numpy()))
                    budget -= int(counts[:rows].sum())
                if rows < len(counts):  # a kept text did not fit: the slot holds the texts before it only
                    budget = -1
            del st
        dec = pl.concat(decisions) if len(decisions) > 1 else decisions[0]
        out = self.apply_keep(frame, {k: dec.get_column(k) for k in dec.columns})
        remember_tokens(out.get_column(col), held)
        return out

    def stats(self, t, _gopher_tokens=None, _gopher_lens=None, _gopher_nonalpha=None):
        el = pl.element()
        tokens = word_tokens(t) if _gopher_tokens is None else _gopher_tokens
        lens = tokens.list.eval(el.str.len_chars()) if _gopher_lens is None else _gopher_lens
        non_alpha = _non_alpha(tokens) if _gopher_nonalpha is None else _gopher_nonalpha
        real = el.str.contains("[^" + DATATROVE_PUNCTUATION_CLASS + "]")
        # a token holding a letter is never a symbol word (no letter is in datatrove's punctuation
        # set; tests/operators/text checks it), so only the tokens without a letter (~15%) are
        # tested for symbols: alpha words = words - non-alpha tokens, and the non-symbol words
        # are the alpha words plus the non-alpha tokens that are not all punctuation
        return {
            "words": tokens.list.len(),
            "token_chars": lens.list.sum(),
            "non_alpha_words": non_alpha.list.len(),
            "non_alpha_chars": non_alpha.list.eval(el.str.len_chars()).list.sum(),
            "non_alpha_real_lens": non_alpha.list.eval(el.filter(real).str.len_chars()),
            "stop_words": tokens.list.eval(el.filter(el.is_in(list(self.stop_words)))).list.n_unique(),
            "hashes": t.str.count_matches("#", literal=True),
            "ellipses": t.str.count_matches(r"\.\.\.|…"),
            "lines": splitlines_count(t),
            # lines (split on "\n") starting with "•" or "-" after horizontal space: the first line,
            # plus each "\n" followed by one (a multi-line `^` pattern scans far slower; same counts)
            "bullet_lines": t.str.count_matches(r"\n[^\S\n]*[•-]") + t.str.contains(r"^[^\S\n]*[•-]").cast(pl.UInt32),
            "ellipsis_lines": t.str.count_matches(r"(?m)(?:\.\.\.|…)[^\S\n]*$"),
        }

    def decide(self, s):
        c = self.c
        out: dict[str, pl.Expr] = {}
        words = s["words"]
        alpha_words = words - s["non_alpha_words"]
        real_words = alpha_words + s["non_alpha_real_lens"].list.len()
        real_chars = s["token_chars"] - s["non_alpha_chars"] + s["non_alpha_real_lens"].list.sum()
        avg = safe_div(real_chars, real_words, empty=float("nan"))
        if c["min_doc_words"]:
            out["gopher_short_doc"] = real_words >= c["min_doc_words"]
        if c["max_doc_words"]:
            out["gopher_long_doc"] = real_words <= c["max_doc_words"]
        if c["min_avg_word_length"]:
            out["gopher_below_avg_threshold"] = avg >= c["min_avg_word_length"]
        if c["max_avg_word_length"]:
            out["gopher_above_avg_threshold"] = avg <= c["max_avg_word_length"]
        if c["max_symbol_word_ratio"]:
            out["gopher_too_many_hashes"] = safe_div(s["hashes"], words) <= c["max_symbol_word_ratio"]
            out["gopher_too_many_ellipsis"] = safe_div(s["ellipses"], words) <= c["max_symbol_word_ratio"]
        if c["max_bullet_lines_ratio"]:
            out["gopher_too_many_bullets"] = safe_div(s["bullet_lines"], s["lines"]) <= c["max_bullet_lines_ratio"]
        if c["max_ellipsis_lines_ratio"]:
            out["gopher_too_many_end_ellipsis"] = (
                safe_div(s["ellipsis_lines"], s["lines"]) <= c["max_ellipsis_lines_ratio"]
            )
        if c["min_alpha_words_ratio"]:
            out["gopher_below_alpha_threshold"] = safe_div(alpha_words, words) >= c["min_alpha_words_ratio"]
        if c["min_stop_words"]:
            out["gopher_enough_stop_words"] = s["stop_words"] >= c["min_stop_words"]
        return out


# "lorem ipsum" in the lowercased text, without lowercasing it: the only characters whose lowercase
# holds one of its letters are their ASCII capitals and "İ" (-> "i" + U+0307, which can never be
# followed by "p"), checked over all code points in tests/operators/text/test_gopher_shortcuts.py
_LOREM_IPSUM = "[lL][oO][rR][eE][mM] [iI][pP][sS][uU][mM]"


def _non_alpha(tokens: pl.Expr) -> pl.Expr:
    """The tokens of a token list that hold no letter."""
    return tokens.list.eval(pl.element().filter(~pl.element().str.contains(r"\p{L}")))


# spaCy's Sentencizer ends a sentence after one of these tokens (its default punct_chars, the ones
# that occur in web text), once a token that is not punctuation follows
_SENTENCE_END = (".", "!", "?", "։", "؟", "۔", "।", "॥", "။", "።", "‼", "‽", "⁇", "⁈", "⁉", "。", "！", "？", "．", "｡")


# tokens of `word_tokens` whose period is part of the token, so it ends no sentence (at a token start)
_KEEPS_PERIOD = (
    r"(^|[^\p{L}\p{M}\p{N}])(?:(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|(?:\p{L}\.){2,}"
    r"|(?:" + "|".join(ABBREVIATIONS) + r")\.|(?:[\p{L}\p{M}\p{N}]*[\p{Ll}\p{Lo}\p{M}\p{N}])?\p{Lu}\."
    r"|\p{L}[\p{L}\p{M}\p{N}]*(?:\.[\p{Ll}\p{N}][\p{L}\p{M}\p{N}]*)+|[\p{L}\p{M}\p{N}]+(?:\.\p{N}+)+)"
)


def sentence_count(text: pl.Expr) -> pl.Expr:
    """Sentences of a text whose lines are counted separately (datatrove's C4 filter runs spaCy's
    sentencizer on each kept line): per non-empty line one sentence, plus one per sentence-ending
    character (`_SENTENCE_END`) that is a token of its own (not the period of "Dr.", "U.S.",
    "3.5", "example.com" or an ellipsis: `word_tokens` keeps those whole) and is followed, after
    any punctuation, by a character that is neither punctuation nor space on the same line."""
    ends = re_escape_class("".join(_SENTENCE_END))
    protected = text.str.replace_all(_KEEPS_PERIOD, "${1}W").str.replace_all(r"\.{2,}", "…")
    boundaries = protected.str.count_matches("[" + ends + r"](?:\p{P}|[^\S\n])*[^\s\p{P}]")
    return nonempty_line_count(text) + boundaries


@register
class C4QualityFilter(StatsFilter):
    """C4's document rules (Raffel et al. 2020; datatrove C4QualityFilter): drop pages containing
    "lorem ipsum" (reason lorem_ipsum) or a curly bracket "{" (curly_bracket) in a line that
    survives C4 line cleaning, and pages with fewer than `min_num_sentences` (5) sentences after
    line cleaning (too_few_sentences; sentences counted per kept line as spaCy's sentencizer
    does in datatrove, see `sentence_count`). Reads `text`; writes nothing. Does not rewrite the
    text: run `c4_line_cleaner` first (with the same options) to keep only the clean lines; then
    `clean_lines=False` skips the line cleaning here and counts the sentences of the text's lines.

    Agreement with datatrove 0.10's C4QualityFilter (its own code, tests/operators/text): 1,999 of
    the 2,000 C4 validation documents (99.95%); the other has exactly 5 sentences by our count and
    4 by spaCy's, whose tokenizer keeps one chunk whole that we split, so one sentence end is seen
    differently."""

    reads = {"text": "text"}
    writes = {}

    def __init__(
        self,
        min_num_sentences: int = 5,
        filter_lorem_ipsum: bool = True,
        filter_curly_bracket: bool = True,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = True,
        min_words_per_line: int = 3,
        max_word_length: int = 1000,
        filter_javascript: bool = True,
        filter_policy: bool = True,
        clean_lines: bool = True,
    ):
        self.clean_lines = clean_lines
        self.min_num_sentences = min_num_sentences
        self.filter_lorem_ipsum, self.filter_curly_bracket = filter_lorem_ipsum, filter_curly_bracket
        self.line_kw = dict(
            remove_citations=remove_citations,
            filter_no_terminal_punct=filter_no_terminal_punct,
            min_words_per_line=min_words_per_line,
            max_word_length=max_word_length,
            filter_javascript=False,  # lorem ipsum / curly checks run before javascript / policy in C4
            filter_policy=False,
        )
        self.filter_javascript, self.filter_policy = filter_javascript, filter_policy

    def stats(self, t):
        if not self.clean_lines:
            out = {}
            if self.filter_lorem_ipsum:
                out["lorem_ipsum"] = t.str.contains(_LOREM_IPSUM)
            if self.filter_curly_bracket:
                out["curly_bracket"] = t.str.contains("{", literal=True)
            if self.min_num_sentences and self.min_num_sentences > 0:
                out["sentences"] = sentence_count(t).fill_null(0)
            return out
        lines = c4_clean_lines(t, **self.line_kw)
        el = pl.element()
        low = el.str.to_lowercase()
        out: dict[str, pl.Expr] = {}
        if self.filter_lorem_ipsum:
            out["lorem_ipsum"] = lines.list.eval(low.str.contains("lorem ipsum", literal=True)).list.any()
        if self.filter_curly_bracket:
            curly = el.str.contains("{", literal=True)
            if self.filter_javascript:  # C4 skips javascript lines before looking for brackets
                curly = curly & ~low.str.contains("javascript", literal=True)
            out["curly_bracket"] = lines.list.eval(curly).list.any()
        if self.min_num_sentences and self.min_num_sentences > 0:
            drop = []
            if self.filter_javascript:
                drop.append("javascript")
            if self.filter_policy:
                drop.extend(C4_POLICY_SUBSTRINGS)
            # sentences of the kept lines (javascript / policy lines are dropped after the checks above)
            counted = lines.list.eval(el.filter(~low.str.contains(alternation(drop)))) if drop else lines
            out["sentences"] = sentence_count(counted.list.join("\n")).fill_null(0)
        return out


    def decide(self, s):
        out = {}
        if "lorem_ipsum" in s:
            out["lorem_ipsum"] = ~s["lorem_ipsum"].fill_null(False)
        if "curly_bracket" in s:
            out["curly_bracket"] = ~s["curly_bracket"].fill_null(False)
        if "sentences" in s:
            out["too_few_sentences"] = s["sentences"] >= self.min_num_sentences
        return out


@register
class FinewebQualityFilter(StatsFilter):
    """FineWeb's quality rules (Penedo et al. 2024, datatrove FineWebQualityFilter), one pass:
    non-empty lines ending in terminal punctuation >= 0.12 (line_punct_ratio), lines of <= 30
    characters <= 0.67 (short_line_ratio), characters in duplicated lines / characters without
    newlines <= 0.01 (char_dup_ratio), newlines / words <= 0.3 (list_ratio); empty documents are
    dropped (empty). Reads `text`; writes nothing."""

    reads = {"text": "text"}
    writes = {}

    def __init__(
        self,
        line_punct_thr: float = 0.12,
        line_punct_exclude_zero: bool = False,
        short_line_thr: float = 0.67,
        short_line_length: int = 30,
        char_duplicates_ratio: float = 0.01,
        new_line_ratio: float = 0.3,
    ):
        self.punct = LinePunctuationRatioFilter(line_punct_thr, line_punct_exclude_zero)
        self.short = ShortLineRatioFilter(short_line_thr, short_line_length)
        self.dup = DuplicateLineCharFractionFilter(char_duplicates_ratio, fineweb=True)
        self.lst = ListRatioFilter(new_line_ratio)

    def stats(self, t):
        return {
            "nonempty": nonempty_line_count(t),
            "punct": self.punct.measure(t),
            "short": self.short.measure(t),
            "dup": self.dup.measure(t),
            "list": self.lst.measure(t),
        }

    def decide(self, s):
        return {
            "empty": s["nonempty"] > 0,
            "line_punct_ratio": self.punct.bounds(s["punct"]),
            "short_line_ratio": self.short.bounds(s["short"]),
            "char_dup_ratio": self.dup.bounds(s["dup"]),
            "list_ratio": self.lst.bounds(s["list"]),
        }
