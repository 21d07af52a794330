"""Rule-based cleaning of extracted document text, and the checks that guard LLM cleaning.

Order in the knowledge pipeline: broken unicode (ftfy) -> headers/footers repeated across the
pages of a document -> boilerplate lines -> hyphenation across line breaks -> hard-wrapped lines
joined -> whitespace. All but ftfy and the repeated-line count are Polars string expressions.
"""

from __future__ import annotations

import polars as pl

from operators.base import ID, Evaluator, Filter, Refiner, register

BOILERPLATE_LINES = [
    r"page\s+\d+(\s+of\s+\d+)?",
    r"\d{1,4}",  # a bare page number
    r"[-–—]\s*\d{1,4}\s*[-–—]",
    r"(©|\(c\)|copyright)\b.*",
    r".*\ball rights reserved\b.*",
    r".*\b(accept|use)s?\b.*\bcookies?\b.*",
    r"(click|tap) here\b.*",
    r"(subscribe|sign up)( now| today)?( to| for)\b.*",
    r"share (this|on)\b.*",
    r"(skip to (main )?content|back to top|table of contents)",
    r"this page intentionally left blank",
    r"downloaded from\b.*",
]


@register
class UnicodeFixer(Refiner):
    """Repairs broken unicode with ftfy: mojibake (`â€™` -> `’`), HTML entities left in text,
    control characters, ligatures (`ﬁ` -> `fi`), and normalises to NFC.

    Reads/rewrites: `text`. Use it first on text extracted from PDFs and scraped HTML, before any
    rule that matches characters. ftfy works per string (no vectorised form), so it runs per row.
    """

    def __init__(self, uncurl_quotes: bool = False):
        self.uncurl_quotes = uncurl_quotes

    def refine(self, text, cols):
        import ftfy

        cfg = ftfy.TextFixerConfig(uncurl_quotes=self.uncurl_quotes, unescape_html=True, fix_latin_ligatures=True, normalization="NFC")
        return text.map_elements(lambda s: ftfy.fix_text(s, config=cfg), return_dtype=pl.String)


@register
class HyphenationJoiner(Refiner):
    """Joins words hyphenated across a line break (`infor-\\nmation` -> `information`), as PDF
    extraction leaves them; a hyphen before an upper-case letter or a digit is kept (`COVID-\\n19`).

    Reads/rewrites: `text`. Use it on PDF text before chunking and before any token statistic.
    """

    def refine(self, text, cols):
        return text.str.replace_all(r"([a-z])-[ \t]*\r?\n[ \t]*([a-z])", "${1}${2}")


@register
class LineUnwrapper(Refiner):
    """Joins hard-wrapped lines inside a paragraph into one line: a single newline between two
    lines becomes a space unless the next line starts a heading, a list item or a table row, or the
    line ends a sentence-like unit with `:`. Blank lines (paragraph breaks) are kept.

    Reads/rewrites: `text`. Use it on PDF text so sentences are whole for chunking and prompts.
    """

    def refine(self, text, cols):
        return text.str.replace_all(r"([^\n:|])[ \t]*\n[ \t]*([^\n#\-*•|\d\s])", "${1} ${2}")


@register
class DocumentBoilerplateRemover(Refiner):
    """Removes whole lines that are boilerplate: page numbers (`Page 3 of 12`, `- 4 -`), copyright
    and `all rights reserved`, cookie notices, `click here` / `subscribe` / `share` prompts, `skip
    to content`, `this page intentionally left blank`, `downloaded from ...`; plus any `extra`
    regexes (matched case-insensitively against the whole stripped line).

    Reads/rewrites: `text`. Use it after extraction, before chunking.
    """

    def __init__(self, extra: tuple[str, ...] = ()):
        self.extra = tuple(extra)

    def refine(self, text, cols):
        alts = "|".join(f"(?:{p})" for p in [*BOILERPLATE_LINES, *self.extra])
        return text.str.replace_all(rf"(?im)^[ \t]*(?:{alts})[ \t]*(?:\r?\n|$)", "")


