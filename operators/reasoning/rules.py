"""Rule-based operators for math reasoning data: question presence, variant novelty, solution
format, degenerate repetition, reasoning-step counts, GSM8K calculator annotations, category
balance and the final provenance record. All vectorised Polars expressions."""

from __future__ import annotations

from typing import Sequence

import polars as pl

from operators.base import ID, Evaluator, Filter, Generator, Refiner, register


@register
class QuestionPresenceFilter(Filter):
    """Drops rows whose question is missing, blank, or too short to be a problem statement.

    Reads: `question` (default `question`). Writes nothing. Drop reasons: `no_question` (null or
    only whitespace), `question_too_short` (fewer than `min_chars` non-space characters).
    Use it first in a math pipeline: a row without a question cannot be solved or verified.
    (A row missing the field entirely never gets here: the source quarantines it.)
    """

    reads = {"question": "question"}
    writes = {}

    def __init__(self, min_chars: int = 10):
        self.min_chars = min_chars

    def keep(self, cols):
        q = pl.col(cols["question"]).str.strip_chars()
        return {
            "no_question": q.str.len_chars() > 0,
            "question_too_short": q.str.replace_all(r"\s+", "").str.len_chars() >= self.min_chars,
        }


def word_jaccard(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """Jaccard similarity of the (lowercased) word sets of two text columns, vectorised."""
    wa = a.str.to_lowercase().str.extract_all(r"[\p{L}\p{N}]+").list.unique()
    wb = b.str.to_lowercase().str.extract_all(r"[\p{L}\p{N}]+").list.unique()
    inter = wa.list.set_intersection(wb).list.len()
    union = wa.list.set_union(wb).list.len()
    return pl.when(union > 0).then(inter / union).otherwise(0.0)


@register
class VariantNoveltyFilter(Filter):
    """Checks that synthesised question variants are new: drops a variant whose word set is too
    close to its parent question's (Jaccard >= `max_similarity`; reason `too_similar_to_parent`),
    that equals another question in the frame after normalisation (reason `duplicate_variant`),
    or whose generation failed (null text; reason `generation_failed`). Rows that are not
    variants (null `parent`) pass untouched.

    Reads: `question`, `parent` (default `parent_question`, the question a variant was made
    from; null for original rows). Writes: optional `similarity` (Float64, the Jaccard score).
    Use it right after a question-synthesis step.
    """

    reads = {"question": "question", "parent": "parent_question"}
    writes = {"similarity": None}

    def __init__(self, max_similarity: float = 0.9):
        if not 0.0 < max_similarity <= 1.0:
            raise ValueError("max_similarity must lie in (0, 1]")
        self.max_similarity = max_similarity

    def _sim(self, cols) -> pl.Expr:
        return word_jaccard(pl.col(cols["question"]), pl.col(cols["parent"]))

    def scores(self, cols):
        return [self._sim(cols).alias(cols["similarity"])] if cols.get("similarity") else []

    def keep(self, cols):
        q, parent = pl.col(cols["question"]), pl.col(cols["parent"])
        is_variant = parent.is_not_null()
        norm = q.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()
        first = pl.int_range(pl.len()).over(norm) == 0
        return {
            "generation_failed": ~is_variant | (q.str.strip_chars().str.len_chars() > 0),
            "too_similar_to_parent": ~is_variant | (self._sim(cols) < self.max_similarity),
            "duplicate_variant": ~is_variant | first,
        }


@register
class MathFormatFilter(Filter):
    """Format filter for chain-of-thought solutions: keeps a solution that states its final
    answer in a recognised form, has balanced braces and `$` delimiters, is not cut off
    mid-sentence and is not only the answer.

    Reads: `text` (default `solution`). Writes nothing. Drop reasons: `no_solution`,
    `no_final_answer` (no `\\boxed{}`, `####` or "answer is" when `require_marker`, else no
    number either), `unbalanced_braces`, `unbalanced_dollars`, `too_short` (fewer than
    `min_words` words: an answer with no reasoning), `truncated` (ends without final
    punctuation, a closing brace/`$`, or a number).
    Use it after verification so the kept solutions are well-formed training targets.
    """

    reads = {"text": "solution"}
    writes = {}

    def __init__(self, require_marker: bool = True, min_words: int = 5):
        self.require_marker, self.min_words = require_marker, min_words

    def keep(self, cols):
        t = pl.col(cols["text"])
        marker = t.str.contains(r"\\boxed\s*\{|####|(?i)answer\s*(?:is|:)")
        if not self.require_marker:
            marker = marker | t.str.contains(r"\d")
        no_escaped = t.str.replace_all(r"\\[{}$]", "")
        return {
            "no_solution": t.str.strip_chars().str.len_chars() > 0,
            "no_final_answer": marker,
            "unbalanced_braces": no_escaped.str.count_matches(r"\{") == no_escaped.str.count_matches(r"\}"),
            "unbalanced_dollars": no_escaped.str.count_matches(r"\$") % 2 == 0,
            "too_short": t.str.count_matches(r"\S+") >= self.min_words,
            "truncated": t.str.strip_chars().str.contains(r"[.!?)\]}$\d]$|\*\*$"),
        }


@register(name="cot_repetition_filter")
class CoTRepetitionFilter(Filter):
    """Drops degenerate chain-of-thought text that loops: the share of repeated lines or of
    repeated word 3-grams above a threshold (small models often repeat a step until the token
    limit).

    Reads: `text` (default `solution`). Writes: optional `repetition` (Float64, the larger of
    the two duplicate shares). Drop reasons: `repeated_lines`, `repeated_ngrams`.
    Use it on generated solutions before verification or as part of format filtering.
    """

    reads = {"text": "solution"}
    writes = {"repetition": None}

    def __init__(self, max_dup_line_share: float = 0.3, max_dup_ngram_share: float = 0.5, min_lines: int = 4):
        self.max_dup_line_share, self.max_dup_ngram_share, self.min_lines = max_dup_line_share, max_dup_ngram_share, min_lines

    def _line_dup(self, t: pl.Expr) -> pl.Expr:
        lines = t.str.split("\n").list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
        n = lines.list.len()
        return pl.when(n >= self.min_lines).then(1.0 - lines.list.unique().list.len() / n).otherwise(0.0)

    def _gram_dup(self, t: pl.Expr) -> pl.Expr:
        words = t.str.to_lowercase().str.extract_all(r"\S+")
        grams = words.list.eval(
            pl.concat_str([pl.element(), pl.element().shift(-1), pl.element().shift(-2)], separator=" ").drop_nulls()
        )
        n = grams.list.len()
        return pl.when(n >= 10).then(1.0 - grams.list.unique().list.len() / n).otherwise(0.0)

    def scores(self, cols):
        t = pl.col(cols["text"])
        return [pl.max_horizontal(self._line_dup(t), self._gram_dup(t)).alias(cols["repetition"])] if cols.get("repetition") else []

    def keep(self, cols):
        t = pl.col(cols["text"])
        return {
            "repeated_lines": self._line_dup(t) <= self.max_dup_line_share,
            "repeated_ngrams": self._gram_dup(t) <= self.max_dup_ngram_share,
        }


@register
class ReasoningStepCounter(Evaluator):
    """Counts the reasoning steps of a solution: non-empty lines, or sentences when the solution
    is a single paragraph, plus the number of equations (`=` signs outside `\\boxed{}`).

    Reads: `text` (default `solution`). Writes: `steps` (Int64) and optional `equations` (Int64).
    Use it as a cheap difficulty / verbosity signal, to keep multi-step solutions, or to
    stratify a dataset by reasoning depth.
    """

    reads = {"text": "solution"}
    writes = {"steps": "steps", "equations": None}

    def scores(self, cols):
        t = pl.col(cols["text"])
        lines = t.str.split("\n").list.eval(pl.element().filter(pl.element().str.strip_chars() != "")).list.len()
        sentences = t.str.count_matches(r"[.!?](?:\s|$)").clip(lower_bound=1)
        out = [pl.when(lines > 1).then(lines).otherwise(sentences).cast(pl.Int64).alias(cols["steps"])]
        if cols.get("equations"):
            out.append(t.str.replace_all(r"\\boxed\s*\{[^}]*\}", "").str.count_matches("=").cast(pl.Int64).alias(cols["equations"]))
        return out


_CALC = r"<<[^<>]*>>"


@register
class CalculatorAnnotationRemover(Refiner):
    """Removes GSM8K calculator annotations `<<48/2=24>>` from a solution, leaving the prose
    (`... 48/2 = 24 clips`), so a solution reads like natural chain of thought.

    Reads/rewrites: `text` (default `text`). Use it on GSM8K-style ground-truth solutions before
    using them as training targets (check them first with `CalculatorAnnotationChecker`).
    """

    def refine(self, text, cols):
        return text.str.replace_all(_CALC, "")


@register
class CalculatorAnnotationChecker(Evaluator):
    """Checks the arithmetic of GSM8K calculator annotations `<<a op b=c>>`: evaluates the left
    side (numbers, + - * / and parentheses only, via a safe AST walk) and compares it with
    the right side.

    Reads: `text` (default `solution`). Writes: `annotations` (Int64, how many annotations) and
    `annotation_errors` (Int64, how many evaluate to a different value, or do not evaluate).
    Use it to find ground-truth solutions with arithmetic slips before training on them.
    """

    reads = {"text": "solution"}
    writes = {"annotations": "annotations", "errors": "annotation_errors"}

    def run(self, frame, cols):
        t = pl.col(cols["text"])
        exprs = t.str.extract_all(r"<<([^<>=]*)=([^<>]*)>>")
        # arithmetic evaluation has no Polars form: one Python call per annotation, with a safe evaluator
        bad = exprs.list.eval(pl.element().map_elements(_annotation_wrong, return_dtype=pl.Boolean)).list.sum()
        return frame.with_columns(
            exprs.list.len().cast(pl.Int64).alias(cols["annotations"]),
            bad.cast(pl.Int64).alias(cols["errors"]),
        )


def _safe_eval(expr: str) -> float:
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos}

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.operand))
        raise ValueError("not arithmetic")

    return ev(ast.parse(expr.replace(",", ""), mode="eval"))


