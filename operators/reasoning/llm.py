"""LLM operators of the math reasoning pipeline: question well-posedness, question synthesis
(rephrase / harder / easier), difficulty and category classification, chain-of-thought
generation with `n` samples, an answer-equivalence judge, a step critic and a CoT compressor.

All go through `LLMOperator.call_llm` (via the core helpers: prompt roles, JSON-schema
validation, joins on `_id`) and record provenance (model, template version, cache key) in a
`<output>_meta` column.
"""

from __future__ import annotations

from typing import Sequence

import polars as pl

from operators.base import ID, Evaluator, Filter, Generator, register, stable_hash
from operators.core.common import CoreLLMOperator, field_of, schema_object
from operators.llm import META_DTYPE, LLMClient, PromptTemplate, SamplingParams
from operators.reasoning.answers import answers_match, extract_answer

CATEGORIES = (
    "arithmetic",
    "algebra",
    "geometry",
    "number theory",
    "counting and probability",
    "precalculus",
    "calculus",
    "statistics",
    "other",
)


def _llm_error_reasons(frame: pl.DataFrame, error: pl.Expr) -> dict[str, pl.Expr]:
    kinds = frame.select(error.alias("e")).get_column("e").drop_nulls().unique(maintain_order=True).to_list()
    return {f"llm_error:{k}": (error != k).fill_null(True) for k in kinds}


@register
class QuestionWellPosednessFilter(CoreLLMOperator, Filter):
    """LLM filter: keeps math questions that are well posed: self-contained, unambiguous, with
    all the data needed and a definite answer (DataFlow's question filter).

    Reads: `question` (default `question`). Writes: optional `issue` (String, the model's reason;
    off by default) and `well_posed_meta`. The model answers JSON-schema constrained
    `{"well_posed": boolean, "issue": string}`. Drop reasons: `ill_posed`,
    `llm_error:<kind>` (call failed or the reply did not match the schema).
    Use it first on collected or synthesised questions, before spending samples on them.
    """

    reads = {"question": "question"}
    writes = {"issue": None}
    default_template = PromptTemplate(
        "math_well_posed",
        "Is the following math problem well posed: self-contained, unambiguous, with all the "
        "information needed to reach one definite answer?\n\nProblem:\n{question}\n\n"
        'Reply with a JSON object: {{"well_posed": true or false, "issue": "what is missing or ambiguous, or none"}}.',
        "You are a strict mathematics editor.",
    )
    schema = schema_object({"well_posed": {"type": "boolean"}, "issue": {"type": "string", "maxLength": 200}})

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params or SamplingParams(temperature=0.0, max_tokens=128), llm)

    def run(self, frame, cols):
        res = self.ask(frame, cols, schema=self.schema)
        judged = self.join_results(
            frame,
            res,
            [field_of("parsed", "well_posed", pl.Boolean).alias("__ok"), field_of("parsed", "issue", pl.String).alias("__issue")],
            "well_posed_meta",
        )
        error = pl.col("well_posed_meta").struct.field("error")
        out = self.apply_keep(judged, {**_llm_error_reasons(judged, error), "ill_posed": pl.col("__ok")})
        out = out.drop("__ok")
        return out.rename({"__issue": cols["issue"]}) if cols.get("issue") else out.drop("__issue")

    def output_columns(self, cols):
        return [c for c in (cols.get("issue"),) if c] + ["well_posed_meta"]


MODES = {
    "rephrase": "so that it is worded differently but keeps exactly the same mathematics and the same answer",
    "harder": "into a harder problem: add a step or a constraint so that solving it takes more reasoning",
    "easier": "into an easier problem: remove a step or simplify the numbers so that it takes less reasoning",
}


