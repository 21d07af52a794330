"""Extraction quality of the knowledge pipeline's document readers (operators/knowledge/extract.py).

1. article_extraction_benchmark (181 real pages, ground-truth article bodies): token-level
   precision / recall / F1 of our HTML main-text extraction (trafilatura, plain-text output, as the
   benchmark's own evaluation does: bags of whitespace tokens, micro-averaged over pages and the
   per-page mean), side by side with a baseline that keeps all visible text of the page (lxml).
2. docling_docs (2 PDFs and 1 HTML page with reference markdown from docling): text similarity of
   our extraction (pypdf pages / trafilatura markdown, markdown syntax stripped on both sides) with
   the reference: token F1 and difflib's sequence ratio over word tokens.

Usage: .venv/bin/python benchmarks/extraction_quality.py [--data /work/shared/data]
The last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.knowledge.extract import extract_document, html_main_text

_MD = re.compile(r"(^#{1,6}\s+|\*\*|__|`|^\s*[-*+]\s+|^\s*\d+\.\s+|!\[[^\]]*\]\([^)]*\)|\[([^\]]*)\]\([^)]*\)|^\|?[-:| ]+\|?$|\|)", re.MULTILINE)


def tokens(text: str) -> list[str]:
    return text.split()


def words(text: str) -> list[str]:
    return re.findall(r"\w+", _MD.sub(lambda m: m.group(2) or " ", text).lower())


def prf(pred: list[str], gold: list[str]) -> tuple[int, int, int]:
    """(true positives, predicted, gold) over token bags."""
    tp = sum((Counter(pred) & Counter(gold)).values())
    return tp, len(pred), len(gold)


def f1(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def all_visible_text(html: bytes) -> str:
    import lxml.html

    try:
        root = lxml.html.fromstring(html)
    except Exception:  # noqa: BLE001
        return ""
    for bad in root.xpath("//script|//style|//noscript"):
        bad.drop_tree()
    return root.text_content()


def article_benchmark(root: Path) -> dict:
    truth = json.loads((root / "ground-truth.json").read_text())
    sums = {"trafilatura": [0, 0, 0], "all_text_baseline": [0, 0, 0]}
    per_page = {k: [] for k in sums}
    empty = 0
    start = time.perf_counter()
    for key, gt in sorted(truth.items()):
        html = gzip.decompress((root / "html" / f"{key}.html.gz").read_bytes())
        gold = tokens(gt.get("articleBody") or "")
        ours = html_main_text(html, markdown=False) or ""
        empty += not ours
        for name, text in (("trafilatura", ours), ("all_text_baseline", all_visible_text(html))):
            c = prf(tokens(text), gold)
            sums[name] = [a + b for a, b in zip(sums[name], c)]
            per_page[name].append(f1(*c)[2])
    wall = time.perf_counter() - start
    out = {"pages": len(truth), "pages_without_main_text": empty, "wall_s": round(wall, 1)}
    for name, (tp, npred, ngold) in sums.items():
        p, r, f = f1(tp, npred, ngold)
        out[name] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "mean_page_f1": round(sum(per_page[name]) / len(per_page[name]), 4)}
    return out


def docling(root: Path) -> dict:
    pairs = [(p, p.with_suffix(".md")) for p in sorted(root.glob("*.pdf"))] + [(p, Path(str(p) + ".md")) for p in sorted(root.glob("*.html"))]
    out = {}
    for doc, ref in pairs:
        if not ref.exists():
            continue
        rows, problems = extract_document(doc)
        ours = "\n\n".join(r["text"] for r in rows)
        a, b = words(ours), words(ref.read_text())
        p, r, f = f1(*prf(a, b))
        out[doc.name] = {
            "method": rows[0]["method"] if rows else None,
            "problems": [why for _, why in problems],
            "token_precision": round(p, 4), "token_recall": round(r, 4), "token_f1": round(f, 4),
            "sequence_ratio": round(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 4),
        }
    if out:
        out["mean_token_f1"] = round(sum(v["token_f1"] for v in out.values()) / len(out), 4)
        out["mean_sequence_ratio"] = round(sum(v["sequence_ratio"] for k, v in out.items() if isinstance(v, dict)) / (len(out) - 1), 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args(argv)
    data = Path(args.data)
    figures: dict = {}
    art = data / "article_extraction_benchmark"
    if (art / "ground-truth.json").exists():
        figures["article_extraction"] = a = article_benchmark(art)
        print(f"article_extraction_benchmark: {a['pages']} pages ({a['pages_without_main_text']} with no main text found), {a['wall_s']} s")
        for name in ("trafilatura", "all_text_baseline"):
            m = a[name]
            print(f"  {name:18s} precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  (mean per-page F1 {m['mean_page_f1']:.3f})")
    else:
        print(f"article_extraction_benchmark not found under {data}: skipped")
    dd = data / "docling_docs"
    if dd.exists():
        figures["docling_docs"] = d = docling(dd)
        print("docling_docs (our extraction vs docling's reference markdown):")
        for name, m in d.items():
            if isinstance(m, dict):
                print(f"  {name:28s} {m['method']:12s} token P {m['token_precision']:.3f} R {m['token_recall']:.3f} F1 {m['token_f1']:.3f}  sequence ratio {m['sequence_ratio']:.3f}")
        print(f"  mean token F1 {d.get('mean_token_f1')}, mean sequence ratio {d.get('mean_sequence_ratio')}")
    else:
        print(f"docling_docs not found under {data}: skipped")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