def _annotation_wrong(ann: str) -> bool:
    body = ann.strip("<>")
    lhs, _, rhs = body.partition("=")
    try:
        return abs(_safe_eval(lhs) - float(rhs.replace(",", ""))) > 1e-6 * max(1.0, abs(float(rhs.replace(",", ""))))
    except (ValueError, SyntaxError, ZeroDivisionError, TypeError):
        return True


@register
class CategoryBalanceFilter(Filter):
    """Caps each category at `max_per_category` rows (keeping the first ones, or the best by
    `order_by` when given) so no topic dominates the dataset.

    Reads: `category` (default `category`), optional `order_by` column (higher first).
    Writes nothing. Drop reason: `category_cap`. Null categories count as one category.
    Use it after classification to balance algebra / geometry / number theory ... data.
    """

    reads = {"category": "category", "order_by": None}
    writes = {}

    def __init__(self, max_per_category: int = 1000):
        if max_per_category < 1:
            raise ValueError("max_per_category must be >= 1")
        self.max_per_category = max_per_category

    def keep(self, cols):
        cat = pl.col(cols["category"])
        if cols.get("order_by"):
            rank = pl.col(cols["order_by"]).rank("ordinal", descending=True).over(cat)
        else:
            rank = pl.int_range(1, pl.len() + 1).over(cat)
        return {"category_cap": rank <= self.max_per_category}


