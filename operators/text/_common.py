"""Shared pieces of the text operators: vectorised Polars expressions for word / line statistics
and `ThresholdFilter`, the base of every "measure a value, keep rows within [min, max]" filter.

Everything here builds Polars expressions; nothing loops over rows in Python.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
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
    """Lines holding at least one non-whitespace character (lines split on "\\n"): the first line
    if it does, plus each "\\n" followed by one on its line (one scan for "\\n"; a multi-line `^`
    pattern would try every position; same counts)."""
    return text.str.count_matches(r"\n[^\S\n]*\S") + text.str.contains(r"^[^\S\n]*\S").cast(pl.UInt32)


def safe_div(num: pl.Expr, den: pl.Expr, empty: float = 0.0) -> pl.Expr:
    """num / den with 0 / 0 -> `empty` (no when/then: that would evaluate `den` twice)."""
    return (num.cast(pl.Float64) / den.cast(pl.Float64)).fill_nan(empty)


COMPUTE_CHUNK_ROWS = 10_000


def compute(
    frame: pl.DataFrame,
    exprs: Mapping[str, pl.Expr],
    chunk_rows: int | None = None,
    pre: Mapping[str, pl.Expr] | Sequence[Mapping[str, pl.Expr]] | None = None,
) -> pl.DataFrame:
    """Evaluate named expressions once each, in parallel (Polars' streaming engine splits the rows
    into morsels across threads; row order is kept). Frames longer than `chunk_rows` (default
    COMPUTE_CHUNK_ROWS) are evaluated slice by slice, so the intermediate lists (lines, words) of
    only one slice are alive at a time: bounded memory, same values (every expression is row-wise).
    `pre` names intermediate columns (e.g. a token list) computed first, once, that `exprs` may
    read: Polars does not share a common sub-expression such as a regex split between outputs.
    A sequence of mappings is computed stage by stage, so that a later stage may read an earlier
    one's columns (`pre_names` lists them all)."""

    def run(part: pl.DataFrame, engine: str) -> pl.DataFrame:
        lf = part.lazy()
        for stage in _pre_stages(pre):
            lf = lf.with_columns(**stage)
        return lf.select(**exprs).collect(engine=engine)

    if frame.height == 0:
        return run(frame, "auto")
    rows = chunk_rows or COMPUTE_CHUNK_ROWS
    if frame.height <= rows:
        return run(frame, "streaming")
    parts = [run(frame.slice(i, rows), "streaming") for i in range(0, frame.height, rows)]
    return pl.concat(parts, rechunk=False)


def _pre_stages(pre) -> list[Mapping[str, pl.Expr]]:
    if not pre:
        return []
    return [pre] if isinstance(pre, Mapping) else [stage for stage in pre if stage]


def pre_names(pre) -> list[str]:
    """The names of the intermediate columns of a `compute` `pre` (one mapping or a sequence)."""
    return [name for stage in _pre_stages(pre) for name in stage]


def lines_list(text: pl.Expr, nonempty: bool = False) -> pl.Expr:
    lines = text.str.split("\n")
    if nonempty:
        lines = lines.list.eval(pl.element().filter(pl.element().str.contains(r"\S")))
    return lines


def duplicate_lengths(items: pl.Expr) -> pl.Expr:
    """The lengths of the repeated items of a list column (an item equal to an earlier one)."""
    return items.list.eval(pl.element().filter(~pl.element().is_first_distinct()).str.len_chars())


