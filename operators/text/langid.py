"""Language identification with lingua (`lingua-language-detector`; models ship in the wheel, no
download). The detector is built once per configuration, lazily, and called through lingua's
batched, multi-threaded `compute_language_confidence_values_in_parallel` on a whole column."""

from __future__ import annotations

import threading
from functools import lru_cache

import polars as pl

from operators.base import Evaluator, Filter, register

DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja", "ar", "pl", "tr", "ko", "sv")
_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _detector(languages: tuple[str, ...], low_accuracy: bool):
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in languages]
    builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
    if low_accuracy:
        builder = builder.with_low_accuracy_mode()
    return builder.build()


def detect_languages(
    texts: pl.Series, languages: tuple[str, ...], low_accuracy: bool = False, max_chars: int | None = 2000
) -> pl.DataFrame:
    """ISO 639-1 code and confidence of the most likely language of every text (one batched
    lingua call). Empty or null texts get language null and confidence 0."""
    if len(texts) == 0:
        return pl.DataFrame(schema={"language": pl.String, "confidence": pl.Float64})
    clean = texts.fill_null("")
    if max_chars:
        clean = clean.str.slice(0, max_chars)
    with _LOCK:
        detector = _detector(tuple(languages), low_accuracy)
    values = detector.compute_language_confidence_values_in_parallel(clean.to_list())
    langs, confs = [], []
    for text, vals in zip(clean, values):  # unpacking lingua's result objects, not detecting
        if vals and text.strip() and vals[0].value > 0:
            langs.append(vals[0].language.iso_code_639_1.name.lower())
            confs.append(float(vals[0].value))
        else:
            langs.append(None)
            confs.append(0.0)
    return pl.DataFrame({"language": langs, "confidence": confs}, schema={"language": pl.String, "confidence": pl.Float64})


@register
class LanguageIdentifier(Evaluator):
    """Identify the language of `text` with lingua among `languages` (ISO 639-1 codes) and write
    the most likely code (lower case, e.g. "en"; null for empty text) to `language` and its
    confidence in [0, 1] to `confidence`. Batched and multi-threaded (lingua's parallel API); only
    the first `max_chars` characters are used. Use before language-specific filters."""

    reads = {"text": "text"}
    writes = {"language": "language", "confidence": "language_confidence"}

    def __init__(
        self, languages: tuple[str, ...] = DEFAULT_LANGUAGES, low_accuracy: bool = False, max_chars: int | None = 2000
    ):
        self.languages, self.low_accuracy, self.max_chars = tuple(languages), low_accuracy, max_chars

    def run(self, frame, cols):
        det = detect_languages(frame.get_column(cols["text"]), self.languages, self.low_accuracy, self.max_chars)
        return frame.with_columns(
            det.get_column("language").alias(cols["language"]), det.get_column("confidence").alias(cols["confidence"])
        )


@register
class LanguageFilter(Filter):
    """Keep documents whose lingua-detected language is in `keep` (ISO 639-1 codes, default
    English) with confidence >= `min_confidence` (default 0.65, like FineWeb's 0.65 fastText
    threshold). Detection runs among `languages` (which always include `keep`). Reads `text`;
    optionally writes the detected code to `language` and the confidence to `confidence`.
    Drop reasons: wrong_language, low_confidence."""

    reads = {"text": "text"}
    writes = {"language": None, "confidence": None}

    def __init__(
        self,
        keep: tuple[str, ...] = ("en",),
        min_confidence: float = 0.65,
        languages: tuple[str, ...] = DEFAULT_LANGUAGES,
        low_accuracy: bool = False,
        max_chars: int | None = 2000,
    ):
        self.keep_languages = tuple(keep)
        self.min_confidence = min_confidence
        self.languages = tuple(dict.fromkeys(tuple(languages) + self.keep_languages))
        self.low_accuracy, self.max_chars = low_accuracy, max_chars

    def run(self, frame, cols):
        det = detect_languages(frame.get_column(cols["text"]), self.languages, self.low_accuracy, self.max_chars)
        lang, conf = det.get_column("language"), det.get_column("confidence")
        if cols.get("language"):
            frame = frame.with_columns(lang.alias(cols["language"]))
        if cols.get("confidence"):
            frame = frame.with_columns(conf.alias(cols["confidence"]))
        return self.apply_keep(
            frame,
            {
                "wrong_language": lang.is_in(list(self.keep_languages)).fill_null(False),
                "low_confidence": conf >= self.min_confidence,
            },
        )