@register
class ProvenanceRecorder(Generator):
    """Writes one `provenance` struct per final row: where the question came from (source row
    `_id`, synthesis mode and parent), which model and prompt produced the kept solution (from
    its meta column), and how the answer was checked (`verification`, `verification_detail`).

    Reads: `origin` (default `origin`: "original" or the synthesis mode), `parent_id` (default
    `parent_id`), `solution_meta` (default `solutions_meta`, a struct with model / template /
    cache_key), `verification`, `detail` (default `verification_detail`).
    Writes: `provenance` (Struct). Use it as the last step so every exported row is traceable.
    """

    reads = {
        "origin": "origin",
        "parent_id": "parent_id",
        "solution_meta": "solutions_meta",
        "verification": "verification",
        "detail": "verification_detail",
    }
    writes = {"provenance": "provenance"}

    def __init__(self, pipeline: str = "math_reasoning"):
        self.pipeline = pipeline

    def run(self, frame, cols):
        meta = pl.col(cols["solution_meta"])
        return frame.with_columns(
            pl.struct(
                pl.lit(self.pipeline).alias("pipeline"),
                pl.col(ID).alias("row_id"),
                pl.col(cols["origin"]).alias("origin"),
                pl.col(cols["parent_id"]).alias("parent_id"),
                meta.struct.field("model").alias("model"),
                meta.struct.field("template").alias("template"),
                meta.struct.field("cache_key").alias("cache_key"),
                pl.col(cols["verification"]).alias("verification"),
                pl.col(cols["detail"]).alias("verification_detail"),
            ).alias(cols["provenance"])
        )


__all__: Sequence[str] = [
    "QuestionPresenceFilter",
    "VariantNoveltyFilter",
    "MathFormatFilter",
    "CoTRepetitionFilter",
    "ReasoningStepCounter",
    "CalculatorAnnotationRemover",
    "CalculatorAnnotationChecker",
    "CategoryBalanceFilter",
    "ProvenanceRecorder",
]
