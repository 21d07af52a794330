"""Core LLM evaluators: LLM-as-judge scoring, pairwise preference, label classification."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import polars as pl

from operators.base import ID, Evaluator, register
from operators.core.common import CoreLLMOperator, field_of, schema_object, score_schema
from operators.llm import LLMClient, PromptTemplate, SamplingParams

# Rationale first, then the score: a model that writes its reasons before the number conditions
# the number on them (and small models no longer justify a number after the fact).
RATIONALE_FIRST_REPLY = (
    'Reply with a JSON object with two keys, in this order: "rationale" (one short sentence naming the '
    'main strength or weakness you see) and "score" (an integer from {min_score} to {max_score}).'
)


def drop_empty_blocks(template: PromptTemplate, fields: frozenset[str]) -> PromptTemplate:
    """`template` without its labelled blocks ("Instruction:\\n{instruction}", blocks separated by
    a blank line) whose only placeholder is one of `fields`. The document text itself is never
    touched: blocks are removed from the template, before any value is filled in."""
    blocks = template.user.split("\n\n")
    kept = [b for b in blocks if not any(re.fullmatch(r"[^{}\n]{1,60}:\n\{%s\}" % re.escape(f), b) for f in fields)]
    return PromptTemplate(template.name, "\n\n".join(kept), template.system)


def judge_schema(min_score: int, max_score: int) -> dict[str, Any]:
    """`score_schema` with "rationale" first: llama.cpp's grammar emits keys in schema order, so
    the model writes its reasons before the score. The score keeps its enum (llama.cpp grammars
    enforce an enum but not minimum/maximum)."""
    base = score_schema(min_score, max_score)
    props = base["properties"]
    return schema_object({"rationale": props["rationale"], "score": props["score"]})


class _NoEmptyBlocks:
    """Mixin: a role that is unbound or empty for a row drops its labelled block from that row's
    prompt (no empty "Instruction:" block)."""

    def renderer(self, cols, template=None) -> Callable[[dict[str, Any]], list[dict[str, str]]]:
        tpl = template or self.template  # type: ignore[attr-defined]
        parent = super().renderer  # type: ignore[misc]
        roles = {role: cols.get(role) for role in self.reads}  # type: ignore[attr-defined]
        variants: dict[frozenset[str], Callable[[dict[str, Any]], list[dict[str, str]]]] = {}

        def render(row: dict[str, Any]) -> list[dict[str, str]]:
            empty = frozenset(
                r for r, c in roles.items() if c is None or row.get(c) is None or not str(row.get(c)).strip()
            )
            if empty not in variants:
                variants[empty] = parent(cols, drop_empty_blocks(tpl, empty) if empty else tpl)
            return variants[empty](row)

        return render


@register(name="llm_judge")
class LLMJudgeEvaluator(_NoEmptyBlocks, CoreLLMOperator, Evaluator):
    """LLM-as-judge: scores a response (optionally with its instruction) on an integer scale.

    Reads: `response` (default `output`), `instruction` (default `instruction`; pass
    `instruction=None` to judge standalone text: the prompt then has no "Instruction:" block).
    Writes: `score` (Int64 in [`min_score`, `max_score`]), `rationale` (String) and `score_meta`
    (provenance of the one call that produced both). The answer is JSON-schema constrained to
    `{"rationale": string, "score": integer in range}`, rationale first so the model reasons
    before it scores; rows whose call failed or whose answer did not match keep null
    score/rationale and the error in `score_meta`.
    Use it to grade SFT pairs or generated data; filter on the score afterwards (or use
    `PromptedFilter`).
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"score": "score", "rationale": "rationale"}
    default_template = PromptTemplate(
        "llm_judge",
        "Rate the response on a scale from {min_score} (worst) to {max_score} (best) for: {criteria}.\n\n"
        "Instruction:\n{instruction}\n\nResponse:\n{response}\n\n"
        "First say in one sentence what is good or bad about the response, then give the score. "
        + RATIONALE_FIRST_REPLY,
        "You are a strict, fair evaluator. Use the whole scale: {min_score} for worthless text, "
        "{max_score} for excellent text.",
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
        return judge_schema(self.min_score, self.max_score)

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
class PairwiseJudge(_NoEmptyBlocks, CoreLLMOperator, Evaluator):
    """Pairwise preference judge: asks an LLM which of two responses better answers the instruction
    and writes them as chosen / rejected (DPO-style preference data).

    Reads: `instruction` (default `instruction`; `instruction=None` for none), `response_a`
    (default `response_a`), `response_b` (default `response_b`). Writes: `chosen`, `rejected`
    (String, the texts), `preference` (String, "a" or "b"), `consistent` (Boolean, default column
    `position_consistent`), optional `rationale` (off by default) and `preference_meta`.
    With `both_orders=True` (default) every pair is judged twice, as (A=a, B=b) and swapped
    (A=b, B=a): a preference is written only when both orders agree; a pair whose verdict follows
    the position (A both times, or B both times) gets a null preference and `consistent` false.
    The share of pairs judged the same way in both orders is `last_report.extra["position_consistency"]`.
    The answer is JSON-schema constrained to `{"rationale": string, "winner": "A"|"B"}`; failed
    rows keep null outputs with the error in `preference_meta`.
    Use it to build preference pairs from two candidate generations.
    """

    reads = {"instruction": "instruction", "response_a": "response_a", "response_b": "response_b"}
    writes = {
        "chosen": "chosen",
        "rejected": "rejected",
        "preference": "preference",
        "consistent": "position_consistent",
        "rationale": None,
    }
    default_template = PromptTemplate(
        "pairwise_judge",
        "Which response answers the instruction better ({criteria})?\n\nInstruction:\n{instruction}\n\n"
        "Response A:\n{response_a}\n\nResponse B:\n{response_b}\n\n"
        'Reply in JSON: {{"rationale": "<short reason>", "winner": "A" or "B"}}.',
        "You are an impartial judge. Ignore the order and length of the responses; judge quality only.",
    )
    schema = schema_object({"rationale": {"type": "string"}, "winner": {"type": "string", "enum": ["A", "B"]}})
    SWAPPED = "~swapped"  # suffix of the row ids of the swapped-order requests

    def __init__(
        self,
        criteria: str = "helpfulness, correctness and harmlessness",
        both_orders: bool = True,
        template: PromptTemplate | None = None,
        params: SamplingParams | None = None,
        llm: LLMClient | None = None,
    ):
        self.criteria, self.both_orders = criteria, both_orders
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"criteria": self.criteria}

    def _verdicts(self, frame: pl.DataFrame, cols: Mapping[str, str | None]) -> pl.DataFrame:
        """One batch of calls: every row as given and, with `both_orders`, every row again with its
        responses swapped (id + SWAPPED). Columns: `_id`, then `w`/`why`/`error`/`meta` of the
        given order and `w2`/`why2`/`error2`/`meta2` of the swapped one, winners as "a"/"b" in
        the frame's own terms."""
        ca, cb = cols["response_a"], cols["response_b"]
        batch = frame
        if self.both_orders:
            swapped = frame.with_columns(
                (pl.col(ID) + self.SWAPPED).alias(ID), pl.col(ca).alias(cb), pl.col(cb).alias(ca)
            )
            batch = pl.concat([frame, swapped], how="vertical_relaxed")
        res = self.ask(batch, cols, schema=self.schema).filter(pl.col("sample") == 0)
        res = res.select(
            ID,
            field_of("parsed", "winner", pl.String).str.to_lowercase().alias("w"),
            field_of("parsed", "rationale", pl.String).alias("why"),
            "error",
            "meta",
        )
        is_swapped = pl.col(ID).str.ends_with(self.SWAPPED)
        first = res.filter(~is_swapped)
        if not self.both_orders:
            return first
        second = res.filter(is_swapped).with_columns(
            pl.col(ID).str.strip_suffix(self.SWAPPED),
            pl.when(pl.col("w") == "a").then(pl.lit("b")).when(pl.col("w") == "b").then(pl.lit("a")).alias("w"),
        )
        return first.join(second.rename(lambda c: c if c == ID else c + "2"), on=ID, how="left")

    def run(self, frame, cols):
        pref, consistent = cols["preference"], cols.get("consistent")
        both = self._verdicts(frame, cols)
        if self.both_orders:
            agree = pl.col("w") == pl.col("w2")
            both = both.with_columns(
                pl.when(agree).then(pl.col("w")).alias("pick"),
                agree.alias("same"),
                # a failed second call explains a missing preference as much as a failed first one
                pl.when(pl.col("error").is_null() & pl.col("error2").is_not_null())
                .then(pl.col("meta2"))
                .otherwise(pl.col("meta"))
                .alias("meta"),
            )
            answered = both.filter(pl.col("same").is_not_null())
            self.last_report.extra["position_consistency"] = (
                float(answered.get_column("same").mean()) if answered.height else None
            )
            self.last_report.extra["pairs_judged_both_orders"] = answered.height
        else:
            both = both.with_columns(pl.col("w").alias("pick"), pl.lit(None, dtype=pl.Boolean).alias("same"))
        exprs = [pl.col("pick").alias(pref)]
        if consistent:
            exprs.append(pl.col("same").alias(consistent))
        if cols.get("rationale"):
            exprs.append(pl.col("why").alias(cols["rationale"]))
        right = both.select(ID, *exprs, pl.col("meta").alias(f"{pref}_meta"))
        clash = [c for c in right.columns if c != ID and c in frame.columns]
        out = frame.drop(clash).join(right, on=ID, how="left", maintain_order="left")
        a, b = pl.col(cols["response_a"]), pl.col(cols["response_b"])
        return out.with_columns(
            pl.when(pl.col(pref) == "a").then(a).when(pl.col(pref) == "b").then(b).alias(cols["chosen"]),
            pl.when(pl.col(pref) == "a").then(b).when(pl.col(pref) == "b").then(a).alias(cols["rejected"]),
        )

    def output_columns(self, cols):
        names = [cols["chosen"], cols["rejected"], cols["preference"], cols.get("consistent"), cols.get("rationale")]
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
