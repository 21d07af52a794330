"""Text refiners for pre-training data: each rewrites the `text` column in place with Polars
string expressions (no per-row Python)."""

from __future__ import annotations

import polars as pl

from operators.base import Refiner, register
from operators.text._common import (
    C4_END_PUNCTUATION,
    C4_POLICY_SUBSTRINGS,
    CITATION_PATTERN,
    alternation,
    compute,
    forget_tokens,
)

URL_PATTERN = r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]"
EMAIL_PATTERN = r"(?i)\b[a-z0-9._%+\-]+@[a-z0-9.\-]+\.[a-z]{2,}\b"
# International or North-American style numbers with at least 7 digits, separators allowed.
PHONE_PATTERN = r"(?:\+\d{1,3}[\s\-]?)?(?:\(\d{2,4}\)[\s\-]?|\b\d{2,4}[\s\-])\d{3,4}[\s\-]\d{3,4}\b"
IPV4_PATTERN = r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"
# Emoji and pictographs: the Unicode Extended_Pictographic property, plus the joiners, variation
# selectors, skin-tone modifiers and regional indicators that compose emoji sequences.
EMOJI_PATTERN = r"[\p{Extended_Pictographic}\x{1F1E6}-\x{1F1FF}\x{1F3FB}-\x{1F3FF}\x{FE0F}\x{200D}\x{20E3}]"
HTML_ENTITIES = {
    "&nbsp;": " ",
    "&lt;": "<",
    "&gt;": ">",
    "&quot;": '"',
    "&#39;": "'",
    "&apos;": "'",
    "&#x27;": "'",
    "&ndash;": "–",
    "&mdash;": "—",
    "&hellip;": "…",
    "&lsquo;": "‘",
    "&rsquo;": "’",
    "&ldquo;": "“",
    "&rdquo;": "”",
    "&copy;": "©",
    "&reg;": "®",
    "&trade;": "™",
    "&euro;": "€",
    "&pound;": "£",
    "&amp;": "&",  # last, so "&amp;lt;" becomes "&lt;" and not "<"
}


class TextRefiner(Refiner):
    """Base (not registered) of the text refiners: `refine` is row-wise, so `run` evaluates it slice
    by slice (`compute`: COMPUTE_CHUNK_ROWS rows, Polars' streaming engine across threads). Only one
    slice's intermediate copies of the text (a chain of replacements makes one per step, a line
    split a list of lines) are alive at a time, never the whole column's; the values are the same.
    Token hashes a Gopher quality filter left for a repetition filter are dropped (`forget_tokens`):
    rewritten texts would not match them."""

    def run(self, frame, cols):
        forget_tokens()
        col = cols["text"]
        new = compute(frame, {col: self.refine(pl.col(col), cols)}).get_column(col)
        out = frame.with_columns(new)
        self.count_modified(frame, out, col)
        return out


def _decode_entities(text: pl.Expr) -> pl.Expr:
    return text.str.replace_many(list(HTML_ENTITIES), list(HTML_ENTITIES.values()))


@register
class HtmlTagRemover(TextRefiner):
    """Remove HTML markup from `text`: <script>/<style> blocks with their content, comments,
    tags (block tags such as <p>, <br>, <div>, <li> become a newline), then decode the common
    HTML entities (&amp; &lt; &nbsp; ...). Reads and rewrites `text`. Use on web text that still
    carries markup, before the heuristic filters."""

    def __init__(self, decode_entities: bool = True):
        self.decode_entities = decode_entities

    def refine(self, text, cols):
        out = (
            text.str.replace_all(r"(?is)<(script|style)\b[^>]*>.*?</(?:script|style)\s*>", "")
            .str.replace_all(r"(?s)<!--.*?-->", "")
            .str.replace_all(r"(?i)<(?:br|/?p|/?div|/?li|/?h[1-6]|/?tr|/?ul|/?ol|/?table)\b[^>]*>", "\n")
            .str.replace_all(r"</?[A-Za-z][^<>]*>", "")
        )
        return _decode_entities(out) if self.decode_entities else out


