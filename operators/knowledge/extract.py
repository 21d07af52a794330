"""Offline document extraction: PDF (pypdf, one row per page), HTML main text (trafilatura, as
markdown so heading chunking works), DOCX (python-docx, headings kept as markdown), markdown and
plain text as they are.

`read_document(path)` is the reader the input layer (`operators/io.py`) calls for a document file:
it returns the same `ReadResult` as every other format, with one row per extracted unit (`text`,
`source_path`, `doc_id`, `page`, `section`, `method`) and a quarantine row for each document or
page that gave no text (a corrupt or encrypted PDF, an HTML page with no main text, an empty
file), so a bad document never stops the others. `DocumentExtractor` does the same inside a
pipeline for a column of paths (notebooks, a jsonl list of files).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from operators.base import Generator, register, stable_hash

DOCUMENT_FORMATS = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
    ".doc": "doc",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
}
"""Suffix -> document kind. `.txt` is read only by `read_document` / `DocumentExtractor` (the input
layer keeps `.txt` out of its formats: see `IO_DOCUMENT_SUFFIXES`)."""

MIN_MAIN_TEXT_WORDS = 5
IO_DOCUMENT_SUFFIXES = (".pdf", ".html", ".htm", ".docx", ".doc", ".md", ".markdown")

DOC_SCHEMA = {
    "text": pl.String,
    "source_path": pl.String,
    "doc_id": pl.String,
    "page": pl.Int64,
    "section": pl.String,
    "method": pl.String,
}


class DocumentError(ValueError):
    """A document gave no text; `reason` is the one line the quarantine records."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def document_kind(path: str | Path) -> str | None:
    name = str(path).lower().removesuffix(".gz")
    for suffix, kind in DOCUMENT_FORMATS.items():
        if name.endswith(suffix):
            return kind
    return None


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.lower().endswith(".gz") else data


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def html_main_text(html: str | bytes, *, markdown: bool = True, url: str | None = None) -> str | None:
    """The main text of an HTML page with trafilatura (boilerplate, menus and comments dropped);
    markdown keeps headings and lists. None when trafilatura finds no main text."""
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.ERROR)
    text = trafilatura.extract(
        html,
        url=url,
        output_format="markdown" if markdown else "txt",
        include_comments=False,
        include_tables=True,
        favor_precision=False,
        deduplicate=False,
    )
    # a page whose "main text" is a few navigation words (a link list, a cookie wall) has none
    return text if text and len(text.split()) >= MIN_MAIN_TEXT_WORDS else None