@register
class RepeatedLineRemover(Refiner):
    """Removes running headers and footers: lines that recur (digits ignored, so `Page 3` and `Page 4`
    match) on at least `min_share` of the pages of the same document, when it has `min_pages` or more.

    Reads/rewrites: `text`; groups by `document` (default `source_path`; absent: each row is its own
    document, so nothing is removed). Use it on PDF pages, where
    titles, author names and page numbers repeat on every page and would otherwise land in chunks.
    """

    reads = {"text": "text", "document": "source_path"}

    def __init__(self, min_share: float = 0.5, min_pages: int = 3, max_line_chars: int = 120):
        self.min_share, self.min_pages, self.max_line_chars = min_share, min_pages, max_line_chars

    def input_columns(self, cols):
        return [("text", cols["text"])]  # without a document column every row is its own document

    def run(self, frame, cols):
        col, doc = cols["text"], cols["document"]
        if doc not in frame.columns:
            frame = frame.with_columns(pl.col(ID).alias(doc))
            out = self.run(frame, cols)
            return out.drop(doc)
        if frame.height == 0:
            self.last_report.modified = 0
            return frame
        key = lambda e: e.str.strip_chars().str.replace_all(r"\d+", "#").str.to_lowercase()
        lines = (
            frame.select(pl.col(ID), pl.col(doc), pl.col(col).str.split("\n").alias("__line"))
            .with_row_index("__row")
            .explode("__line")
            .with_columns(pl.int_range(pl.len()).over("__row").alias("__pos"), key(pl.col("__line").fill_null("")).alias("__key"))
        )
        pages = frame.group_by(doc).agg(pl.len().alias("__pages"))
        recurring = (
            lines.filter(pl.col("__key").str.len_chars().is_between(1, self.max_line_chars))
            .group_by(doc, "__key").agg(pl.col("__row").n_unique().alias("__seen"))
            .join(pages, on=doc)
            .filter((pl.col("__pages") >= self.min_pages) & (pl.col("__seen") >= 2) & (pl.col("__seen") >= pl.col("__pages") * self.min_share))
            .select(doc, "__key", pl.lit(True).alias("__drop"))
        )
        kept = (
            lines.join(recurring, on=[doc, "__key"], how="left")
            .filter(pl.col("__drop").is_null())
            .group_by("__row").agg(pl.col("__line").sort_by("__pos").str.join("\n").alias("__text"))
        )
        out = (
            frame.with_row_index("__row").join(kept, on="__row", how="left")
            .with_columns(pl.when(pl.col(col).is_null()).then(None).otherwise(pl.col("__text").fill_null("")).alias(col))
            .drop("__row", "__text")
        )
        self.count_modified(frame, out, col)
        return out


@register
class DocumentWhitespaceNormalizer(Refiner):
    """Normalises whitespace: non-breaking and other unicode spaces to a space, runs of spaces and
    tabs to one, trailing spaces removed, three or more newlines to a blank line, ends trimmed.

    Reads/rewrites: `text`. Use it last in the rule cleaning, after lines were removed or joined.
    """

    def refine(self, text, cols):
        return (
            text.str.replace_all(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]", " ")
            .str.replace_all(r"[ \t]+", " ")
            .str.replace_all(r" *\n *", "\n")
            .str.replace_all(r"\n{3,}", "\n\n")
            .str.strip_chars()
        )


