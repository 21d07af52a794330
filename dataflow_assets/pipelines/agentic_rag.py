"""Agentic RAG: a passage corpus -> a retrieval index (an asset) -> atomic tasks that need retrieval
-> two-hop tasks composed through a shared entity, verified from the union of their supports ->
a depth- and a width-expanded version of each, verified the same way (DataFlow's agentic RAG
pipelines).

Input: passages as jsonl/csv/parquet with `text` (or `contents`, as in DataFlow's
AgenticRAGPipeline examples), or document files (PDF/HTML/DOCX/markdown, extracted like the
knowledge pipeline). Each partition is one corpus.

Stages: token chunks (passages with ids and offsets) -> short passages dropped -> `index`: the
BM25 (+ dense, when the `embed` extra is installed) index under `$DATAFLOW_HOME/indexes/`, reused
for an unchanged corpus -> atomic tasks (question, answer, supporting passage) -> answerability
(answered with the passage, not without) -> tasks that need retrieval kept -> hybrid retrieval and
recall@5/10 of the support -> pairs through a shared entity -> composed two-hop question ->
verifier (answer from the union of supports) -> verified tasks kept -> then, per verified task:
`deepen`: depth expansion (`deeper_question`: the composed question with one more entity replaced
by a description from passage B; same answer, `answer_b`) -> `verify_deeper` (the same verifier,
on the same supports) -> `mask_deeper` -> `widen`: width expansion (`wide_question` asks both
atomic questions at once, `wide_answer` = `answer_a; answer_b`) -> `verify_wide` (every part of
the answer must be in the reply) -> `mask_wide`.

A rejected expansion does not cost the verified two-hop task it came from: the row stays, its
`deeper_question` (or `wide_question` and `wide_answer`) is null and `deeper_rejected` (or
`wide_rejected`) says why: `not_verified` (the verifier's answer from the supports did not match),
`not_checked` (a call failed), `empty_question`, `bridge_leaked` (the expansion names the bridge
entity: a two-hop question turned one-hop, or a width question that states one of its own answers)
or `unchanged` (a depth expansion that repeats the composed question). Both reasons are null for a
kept expansion; the verifier's replies and F1 stay beside them (`deeper_verifier_answer`, ...).

Gate (blocking): at least `$DATAFLOW_RAG_ANSWERED_FLOOR` (default 0.5) of atomic tasks are
answered correctly with their passage (`answerability`): below it the generator or the model is
producing tasks its own passages do not answer.
"""

from __future__ import annotations

import os

import polars as pl

from operators.base import Pipeline
from operators.knowledge.chunking import TokenChunker
from operators.knowledge.cleaning import ChunkLengthFilter
from operators.rag.retrieval import CorpusIndexer, HybridRetriever, RetrievalRecall
from operators.rag.tasks import (
    AnswerabilityChecker,
    AtomicTaskGenerator,
    ComposedTaskVerifier,
    DepthExpander,
    MultiHopComposer,
    NeedsRetrievalFilter,
    SharedEntityPairer,
    UnverifiedExpansionMasker,
    VerifiedTaskFilter,
    WidthExpander,
)

ANSWERED_ENV, DEFAULT_ANSWERED = "DATAFLOW_RAG_ANSWERED_FLOOR", 0.5


class AgenticRAGPipeline(Pipeline):
    """Passages -> retrieval index -> atomic tasks needing retrieval -> verified two-hop tasks, each
    with a verified depth expansion and width expansion (null with a reason when rejected)."""

    name = "agentic_rag"
    input_schema = {"text": pl.String}
    description = "Agentic RAG: passages -> BM25/dense index -> atomic tasks -> answerability -> shared-entity composition -> verified multi-hop tasks -> verified depth/width expansions"

    def __init__(self, passage_tokens: int = 160, min_passage_tokens: int = 12, dense: str = "auto", max_pairs: int = 100):
        self.passages = TokenChunker(max_tokens=passage_tokens, overlap=passage_tokens // 8)
        self.passage_length = ChunkLengthFilter(min_tokens=min_passage_tokens)
        self.index = CorpusIndexer(dense=dense)
        self.atomic = AtomicTaskGenerator()
        self.answerability = AnswerabilityChecker()
        self.needs_retrieval = NeedsRetrievalFilter()
        self.retrieve = HybridRetriever(k=10)
        self.recall = RetrievalRecall()
        self.pair = SharedEntityPairer(max_pairs=max_pairs)
        self.compose = MultiHopComposer()
        self.verify = ComposedTaskVerifier()
        self.verified = VerifiedTaskFilter()
        self.deepen = DepthExpander()
        self.verify_deeper = ComposedTaskVerifier()
        self.mask_deeper = UnverifiedExpansionMasker()
        self.widen = WidthExpander()
        self.verify_wide = ComposedTaskVerifier(answer_sep="; ")  # WidthExpander joins the two answers with "; "
        self.mask_wide = UnverifiedExpansionMasker()

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = self.passages(frame, text="text", chunk="passage", chunk_id="passage_id")
        frame = self.passage_length(frame, chunk="passage")
        frame = self.index(frame, text="passage", passage_id="passage_id")
        frame = self.atomic(frame, text="passage", passage_id="passage_id")
        frame = self.answerability(frame, context="passage")
        frame = self.needs_retrieval(frame)
        frame = self.retrieve(frame, query="question")
        frame = self.recall(frame)
        frame = self.pair(frame, passage="passage", passage_id="passage_id")
        frame = self.compose(frame)
        frame = self.verify(frame)
        frame = self.verified(frame)
        frame = self.deepen(frame, question="composed_question", answer="answer_b", passage="passage_b")
        frame = self.verify_deeper(frame, question="deeper_question", answer="answer_b", passages="passages",
                                   verified="deeper_verified", reply="deeper_verifier_answer", f1="deeper_verifier_f1")
        frame = self.mask_deeper(frame, text="deeper_question", verified="deeper_verified", source="composed_question", reason="deeper_rejected")
        frame = self.widen(frame)  # the pairer's question_a/answer_a/question_b/answer_b are the expander's own columns
        frame = self.verify_wide(frame, question="wide_question", answer="wide_answer", passages="passages",
                                 verified="wide_verified", reply="wide_verifier_answer", f1="wide_verifier_f1")
        return self.mask_wide(frame, text="wide_question", answer="wide_answer", verified="wide_verified", reason="wide_rejected")


def answered_share(frame: pl.DataFrame) -> tuple[bool, dict]:
    try:
        floor = float(os.environ.get(ANSWERED_ENV, DEFAULT_ANSWERED))
    except ValueError:
        floor = DEFAULT_ANSWERED
    if frame.height == 0:
        return True, {"answered_with_passage_share": 0.0, "floor": floor, "rows": 0}
    share = float((frame.get_column("f1_with_context").fill_null(0.0) >= 0.5).mean())
    need = float(frame.get_column("needs_retrieval").fill_null(False).mean())
    return share >= floor, {"answered_with_passage_share": round(share, 4), "needs_retrieval_share": round(need, 4), "floor": floor, "rows": frame.height}


def _spec():
    from dataflow_assets.checks import Gate
    from dataflow_assets.pipelines import ShippedPipeline

    return ShippedPipeline(
        name="agentic_rag",
        build=AgenticRAGPipeline,
        description=AgenticRAGPipeline.description,
        rename={"contents": "text"},
        gates=[
            Gate("answered_with_passage_share", f"At least ${ANSWERED_ENV} (default {DEFAULT_ANSWERED}) of atomic tasks are answered correctly from their passage.",
                 lambda d: answered_share(d.frame), "answerability"),
        ],
    )


SPEC = _spec()
