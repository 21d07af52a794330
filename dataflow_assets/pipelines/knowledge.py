"""Knowledge extraction: documents -> grounded single- and multi-hop QA (DataFlow's knowledge-base
cleaning pipeline).

Input: document files given to `dataflow run knowledge --input a.pdf b.html c.docx d.md` (one
partition each; the input layer extracts them offline: PDF pages with pypdf, HTML main text with
trafilatura, DOCX with python-docx, markdown as is), or jsonl/csv/parquet rows with a `text` field.
A corrupt or encrypted PDF, an HTML page with no main text or an empty file gives one quarantine
row with the reason; the other documents go on.

Stages: broken unicode -> repeated headers/footers -> boilerplate lines -> hyphenation -> line
unwrapping -> whitespace -> junk pages dropped -> heading/token chunks (ids with offsets) -> short
chunks dropped -> LLM cleaning -> novel-token check (no invented content) -> chunk linking
(single chunks and linked pairs) -> single-hop QA -> multi-hop QA -> answer-grounding judge ->
grounded QA kept.

Gates (blocking): every document has non-empty extracted text (`unicode`), chunks cover at least
`$DATAFLOW_KB_COVERAGE_FLOOR` (default 0.9) of every page/section (`chunk`), and at least
`$DATAFLOW_KB_GROUNDED_FLOOR` (default 0.5) of the synthesised QA is grounded (`grounding`).
"""

from __future__ import annotations

import os

import polars as pl

from operators.base import Pipeline
from operators.knowledge.chunking import MarkdownHeadingChunker, chunk_coverage
from operators.knowledge.cleaning import (
    ChunkLengthFilter,
    DocumentBoilerplateRemover,
    DocumentWhitespaceNormalizer,
    ExtractionQualityFilter,
    HyphenationJoiner,
    LineUnwrapper,
    NovelTokenFilter,
    NovelTokenRatio,
    RepeatedLineRemover,
    UnicodeFixer,
)
from operators.knowledge.llm import (
    AnswerGroundingJudge,
    ChunkLinker,
    GroundedQAFilter,
    LLMChunkCleaner,
    MultiHopQAGenerator,
    SingleHopQAGenerator,
)
from operators.llm import SamplingParams

COVERAGE_ENV, DEFAULT_COVERAGE = "DATAFLOW_KB_COVERAGE_FLOOR", 0.9
GROUNDED_ENV, DEFAULT_GROUNDED = "DATAFLOW_KB_GROUNDED_FLOOR", 0.5


class KnowledgePipeline(Pipeline):
    """Raw documents -> cleaned, chunked text -> grounded single- and multi-hop QA with supporting chunk ids."""

    name = "knowledge"
    input_schema = {"text": pl.String}
    description = "Knowledge extraction: PDF/HTML/DOCX/markdown -> rule + LLM cleaning -> chunks -> single/multi-hop QA -> grounding judge"

    def __init__(self, chunk_tokens: int = 220, min_chunk_tokens: int = 25, max_novel_ratio: float = 0.15, clean_max_tokens: int = 768):
        self.unicode = UnicodeFixer()
        self.repeated_lines = RepeatedLineRemover()
        self.boilerplate = DocumentBoilerplateRemover()
        self.hyphenation = HyphenationJoiner()
        self.unwrap = LineUnwrapper()
        self.whitespace = DocumentWhitespaceNormalizer()
        self.quality = ExtractionQualityFilter()
        self.chunk = MarkdownHeadingChunker(max_tokens=chunk_tokens, overlap=chunk_tokens // 8)
        self.chunk_length = ChunkLengthFilter(min_tokens=min_chunk_tokens)
        self.llm_clean = LLMChunkCleaner(params=SamplingParams(temperature=0.0, max_tokens=clean_max_tokens))
        self.novelty = NovelTokenRatio()
        self.faithful = NovelTokenFilter(max_ratio=max_novel_ratio)
        self.link = ChunkLinker()
        self.single_hop = SingleHopQAGenerator()
        self.multi_hop = MultiHopQAGenerator()
        self.grounding = AnswerGroundingJudge()
        self.grounded = GroundedQAFilter()

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.unicode(frame, text="text")
        frame = self.repeated_lines(frame, text="text", document="source_path")
        frame = self.boilerplate(frame, text="text")
        frame = self.hyphenation(frame, text="text")
        frame = self.unwrap(frame, text="text")
        frame = self.whitespace(frame, text="text")
        frame = self.quality(frame, text="text")
        frame = self.chunk(frame, text="text")
        frame = self.chunk_length(frame, chunk="chunk")
        frame = self.llm_clean(frame, text="chunk")
        frame = self.novelty(frame, text="cleaned", source="chunk")
        frame = self.faithful(frame)
        frame = self.link(frame, text="cleaned", document="doc_id")
        frame = self.single_hop(frame)
        frame = self.multi_hop(frame)
        frame = self.grounding(frame)
        return self.grounded(frame)


def _floor(env: str, default: float) -> float:
    try:
        return float(os.environ.get(env, default))
    except ValueError:
        return default


def documents_non_empty(frame: pl.DataFrame) -> tuple[bool, dict]:
    """Every document in the partition has some non-blank extracted text."""
    if frame.height == 0:
        return True, {"documents": 0, "empty_documents": 0}
    key = "source_path" if "source_path" in frame.columns else "_id"
    per = frame.group_by(key).agg(pl.col("text").fill_null("").str.strip_chars().str.len_chars().sum().alias("chars"))
    empty = per.filter(pl.col("chars") == 0).get_column(key).to_list()
    return not empty, {"documents": per.height, "empty_documents": len(empty), "first_empty": str(empty[:3])}


def coverage_ok(frame: pl.DataFrame) -> tuple[bool, dict]:
    floor = _floor(COVERAGE_ENV, DEFAULT_COVERAGE)
    cov = chunk_coverage(frame)
    if cov.height == 0:
        return True, {"min_coverage": 1.0, "floor": floor, "parents": 0}
    low = float(cov.get_column("coverage").min())
    return low >= floor, {"min_coverage": round(low, 4), "mean_coverage": round(float(cov.get_column("coverage").mean()), 4), "floor": floor, "parents": cov.height}


def grounded_share(frame: pl.DataFrame) -> tuple[bool, dict]:
    floor = _floor(GROUNDED_ENV, DEFAULT_GROUNDED)
    if frame.height == 0:
        return True, {"grounded_share": 0.0, "floor": floor, "rows": 0}
    share = float(frame.get_column("grounded").fill_null(False).mean())
    return share >= floor, {"grounded_share": round(share, 4), "floor": floor, "rows": frame.height}


def _spec():
    from dataflow_assets.checks import Gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="knowledge",
        build=KnowledgePipeline,
        description=KnowledgePipeline.description,
        gates=[
            Gate("documents_non_empty", "Every document of the partition has non-empty extracted text.", lambda d: documents_non_empty(d.frame), "unicode"),
            Gate("chunk_coverage", f"Chunks cover at least ${COVERAGE_ENV} (default {DEFAULT_COVERAGE}) of every page/section.", lambda d: coverage_ok(d.frame), "chunk"),
            Gate("grounded_share", f"At least ${GROUNDED_ENV} (default {DEFAULT_GROUNDED}) of the synthesised QA is grounded in its chunks.", lambda d: grounded_share(d.frame), "grounding"),
        ],
    )


SPEC = _spec()