@register
class QuestionVariantGenerator(CoreLLMOperator, Generator):
    """Synthesises new questions from each seed question: a rephrasing, a harder and an easier
    variant (any subset of `modes`), one LLM call per (row, mode).

    Reads: `question` (default `question`). Output rows: the original rows (unless
    `keep_original=False`) plus one row per successful variant, with a new `_id` (a hash of the
    parent `_id` and the mode). Writes: `origin` ("original" or the mode), `parent_id` (the seed
    row's `_id`), `parent_question` (the seed question; null for originals), `variant_meta`
    (provenance). A variant carries only the question: the seed's other columns (its ground
    truth too, which need not hold for a changed problem) are null, so variants are verified by
    voting. Failed calls produce no row (counted in the report's `extra["failed_variants"]`).
    Use it to grow a seed set; follow it with `VariantNoveltyFilter` to drop variants that are
    not new.
    """

    reads = {"question": "question"}
    writes = {"origin": "origin", "parent_id": "parent_id", "parent_question": "parent_question"}
    default_template = PromptTemplate(
        "math_variant",
        "Rewrite the math problem below {instruction}. Reply with the new problem only, without "
        "solving it.\n\nProblem:\n{question}",
        "You write clear, self-contained math problems.",
    )

    def __init__(
        self,
        modes: Sequence[str] = ("rephrase", "harder", "easier"),
        keep_original: bool = True,
        template: PromptTemplate | None = None,
        params: SamplingParams | None = None,
        llm: LLMClient | None = None,
    ):
        bad = [m for m in modes if m not in MODES]
        if bad or not modes:
            raise ValueError(f"modes must be a non-empty subset of {list(MODES)}, got {list(modes)}")
        self.modes, self.keep_original = tuple(modes), keep_original
        self._setup(template, params or SamplingParams(temperature=0.7, max_tokens=256), llm)

    def template_columns(self):
        return [f for f in self.template.fields if f not in set(self.reads) | {"instruction"}]

    def run(self, frame, cols):
        q = cols["question"]
        origin, pid, pq = cols["origin"], cols["parent_id"], cols["parent_question"]
        base = frame.with_columns(
            pl.lit("original").alias(origin), pl.col(ID).alias(pid), pl.lit(None, dtype=pl.String).alias(pq),
            pl.lit(None, dtype=META_DTYPE).alias("variant_meta"),
        )
        modes = pl.DataFrame({"__mode": list(self.modes)})
        asks = frame.select(pl.col(ID).alias("__parent"), pl.col(q).alias("__q")).join(modes, how="cross")
        asks = asks.with_columns(
            pl.concat_str([pl.col("__parent"), pl.col("__mode")], separator=":").alias(ID)  # request key; hashed below
        )
        tpl, extra = self.template, self.template_columns()

        def render(row):
            values = {f: row.get(f) for f in extra}
            values.update({"question": row["__q"], "instruction": MODES[row["__mode"]]})
            return tpl.render(values)

        res = self.call_llm(asks, render)
        res = res.unique(subset=[ID, "sample"], keep="first", maintain_order=True)
        got = asks.join(res.select(ID, "text", "meta"), on=ID, how="left")
        text = pl.col("text").str.strip_chars()
        ok = got.filter(pl.col("text").is_not_null() & (text.str.len_chars() > 0))
        self.last_report.extra["failed_variants"] = got.height - ok.height
        variants = ok.select(
            pl.col(ID).map_elements(lambda k: stable_hash("variant", k), return_dtype=pl.String).alias(ID),
            text.alias(q),
            pl.col("__mode").alias(origin),
            pl.col("__parent").alias(pid),
            pl.col("__q").alias(pq),
            pl.col("meta").alias("variant_meta"),
        )
        parts = ([base] if self.keep_original else []) + [variants]
        return pl.concat(parts, how="diagonal_relaxed").select([*base.columns])

    def output_columns(self, cols):
        return [cols["origin"], cols["parent_id"], cols["parent_question"], "variant_meta"]


def _int_score_schema(name: str, low: int, high: int) -> dict:
    return schema_object({name: {"type": "integer", "minimum": low, "maximum": high, "enum": list(range(low, high + 1))}})


