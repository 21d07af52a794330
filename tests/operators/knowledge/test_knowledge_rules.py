"""Knowledge extraction, rule cleaning and chunking on real documents (../shared/data)."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from operators.base import with_row_ids
from operators.io import read_input
from operators.knowledge.chunking import (
    MarkdownHeadingChunker,
    SentenceChunker,
    TokenChunker,
    chunk_coverage,
    sentence_spans,
)
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
from operators.knowledge.extract import DocumentExtractor, extract_document
from tests.conftest import shared


def _pdf(tmp_path, name, pages, password=None):
    from pypdf import PdfWriter

    w = PdfWriter()
    for _ in range(pages):
        w.add_blank_page(612, 792)
    if password:
        w.encrypt(password)
    path = tmp_path / name
    with open(path, "wb") as fh:
        w.write(fh)
    return path


def test_pdf_pages_keep_their_numbers_and_method():
    res = read_input(shared("dataflow_examples", "example", "KBCleaningPipeline", "bitter_lesson.pdf"))
    assert res.frame.get_column("page").to_list() == [1, 2]
    assert set(res.frame.get_column("method")) == {"pypdf"}
    assert "general methods that leverage computation" in res.frame.get_column("text")[0].replace("\n", " ")
    assert res.quarantine.height == 0 and res.records == 2
    # the browser's print header and footer repeat on both pages; the repeated-line rule removes them
    frame = RepeatedLineRemover(min_pages=2)(with_row_ids(res.frame, "t"))
    first = frame.get_column("text")[0]
    assert "9:31 PM The Bitter Lesson" not in first and "The Bitter Lesson\nRich Sutton" in first


def test_html_main_text_as_markdown_and_docling_pdf():
    res = read_input(shared("docling_docs", "wiki_duck.html"))
    text = res.frame.get_column("text")[0]
    assert res.frame.get_column("method").to_list() == ["trafilatura"]
    assert "Duck" in text and "#" in text  # headings kept as markdown
    assert "Jump to content" not in text  # navigation dropped
    pdf = read_input(shared("docling_docs", "2305.03393v1-pg9.pdf"))
    assert pdf.frame.height == 1 and "TableFormer" in pdf.frame.get_column("text")[0]


def test_bad_documents_are_quarantined_with_a_reason_and_others_go_on(tmp_path):
    enc = _pdf(tmp_path, "locked.pdf", 1, password="secret")
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n garbage that is not a pdf body")
    nav = tmp_path / "nav.html"
    nav.write_text("<html><body><nav><a href='/'>Home</a></nav></body></html>")
    blank = _pdf(tmp_path, "blank.pdf", 2)
    empty = tmp_path / "empty.md"
    empty.write_text("")
    reasons = {p.name: read_input(p).quarantine.get_column("reason").to_list() for p in (enc, corrupt, nav, blank, empty)}
    assert reasons["locked.pdf"] == ["encrypted PDF: a password is required to read it"]
    assert reasons["corrupt.pdf"][0].startswith("corrupt or unreadable PDF")
    assert reasons["nav.html"] == ["HTML page with no main text (trafilatura found no article body)"]
    assert reasons["blank.pdf"][0].startswith("no extractable text on any of its 2 page(s)")
    assert reasons["empty.md"] == ["empty file: nothing to extract"]
    # the column form: one failing document among good ones keeps its error row, the others extract
    good = shutil.copy(shared("docling_docs", "wiki.md"), tmp_path / "wiki.md")
    frame = with_row_ids(pl.DataFrame({"path": [str(enc), str(good)]}), "t")
    out = DocumentExtractor()(frame)
    assert out.filter(pl.col("extract_error").is_not_null()).get_column("source_path").to_list() == [str(enc)]
    assert out.filter(pl.col("text").is_not_null()).get_column("method").to_list() == ["markdown"]
    assert out.get_column("_id").n_unique() == out.height


def test_rule_cleaning_on_real_pdf_text_and_constructed_faults():
    res = read_input(shared("dataflow_examples", "example", "KBCleaningPipeline", "bitter_lesson.pdf"))
    frame = with_row_ids(res.frame, "t")
    out = DocumentWhitespaceNormalizer()(LineUnwrapper()(HyphenationJoiner()(DocumentBoilerplateRemover()(UnicodeFixer()(frame)))))
    assert out.height == 2 and "\n\n\n" not in out.get_column("text")[0]
    faults = with_row_ids(pl.DataFrame({
        "text": [
            "The infor-\nmation age â€™s here.\nPage 3 of 12\nAll rights reserved 2020\nCOVID-\n19 stays",
            "Header Journal\nreal content one\n7",
            "Header Journal\nreal content two\n8",
            "Header Journal\nreal content three\n9",
        ],
        "source_path": ["a", "b", "b", "b"],
    }), "t")
    fixed = UnicodeFixer()(faults)
    assert "’s" in fixed.get_column("text")[0]
    joined = HyphenationJoiner()(DocumentBoilerplateRemover()(fixed)).get_column("text")[0]
    assert "information" in joined and "Page 3" not in joined and "rights reserved" not in joined and "COVID-\n19" in joined
    rep = RepeatedLineRemover(min_pages=3)(faults)
    assert rep.get_column("text").to_list()[1:] == ["real content one", "real content two", "real content three"]
    assert rep.get_column("text")[0] == faults.get_column("text")[0]  # a one-page document is left alone


def test_chunkers_point_back_to_exact_offsets_and_cover_the_source():
    res = read_input(shared("docling_docs", "wiki.md"))
    frame = with_row_ids(res.frame, "t")
    text = frame.get_column("text")[0]
    for chunker in (TokenChunker(max_tokens=80, overlap=16), MarkdownHeadingChunker(), SentenceChunker(max_tokens=60)):
        chunks = chunker(frame)
        assert chunks.height >= 3
        for row in chunks.iter_rows(named=True):
            assert text[row["chunk_start"]:row["chunk_end"]] == row["chunk"]
            assert row["chunk_id"] == f"{row['doc_id']}:p0:{row['chunk_start']}-{row['chunk_end']}"
        cov = chunk_coverage(chunks).get_column("coverage")[0]
        assert cov > 0.97, (chunker, cov)
        assert chunks.get_column("_id").n_unique() == chunks.height
    heads = MarkdownHeadingChunker()(frame).get_column("section").to_list()
    assert any(s and " > " in s for s in heads)
    tok = TokenChunker(max_tokens=80, overlap=16)(frame).sort("chunk_start")
    starts, ends = tok.get_column("chunk_start").to_list(), tok.get_column("chunk_end").to_list()
    assert all(s < e for s, e in zip(starts[1:], ends[:-1]))  # neighbours overlap
    dropped = ChunkLengthFilter(min_tokens=70)(tok)
    assert chunk_coverage(dropped).get_column("coverage")[0] < cov


def test_sentence_spans_do_not_split_abbreviations():
    spans = sentence_spans("Dr. Smith met Mr. Jones in the U.S. Army. They talked. Then 3 left!")
    text = "Dr. Smith met Mr. Jones in the U.S. Army. They talked. Then 3 left!"
    assert [text[s:e] for s, e in spans] == ["Dr. Smith met Mr. Jones in the U.S. Army.", "They talked.", "Then 3 left!"]


def test_novel_token_ratio_rejects_invented_content_and_over_deletion():
    frame = with_row_ids(pl.DataFrame({
        "chunk": ["The cat sat on the mat. Page 4. Click here!"] * 3,
        "cleaned": ["The cat sat on the mat.", "The cat sat on the mat owned by Queen Victoria in 1850.", "cat"],
    }), "t")
    scored = NovelTokenRatio()(frame)
    ratios = scored.get_column("novel_token_ratio").to_list()
    assert ratios[0] == 0.0 and ratios[1] > 0.3
    kept = NovelTokenFilter(max_ratio=0.1)(scored)
    assert kept.get_column("cleaned").to_list() == ["The cat sat on the mat."]
    assert NovelTokenFilter().last_report is None


def test_extraction_quality_filter_drops_number_tables():
    frame = with_row_ids(pl.DataFrame({"text": ["12 34 56 78 90 11 22 33 44 55 66 77 88 99 00 12 34", "A real paragraph of prose that says something useful."]}), "t")
    out = ExtractionQualityFilter(min_chars=10)(frame)
    assert out.get_column("text").to_list() == ["A real paragraph of prose that says something useful."]


def test_extract_document_on_kb_test_doc_is_a_clear_error():
    rows, problems = extract_document(shared("dataflow_examples", "example", "KBCleaningPipeline", "test.doc"))
    assert rows == [] and problems == [(0, "legacy binary .doc is not supported offline; save it as .docx or PDF")]


def test_docx_headings_become_markdown(tmp_path):
    docx = pytest.importorskip("docx")
    d = docx.Document()
    d.add_heading("Results", level=1)
    d.add_paragraph("We measured twelve things.")
    d.add_heading("Details", level=2)
    d.add_paragraph("The eleventh was surprising.")
    d.save(tmp_path / "r.docx")
    res = read_input(tmp_path / "r.docx")
    assert res.frame.get_column("text")[0] == "# Results\n\nWe measured twelve things.\n\n## Details\n\nThe eleventh was surprising."
    assert MarkdownHeadingChunker()(with_row_ids(res.frame, "t")).get_column("section").to_list() == ["Results", "Results > Details"]


def test_llm_cleaning_that_invents_content_is_rejected():
    from operators.knowledge.llm import LLMChunkCleaner
    from operators.llm import LLMResult

    res = read_input(shared("dataflow_examples", "example", "KBCleaningPipeline", "bitter_lesson.pdf"))
    chunks = TokenChunker(max_tokens=60, overlap=0)(with_row_ids(res.frame, "t")).head(3)
    texts = dict(zip(chunks.get_column("_id"), chunks.get_column("chunk")))

    class Fake:  # unit-test client: a faithful cleaning, an invented one, a truncated one
        model = "unit-fake"

        def generate(self, requests):
            replies = []
            for k, r in enumerate(requests):
                src = " ".join(texts[r.id].split())
                text = [src, src + " Sutton later won the Turing Award in 2024 for this essay on transformers and robotics.", " ".join(src.split()[:4])][k % 3]
                replies.append(LLMResult(id=r.id, text=text, model=self.model))
            return replies

    cleaned = LLMChunkCleaner(llm=Fake())(chunks)
    kept = NovelTokenFilter(max_ratio=0.1)(NovelTokenRatio()(cleaned))
    f = NovelTokenFilter(max_ratio=0.1)
    f(NovelTokenRatio()(cleaned))
    assert kept.height == 1 and f.last_report.dropped == {"invented_content": 1, "over_deleted": 1}