@register
class HtmlEntityDecoder(TextRefiner):
    """Decode HTML entities (&amp;, &lt;, &gt;, &quot;, &nbsp;, &#39;, &mdash; ...) and numeric
    `&#NNN;` references of ASCII characters in `text`. Reads and rewrites `text`. Use on text
    extracted from HTML whose entities were left escaped."""

    def __init__(self):
        pass

    def refine(self, text, cols):
        out = _decode_entities(text)
        # ASCII numeric references (&#33; .. &#126;): a fixed table, still one vectorised pass.
        codes = list(range(32, 127))
        return out.str.replace_many([f"&#{c};" for c in codes], [chr(c) for c in codes])


@register
class UrlRemover(TextRefiner):
    """Remove URLs (http://, https://, ftp://, www.) from `text`, or replace them with
    `replacement`. Reads and rewrites `text`. Use to strip link noise from web text."""

    def __init__(self, replacement: str = ""):
        self.replacement = replacement

    def refine(self, text, cols):
        return text.str.replace_all(URL_PATTERN, self.replacement, literal=False)


@register
class UnicodeNormalizer(TextRefiner):
    """Apply Unicode normalisation (NFKC by default: compatibility characters such as
    full-width letters, ligatures and non-breaking spaces become their plain forms) to `text`.
    Reads and rewrites `text`. Use early, before any character-level statistic."""

    def __init__(self, form: str = "NFKC"):
        if form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"unknown normalisation form {form!r}")
        self.form = form

    def refine(self, text, cols):
        return text.str.normalize(self.form)


@register
class WhitespaceNormalizer(TextRefiner):
    """Normalise whitespace in `text`: every Unicode space (tab, NBSP, ideographic space ...)
    becomes a plain space, runs of spaces collapse to one, spaces around newlines are trimmed,
    three or more newlines become two (paragraph breaks survive) and the text is stripped.
    Reads and rewrites `text`. Use after HTML removal."""

    def __init__(self, max_newlines: int = 2):
        self.max_newlines = max_newlines

    def refine(self, text, cols):
        n = self.max_newlines
        return (
            text.str.replace_all(r"\r\n?", "\n")
            .str.replace_all(r"[^\S\n]+", " ")
            .str.replace_all(r" ?\n ?", "\n")
            .str.replace_all("\n{%d,}" % (n + 1), "\n" * n)
            .str.strip_chars()
        )


@register
class ExtraSpacesRemover(TextRefiner):
    """Collapse every run of whitespace (newlines included) in `text` to a single space and strip
    the ends. Reads and rewrites `text`. Use when line structure does not matter (e.g. before
    hashing for dedup or for short fields)."""

    def __init__(self):
        pass

    def refine(self, text, cols):
        return text.str.replace_all(r"\s+", " ").str.strip_chars()


@register
class NonPrintableRemover(TextRefiner):
    """Remove control and other non-printable characters (Unicode categories Cc, Cf and Co,
    except newline and tab; the zero-width joiner used inside emoji is kept when `keep_zwj`)
    from `text`. Reads and rewrites `text`. Use on scraped text with stray control bytes."""

    def __init__(self, keep_zwj: bool = False):
        self.keep_zwj = keep_zwj

    def refine(self, text, cols):
        pattern = r"[\p{Cc}\p{Cf}\p{Co}--[\n\t" + (r"\x{200D}" if self.keep_zwj else "") + "]]"
        return text.str.replace_all(pattern, "")


@register
class EmojiRemover(TextRefiner):
    """Remove emoji and pictographic symbols (with their variation selectors, skin-tone
    modifiers, joiners and flag letters) from `text`. Reads and rewrites `text`. Use for
    corpora where emoji are noise."""

    def __init__(self):
        pass

    def refine(self, text, cols):
        return text.str.replace_all(EMOJI_PATTERN, "")


