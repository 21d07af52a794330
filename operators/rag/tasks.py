"""Agentic RAG task synthesis: atomic tasks (question, answer, supporting passage) from documents,
answer normalisation and EM/F1, the answerability check (answered with the passage, not without:
the task needs retrieval), multi-hop composition through a shared entity, depth and width
expansion, and the verifier that a composed task is answerable from the union of its supports."""

from __future__ import annotations

import re
import string
from collections import Counter

import polars as pl

from operators.base import ID, Evaluator, Filter, Generator, Refiner, register
from operators.core.common import (
    CoreLLMOperator,
    field_of,
    schema_object,
    validate_structured,
)
from operators.llm import LLMClient, PromptTemplate, SamplingParams

_ARTICLES = r"\b(a|an|the)\b"


def normalise_answer_expr(text: pl.Expr) -> pl.Expr:
    """SQuAD answer normalisation as a Polars expression: lower case, punctuation and articles
    removed, whitespace collapsed."""
    return (
        text.str.to_lowercase()
        .str.replace_all(r"[\p{P}\p{S}]", " ")
        .str.replace_all(_ARTICLES, " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def normalise_answer(s: str) -> str:
    """The same normalisation for one string (SQuAD's `normalize_answer`)."""
    s = s.lower()
    s = "".join(" " if ch in set(string.punctuation) else ch for ch in s)
    s = re.sub(_ARTICLES, " ", s)
    return " ".join(s.split())


def token_f1(pred: str | None, gold: str | None) -> float | None:
    """SQuAD token F1 of two answers (normalised here); None when either is null."""
    if pred is None or gold is None:
        return None
    p, g = normalise_answer(pred).split(), normalise_answer(gold).split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def _f1_expr(pred: str, gold: str) -> pl.Expr:
    # multiset overlap of two token lists has no Polars expression: a per-row function over the struct
    return pl.struct(pl.col(pred).alias("p"), pl.col(gold).alias("g")).map_elements(lambda r: token_f1(r["p"], r["g"]), return_dtype=pl.Float64)


@register
class AnswerNormalizer(Refiner):
    """Normalises an answer the way SQuAD/HotpotQA scoring does: lower case, punctuation and
    articles (a, an, the) removed, whitespace collapsed.

    Reads/rewrites: `text` (default `answer`). Use it to store comparable gold answers; the scorer
    normalises on its own, so this is for export and dedup.
    """

    reads = {"text": "answer"}

    def refine(self, text, cols):
        return normalise_answer_expr(text)


@register
class AnswerScorer(Evaluator):
    """Exact match and token F1 of a predicted answer against a gold answer, after SQuAD
    normalisation (EM also counts a gold answer contained in the prediction as `contains`).

    Reads: `prediction`, `gold` (default `answer`). Writes: `em` (Boolean), `f1` (Float64),
    `contains` (Boolean); null when either side is null. Use it to score answers of the
    answerability check and the composed-task verifier, or any QA evaluation.
    """

    reads = {"prediction": "prediction", "gold": "answer"}
    writes = {"em": "em", "f1": "f1", "contains": "contains"}

    def scores(self, cols):
        p, g = normalise_answer_expr(pl.col(cols["prediction"])), normalise_answer_expr(pl.col(cols["gold"]))
        return [
            (p == g).alias(cols["em"]),
            _f1_expr(cols["prediction"], cols["gold"]).alias(cols["f1"]),
            ((g.str.len_chars() > 0) & p.str.contains(g, literal=True)).alias(cols["contains"]),
        ]


_TASK_SCHEMA = schema_object({
    "question": {"type": "string", "maxLength": 300},
    "answer": {"type": "string", "maxLength": 120},
    "evidence": {"type": "string", "maxLength": 500},
})


@register
class AtomicTaskGenerator(CoreLLMOperator, Generator):
    """Writes an atomic retrieval task from a passage: a question that needs a specific fact of the
    passage, its short answer (an entity, number or date copied from the passage) and the supporting
    sentence. The passage id becomes the task's `supporting_ids`.

    Reads: `text` (default `passage`), `passage_id`. Writes: `question`, `answer`, `evidence`,
    `supporting_ids` (List[String]), `question_meta`. Use it as the first step of agentic RAG task
    synthesis; follow it with `answerability_checker`.
    """

    reads = {"text": "passage", "passage_id": "passage_id"}
    writes = {"question": "question", "answer": "answer", "evidence": "evidence", "supporting": "supporting_ids"}
    default_params = SamplingParams(temperature=0.2, max_tokens=384)
    default_template = PromptTemplate(
        "rag_atomic_task",
        "Passage:\n{text}\n\nWrite one question about a specific fact in this passage that someone could not answer "
        "without reading it. The question must name what it asks about (no 'this passage'). The answer is a short "
        "entity, number or date copied from the passage; the evidence is the sentence that states it. "
        'Reply in JSON: {{"question": "...", "answer": "...", "evidence": "..."}}.',
        "You write precise, self-contained questions for a retrieval benchmark.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        res = self.ask(frame, cols, schema=_TASK_SCHEMA)
        out = self.join_results(
            frame, res,
            [field_of("parsed", k, pl.String).alias(cols[k]) for k in ("question", "answer", "evidence")],
            f"{cols['question']}_meta",
        )
        return out.with_columns(pl.concat_list(pl.col(cols["passage_id"]).cast(pl.String)).alias(cols["supporting"]))

    def output_columns(self, cols):
        return [cols["question"], cols["answer"], cols["evidence"], cols["supporting"], f"{cols['question']}_meta"]


_ANSWER_SCHEMA = schema_object({"answer": {"type": "string", "maxLength": 120}})


class _Answerer(CoreLLMOperator):
    """Answer a question, optionally with a context (not registered)."""

    with_context = PromptTemplate(
        "rag_answer_with_context",
        "Context:\n{context}\n\nQuestion: {question}\n\nAnswer with a short phrase from the context. "
        'Reply in JSON: {{"answer": "..."}}.',
        "You answer questions from the given context only.",
    )
    closed_book = PromptTemplate(
        "rag_answer_closed_book",
        "Question: {question}\n\nAnswer with a short phrase; if you do not know, answer \"unknown\". "
        'Reply in JSON: {{"answer": "..."}}.',
        "You answer questions from memory.",
    )

    def input_columns(self, cols):
        return [(r, cols[r]) for r in self.reads if cols.get(r)]  # the templates are filled by `answer`, not from columns

    def answer(self, frame: pl.DataFrame, question: str, context: pl.Expr | None, template: PromptTemplate) -> pl.DataFrame:
        """`_id`, `__ans` (null on failure), `__meta` for every row of `frame`."""
        work = frame.select(ID, pl.col(question).alias("__q"), (context if context is not None else pl.lit(None, pl.String)).alias("__c"))
        res = self.call_llm(work, lambda r: template.render({"question": r["__q"], "context": r["__c"]}), schema=_ANSWER_SCHEMA)
        res = validate_structured(res, _ANSWER_SCHEMA)
        return res.select(ID, field_of("parsed", "answer", pl.String).alias("__ans"), pl.col("meta").alias("__meta"))


@register
class AnswerabilityChecker(_Answerer, Evaluator):
    """The retrieval-need check of an atomic task: the model answers the question twice, with the
    supporting passage and without it (closed book), and both answers are scored against the gold
    answer (token F1 after SQuAD normalisation).

    Reads: `question`, `answer`, `context` (default `passage`). Writes: `answer_with_context`,
    `answer_closed_book`, `f1_with_context`, `f1_closed_book`, `needs_retrieval` (Boolean: F1 with
    context >= `min_f1` and closed-book F1 < `max_closed_book_f1`; null when a call failed) and
    `needs_retrieval_meta`. Use it to keep tasks that are answerable from their passage but not from
    the model's memory; `needs_retrieval_filter` drops the rest.
    """

    reads = {"question": "question", "answer": "answer", "context": "passage"}
    writes = {"needs_retrieval": "needs_retrieval"}
    default_params = SamplingParams(temperature=0.0, max_tokens=96)

    def __init__(self, min_f1: float = 0.5, max_closed_book_f1: float = 0.5, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.min_f1, self.max_closed_book_f1 = min_f1, max_closed_book_f1
        self._setup(self.with_context, params, llm)

    def version_parts(self):
        return [*super().version_parts(), self.closed_book.user, self.closed_book.system]

    def run(self, frame, cols):
        q, a, n = cols["question"], cols["answer"], cols["needs_retrieval"]
        ctx = pl.col(cols["context"])
        if ctx.meta.output_name() in frame.columns and frame.schema[cols["context"]] == pl.List(pl.String):
            ctx = ctx.list.join("\n\n")
        with_ctx = self.answer(frame, q, ctx, self.with_context).rename({"__ans": "answer_with_context", "__meta": f"{n}_meta"})
        report = dict(self.last_report.llm)
        closed = self.answer(frame, q, None, self.closed_book).rename({"__ans": "answer_closed_book"}).drop("__meta")
        self.last_report.llm = {k: (report.get(k, 0) + v if isinstance(v, int) else v) for k, v in self.last_report.llm.items()}
        drop = [c for c in ("answer_with_context", "answer_closed_book", f"{n}_meta") if c in frame.columns]
        out = frame.drop(drop).join(with_ctx, on=ID, how="left", maintain_order="left").join(closed, on=ID, how="left", maintain_order="left")
        out = out.with_columns(_f1_expr("answer_with_context", a).alias("f1_with_context"), _f1_expr("answer_closed_book", a).alias("f1_closed_book"))
        need = (pl.col("f1_with_context") >= self.min_f1) & (pl.col("f1_closed_book") < self.max_closed_book_f1)
        return out.with_columns(need.alias(n))

    def output_columns(self, cols):
        n = cols["needs_retrieval"]
        return ["answer_with_context", "answer_closed_book", "f1_with_context", "f1_closed_book", n, f"{n}_meta"]


@register
class NeedsRetrievalFilter(Filter):
    """Keeps tasks whose answerability check passed; drops the rest with the reason
    `not_answerable_with_passage`, `answerable_without_passage` or `not_checked` (a call failed).

    Reads: `needs_retrieval`, `f1_with_context`, `f1_closed_book`. Use it right after
    `answerability_checker`.
    """

    reads = {"needs_retrieval": "needs_retrieval", "f1_with": "f1_with_context", "f1_without": "f1_closed_book"}

    def __init__(self, min_f1: float = 0.5, max_closed_book_f1: float = 0.5):
        self.min_f1, self.max_closed_book_f1 = min_f1, max_closed_book_f1

    def keep(self, cols):
        return {
            "not_checked": pl.col(cols["needs_retrieval"]).is_not_null(),
            "not_answerable_with_passage": pl.col(cols["f1_with"]) >= self.min_f1,
            "answerable_without_passage": pl.col(cols["f1_without"]) < self.max_closed_book_f1,
        }


@register
class SharedEntityPairer(Filter):
    """Pairs atomic tasks for multi-hop composition through a shared entity: task A's answer (the
    bridge entity, at least `min_chars` characters after normalisation) appears in task B's passage
    or question, with A and B from different passages. At most `max_pairs` pairs, bridge answers
    appearing in few passages first (specific entities make better bridges).

    Reads: `question`, `answer`, `passage`, `passage_id`. Writes one row per pair: `question_a`,
    `answer_a`, `passage_a`, `question_b`, `answer_b`, `passage_b`, `bridge`, `supporting_ids`
    (both passage ids), `passages` (both passages), `_id` = `<id A>+<id B>`. Use it after the
    answerability filter, before `multi_hop_composer`. Its kind is `filter`: a shard whose tasks
    share no entity legitimately yields no pair (a warning, not a failure, in the asset layer).
    """

    reads = {"question": "question", "answer": "answer", "passage": "passage", "passage_id": "passage_id"}
    writes = {"bridge": "bridge", "supporting": "supporting_ids"}

    def __init__(self, min_chars: int = 3, max_pairs: int = 200):
        self.min_chars, self.max_pairs = min_chars, max_pairs

    def run(self, frame, cols):
        t = frame.select(
            pl.col(ID), pl.col(cols["question"]).alias("q"), pl.col(cols["answer"]).alias("a"),
            pl.col(cols["passage"]).alias("p"), pl.col(cols["passage_id"]).cast(pl.String).alias("pid"),
        ).with_columns(normalise_answer_expr(pl.col("a")).alias("na"), normalise_answer_expr(pl.col("p") + " " + pl.col("q")).alias("nb"))
        a = t.filter(pl.col("na").str.len_chars() >= self.min_chars)
        pairs = (
            a.join(t, how="cross", suffix="_b")
            .filter((pl.col("pid") != pl.col("pid_b")) & pl.col("nb_b").str.contains(pl.lit(" ") + pl.col("na") + pl.lit(" ")).or_(pl.col("nb_b").str.starts_with(pl.col("na") + " ")))
        )
        spread = pairs.group_by("na").agg(pl.col("pid_b").n_unique().alias("__spread"))
        pairs = pairs.join(spread, on="na").sort("__spread", ID, f"{ID}_b").head(self.max_pairs)
        return pairs.select(
            (pl.col(ID) + "+" + pl.col(f"{ID}_b")).alias(ID),
            pl.col("q").alias("question_a"), pl.col("a").alias("answer_a"), pl.col("p").alias("passage_a"),
            pl.col("q_b").alias("question_b"), pl.col("a_b").alias("answer_b"), pl.col("p_b").alias("passage_b"),
            pl.col("a").alias(cols["bridge"]), pl.concat_list("pid", "pid_b").alias(cols["supporting"]),
            pl.concat_list("p", "p_b").alias("passages"),
        )

    def output_columns(self, cols):
        return ["question_a", "answer_a", "passage_a", "question_b", "answer_b", "passage_b", cols["bridge"], cols["supporting"], "passages"]


_COMPOSE_SCHEMA = schema_object({"question": {"type": "string", "maxLength": 400}})


class _Rewriter(CoreLLMOperator, Generator):
    """Template over columns -> one JSON `question` (not registered)."""

    writes = {"output": "composed_question"}

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols, schema=_COMPOSE_SCHEMA)
        return self.join_results(frame, res, [field_of("parsed", "question", pl.String).alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class MultiHopComposer(_Rewriter):
    """Composes two atomic tasks into one two-hop question through their bridge entity: the answer of
    task A is replaced in task B's question by a description derived from task A, so answering
    needs passage A (to find the bridge) and then passage B. The answer is task B's answer.

    Reads: `question_a`, `answer_a`, `question_b`, `answer_b`, `bridge` (from `shared_entity_pairer`).
    Writes: `composed_question`, `composed_question_meta`. Follow it with `composed_task_verifier`.
    """

    reads = {"question_a": "question_a", "answer_a": "answer_a", "question_b": "question_b", "answer_b": "answer_b", "bridge": "bridge"}
    default_params = SamplingParams(temperature=0.2, max_tokens=256)
    default_template = PromptTemplate(
        "rag_multihop_compose",
        "Question 1: {question_a}\nAnswer 1: {answer_a}\n\nQuestion 2: {question_b}\nAnswer 2: {answer_b}\n\n"
        "'{bridge}' links them. Write one question whose answer is Answer 2, in which '{bridge}' is not named but "
        "described using Question 1, so that answering needs both facts. Reply in JSON: {{\"question\": \"...\"}}.",
        "You compose multi-hop questions.",
    )


@register
class DepthExpander(_Rewriter):
    """Depth expansion: rewrites a question so one named entity in it is replaced by an indirect
    description taken from its supporting passage, adding a reasoning step; the answer is unchanged.

    Reads: `question`, `answer`, `passage`. Writes: `deeper_question`, `deeper_question_meta`. Use it
    to make atomic or composed tasks harder; verify the result with `composed_task_verifier`.
    """

    reads = {"question": "question", "answer": "answer", "passage": "passage"}
    writes = {"output": "deeper_question"}
    default_params = SamplingParams(temperature=0.3, max_tokens=256)
    default_template = PromptTemplate(
        "rag_depth_expand",
        "Passage:\n{passage}\n\nQuestion: {question}\nAnswer: {answer}\n\nRewrite the question so that one entity it "
        "names is replaced by a description of that entity from the passage, keeping the same answer. "
        'Reply in JSON: {{"question": "..."}}.',
        "You make questions need one more reasoning step.",
    )


@register
class WidthExpander(_Rewriter):
    """Width expansion: merges two tasks into one question that asks for both answers (answer:
    `<answer A>; <answer B>`), so answering needs two independent retrievals.

    Reads: `question_a`, `answer_a`, `question_b`, `answer_b`. Writes: `wide_question`,
    `wide_answer`, `wide_question_meta`. Use it on pairs from `shared_entity_pairer` (or any two tasks);
    verify it with `composed_task_verifier(answer_sep="; ")` so both answers must come back.
    """

    reads = {"question_a": "question_a", "answer_a": "answer_a", "question_b": "question_b", "answer_b": "answer_b"}
    writes = {"output": "wide_question", "answer": "wide_answer"}
    default_params = SamplingParams(temperature=0.2, max_tokens=256)
    default_template = PromptTemplate(
        "rag_width_expand",
        "Question 1: {question_a}\nQuestion 2: {question_b}\n\nWrite one natural question that asks both things at once. "
        'Reply in JSON: {{"question": "..."}}.',
        "You merge questions.",
    )

    def run(self, frame, cols):
        out = super().run(frame, cols)
        return out.with_columns((pl.col(cols["answer_a"]) + "; " + pl.col(cols["answer_b"])).alias(cols["answer"]))

    def output_columns(self, cols):
        return [*super().output_columns(cols), cols["answer"]]


@register
class ComposedTaskVerifier(_Answerer, Evaluator):
    """Verifies a composed task: the model answers the composed question from the union of its
    supporting passages, and the answer is scored against the task's gold answer (token F1 >=
    `min_f1`, or the gold answer contained in the reply). With `answer_sep` (e.g. `"; "` for
    `width_expander`'s answers) the gold answer has several parts and every part must be matched
    that way, so a reply that answers only one half of a width-expanded question is rejected.

    Reads: `question` (default `composed_question`), `answer` (default `answer_b`), `passages`
    (default `passages`: List[String], or a String). Writes: `reply` (default `verifier_answer`),
    `f1` (default `verifier_f1`: F1 of the whole reply against the whole gold answer), `verified`
    (Boolean; null when the call failed) and `<verified>_meta`. Use it after `multi_hop_composer`
    / expansion (once per question column, with its own output names); `verified_task_filter`
    keeps the verified tasks, `unverified_expansion_masker` nulls a rejected expansion.
    """

    reads = {"question": "composed_question", "answer": "answer_b", "passages": "passages"}
    writes = {"verified": "verified", "reply": "verifier_answer", "f1": "verifier_f1"}
    default_params = SamplingParams(temperature=0.0, max_tokens=96)

    def __init__(self, min_f1: float = 0.5, answer_sep: str | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.min_f1, self.answer_sep = min_f1, answer_sep
        self._setup(self.with_context, params, llm)

    def _matches(self, reply: str | None, gold: str | None) -> bool | None:
        if reply is None or gold is None:
            return None
        r = normalise_answer(reply)
        parts = gold.split(self.answer_sep) if self.answer_sep else [gold]
        return all((token_f1(reply, g) or 0.0) >= self.min_f1 or (bool(normalise_answer(g)) and normalise_answer(g) in r) for g in parts)

    def run(self, frame, cols):
        v, reply, f1 = cols["verified"], cols["reply"], cols["f1"]
        ctx = pl.col(cols["passages"])
        if frame.schema[cols["passages"]] == pl.List(pl.String):
            ctx = ctx.list.join("\n\n")
        ans = self.answer(frame, cols["question"], ctx, self.with_context).rename({"__ans": reply, "__meta": f"{v}_meta"})
        out = frame.drop([c for c in (reply, f1, v, f"{v}_meta") if c in frame.columns]).join(ans, on=ID, how="left", maintain_order="left")
        out = out.with_columns(_f1_expr(reply, cols["answer"]).alias(f1))
        if self.answer_sep:  # per-part matching: a per-row function, like the F1 it builds on
            ok = pl.struct(pl.col(reply).alias("r"), pl.col(cols["answer"]).alias("g")).map_elements(lambda x: self._matches(x["r"], x["g"]), return_dtype=pl.Boolean)
        else:
            g, p = normalise_answer_expr(pl.col(cols["answer"])), normalise_answer_expr(pl.col(reply))
            ok = (pl.col(f1) >= self.min_f1) | ((g.str.len_chars() > 0) & p.str.contains(g, literal=True))
        return out.with_columns(pl.when(pl.col(reply).is_null()).then(None).otherwise(ok).alias(v))

    def output_columns(self, cols):
        return [cols["reply"], cols["f1"], cols["verified"], f"{cols['verified']}_meta"]


@register
class VerifiedTaskFilter(Filter):
    """Keeps composed tasks the verifier answered correctly from the union of their supports; drops
    the rest as `not_verified` or `not_checked` (the call failed), and any whose composed question is
    empty or still names the bridge entity (`bridge_leaked`: it would be a one-hop question).

    Reads: `verified`, `question` (default `composed_question`), `bridge`. Use it after
    `composed_task_verifier`.
    """

    reads = {"verified": "verified", "question": "composed_question", "bridge": "bridge"}

    def keep(self, cols):
        q = pl.col(cols["question"]).fill_null("")
        leaked = normalise_answer_expr(q).str.contains(normalise_answer_expr(pl.col(cols["bridge"])), literal=True)
        return {
            "not_checked": pl.col(cols["verified"]).is_not_null(),
            "empty_question": q.str.strip_chars().str.len_chars() > 0,
            "bridge_leaked": ~leaked,
            "not_verified": pl.col(cols["verified"]),
        }


@register
class UnverifiedExpansionMasker(Refiner):
    """Keeps every task but nulls an expansion of it (a depth- or width-expanded question, and its
    answer) that did not pass its verification, writing why into a reason column. The reasons are
    `verified_task_filter`'s (`not_checked`, `empty_question`, `bridge_leaked`: the expansion names
    the bridge entity, which for a width question is one of its own answers, `not_verified`) plus
    `unchanged` (the expansion only repeats `source`).

    Reads/rewrites: `text` (default `deeper_question`) and, when given, `answer` (e.g. `wide_answer`).
    Reads: `verified` (default `deeper_verified`, from `composed_task_verifier`), `bridge`,
    `source` (optional: the question that was expanded). Writes: `reason` (default
    `deeper_rejected`; null for a kept expansion). Use it after verifying an expansion when the task
    itself should stay (`verified_task_filter` would drop the whole row).
    """

    reads = {"text": "deeper_question", "answer": None, "verified": "deeper_verified", "bridge": "bridge", "source": None}
    writes = {"reason": "deeper_rejected"}

    def run(self, frame, cols):
        checks = VerifiedTaskFilter().keep({"verified": cols["verified"], "question": cols["text"], "bridge": cols["bridge"]})
        if cols.get("source"):
            same = (normalise_answer_expr(pl.col(cols["text"])) == normalise_answer_expr(pl.col(cols["source"]))).fill_null(False)
            checks = {**checks, "unchanged": ~same}
        reason = pl.coalesce(*[pl.when(~c.fill_null(False)).then(pl.lit(why)) for why, c in checks.items()], pl.lit(None, pl.String))
        out = frame.with_columns(reason.alias(cols["reason"]))
        rejected = pl.col(cols["reason"]).is_not_null()
        masked = [c for c in (cols["text"], cols.get("answer")) if c]
        out = out.with_columns([pl.when(rejected).then(None).otherwise(pl.col(c)).alias(c) for c in masked])
        self.count_modified(frame, out, cols["text"])
        counts = out.get_column(cols["reason"]).drop_nulls().value_counts()
        self.last_report.extra = {"rejected": {r: int(n) for r, n in counts.iter_rows()}}
        return out

    def output_columns(self, cols):
        return [c for c in (cols["text"], cols.get("answer"), cols["reason"]) if c]
