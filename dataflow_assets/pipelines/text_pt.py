"""Pre-training text pipeline: clean, keep English, apply Gopher / C4 / FineWeb heuristics,
then exact and MinHash near-duplicate removal."""

from __future__ import annotations

import polars as pl

from operators.base import Pipeline
from operators.text.dedup import ExactDedupFilter, MinhashDedupFilter
from operators.text.filters import (
    C4QualityFilter,
    EmptyTextFilter,
    FinewebQualityFilter,
    GopherQualityFilter,
)
from operators.text.langid import LanguageFilter
from operators.text.refiners import (
    C4LineCleaner,
    HtmlTagRemover,
    NonPrintableRemover,
    UnicodeNormalizer,
    WhitespaceNormalizer,
)
from operators.text.repetition import GopherRepetitionFilter


class TextPretrainPipeline(Pipeline):
    """Web text -> pre-training text: HTML/Unicode/whitespace clean-up, English only, Gopher
    quality + C4 + Gopher repetition + FineWeb rules, exact dedup, MinHash near-dedup."""

    name = "text_pt"
    input_schema = {"text": pl.String}
    description = "Pre-training text: cleaning, language id, Gopher/C4/FineWeb heuristics, exact + MinHash dedup"

    def __init__(
        self,
        languages: tuple[str, ...] = ("en",),
        min_language_confidence: float = 0.65,
        min_doc_words: int = 50,
        max_doc_words: int = 100_000,
        min_stop_words: int = 2,
        min_num_sentences: int = 5,
        line_punct_thr: float = 0.12,
        short_line_thr: float = 0.67,
        char_duplicates_ratio: float = 0.01,
        minhash_threshold: float = 0.7,
        num_perm: int = 128,
        shingle_size: int = 5,
    ):
        # refiners
        self.html = HtmlTagRemover()
        self.unicode = UnicodeNormalizer("NFKC")
        self.non_printable = NonPrintableRemover()
        self.whitespace = WhitespaceNormalizer()
        self.not_empty = EmptyTextFilter()
        # language
        self.language = LanguageFilter(keep=tuple(languages), min_confidence=min_language_confidence)
        # heuristic filters
        # share_tokens=False: the C4 line cleaner rewrites the texts before Gopher repetition, so tokens
        # left for it would never match (hashing them cost time and ~240 MB held through the next stages)
        self.gopher_quality = GopherQualityFilter(
            min_doc_words=min_doc_words, max_doc_words=max_doc_words, min_stop_words=min_stop_words, share_tokens=False
        )
        self.c4_lines = C4LineCleaner()
        self.c4_quality = C4QualityFilter(min_num_sentences=min_num_sentences, clean_lines=False)
        self.gopher_repetition = GopherRepetitionFilter()
        self.fineweb_quality = FinewebQualityFilter(
            line_punct_thr=line_punct_thr, short_line_thr=short_line_thr, char_duplicates_ratio=char_duplicates_ratio
        )
        # dedup
        self.exact_dedup = ExactDedupFilter()
        self.minhash_dedup = MinhashDedupFilter(
            threshold=minhash_threshold, num_perm=num_perm, shingle_size=shingle_size
        )

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.html(frame, text="text")
        frame = self.unicode(frame, text="text")
        frame = self.non_printable(frame, text="text")
        frame = self.whitespace(frame, text="text")
        frame = self.not_empty(frame, text="text")
        frame = self.language(frame, text="text")
        frame = self.gopher_quality(frame, text="text")
        frame = self.c4_lines(frame, text="text")
        frame = self.c4_quality(frame, text="text")
        frame = self.gopher_repetition(frame, text="text")
        frame = self.fineweb_quality(frame, text="text")
        frame = self.exact_dedup(frame, text="text")
        frame = self.minhash_dedup(frame, text="text")
        return frame


def _spec():
    from dataflow_assets.checks import kept_share_gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="text_pt",
        build=TextPretrainPipeline,
        description=TextPretrainPipeline.description,
        # web text keeps roughly 20-70% under these rules; outside a wide band something is wrong.
        # Judged before dedup: dedup is dataset-wide, and a shard of copies of earlier shards may keep nothing.
        gates=[kept_share_gate("fineweb_quality", 0.01, 0.99)],
    )


SPEC = _spec()