@register
class Lowercaser(TextRefiner):
    """Lowercase `text` (Unicode-aware). Reads and rewrites `text`. Use for uncased corpora
    or before normalised comparisons."""

    def __init__(self):
        pass

    def refine(self, text, cols):
        return text.str.to_lowercase()


@register
class CitationRemover(TextRefiner):
    """Remove Wikipedia-style citation markers from `text`: [1], [12], [], [edit],
    [citation needed] (C4's CITATION_REGEX) and, when `extended`, [1, 2], [3-5], [a], [note 1],
    [clarification needed] and similar bracketed editor notes. Reads and rewrites `text`."""

    def __init__(self, extended: bool = True):
        self.extended = extended

    def refine(self, text, cols):
        out = text.str.replace_all(CITATION_PATTERN, "")
        if self.extended:
            out = out.str.replace_all(
                r"\[(?:\d+(?:\s*[,\-–]\s*\d+)*|[a-z]|note \d+|nb \d+|[a-z ]{0,20}needed|by whom\?|when\?|who\?|"
                r"dubious[^\]]{0,20}|page needed)\]",
                "",
            )
        return out


@register
class EmailMasker(TextRefiner):
    """Mask e-mail addresses in `text` with `mask` (PII removal). Reads and rewrites `text`.
    Use before publishing or training on scraped text."""

    def __init__(self, mask: str = "<EMAIL>"):
        self.mask = mask

    def refine(self, text, cols):
        return text.str.replace_all(EMAIL_PATTERN, self.mask)


@register
class PhoneMasker(TextRefiner):
    """Mask phone numbers in `text` with `mask` (PII removal): three or more digit groups
    separated by spaces or dashes ("555-123-4567", "(555) 123-4567", "+44 20 7946 0958").
    Reads and rewrites `text`. Heuristic: unbroken digit runs, dotted numbers (IPs, versions)
    and two-group ranges ("1990-2000") are left alone."""

    def __init__(self, mask: str = "<PHONE>"):
        self.mask = mask

    def refine(self, text, cols):
        return text.str.replace_all(PHONE_PATTERN, self.mask)


@register
class IpAddressMasker(TextRefiner):
    """Mask IPv4 addresses in `text` with `mask` (PII removal). Reads and rewrites `text`."""

    def __init__(self, mask: str = "<IP>"):
        self.mask = mask

    def refine(self, text, cols):
        return text.str.replace_all(IPV4_PATTERN, self.mask)


@register
class PunctuationNormalizer(TextRefiner):
    """Map typographic punctuation in `text` to ASCII: curly quotes to straight quotes,
    en/em dashes to "-", the ellipsis character to "...", and collapse runs of 4+ identical
    punctuation marks ("!!!!!!") to 3. Reads and rewrites `text`."""

    def __init__(self, collapse_repeats: bool = True):
        self.collapse_repeats = collapse_repeats

    def refine(self, text, cols):
        out = text.str.replace_many(
            ["‘", "’", "‚", "‛", "“", "”", "„", "‟", "–", "—", "…", "\u00ab", "\u00bb"],
            ["'", "'", "'", "'", '"', '"', '"', '"', "-", "-", "...", '"', '"'],
        )
        if self.collapse_repeats:
            for ch in "!?.,;:-*=_~#":
                esc = "\\" + ch
                out = out.str.replace_all(f"{esc}{{4,}}", ch * 3)
        return out


@register
class LineTrimmer(TextRefiner):
    """Strip leading and trailing whitespace of every line of `text` and drop lines that are
    empty after stripping (keeps one newline between remaining lines). Reads and rewrites `text`.
    Use before line-based statistics so blank lines do not count."""

    def __init__(self):
        pass

    def refine(self, text, cols):
        return (
            text.str.replace_all(r"[^\S\n]+\n", "\n")
            .str.replace_all(r"\n[^\S\n]+", "\n")
            .str.replace_all(r"\n{2,}", "\n")
            .str.strip_chars()
        )