@register
class DifficultyClassifier(CoreLLMOperator, Evaluator):
    """LLM evaluator: rates a math question's difficulty from 1 (one arithmetic step) to 10
    (olympiad level), as DataFlow's difficulty classifier does.

    Reads: `question` (default `question`). Writes: `difficulty` (Int64; null when the call
    failed) and `difficulty_meta`. The reply is JSON-schema constrained to an integer enum.
    Use it to stratify or curriculum-order data, or to keep only problems in a difficulty band.
    """

    reads = {"question": "question"}
    writes = {"difficulty": "difficulty"}
    default_template = PromptTemplate(
        "math_difficulty",
        "Rate the difficulty of the math problem below from {low} (a single arithmetic step) to "
        "{high} (olympiad level).\n\nProblem:\n{question}\n\n"
        'Reply with a JSON object: {{"difficulty": <integer from {low} to {high}>}}.',
        "You are an experienced mathematics teacher.",
    )

    def __init__(self, low: int = 1, high: int = 10, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if low >= high:
            raise ValueError("low must be below high")
        self.low, self.high = low, high
        self._setup(template, params or SamplingParams(temperature=0.0, max_tokens=16), llm)

    def prompt_vars(self):
        return {"low": self.low, "high": self.high}

    def run(self, frame, cols):
        out = cols["difficulty"]
        res = self.ask(frame, cols, schema=_int_score_schema("difficulty", self.low, self.high))
        return self.join_results(frame, res, [field_of("parsed", "difficulty", pl.Int64).alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["difficulty"], f"{cols['difficulty']}_meta"]


@register
class MathCategoryClassifier(CoreLLMOperator, Evaluator):
    """LLM evaluator: classifies a math question into one of `categories` (default: arithmetic,
    algebra, geometry, number theory, counting and probability, precalculus, calculus,
    statistics, other), JSON-schema constrained to that enum.

    Reads: `question` (default `question`). Writes: `category` (String; null when the call
    failed) and `category_meta`. Use it for topic balance (`CategoryBalanceFilter`) and reporting.
    """

    reads = {"question": "question"}
    writes = {"category": "category"}
    default_template = PromptTemplate(
        "math_category",
        "Which area of mathematics does the problem below belong to? Choose one of: {categories}."
        '\n\nProblem:\n{question}\n\nReply with a JSON object: {{"category": "<one of the areas>"}}.',
        "You are an experienced mathematics teacher.",
    )

    def __init__(self, categories: Sequence[str] = CATEGORIES, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        categories = tuple(categories)
        if len(categories) < 2 or len(set(categories)) != len(categories):
            raise ValueError("categories must hold at least two distinct values")
        self.categories = categories
        self._setup(template, params or SamplingParams(temperature=0.0, max_tokens=24), llm)

    def prompt_vars(self):
        return {"categories": ", ".join(self.categories)}

    def run(self, frame, cols):
        out = cols["category"]
        schema = schema_object({"category": {"type": "string", "enum": list(self.categories)}})
        res = self.ask(frame, cols, schema=schema)
        return self.join_results(frame, res, [field_of("parsed", "category", pl.String).alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["category"], f"{cols['category']}_meta"]


@register
class ChainOfThoughtGenerator(CoreLLMOperator, Generator):
    """Generates `n` chain-of-thought solutions per question (sample k uses seed + k), asking for
    the final answer in `\\boxed{}`.

    Reads: `question` (default `question`). Writes: `solutions` (List[String], one entry per
    sample in sample order; a failed sample is null) and `solutions_meta` (List[Struct]: model,
    template version, cache key, cached, error of each sample).
    Use it before `AnswerExtractor` + `MathVerifyEvaluator` (rows with ground truth) or
    `SelfConsistencyVoter` (rows without); `n >= 3` makes voting meaningful.
    """

    reads = {"question": "question"}
    writes = {"solutions": "solutions"}
    default_template = PromptTemplate(
        "math_cot",
        "Solve the following math problem step by step. Show your reasoning, then give the final "
        "answer on the last line as \\boxed{{answer}}.\n\nProblem:\n{question}",
        "You are a careful mathematician. Reason step by step and check your arithmetic.",
    )

    def __init__(self, n: int = 4, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._setup(template, params or SamplingParams(temperature=0.7 if n > 1 else 0.0, max_tokens=512), llm)

    def run(self, frame, cols):
        out = cols["solutions"]
        res = self.ask(frame, cols, n=self.n).sort(ID, "sample")
        per_row = res.group_by(ID, maintain_order=True).agg(pl.col("text").alias(out), pl.col("meta").alias(f"{out}_meta"))
        clash = [c for c in (out, f"{out}_meta") if c in frame.columns]
        joined = frame.drop(clash).join(per_row, on=ID, how="left", maintain_order="left")
        return joined.with_columns(
            pl.col(out).cast(pl.List(pl.String)), pl.col(f"{out}_meta").cast(pl.List(META_DTYPE))
        )

    def output_columns(self, cols):
        return [cols["solutions"], f"{cols['solutions']}_meta"]


@register
class LLMAnswerEquivalenceJudge(CoreLLMOperator, Evaluator):
    """LLM evaluator: asks whether a predicted answer is equivalent to the reference answer,
    for answers `math-verify` cannot parse (units, words, "4:30 p.m.", multiple parts).

    Reads: `question`, `answer` (default `final_answer`), `reference` (default `gold_answer`).
    Writes: `equivalent` (Boolean; null when the call failed or a side is missing) and
    `equivalent_meta`. Rows where `math-verify` can decide (both sides are mathematics, no prose
    words) are answered by
    `math-verify` without a call, unless `always_ask=True`.
    Use it as a fallback verifier for text-valued answers.
    """

    reads = {"question": "question", "answer": "final_answer", "reference": "gold_answer"}
    writes = {"equivalent": "equivalent"}
    default_template = PromptTemplate(
        "math_answer_equivalence",
        "Problem:\n{question}\n\nReference answer: {reference}\nProposed answer: {answer}\n\n"
        "Do the two answers mean the same thing (same value, allowing different notation and units)? "
        'Reply with a JSON object: {{"equivalent": true or false}}.',
        "You grade math answers strictly.",
    )
    schema = schema_object({"equivalent": {"type": "boolean"}})

    def __init__(self, always_ask: bool = False, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.always_ask = always_ask
        self._setup(template, params or SamplingParams(temperature=0.0, max_tokens=16), llm)

    def run(self, frame, cols):
        from operators.reasoning.answers import is_symbolic

        out = cols["equivalent"]
        a, r = pl.col(cols["answer"]), pl.col(cols["reference"])
        both = frame.select((a.is_not_null() & r.is_not_null()).alias("b")).get_column("b")
        # math-verify per value, in this thread (its parse timeout needs the main thread's SIGALRM)
        pairs = zip(frame.get_column(cols["answer"]), frame.get_column(cols["reference"]), strict=True)
        decidable = pl.Series([is_symbolic(x) and is_symbolic(y) for x, y in pairs], dtype=pl.Boolean)
        if self.always_ask:
            decidable = decidable & False
        ask = frame.filter(both & ~decidable)
        res = self.ask(ask, cols, schema=self.schema)
        judged = self.join_results(frame, res, [field_of("parsed", "equivalent", pl.Boolean).alias(out)], f"{out}_meta")
        mv = [answers_match(r_, a_) if d else None for a_, r_, d in zip(frame.get_column(cols["answer"]), frame.get_column(cols["reference"]), decidable, strict=True)]
        return judged.with_columns(pl.coalesce(pl.Series("__mv", mv, dtype=pl.Boolean), pl.col(out)).alias(out))

    def output_columns(self, cols):
        return [cols["equivalent"], f"{cols['equivalent']}_meta"]


@register
class SolutionStepCritic(CoreLLMOperator, Evaluator):
    """LLM evaluator (process supervision): reads a step-by-step solution and reports the first
    step that contains an error, or 0 when every step is sound.

    Reads: `question`, `solution` (default `solution`). Writes: `first_error_step` (Int64, 0 =
    no error found; null when the call failed), optional `critique` (String) and
    `first_error_step_meta`. Use it to flag solutions that reach the right answer by faulty
    reasoning (a verified answer does not prove the steps), or to build step-level labels.
    """

    reads = {"question": "question", "solution": "solution"}
    writes = {"first_error_step": "first_error_step", "critique": None}
    default_template = PromptTemplate(
        "math_step_critic",
        "Check the solution below step by step (number the steps from 1).\n\nProblem:\n{question}\n\n"
        "Solution:\n{solution}\n\n"
        'Reply with a JSON object: {{"first_error_step": <number of the first wrong step, or 0 if all steps are correct>, '
        '"critique": "<what is wrong, or none>"}}.',
        "You are a meticulous mathematics grader.",
    )
    schema = schema_object({"first_error_step": {"type": "integer", "minimum": 0}, "critique": {"type": "string", "maxLength": 400}})

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params or SamplingParams(temperature=0.0, max_tokens=160), llm)

    def run(self, frame, cols):
        out = cols["first_error_step"]
        exprs = [field_of("parsed", "first_error_step", pl.Int64).alias(out)]
        if cols.get("critique"):
            exprs.append(field_of("parsed", "critique", pl.String).alias(cols["critique"]))
        res = self.ask(frame, cols, schema=self.schema)
        return self.join_results(frame, res, exprs, f"{out}_meta")

    def output_columns(self, cols):
        return [c for c in (cols["first_error_step"], cols.get("critique")) if c] + [f"{cols['first_error_step']}_meta"]


@register(name="cot_compressor")
class CoTCompressor(CoreLLMOperator, Generator):
    """LLM generator: rewrites a long chain of thought into a concise one (short-CoT data) and
    keeps the rewrite only when its final answer still equals the original's (checked with
    answer extraction + `math-verify`).

    Reads: `solution` (default `solution`) and `answer` (default `final_answer`). Writes:
    `concise` (default `concise_solution`; String, null when the call failed or the rewrite
    changed the answer) and `concise_solution_meta`. Use it to build short-reasoning training
    targets from verified long solutions.
    """

    reads = {"solution": "solution", "answer": "final_answer"}
    writes = {"concise": "concise_solution"}
    default_template = PromptTemplate(
        "math_cot_compress",
        "Rewrite the solution below as briefly as possible: keep only the steps needed, and end with "
        "the final answer as \\boxed{{answer}}.\n\nSolution:\n{solution}",
        "You write concise, correct mathematical solutions.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params or SamplingParams(temperature=0.0, max_tokens=384), llm)

    def run(self, frame, cols):
        out = cols["concise"]
        res = self.ask(frame, cols)
        joined = self.join_results(frame, res, [pl.col("text").alias(out)], f"{out}_meta")
        new_answer, _ = extract_answer(pl.col(out))
        checked = joined.with_columns(new_answer.alias("__new"))
        same = [
            n is not None and old is not None and answers_match(old, n)
            for n, old in zip(checked.get_column("__new"), checked.get_column(cols["answer"]), strict=True)
        ]
        self.last_report.extra["answer_changed"] = int(sum(1 for s, t in zip(same, checked.get_column(out)) if t is not None and not s))
        return checked.with_columns(pl.when(pl.Series(same, dtype=pl.Boolean)).then(pl.col(out)).alias(out)).drop("__new")

    def output_columns(self, cols):
        return [cols["concise"], f"{cols['concise']}_meta"]