@register
class ExtractionQualityFilter(Filter):
    """Drops extracted pages/sections that are not prose: fewer than `min_chars` characters, or a
    share of letters below `min_alpha` (tables of numbers, OCR debris, binary junk).

    Reads: `text`. Writes: `alpha_share` (letters / non-space characters). Use it right after
    extraction so junk pages neither reach the LLM nor count as coverage.
    """

    reads = {"text": "text"}
    writes = {"alpha_share": "alpha_share"}

    def __init__(self, min_chars: int = 40, min_alpha: float = 0.5):
        self.min_chars, self.min_alpha = min_chars, min_alpha

    def scores(self, cols):
        t = pl.col(cols["text"]).fill_null("")
        non_space = t.str.replace_all(r"\s", "").str.len_chars()
        return [(t.str.count_matches(r"\p{L}").cast(pl.Float64) / non_space.clip(lower_bound=1)).alias(cols["alpha_share"])]

    def keep(self, cols):
        t = pl.col(cols["text"]).fill_null("")
        return {
            "too_short": t.str.strip_chars().str.len_chars() >= self.min_chars,
            "low_letter_share": pl.col(cols["alpha_share"]) >= self.min_alpha,
        }


@register
class ChunkLengthFilter(Filter):
    """Drops chunks with fewer than `min_tokens` or more than `max_tokens` words.

    Reads: `chunk`. Writes: `chunk_tokens`. Use it after chunking to drop stubs (a heading alone,
    a last window of three words) that make poor QA sources and poor retrieval passages.
    """

    reads = {"chunk": "chunk"}
    writes = {"tokens": "chunk_tokens"}

    def __init__(self, min_tokens: int = 20, max_tokens: int = 2000):
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def scores(self, cols):
        return [pl.col(cols["chunk"]).fill_null("").str.count_matches(r"\S+").alias(cols["tokens"])]

    def keep(self, cols):
        n = pl.col(cols["tokens"])
        return {"too_few_tokens": n >= self.min_tokens, "too_many_tokens": n <= self.max_tokens}


def word_tokens(expr: pl.Expr) -> pl.Expr:
    """Lower-cased word tokens (letters/digits) of a string column, as a list."""
    return expr.fill_null("").str.to_lowercase().str.extract_all(r"[\p{L}\p{N}]+")


@register
class NovelTokenRatio(Evaluator):
    """Share of the word tokens of a rewritten text that never occur in its source text (distinct
    tokens, lower-cased): the invention check for LLM cleaning and rewriting.

    Reads: `text` (the rewrite, default `cleaned`), `source` (default `chunk`). Writes:
    `novel_token_ratio` (Float64 in [0, 1]; null when the rewrite is null). A faithful cleaning
    deletes and fixes but adds almost nothing, so its ratio stays near 0. Use it before
    `novel_token_filter`.
    """

    reads = {"text": "cleaned", "source": "chunk"}
    writes = {"ratio": "novel_token_ratio"}

    def scores(self, cols):
        new = word_tokens(pl.col(cols["text"])).list.unique()
        src = word_tokens(pl.col(cols["source"])).list.unique()
        novel = new.list.set_difference(src).list.len()
        ratio = novel.cast(pl.Float64) / new.list.len().clip(lower_bound=1)
        return [pl.when(pl.col(cols["text"]).is_null()).then(None).otherwise(ratio).alias(cols["ratio"])]


@register
class NovelTokenFilter(Filter):
    """Keeps a rewrite only when its novel-token ratio is at most `max_ratio` and it kept at least
    `min_length_ratio` of the source's length; otherwise the row is dropped with the reason
    (`invented_content`, `over_deleted`, `no_rewrite`).

    Reads: `ratio` (default `novel_token_ratio`), `text` (default `cleaned`), `source` (default
    `chunk`). Use it after LLM cleaning: a cleaner that adds facts or throws half the text away
    is rejected, not trusted.
    """

    reads = {"ratio": "novel_token_ratio", "text": "cleaned", "source": "chunk"}

    def __init__(self, max_ratio: float = 0.1, min_length_ratio: float = 0.3):
        self.max_ratio, self.min_length_ratio = max_ratio, min_length_ratio

    def keep(self, cols):
        length = pl.col(cols["text"]).str.len_chars() / pl.col(cols["source"]).str.len_chars().clip(lower_bound=1)
        return {
            "no_rewrite": pl.col(cols["text"]).is_not_null(),
            "invented_content": pl.col(cols["ratio"]) <= self.max_ratio,
            "over_deleted": length >= self.min_length_ratio,
        }
