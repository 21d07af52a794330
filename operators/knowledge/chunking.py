"""Chunking of extracted documents: by tokens with overlap, by markdown headings, by sentences.

Every chunk is a slice `text[chunk_start:chunk_end]` of its parent row (a page or a section of a
document), so `chunk_id` = `<doc_id>:p<page>:<start>-<end>` points back to the document and the
exact character offsets; `parent_id` is the parent row's `_id`. `chunk_coverage()` measures the
share of each parent's text that the chunks cover (the pipeline's coverage gate).

Tokens here are whitespace-separated words (`\\S+`), counted with their character offsets: the
offline embedding model's 256-word-piece window holds about 180 such words, so the defaults keep
chunks under it. Splitting a row into a variable number of chunks is a per-row Python step (the
offsets come from `re.finditer`); everything after it is Polars.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from operators.base import ID, Evaluator, Generator, register

CHUNK_DTYPE = pl.List(pl.Struct({"chunk": pl.String, "chunk_start": pl.Int64, "chunk_end": pl.Int64, "section": pl.String}))
_TOKEN = re.compile(r"\S+")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# a sentence ends at . ! ? (optionally followed by a closing quote/bracket) before whitespace and an
# upper-case letter, digit or opening quote; common abbreviations are not sentence ends
_SENT_END = re.compile(r"[.!?][\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Ms|Mrs|Dr|St|vs|Fig|No|al|e\.g|i\.e|Eq|etc|Inc|Jr|Sr|Prof))$")


def token_windows(text: str, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of windows of `max_tokens` words, each starting `max_tokens - overlap` words
    after the previous one; the last window ends at the last word."""
    spans = [m.span() for m in _TOKEN.finditer(text)]
    if not spans:
        return []
    step = max(max_tokens - overlap, 1)
    out = []
    for i in range(0, len(spans), step):
        j = min(i + max_tokens, len(spans))
        out.append((spans[i][0], spans[j - 1][1]))
        if j == len(spans):
            break
    return out


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (whitespace between them excluded)."""
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        if m.group(0)[0] == "." and _ABBREV.search(text, max(0, m.start() - 6), m.start()):
            continue
        end = m.start() + len(m.group(0).rstrip())
        spans.append((start, end))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:  # trim whitespace inside each span
        seg = text[s:e]
        ls = len(seg) - len(seg.lstrip())
        rs = len(seg.rstrip())
        if rs > ls:
            out.append((s + ls, s + rs))
    return out


class _Chunker(Generator):
    """Shared explode-into-chunks logic (not registered)."""

    reads = {"text": "text"}
    writes = {"chunk": "chunk", "chunk_id": "chunk_id"}

    def spans(self, text: str) -> list[tuple[int, int, str | None]]:
        raise NotImplementedError

    def _split(self, text: str | None) -> list[dict[str, Any]]:
        if not text:
            return []
        return [{"chunk": text[s:e], "chunk_start": s, "chunk_end": e, "section": sec} for s, e, sec in self.spans(text)]

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        text, chunk, cid = cols["text"], cols["chunk"], cols["chunk_id"]
        if "doc_id" not in frame.columns:  # rows that are not from a document file: each row is a document
            frame = frame.with_columns(pl.col(ID).alias("doc_id"))
        doc = pl.col("doc_id")
        page = pl.col("page").cast(pl.String).fill_null("0") if "page" in frame.columns else pl.lit("0")
        parts = frame.with_columns(
            pl.col(text).map_elements(self._split, return_dtype=CHUNK_DTYPE, skip_nulls=False).alias("__chunks"),
            pl.col(text).str.len_chars().alias("source_chars"),
            pl.col(ID).alias("parent_id"),
        )
        drop = [c for c in ("section", "chunk_start", "chunk_end", chunk) if c in parts.columns]
        if "section" in parts.columns:  # a section already known (e.g. from the reader) is kept when the chunker has none
            parts = parts.rename({"section": "__section"})
            drop = [c for c in drop if c != "section"]
        out = parts.drop(drop).explode("__chunks").filter(pl.col("__chunks").is_not_null()).unnest("__chunks")
        if chunk != "chunk":
            out = out.rename({"chunk": chunk})
        if "__section" in out.columns:
            out = out.with_columns(pl.coalesce("section", "__section").alias("section")).drop("__section")
        k = pl.int_range(pl.len()).over("parent_id")
        return out.with_columns(
            (pl.col("parent_id") + ":" + k.cast(pl.String)).alias(ID),
            (doc.fill_null(pl.col("parent_id")) + ":p" + page + ":" + pl.col("chunk_start").cast(pl.String) + "-" + pl.col("chunk_end").cast(pl.String)).alias(cid),
        )

    def output_columns(self, cols):
        return [cols["chunk"], cols["chunk_id"], "chunk_start", "chunk_end", "section", "parent_id", "source_chars", "doc_id"]


@register
class TokenChunker(_Chunker):
    """Splits text into windows of `max_tokens` words with `overlap` words shared by neighbours.

    Reads: `text`. Writes one row per chunk: `chunk` (an exact slice of the text), `chunk_id`
    (`<doc_id>:p<page>:<start>-<end>`), `chunk_start`/`chunk_end` (character offsets in the parent
    text), `section` (kept from the input when present), `parent_id` (the parent row's `_id`) and
    `source_chars`, and `doc_id` (the row's `_id` when the input has none). Use it for uniform retrieval passages and embedding-sized inputs; the overlap
    keeps a fact that straddles a boundary whole in one chunk.
    """

    def __init__(self, max_tokens: int = 160, overlap: int = 32):
        if max_tokens < 1 or not 0 <= overlap < max_tokens:
            raise ValueError("need max_tokens >= 1 and 0 <= overlap < max_tokens")
        self.max_tokens, self.overlap = max_tokens, overlap

    def spans(self, text):
        return [(s, e, None) for s, e in token_windows(text, self.max_tokens, self.overlap)]


@register
class MarkdownHeadingChunker(_Chunker):
    """Splits markdown at headings (`#` .. `######`, up to `max_level`): one chunk per section, its
    heading path (`Intro > Setup`) in `section`; a section longer than `max_tokens` words is cut into
    token windows. Text before the first heading is its own chunk.

    Reads: `text`. Writes the same columns as `token_chunker`. Use it for HTML (extracted as
    markdown), DOCX and markdown sources, where sections are the natural unit for QA synthesis.
    """

    def __init__(self, max_level: int = 3, max_tokens: int = 400, overlap: int = 40):
        self.max_level, self.max_tokens, self.overlap = max_level, max_tokens, overlap

    def spans(self, text):
        heads = [m for m in _HEADING.finditer(text) if len(m.group(1)) <= self.max_level]
        bounds = [0] + [m.start() for m in heads] + [len(text)]
        path: list[tuple[int, str]] = []
        titles: list[str | None] = [None]
        for m in heads:
            level = len(m.group(1))
            path = [p for p in path if p[0] < level] + [(level, m.group(2).strip())]
            titles.append(" > ".join(t for _, t in path))
        out = []
        for (s, e), title in zip(zip(bounds, bounds[1:]), titles):
            seg = text[s:e]
            if not seg.strip():
                continue
            for ws, we in token_windows(seg, self.max_tokens, self.overlap):
                out.append((s + ws, s + we, title))
        return out


@register
class SentenceChunker(_Chunker):
    """Packs whole sentences into chunks of at most `max_tokens` words (a longer sentence is a chunk
    alone), optionally repeating the last `overlap_sentences` sentences at the start of the next.

    Reads: `text`. Writes the same columns as `token_chunker`. Use it when chunks must never cut a
    sentence (QA synthesis, cleaning prompts). Sentence ends are found with a rule (`. ! ?` before an
    upper-case word, common abbreviations excepted), not a model.
    """

    def __init__(self, max_tokens: int = 160, overlap_sentences: int = 0):
        self.max_tokens, self.overlap_sentences = max_tokens, overlap_sentences

    def spans(self, text):
        sents = sentence_spans(text)
        words = [len(_TOKEN.findall(text[s:e])) for s, e in sents]
        out, i = [], 0
        while i < len(sents):
            j, n = i, 0
            while j < len(sents) and (j == i or n + words[j] <= self.max_tokens):
                n += words[j]
                j += 1
            out.append((sents[i][0], sents[j - 1][1], None))
            if j >= len(sents):
                break
            i = max(j - self.overlap_sentences, i + 1)
        return out


def chunk_coverage(frame: pl.DataFrame, parent: str = "parent_id") -> pl.DataFrame:
    """Per parent row: the share of its characters inside the union of its chunks' spans
    (`coverage`), from `chunk_start`/`chunk_end`/`source_chars`. Whitespace between windows and
    before the first word counts as uncovered, so clean coverage is a little under 1."""
    if frame.height == 0:
        return pl.DataFrame(schema={parent: pl.String, "coverage": pl.Float64})
    prev_end = pl.col("chunk_end").cum_max().shift(1).over(parent).fill_null(0)
    return (
        frame.sort(parent, "chunk_start")
        .with_columns((pl.col("chunk_end") - pl.max_horizontal(pl.col("chunk_start"), prev_end)).clip(lower_bound=0).alias("__new"))
        .group_by(parent, maintain_order=True)
        .agg((pl.col("__new").sum() / pl.col("source_chars").first().clip(lower_bound=1)).alias("coverage"))
    )


@register
class ChunkCoverageEvaluator(Evaluator):
    """Scores each chunk row with the share of its parent text that all chunks of that parent cover
    (union of `chunk_start`..`chunk_end` over `source_chars`).

    Reads: `parent` (default `parent_id`) plus `chunk_start`, `chunk_end`, `source_chars`. Writes:
    `coverage` (Float64 in [0, 1], the same for every chunk of a parent). Use it after a chunker or
    a chunk filter to see how much of the source survives; the knowledge pipeline gates on it.
    """

    reads = {"parent": "parent_id"}
    writes = {"coverage": "coverage"}

    def run(self, frame, cols):
        cov = chunk_coverage(frame, cols["parent"]).rename({"coverage": cols["coverage"]})
        return frame.drop(cols["coverage"], strict=False).join(cov, on=cols["parent"], how="left", maintain_order="left")
