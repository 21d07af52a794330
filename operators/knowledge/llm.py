"""LLM operators of the knowledge pipeline: chunk cleaning, chunk linking, single- and multi-hop QA
synthesis with supporting chunk ids, and the answer-grounding judge."""

from __future__ import annotations

import polars as pl

from operators.base import ID, Filter, Generator, register
from operators.core.common import CoreLLMOperator, field_of, schema_object
from operators.core.synth import normalise_for_match
from operators.llm import LLMClient, PromptTemplate, SamplingParams


@register
class LLMChunkCleaner(CoreLLMOperator, Generator):
    """Asks the model to clean a chunk of extracted text: remove leftover navigation, page furniture,
    reference markers and broken fragments, fix spacing, and keep every fact and sentence as written.

    Reads: `text` (default `chunk`). Writes: `cleaned` (null when the call failed) and
    `cleaned_meta`. Follow it with `novel_token_ratio` + `novel_token_filter`, which reject a
    cleaning that invented content or deleted too much. Give `max_tokens` room for the whole chunk.
    """

    reads = {"text": "chunk"}
    writes = {"output": "cleaned"}
    default_params = SamplingParams(temperature=0.0, max_tokens=1024)
    default_template = PromptTemplate(
        "kb_clean",
        "Clean this text extracted from a document. Remove navigation, page headers and footers, "
        "citation markers and broken fragments; fix spacing. Do not add, explain or summarise anything: "
        "keep every fact and sentence as written.\n\nText:\n{text}\n\nReply with the cleaned text only.",
        "You clean extracted document text without changing its content.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols)
        return self.join_results(frame, res, [pl.col("text").str.strip_chars().alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class ChunkLinker(Generator):
    """Turns chunks into QA sources: every chunk alone (`hops` = 1) and, for multi-hop QA, pairs of
    chunks of the same document that follow each other or share a capitalised entity (`hops` = 2),
    at most `max_pairs_per_doc` per document.

    Reads: `text` (default `chunk`), `chunk_id`, `document` (default `doc_id`). Writes one row per
    source: `passages` (List[String]), `supporting_chunk_ids` (List[String]), `hops`, `link`
    (`single`, `adjacent` or `entity:<name>`). Use it between chunking/cleaning and QA synthesis.
    """

    reads = {"text": "chunk", "chunk_id": "chunk_id", "document": "doc_id"}
    writes = {"passages": "passages", "supporting": "supporting_chunk_ids", "hops": "hops", "link": "link"}

    def __init__(self, max_pairs_per_doc: int = 4, multi_hop: bool = True):
        self.max_pairs_per_doc, self.multi_hop = max_pairs_per_doc, multi_hop

    def run(self, frame, cols):
        t, cid, doc = cols["text"], cols["chunk_id"], cols["document"]
        p, s, h, ln = cols["passages"], cols["supporting"], cols["hops"], cols["link"]
        base = frame.select(ID, pl.col(doc).alias("__doc"), pl.col(cid).alias("__cid"), pl.col(t).alias("__t"))
        single = frame.with_columns(
            pl.concat_list(pl.col(t)).alias(p), pl.concat_list(pl.col(cid)).alias(s), pl.lit(1, pl.Int64).alias(h), pl.lit("single").alias(ln)
        )
        if not self.multi_hop or frame.height < 2:
            return single
        ents = base.with_columns(pl.col("__t").str.extract_all(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b").list.unique().alias("__e"))
        ordered = ents.with_columns(pl.int_range(pl.len()).over("__doc").alias("__k"))
        pairs = ordered.join(ordered, on="__doc", suffix="_b").filter(pl.col("__k") < pl.col("__k_b"))
        shared = pairs.with_columns(pl.col("__e").list.set_intersection(pl.col("__e_b")).list.first().alias("__shared"))
        linked = (
            shared.filter((pl.col("__k_b") == pl.col("__k") + 1) | pl.col("__shared").is_not_null())
            .with_columns(pl.when(pl.col("__shared").is_not_null()).then("entity:" + pl.col("__shared")).otherwise(pl.lit("adjacent")).alias(ln))
            .sort("__doc", pl.col("__shared").is_null(), "__k", "__k_b")
            .filter(pl.int_range(pl.len()).over("__doc") < self.max_pairs_per_doc)
        )
        first = frame.drop([c for c in (p, s, h, ln) if c in frame.columns])
        multi = (
            linked.select(pl.col(ID).alias("__a"), pl.col(f"{ID}_b").alias("__b"), pl.concat_list("__t", "__t_b").alias(p), pl.concat_list("__cid", "__cid_b").alias(s), ln)
            .join(first, left_on="__a", right_on=ID)
            .with_columns((pl.col("__a") + "+" + pl.col("__b")).alias(ID), pl.lit(2, pl.Int64).alias(h))
            .drop("__a", "__b")
        )
        return pl.concat([single, multi.select(single.columns)], how="vertical_relaxed")


_QA_SCHEMA = schema_object({"question": {"type": "string", "maxLength": 400}, "answer": {"type": "string", "maxLength": 300}})


class _QAGenerator(CoreLLMOperator, Generator):
    """Shared single/multi-hop QA logic (not registered): rows whose `hops` match are asked, the
    others keep what an earlier generator wrote."""

    reads = {"passages": "passages", "hops": "hops"}
    writes = {"question": "question", "answer": "answer"}
    hops = 1

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        q, a = cols["question"], cols["answer"]
        mine = pl.col(cols["hops"]) == self.hops
        todo = frame.filter(mine).with_columns(
            pl.col(cols["passages"]).list.get(0, null_on_oob=True).alias("__p1"),
            pl.col(cols["passages"]).list.get(1, null_on_oob=True).alias("__p2"),
        )
        res = self.call_llm(todo, self._render, schema=_QA_SCHEMA)
        from operators.core.common import validate_structured

        res = validate_structured(res, _QA_SCHEMA)
        got = res.select(ID, field_of("parsed", "question", pl.String).alias("__q"), field_of("parsed", "answer", pl.String).alias("__a"), pl.col("meta").alias("__m"))
        out = frame.join(got, on=ID, how="left", maintain_order="left")
        keep = lambda c, new: pl.coalesce(pl.col(new), pl.col(c)) if c in frame.columns else pl.col(new)
        meta = f"{q}_meta"
        return out.with_columns(keep(q, "__q").alias(q), keep(a, "__a").alias(a), keep(meta, "__m").alias(meta)).drop("__q", "__a", "__m")

    def _render(self, row):
        return self.template.render({"passage": row["__p1"], "passage_2": row["__p2"]})

    def input_columns(self, cols):
        return [(r, cols[r]) for r in self.reads if cols.get(r)]

    def output_columns(self, cols):
        return [cols["question"], cols["answer"], f"{cols['question']}_meta"]


@register
class SingleHopQAGenerator(_QAGenerator):
    """Writes one question and its short answer from a single passage (rows with `hops` = 1); the
    answer must be stated in the passage. The supporting chunk id is the row's `supporting_chunk_ids`.

    Reads: `passages`, `hops`. Writes: `question`, `answer`, `question_meta` (other rows keep theirs).
    Use it after `chunk_linker` for factual single-hop training QA.
    """

    hops = 1
    default_params = SamplingParams(temperature=0.2, max_tokens=320)
    default_template = PromptTemplate(
        "kb_single_hop_qa",
        "Passage:\n{passage}\n\nWrite one question that this passage answers, and its answer: a short phrase "
        'copied from the passage. Reply in JSON: {{"question": "...", "answer": "..."}}.',
        "You write factual questions answered by a given passage.",
    )


@register
class MultiHopQAGenerator(_QAGenerator):
    """Writes one question that needs both passages of a linked pair (rows with `hops` = 2): a fact of
    the first passage leads to the answer in the second; both chunk ids are the support.

    Reads: `passages`, `hops`. Writes: `question`, `answer`, `question_meta` (other rows keep theirs).
    Use it after `chunk_linker` for multi-hop training QA.
    """

    hops = 2
    default_params = SamplingParams(temperature=0.2, max_tokens=384)
    default_template = PromptTemplate(
        "kb_multi_hop_qa",
        "Passage A:\n{passage}\n\nPassage B:\n{passage_2}\n\nWrite one question that can only be answered by "
        "combining a fact from passage A with a fact from passage B, and its short answer copied from the passages. "
        'Reply in JSON: {{"question": "...", "answer": "..."}}.',
        "You write multi-hop questions that need two passages.",
    )


@register
class AnswerGroundingJudge(CoreLLMOperator, Generator):
    """Judges whether an answer to a question is supported by its passages, and verifies the quoted
    evidence: the model must copy a supporting span that really occurs in the passages.

    Reads: `question`, `answer`, `passages` (List[String]). Writes: `grounded` (Boolean: verdict
    "supported" AND the quote, normalised, is found in the joined passages, and the normalised
    answer occurs in them too; null when the call failed), `grounding_evidence`, `grounded_meta`.
    Use it as the last check of synthesised QA; `grounded_qa_filter` keeps the supported rows.
    """

    reads = {"question": "question", "answer": "answer", "passages": "passages"}
    writes = {"grounded": "grounded", "evidence": "grounding_evidence"}
    default_params = SamplingParams(temperature=0.0, max_tokens=320)
    default_template = PromptTemplate(
        "kb_answer_grounding",
        "Passages:\n{context}\n\nQuestion: {question}\nAnswer: {answer}\n\nIs the answer correct and supported by the "
        'passages? Copy the supporting sentence word for word as "evidence", then give the verdict. Reply in JSON: '
        '{{"evidence": "...", "verdict": "supported" or "unsupported"}}.',
        "You check answers against passages and never use outside knowledge.",
    )
    schema = schema_object({"evidence": {"type": "string", "maxLength": 600}, "verdict": {"type": "string", "enum": ["supported", "unsupported"]}})

    def __init__(self, min_quote_chars: int = 8, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.min_quote_chars = min_quote_chars
        self._setup(template, params, llm)

    def run(self, frame, cols):
        g, ev = cols["grounded"], cols["evidence"]
        ctx = frame.with_columns(pl.col(cols["passages"]).list.join("\n\n").alias("__ctx"))
        res = self.call_llm(ctx, lambda r: self.template.render({"context": r["__ctx"], "question": r[cols["question"]], "answer": r[cols["answer"]]}), schema=self.schema)
        from operators.core.common import validate_structured

        res = validate_structured(res, self.schema)
        out = self.join_results(ctx, res, [field_of("parsed", "verdict", pl.String).alias("__v"), field_of("parsed", "evidence", pl.String).alias(ev)], f"{g}_meta")
        src = normalise_for_match(pl.col("__ctx").fill_null(""))
        quote = normalise_for_match(pl.col(ev).fill_null(""))
        ans = normalise_for_match(pl.col(cols["answer"]).fill_null(""))
        ok = (pl.col("__v") == "supported") & (quote.str.len_chars() >= self.min_quote_chars) & src.str.contains(quote, literal=True) & (ans.str.len_chars() > 0) & src.str.contains(ans, literal=True)
        return out.with_columns(pl.when(pl.col("__v").is_null()).then(None).otherwise(ok).alias(g)).drop("__v", "__ctx")

    def input_columns(self, cols):
        return [(r, cols[r]) for r in self.reads if cols.get(r)]

    def output_columns(self, cols):
        return [cols["grounded"], cols["evidence"], f"{cols['grounded']}_meta"]


@register
class GroundedQAFilter(Filter):
    """Keeps QA rows judged grounded; drops the rest with the reason `ungrounded` (verdict or quote
    failed) or `not_judged` (the judge's call failed).

    Reads: `grounded`. Use it right after `answer_grounding_judge`.
    """

    reads = {"grounded": "grounded"}

    def keep(self, cols):
        g = pl.col(cols["grounded"])
        return {"not_judged": g.is_not_null(), "ungrounded": g}