def _pdf_pages(path: Path) -> list[tuple[int, str]]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")  # many "encrypted" PDFs only restrict printing: empty user password
            except (DependencyError, NotImplementedError) as err:
                raise DocumentError(f"encrypted PDF that cannot be decrypted here ({err})") from None
            if not ok:
                raise DocumentError("encrypted PDF: a password is required to read it")
        pages = [(i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
    except DocumentError:
        raise
    except FileNotDecryptedError:
        raise DocumentError("encrypted PDF: a password is required to read it") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as err:
        raise DocumentError(f"corrupt or unreadable PDF ({type(err).__name__}: {str(err)[:200]})") from None
    if not pages:
        raise DocumentError("PDF has no pages")
    return pages


def _docx_text(path: Path) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        doc = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as err:
        raise DocumentError(f"corrupt or unreadable DOCX ({type(err).__name__}: {str(err)[:200]})") from None
    lines = []
    for para in doc.paragraphs:
        style = (para.style.name if para.style is not None else "") or ""
        text = para.text.strip()
        if not text:
            continue
        if style.lower().startswith("heading") and style[-1:].isdigit():
            lines.append("#" * min(int(style[-1]), 6) + " " + text)
        elif style.lower() == "title":
            lines.append("# " + text)
        else:
            lines.append(text)
    return "\n\n".join(lines)


def extract_document(path: str | Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Extract one document: (rows, problems). A problem is (page or 0, reason); a whole-document
    failure is a single problem with page 0 and no rows."""
    path = Path(path)
    kind = document_kind(path)
    doc_id = stable_hash(path.name, path.stat().st_size if path.exists() else 0, length=12)
    base = {"source_path": str(path), "doc_id": doc_id, "section": None}
    try:
        if kind is None:
            raise DocumentError(f"not a document format we read ({', '.join(sorted(DOCUMENT_FORMATS))})")
        if path.stat().st_size == 0:
            raise DocumentError("empty file: nothing to extract")
        if kind == "pdf":
            pages = _pdf_pages(path)
            rows = [{**base, "text": t, "page": n, "method": "pypdf"} for n, t in pages if t.strip()]
            problems = [(n, f"page {n}: no extractable text (an image-only page needs OCR)") for n, t in pages if not t.strip()]
            if not rows:
                raise DocumentError(f"no extractable text on any of its {len(pages)} page(s) (scanned PDF? OCR is not run)")
            return rows, problems
        if kind == "html":
            text = html_main_text(_read_bytes(path))
            if text is None:
                raise DocumentError("HTML page with no main text (trafilatura found no article body)")
            return [{**base, "text": text, "page": None, "method": "trafilatura"}], []
        if kind == "docx":
            text = _docx_text(path)
            method = "python-docx"
        elif kind == "doc":
            raise DocumentError("legacy binary .doc is not supported offline; save it as .docx or PDF")
        else:
            text = _decode(_read_bytes(path))
            method = "markdown" if kind == "markdown" else "plain"
        if not text.strip():
            raise DocumentError("document has no text")
        return [{**base, "text": text, "page": None, "method": method}], []
    except DocumentError as err:
        return [], [(0, err.reason)]


def read_document(path: str | Path, required: Mapping[str, pl.DataType] | None = None, rename: Mapping[str, str] | None = None):
    """The input layer's reader for a document file: a `ReadResult` whose rows are the extracted
    pages/sections and whose quarantine holds one row per failed document or empty page
    (`row` = page number, 0 for the whole document). `required`/`rename` are accepted for the
    reader's uniform signature; extracted rows always carry `text`."""
    from operators.io import QUARANTINE_SCHEMA, ReadResult

    rows, problems = extract_document(path)
    frame = pl.DataFrame(rows, schema=DOC_SCHEMA)
    if rename:
        frame = frame.rename({k: v for k, v in rename.items() if k in frame.columns and k != v})
    quarantine = pl.DataFrame(
        [{"file": str(path), "row": page, "field": "text", "reason": reason, "raw": ""} for page, reason in problems],
        schema=QUARANTINE_SCHEMA,
    )
    return ReadResult(frame, quarantine, frame.height + quarantine.height)


@register
class DocumentExtractor(Generator):
    """Extracts text from the document files named in a column (PDF pages with pypdf, HTML main
    text with trafilatura, DOCX with python-docx, markdown and plain text as they are), fully offline.

    Reads: `path` (default `path`). Writes one row per extracted page or section: `text`,
    `source_path`, `doc_id`, `page` (1-based for PDFs, null otherwise), `section`, `method`, and
    `extract_error` (the reason a document gave no text; its row is kept with null `text` so the
    failure stays visible). Use it when the input is a list of files (jsonl of paths); a pipeline
    fed document files directly gets the same rows from the input layer.
    """

    reads = {"path": "path"}
    writes = {"text": "text", "error": "extract_error"}

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        out_rows: list[dict[str, Any]] = []
        for rec in frame.iter_rows(named=True):  # one document per row: file I/O, not an expression
            rows, problems = extract_document(rec[cols["path"]])
            parent = {k: v for k, v in rec.items() if k not in DOC_SCHEMA and k != cols["error"]}
            whole = [r for p, r in problems if p == 0]
            for r in rows:
                out_rows.append({**parent, **r, cols["error"]: None})
            if whole:
                out_rows.append({**parent, "text": None, "source_path": str(rec[cols["path"]]), "doc_id": None, "page": None,
                                 "section": None, "method": None, cols["error"]: whole[0]})
        schema = {**{k: v for k, v in frame.schema.items() if k not in DOC_SCHEMA and k != cols["error"]}, **DOC_SCHEMA, cols["error"]: pl.String}
        out = pl.DataFrame(out_rows, schema=schema)
        if "_id" in out.columns and out.height:
            out = out.with_columns(
                (pl.col("_id") + ":" + pl.col("page").cast(pl.String).fill_null("0") + ":" + pl.int_range(pl.len()).over("_id").cast(pl.String)).alias("_id")
            )
        if cols["text"] != "text":
            out = out.rename({"text": cols["text"]})
        return out
