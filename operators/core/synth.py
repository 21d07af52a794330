"""Core LLM operators for synthesis and verification loops: critique, refine-from-critique,
paraphrase, multi-aspect rubric scoring, grounding (with a verified quote), answerability and
reference matching. Generic building blocks of the SFT synthesis (Condor-style), Text2QA and
conversation pipelines, usable on any schema."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import polars as pl

from operators.base import Evaluator, Generator, register
from operators.core.common import CoreLLMOperator, field_of, schema_object
from operators.core.evaluate import _NoEmptyBlocks
from operators.llm import LLMClient, PromptTemplate, SamplingParams


def normalise_for_match(text: pl.Expr) -> pl.Expr:
    """Lower case, punctuation dropped, whitespace collapsed: how quotes are matched to sources."""
    return text.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}\s]", " ").str.replace_all(r"\s+", " ").str.strip_chars()


class _OneText(CoreLLMOperator, Generator):
    """One free-text output column per row (not registered)."""

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols)
        text = pl.col("text").str.strip_chars()
        return self.join_results(frame, res, [pl.when(text != "").then(text).alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class CritiqueGenerator(_NoEmptyBlocks, _OneText):
    """Writes a critique of a response: its factual errors, gaps and unclear parts, as actionable
    points (Condor's "critique" step; no score).

    Reads: `response` (default `output`), `instruction` (default `instruction`; `instruction=None`
    critiques standalone text). Writes: `critique` (String; null when the call failed) and
    `critique_meta`. Use it before `CritiqueRefiner` to improve generated answers, or to explain
    why a row was rejected.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"output": "critique"}
    default_params = SamplingParams(temperature=0.0, max_tokens=384)
    default_template = PromptTemplate(
        "critique",
        "Critique the response below. List its factual errors, missing points and unclear parts as short, "
        "actionable bullet points, most important first. Do not rewrite the response.\n\n"
        "Instruction:\n{instruction}\n\nResponse:\n{response}",
        "You are a demanding reviewer who gives specific, constructive feedback.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)


@register
class CritiqueRefiner(_NoEmptyBlocks, CoreLLMOperator, Generator):
    """Rewrites a response so that it addresses a critique (Condor's "refine" step).

    Reads: `response` (default `output`), `critique` (default `critique`), `instruction` (default
    `instruction`; may be None). Writes: `refined` (String: the rewritten response, or the
    original response when the call failed or came back empty), `refined_changed` (Boolean: the
    model's rewrite was used) and `refined_meta`. Use it after `CritiqueGenerator` to build
    improved answers; judge `refined` afterwards, since a rewrite is not always better.
    """

    reads = {"instruction": "instruction", "response": "output", "critique": "critique"}
    writes = {"output": "refined"}
    default_params = SamplingParams(temperature=0.0, max_tokens=768)
    default_template = PromptTemplate(
        "critique_refine",
        "Improve the response so that it fixes every point of the critique while keeping what is correct. "
        "Reply with the improved response only.\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n"
        "Critique:\n{critique}",
        "You are an expert writer who revises answers carefully.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols)
        text = pl.col("text").str.strip_chars()
        joined = self.join_results(frame, res, [pl.when(text != "").then(text).alias("__new")], f"{out}_meta")
        return joined.with_columns(
            pl.coalesce("__new", cols["response"]).alias(out), pl.col("__new").is_not_null().alias(f"{out}_changed")
        ).drop("__new")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_changed", f"{cols['output']}_meta"]


@register
class Paraphraser(CoreLLMOperator, Generator):
    """Writes `n` paraphrases of a text column in one structured call (JSON-schema constrained).

    Reads: `text` (default `text`). Writes: `paraphrases` (List[String], distinct and different from
    the input after normalisation; empty when the call failed) and `paraphrases_meta`. Use it for
    data augmentation (explode the list for one row per variant) or to test a model's robustness
    to rewording.
    """

    reads = {"text": "text"}
    writes = {"output": "paraphrases"}
    default_params = SamplingParams(temperature=0.7, max_tokens=512)
    default_template = PromptTemplate(
        "paraphrase",
        "Write {n} paraphrases of the text below. Each must keep the full meaning but use different wording. "
        'Reply in JSON: {{"paraphrases": [...]}}.\n\nText:\n{text}',
    )

    def __init__(self, n: int = 3, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"n": self.n}

    def schema(self) -> dict[str, Any]:
        return schema_object({"paraphrases": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": self.n}})

    def run(self, frame, cols):
        out, src = cols["output"], cols["text"]
        res = self.ask(frame, cols, schema=self.schema())
        joined = self.join_results(frame, res, [field_of("parsed", "paraphrases", pl.List(pl.String)).alias(out)], f"{out}_meta")
        # drop variants equal to the input or to an earlier variant (after normalisation)
        variants = pl.col(out).fill_null(pl.lit([], dtype=pl.List(pl.String)))
        kept = pl.struct(variants.alias("v"), pl.col(src).alias("o")).map_batches(_novel, return_dtype=pl.List(pl.String))
        return joined.with_columns(kept.alias(out))

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def _novel(structs: pl.Series) -> pl.Series:
    """Per row: the variants that differ from the input and from each other (normalised)."""
    out = []
    for row in structs.to_list():  # a few short strings per row; no Polars expression dedups lists by a key
        seen = {_norm(row["o"] or "")}
        keep = []
        for v in row["v"] or []:
            k = _norm(v or "")
            if k and k not in seen:
                seen.add(k)
                keep.append(v.strip())
        out.append(keep)
    return pl.Series(out, dtype=pl.List(pl.String))


@register
class MultiAspectScorer(_NoEmptyBlocks, CoreLLMOperator, Evaluator):
    """Scores a response on several named rubric aspects in one structured call.

    Reads: `response` (default `output`), `instruction` (default `instruction`; may be None).
    Writes: one Int64 column per aspect, `<prefix><aspect>` (default prefix `aspect_`, each in
    [`min_score`, `max_score`]), `<prefix>mean` (Float64, the mean of the aspects) and
    `<prefix>meta`. `aspects` maps an aspect name to what it measures. Use it when one overall
    judge score hides why a row is weak (e.g. correct but unclear), or to filter on one aspect.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {}
    default_params = SamplingParams(temperature=0.0, max_tokens=256)
    default_aspects = {
        "correctness": "the facts and reasoning are right",
        "helpfulness": "it does what the instruction asks",
        "clarity": "it is well organised and easy to follow",
    }
    default_template = PromptTemplate(
        "multi_aspect",
        "Score the response from {min_score} (worst) to {max_score} (best) on each aspect:\n{aspects}\n\n"
        "Instruction:\n{instruction}\n\nResponse:\n{response}\n\n"
        "Reply with a JSON object with one integer per aspect name.",
        "You are a strict, fair evaluator.",
    )

    def __init__(
        self,
        aspects: Mapping[str, str] | None = None,
        min_score: int = 1,
        max_score: int = 5,
        prefix: str = "aspect_",
        template: PromptTemplate | None = None,
        params: SamplingParams | None = None,
        llm: LLMClient | None = None,
    ):
        self.aspects = dict(aspects or self.default_aspects)
        if not self.aspects or not all(re.fullmatch(r"[a-z][a-z0-9_]*", a) for a in self.aspects):
            raise ValueError("aspects must be a non-empty mapping of snake_case names to descriptions")
        if min_score >= max_score:
            raise ValueError("min_score must be below max_score")
        self.min_score, self.max_score, self.prefix = min_score, max_score, prefix
        self._setup(template, params, llm)

    def prompt_vars(self):
        lines = "\n".join(f"- {a}: {d}" for a, d in self.aspects.items())
        return {"aspects": lines, "min_score": self.min_score, "max_score": self.max_score}

    def schema(self) -> dict[str, Any]:
        score = {"type": "integer", "minimum": self.min_score, "maximum": self.max_score, "enum": list(range(self.min_score, self.max_score + 1))}
        return schema_object({a: score for a in self.aspects})

    def run(self, frame, cols):
        res = self.ask(frame, cols, schema=self.schema())
        exprs = [field_of("parsed", a, pl.Int64).alias(f"{self.prefix}{a}") for a in self.aspects]
        out = self.join_results(frame, res, exprs, f"{self.prefix}meta")
        return out.with_columns(pl.mean_horizontal([f"{self.prefix}{a}" for a in self.aspects]).cast(pl.Float64).alias(f"{self.prefix}mean"))

    def output_columns(self, cols):
        return [f"{self.prefix}{a}" for a in self.aspects] + [f"{self.prefix}mean", f"{self.prefix}meta"]


@register
class GroundednessJudge(CoreLLMOperator, Evaluator):
    """Checks that a claim (an answer, a summary) is supported by a source text, and verifies the
    model's evidence: the supporting quote it gives must really occur in the source.

    Reads: `claim` (default `output`), `source` (default `text`), optional `question` (default
    none: the claim is judged alone). Writes: `grounded` (Boolean: the model said "supported" AND
    its quote, normalised for case, punctuation and spacing, is a substring of the normalised
    source; null when the call failed), `evidence` (String, the quoted span) and `grounded_meta`.
    Use it to keep only QA pairs or summaries whose content the document backs (Text2QA), and to
    catch hallucinated answers: a verdict without a real quote does not count.
    """

    reads = {"claim": "output", "source": "text", "question": None}
    writes = {"grounded": "grounded", "evidence": "evidence"}
    default_params = SamplingParams(temperature=0.0, max_tokens=256)
    default_template = PromptTemplate(
        "groundedness",
        "Source:\n{source}\n\nQuestion:\n{question}\n\nClaim:\n{claim}\n\n"
        "Is the claim fully supported by the source? Copy the shortest sentence or phrase of the source "
        'that supports it word for word in "evidence" (empty when there is none), then give the verdict. '
        'Reply in JSON: {{"evidence": "...", "verdict": "supported" or "unsupported"}}.',
        "You check facts against a source text and never use outside knowledge.",
    )

    def __init__(self, min_quote_chars: int = 8, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.min_quote_chars = min_quote_chars
        self._setup(template, params, llm)

    def renderer(self, cols, template=None):
        tpl = template or self.template
        if not cols.get("question"):
            tpl = PromptTemplate(tpl.name, tpl.user.replace("Question:\n{question}\n\n", ""), tpl.system)
        return super().renderer(cols, tpl)

    schema = schema_object({"evidence": {"type": "string", "maxLength": 600}, "verdict": {"type": "string", "enum": ["supported", "unsupported"]}})

    def run(self, frame, cols):
        g, ev = cols["grounded"], cols["evidence"]
        res = self.ask(frame, cols, schema=self.schema)
        out = self.join_results(
            frame, res,
            [field_of("parsed", "verdict", pl.String).alias("__verdict"), field_of("parsed", "evidence", pl.String).alias(ev)],
            f"{g}_meta",
        )
        quote = normalise_for_match(pl.col(ev).fill_null(""))
        found = normalise_for_match(pl.col(cols["source"]).fill_null("")).str.contains(quote, literal=True)
        verified = (quote.str.len_chars() >= self.min_quote_chars) & found
        grounded = pl.when(pl.col("__verdict").is_null()).then(None).otherwise((pl.col("__verdict") == "supported") & verified)
        return out.with_columns(grounded.alias(g)).drop("__verdict")

    def output_columns(self, cols):
        return [cols["grounded"], cols["evidence"], f"{cols['grounded']}_meta"]


@register
class AnswerabilityJudge(CoreLLMOperator, Evaluator):
    """Judges whether a question can be answered from a context alone (no outside knowledge).

    Reads: `question` (default `instruction`), `context` (default `text`). Writes: `answerable`
    (Boolean; null when the call failed) and `answerable_meta`. Use it to drop generated questions
    that the source does not answer (Text2QA, RAG evaluation sets) before spending a call on an
    answer, or to find unanswerable questions on purpose.
    """

    reads = {"question": "instruction", "context": "text"}
    writes = {"answerable": "answerable"}
    default_params = SamplingParams(temperature=0.0, max_tokens=128)
    default_template = PromptTemplate(
        "answerability",
        "Context:\n{context}\n\nQuestion:\n{question}\n\nCan the question be answered completely from the context "
        'alone? Reply in JSON: {{"reason": "<short reason>", "answerable": "yes" or "no"}}.',
        "You are a careful reading-comprehension annotator.",
    )
    schema = schema_object({"reason": {"type": "string", "maxLength": 240}, "answerable": {"type": "string", "enum": ["yes", "no"]}})

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        a = cols["answerable"]
        res = self.ask(frame, cols, schema=self.schema)
        return self.join_results(frame, res, [(field_of("parsed", "answerable", pl.String) == "yes").alias(a)], f"{a}_meta")

    def output_columns(self, cols):
        return [cols["answerable"], f"{cols['answerable']}_meta"]


@register
class ReferenceMatchJudge(CoreLLMOperator, Evaluator):
    """Judges whether a candidate text says the same thing as a reference (semantic equivalence,
    not string overlap).

    Reads: `candidate` (default `output`), `reference` (default `reference`). Writes:
    `matches_reference` (Boolean; null when the call failed), `match_rationale` (String) and
    `matches_reference_meta`. Use it to grade generations against gold answers or paraphrase
    pairs (e.g. the GeneralTextPipeline `input_key`/`reference_key` rows), where exact match and
    BLEU miss rewording.
    """

    reads = {"candidate": "output", "reference": "reference"}
    writes = {"matches": "matches_reference", "rationale": "match_rationale"}
    default_params = SamplingParams(temperature=0.0, max_tokens=160)
    default_template = PromptTemplate(
        "reference_match",
        "Reference:\n{reference}\n\nCandidate:\n{candidate}\n\nDoes the candidate convey the same meaning as the "
        'reference (wording may differ)? Reply in JSON: {{"rationale": "<short reason>", "same_meaning": true or false}}.',
        "You compare meanings precisely; extra or missing facts make texts different.",
    )
    schema = schema_object({"rationale": {"type": "string", "maxLength": 240}, "same_meaning": {"type": "boolean"}})

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        m, r = cols["matches"], cols.get("rationale")
        res = self.ask(frame, cols, schema=self.schema)
        exprs = [field_of("parsed", "same_meaning", pl.Boolean).alias(m)]
        if r:
            exprs.append(field_of("parsed", "rationale", pl.String).alias(r))
        return self.join_results(frame, res, exprs, f"{m}_meta")

    def output_columns(self, cols):
        return [c for c in (cols["matches"], cols.get("rationale")) if c] + [f"{cols['matches']}_meta"]