def c4_clean_lines(
    text: pl.Expr,
    *,
    remove_citations: bool = True,
    filter_no_terminal_punct: bool = True,
    min_words_per_line: int = 3,
    max_word_length: int = 1000,
    filter_javascript: bool = True,
    filter_policy: bool = True,
) -> pl.Expr:
    """The line-level part of datatrove's C4QualityFilter as one list expression: returns the kept
    lines (a List[String]); joined by newlines it is the cleaned document."""
    el = pl.element()
    stripped = el.str.strip_chars()
    line = stripped.str.replace_all(CITATION_PATTERN, "") if remove_citations else stripped
    conds = []
    if max_word_length and max_word_length > 0:
        conds.append(~stripped.str.contains(r"\S{%d}" % (max_word_length + 1)))
    if filter_no_terminal_punct:
        ends = pl.lit(False)
        for p in C4_END_PUNCTUATION:
            ends = ends | line.str.ends_with(p)
        conds.append(ends & ~line.str.ends_with("..."))
    if min_words_per_line and min_words_per_line > 0:
        # at least k whitespace-separated words <=> one match of k non-space runs (stops early)
        k = min_words_per_line
        conds.append(stripped.str.contains(r"\S" + r"\s+\S+" * (k - 2) + r"\s+\S" if k > 1 else r"\S"))
    lower = line.str.to_lowercase()
    if filter_javascript:
        conds.append(~lower.str.contains("javascript", literal=True))
    if filter_policy:
        conds.append(~lower.str.contains(alternation(C4_POLICY_SUBSTRINGS)))
    keep = pl.lit(True)
    for c in conds:
        keep = keep & c
    return text.str.split("\n").list.eval(line.filter(keep))


@register
class C4LineCleaner(TextRefiner):
    """C4's line cleaner (Raffel et al. 2020; datatrove C4QualityFilter's line rules): strip each
    line of `text`, remove citation markers, then drop lines that do not end in terminal
    punctuation (. ? ! " ') or end in "...", have fewer than `min_words_per_line` words, contain a
    word longer than `max_word_length`, mention "javascript", or mention a policy phrase (terms of
    use, privacy policy, cookie policy, uses cookies ...). Reads and rewrites `text`; documents
    with no line left become "". Follow with `c4_quality_filter` (sentence count, lorem ipsum,
    curly brackets)."""

    def __init__(
        self,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = True,
        min_words_per_line: int = 3,
        max_word_length: int = 1000,
        filter_javascript: bool = True,
        filter_policy: bool = True,
    ):
        self.kw = self.config()  # exactly c4_clean_lines' keyword arguments

    def refine(self, text, cols):
        return c4_clean_lines(text, **self.kw).list.join("\n").str.strip_chars()


@register
class BoilerplateLineRemover(TextRefiner):
    """Drop lines of `text` that contain any of `phrases` (case-insensitive; defaults are common
    web boilerplate: "all rights reserved", "click here", "sign up for our newsletter", "skip to
    content", "share this", "read more"...). Reads and rewrites `text`. Use after HTML removal on
    web pages; unlike `c4_line_cleaner` it leaves every other line untouched."""

    DEFAULT_PHRASES = (
        "all rights reserved",
        "click here",
        "sign up for our newsletter",
        "subscribe to our newsletter",
        "skip to content",
        "skip to main content",
        "share this:",
        "share on facebook",
        "log in to reply",
        "you must be logged in",
        "read more",
        "powered by wordpress",
    )

    def __init__(self, phrases: tuple[str, ...] | list[str] | None = None):
        self.phrases = tuple(phrases) if phrases is not None else self.DEFAULT_PHRASES

    def refine(self, text, cols):
        if not self.phrases:
            return text
        pattern = "(?i)" + alternation(self.phrases)
        return text.str.split("\n").list.eval(pl.element().filter(~pl.element().str.contains(pattern))).list.join("\n")