def duplicate_stats(items: pl.Expr, dup_lens: pl.Expr | None = None) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(number of items, number of repeated items, characters in repeated items) of a list column:
    an item is repeated when an equal item came before it (datatrove's `find_duplicates`).
    `dup_lens`: `duplicate_lengths(items)` when already computed (e.g. a `compute` `pre` column)."""
    n = items.list.len()
    # one pass per list: the lengths of the repeated items give both their number and characters
    dup_lens = duplicate_lengths(items) if dup_lens is None else dup_lens
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


# --------------------------------------------------------------------------- spaCy-like word tokens
# datatrove's Gopher filters count words as spaCy's English tokenizer splits them (punctuation
# split off words, "don't" -> "do" + "n't", hyphens between letters are tokens of their own).
# `word_tokens` reproduces that split with one regex over the text: on the 705,737 whitespace
# chunks of the 2,000 C4 validation documents it gives spaCy's tokens for 99.5% of them; the rest
# are spaCy's tokenizer exceptions ("Inc.", "and/or", "Dont" -> "Do" + "nt"), e-mail-like and
# mixed number+unit chunks ("15g" -> "15" + "g"). A chunk's tokens never depend on its
# neighbours (checked on that corpus), so a per-text regex loses nothing.
# spaCy's English tokenizer exceptions that keep a final period (spacy.blank("en").tokenizer.rules)
ABBREVIATIONS = (
    "Adm Ak Ala Apr Ariz Ark Aug Bros Calif Co Colo Conn Corp Dec Del Dr Feb Fla Ga Gen Gov Ia Id Ill Inc Ind "
    "Jan Jr Jul Jun Kan Kans Ky La Ltd Mar Mass Md Messrs Mich Minn Miss Mo Mont Mr Mrs Ms Mt Neb Nebr Nev Nov "
    "Oct Okla Ore Pa Prof Rep Rev Sen Sep Sept St Tenn Va Wash Wis co vs [a-zäöü]"
).split()
SPACY_LIKE_TOKEN = (
    r"(?:https?://|www\.)\S+"  # URLs stay whole
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # e-mail addresses
    r"|n['’]t(?-u:\b)|['’](?:[sSmMdD]|ll|LL|re|RE|ve|VE)(?-u:\b)"  # clitics, split off by `_CLITICS` first
    r"|\p{N}+(?:[.,:/]\p{N}+)+"  # 3.5  10,000  6:00  1/2
    r"|(?:\p{L}\.){2,}"  # initials and abbreviations: U.S.  e.g.
    r"|(?:" + "|".join(ABBREVIATIONS) + r")\."  # spaCy's English abbreviation exceptions
    r"|[\p{L}\p{M}\p{N}]*\p{L}-\p{N}[\p{L}\p{M}\p{N}]*"  # letter-hyphen-digit is not split: RA-1592
    r"|(?:[\p{L}\p{M}\p{N}]*[\p{Ll}\p{Lo}\p{M}\p{N}])?\p{Lu}\."  # a period after one capital stays: J.
    r"|\p{L}[\p{L}\p{M}\p{N}]*(?:\.[\p{Ll}\p{N}][\p{L}\p{M}\p{N}]*)+"  # example.com (not "end.Next")
    r"|[\p{L}\p{M}\p{N}]+(?:['’_&]+[\p{L}\p{M}\p{N}]+|\.\p{N}+)*"  # words, numbers; inner ' _ & .5 kept
    r"|\.{2,}|-{2,}"  # ellipsis and dash runs are one token
    r"|\S"  # any other character is a token of its own
)
# clitics are split off their word first (a space inserted), so that the word pattern can keep
# other inner apostrophes ("d’un", "O'Brien") in one token, as spaCy does
_CLITICS = (r"(\p{L})(n['’]t|['’](?:[sSmMdD]|ll|LL|re|RE|ve|VE))(?-u:\b)", "$1 $2")
# datatrove's PUNCTUATION_SET (its PUNCTUATION string, the C0/C1 control characters and its
# TERMINAL_PUNCTUATION) as a regex character class; a token made only of these is a "symbol word".
# tests/operators/text checks it against datatrove's own set.
DATATROVE_PUNCTUATION_CLASS = (
    r"\x{0}-\x{8}\x{b}-\x{1f}\x{21}-\x{2f}\x{3a}-\x{40}\x{5b}-\x{60}\x{7b}-\x{9f}\x{ab}\x{b4}"
    r"\x{bb}\x{589}\x{61d}-\x{61f}\x{6d4}\x{700}-\x{702}\x{7f9}\x{837}\x{839}\x{83d}-\x{83e}"
    r"\x{964}-\x{965}\x{104a}-\x{104b}\x{1362}\x{1367}-\x{1368}\x{166e}\x{1735}-\x{1736}"
    r"\x{17d4}-\x{17d6}\x{17d9}-\x{17da}\x{1803}\x{1809}\x{1944}-\x{1945}\x{1aa8}-\x{1aab}"
    r"\x{1b5a}-\x{1b5b}\x{1b5e}-\x{1b5f}\x{1b7d}-\x{1b7e}\x{1c3b}-\x{1c3c}\x{1c7e}-\x{1c7f}"
    r"\x{2013}-\x{2014}\x{2019}\x{201c}-\x{201e}\x{2026}\x{203c}-\x{203d}\x{2047}-\x{2049}\x{2236}"
    r"\x{2501}\x{25ba}\x{2e2e}\x{2e3c}\x{2e53}-\x{2e54}\x{3001}-\x{3002}\x{3008}-\x{300d}"
    r"\x{3010}-\x{3011}\x{a4ff}\x{a60e}-\x{a60f}\x{a6f3}\x{a6f7}\x{a876}-\x{a877}\x{a8ce}-\x{a8cf}"
    r"\x{a92f}\x{a9c8}-\x{a9c9}\x{aa5d}-\x{aa5f}\x{aaf0}-\x{aaf1}\x{abeb}\x{fe52}\x{fe56}-\x{fe57}"
    r"\x{ff01}\x{ff05}\x{ff08}-\x{ff09}\x{ff0c}\x{ff0e}\x{ff11}\x{ff1a}-\x{ff1b}\x{ff1f}\x{ff5e}"
    r"\x{ff61}\x{10a56}-\x{10a57}\x{10f55}-\x{10f59}\x{10f86}-\x{10f89}\x{11047}-\x{11048}"
    r"\x{110be}-\x{110c1}\x{11141}-\x{11143}\x{111c5}-\x{111c6}\x{111cd}\x{111de}-\x{111df}"
    r"\x{11238}-\x{11239}\x{1123b}-\x{1123c}\x{112a9}\x{1144b}-\x{1144c}\x{115c2}-\x{115c3}"
    r"\x{115c9}-\x{115d7}\x{11641}-\x{11642}\x{1173c}-\x{1173e}\x{11944}\x{11946}"
    r"\x{11a42}-\x{11a43}\x{11a9b}-\x{11a9c}\x{11c41}-\x{11c42}\x{11ef7}-\x{11ef8}"
    r"\x{11f43}-\x{11f44}\x{16a6e}-\x{16a6f}\x{16af5}\x{16b37}-\x{16b38}\x{16b44}\x{16e98}"
    r"\x{1bc9f}\x{1da88}"
)


def word_tokens(text: pl.Expr) -> pl.Expr:
    """The spaCy-like word tokens of each text (a list column; see SPACY_LIKE_TOKEN)."""
    return text.str.replace_all(*_CLITICS).str.extract_all(SPACY_LIKE_TOKEN)


# --------------------------------------------------------------------------- shared word tokens
# Tokenising (`word_tokens`) is the costliest step of both Gopher filters. When Gopher repetition
# runs right after Gopher quality on the same texts, the quality filter leaves the hash and length
# of every word token of the texts it kept here, and the repetition filter takes them instead of
# tokenising again. One slot, keyed by the texts themselves: a hit needs the texts to be equal
# (`Series.equals`, a memory compare) to those the quality filter returned, so any stage in
# between that rewrites, reorders or drops a text makes it a miss (and the filter tokenises).
# Taken once: the arrays (12 bytes per token) are freed when the repetition filter takes them.
# At most TOKEN_SLOT_MAX_TOKENS tokens are kept (~240 MB): of a larger batch only the leading texts
# that fit; the repetition filter tokenises the others.
TOKEN_HASH_SEED = 7
TOKEN_SLOT_MAX_TOKENS = 20_000_000


def token_hashes(tokens: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(hash, length in characters) of each token of a `word_tokens` list column, as lists."""
    el = pl.element()
    return tokens.list.eval(el.hash(seed=TOKEN_HASH_SEED)), tokens.list.eval(el.str.len_chars())


_token_slot: tuple | None = None


def remember_tokens(texts: pl.Series, held: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Leave, for the next `recall_tokens`, the token counts / hashes / lengths (`token_hashes`,
    flattened) of the leading texts of `texts`, given slice by slice in `held` (one text per
    count, in order; all of them, or as many leading texts as fit in TOKEN_SLOT_MAX_TOKENS).
    Empties `held`."""
    global _token_slot
    _token_slot = None
    if not held:
        return
    counts = np.concatenate([c for c, _, _ in held])
    total = int(counts.sum())
    if not len(counts) or total > TOKEN_SLOT_MAX_TOKENS or len(counts) > len(texts):
        held.clear()
        return
    if len(held) == 1:  # one slice (at most COMPUTE_CHUNK_ROWS texts): its arrays are the slot, no copy
        _, h, ln = held.pop()
        if len(h) == len(ln) == total:
            _token_slot = (texts.head(len(counts)), counts, h, ln)
        return
    # copied into place slice by slice, each slice freed once copied: the slot never exists twice
    h, ln = np.empty(total, dtype=np.uint64), np.empty(total, dtype=np.uint32)
    at = 0
    while held:
        _, hs, ls = held.pop(0)
        if len(hs) != len(ls) or at + len(hs) > total:
            held.clear()
            return
        h[at : at + len(hs)], ln[at : at + len(ls)] = hs, ls
        at += len(hs)
        del hs, ls
    if at == total:
        _token_slot = (texts.head(len(counts)), counts, h, ln)


def forget_tokens() -> None:
    """Empty the slot (a text refiner calls it: the texts it rewrites no longer match the tokens
    held, so a repetition filter after it would tokenise anyway; text_pt's C4 line cleaner sits
    between its two Gopher filters, and the slot held ~240 MB through the rest of the run)."""
    global _token_slot
    _token_slot = None


def recall_tokens(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(tokens per text, token hashes, token lengths) left by `remember_tokens` for the leading
    texts of `texts` (all of them, or as many as the slot held), provided they are equal to the
    texts remembered; else None. Empties the slot either way."""
    global _token_slot
    slot, _token_slot = _token_slot, None
    if slot is None or len(slot[0]) > len(texts) or not slot[0].equals(texts.head(len(slot[0])), check_dtypes=True):
        return None
    return slot[1], slot[2], slot[3]


def splitlines_count(text: pl.Expr) -> pl.Expr:
    """len(text.splitlines()): line breaks (\\r\\n counts once), plus one for a last line that
    does not end with a break; 0 for an empty text."""
    breaks = text.str.count_matches(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x{85}\x{2028}\x{2029}]")
    ends = text.str.contains(r"[\n\r\x0b\x0c\x1c-\x1e\x{85}\x{2028}\x{2029}]$") | (text.str.len_chars() == 0)
    return breaks.cast(pl.Int64) + 1 - ends.cast(pl.Int64)


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

    def stats(self, text: pl.Expr, **shared: pl.Expr) -> dict[str, pl.Expr]:
        raise NotImplementedError

    def prepare(self, text: pl.Expr) -> dict[str, pl.Expr] | list[dict[str, pl.Expr]]:
        """Intermediate columns that several statistics read (computed once per row in `run`;
        `stats` receives them as keyword arguments and must compute them itself when absent).
        A list of mappings: computed in that order, a later one may read an earlier one's."""
        return {}

    def decide(self, s: Mapping[str, pl.Expr]) -> dict[str, pl.Expr]:
        raise NotImplementedError

    def keep(self, cols):
        return self.decide(self.stats(pl.col(cols["text"])))

    def run(self, frame, cols):
        pre = self.prepare(pl.col(cols["text"]))
        st = compute(frame, self.stats(pl.col(cols["text"]), **{k: pl.col(k) for k in pre_names(pre)}), pre=pre)
        dec = st.select(**self.decide({k: pl.col(k) for k in st.columns}))
        return self.apply_keep(frame, {k: dec.get_column(k) for k in dec.columns})
