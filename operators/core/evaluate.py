"""Core LLM evaluators: LLM-as-judge scoring, pairwise preference, label classification."""

from __future__ import annotations

from typing import Sequence

import polars as pl

from operators.base import Evaluator, register
from operators.core.common import SCORE_REPLY, CoreLLMOperator, field_of, schema_object, score_schema
from operators.llm import LLMClient, PromptTemplate, SamplingParams


@register(name="llm_judge")
class LLMJudgeEvaluator(CoreLLMOperator, Evaluator):
    """LLM-as-judge: scores a response (optionally with its instruction) on an integer scale.

    Reads: `response` (default `output`), `instruction` (default `instruction`; pass
    `instruction=None` to judge standalone text). Writes: `score` (Int64 in
    [`min_score`, `max_score`]), `rationale` (String) and `score_meta` (provenance of the one call
    that produced both). The answer is JSON-schema constrained to
    `{"score": integer in range, "rationale": string}`; rows whose call failed or whose answer did
    not match keep null score/rationale and the error in `score_meta`.
    Use it to grade SFT pairs or generated data; filter on the score afterwards (or use
    `PromptedFilter`).
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"score": "score", "rationale": "rationale"}
    default_template = PromptTemplate(
        "llm_judge",
        "Rate the response to the instruction on a scale from {min_score} (worst) to {max_score} (best) "
        "for: {criteria}\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n" + SCORE_REPLY,
        "You are a strict, fair evaluator of assistant responses.",
    )

    def __init__(
        self,
        criteria: str = "helpfulness, correctness and completeness",
        min_score: int = 1,
        max_score: int = 5,
        template: PromptTemplate | None = None,
        params: SamplingParams | None = None,
        llm: LLMClient | None = None,
    ):
        if min_score >= max_score:
            raise ValueError("min_score must be below max_score")
        self.criteria, self.min_score, self.max_score = criteria, min_score, max_score
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"criteria": self.criteria, "min_score": self.min_score, "max_score": self.max_score}

    @property
    def schema(self):
        return score_schema(self.min_score, self.max_score)

    def run(self, frame, cols):
        score, rationale = cols["score"], cols["rationale"]
        res = self.ask(frame, cols, schema=self.schema)
        exprs = [field_of("parsed", "score", pl.Int64).alias(score)]
        if rationale:
            exprs.append(field_of("parsed", "rationale", pl.String).alias(rationale))
        return self.join_results(frame, res, exprs, f"{score}_meta")

    def output_columns(self, cols):
        return [c for c in (cols["score"], cols.get("rationale")) if c] + [f"{cols['score']}_meta"]


@register
class PairwiseJudge(CoreLLMOperator, Evaluator):
    """Pairwise preference judge: asks an LLM which of two responses better answers the instruction
    and writes them as chosen / rejected (DPO-style preference data).

    Reads: `instruction` (default `instruction`), `response_a` (default `response_a`),
    `response_b` (default `response_b`). Writes: `chosen`, `rejected` (String, the texts),
    `preference` (String, "a" or "b"), optional `rationale` (off by default) and
    `preference_meta`. The answer is JSON-schema constrained to `{"winner": "A"|"B", ...}`;
    failed rows keep null outputs with the error in `preference_meta`.
    Use it to build preference pairs from two candidate generations.
    """

    reads = {"instruction": "instruction", "response_a": "response_a", "response_b": "response_b"}
    writes = {"chosen": "chosen", "rejected": "rejected", "preference": "preference", "rationale": None}
    default_template = PromptTemplate(
        "pairwise_judge",
        "Which response answers the instruction better ({criteria})?\n\nInstruction:\n{instruction}\n\n"
        "Response A:\n{response_a}\n\nResponse B:\n{response_b}\n\n"
        'Reply in JSON: {{"rationale": "<short reason>", "winner": "A" or "B"}}.',
        "You are an impartial judge. Ignore the order and length of the responses; judge quality only.",
    )
    schema = schema_object({"rationale": {"type": "string"}, "winner": {"type": "string", "enum": ["A", "B"]}})

    def __init__(self, criteria: str = "helpfulness, correctness and harmlessness", template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.criteria = criteria
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"criteria": self.criteria}

    def run(self, frame, cols):
        pref = cols["preference"]
        res = self.ask(frame, cols, schema=self.schema)
        winner = field_of("parsed", "winner", pl.String)
        exprs = [winner.str.to_lowercase().alias(pref)]
        if cols.get("rationale"):
            exprs.append(field_of("parsed", "rationale", pl.String).alias(cols["rationale"]))
        out = self.join_results(frame, res, exprs, f"{pref}_meta")
        a, b = pl.col(cols["response_a"]), pl.col(cols["response_b"])
        return out.with_columns(
            pl.when(pl.col(pref) == "a").then(a).when(pl.col(pref) == "b").then(b).alias(cols["chosen"]),
            pl.when(pl.col(pref) == "a").then(b).when(pl.col(pref) == "b").then(a).alias(cols["rejected"]),
        )

    def output_columns(self, cols):
        names = [cols["chosen"], cols["rejected"], cols["preference"], cols.get("rationale")]
        return [c for c in names if c] + [f"{cols['preference']}_meta"]


@register
class LabelClassifier(CoreLLMOperator, Evaluator):
    """Classifies a text column into exactly one of the given `labels` (a JSON-schema enum).

    Reads: `text` (default `text`). Writes: `label` (String, one of `labels`) and `label_meta`.
    Use it to tag rows by topic, task type, language or safety category (then route or filter on
    the label). Default labels are sentiment (positive / neutral / negative); pass your own and an
    optional `description` of the task.
    Failed or off-label answers leave a null label with the error in `label_meta`.
    """

    reads = {"text": "text"}
    writes = {"label": "label"}
    default_template = PromptTemplate(
        "classify",
        "Classify the text below{description}. Choose exactly one label from: {labels}.\n\n"
        'Text:\n{text}\n\nReply in JSON: {{"label": "<label>"}}.',
        "You are a precise text classifier.",
    )

    def __init__(self, labels: Sequence[str] = ("positive", "neutral", "negative"), description: str | None = None, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        labels = tuple(labels)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError("labels must hold at least two distinct values")
        self.labels, self.description = labels, description
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"labels": ", ".join(self.labels), "description": f" ({self.description})" if self.description else ""}

    @property
    def schema(self):
        return schema_object({"label": {"type": "string", "enum": list(self.labels)}})

    def run(self, frame, cols):
        label = cols["label"]
        res = self.ask(frame, cols, schema=self.schema)
        return self.join_results(frame, res, [field_of("parsed", "label", pl.String).alias(label)], f"{label}_meta")

    def output_columns(self, cols):
        return [cols["label"], f"{cols['label']}_meta"]
