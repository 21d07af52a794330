"""Final-answer extraction and verification for math reasoning data.

Extraction is pure Polars (regular expressions on whole columns, also inside list columns of
sampled solutions); verification calls Hugging Face's `math-verify` (LaTeX / expression parsing
into SymPy and equivalence checking: fractions vs decimals, radicals, intervals, sets, matrices).
`math-verify` is a Python library with no vectorised form, so `parse`/`verify` run once per value;
each distinct value is parsed once per process (an LRU cache).

Answer forms recognised, in order of precedence (the last occurrence of a form wins):

1. `\\boxed{...}` / `\\fbox{...}` (nested braces up to four levels), the MATH convention;
2. `#### ...`, the GSM8K convention;
3. "the (final) answer is ..." / "Answer: ...", a number in it when the rest is prose;
4. the last number in the text;
5. (`whole`, for bare ground-truth answers; not in the default list) the whole text when it is
   one short line.

`math-verify` timeouts rely on SIGALRM, so they apply on the main thread only; elsewhere a parse
runs without a time limit.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any, Sequence

import polars as pl

from operators.base import Evaluator, Filter, Generator, register

# --------------------------------------------------------------------------- extraction (Polars)


def _nested(depth: int) -> str:
    inner = r"[^{}]*"
    for _ in range(depth):
        inner = r"(?:[^{}]|\{" + inner + r"\})*"
    return inner


BOXED_RE = r"\\(?:boxed|fbox)\s*\{" + _nested(4) + r"\}"
_BOXED_HEAD = r"^\\(?:boxed|fbox)\s*\{"
HASH_RE = r"####[^\n]*"
ANSWER_IS_RE = r"(?i)(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?[^\n]+"
NUMBER_RE = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"
FORMS = ("boxed", "hash", "answer_is", "last_number")
ALL_FORMS = (*FORMS, "whole")


def _clean(ans: pl.Expr) -> pl.Expr:
    """Trim whitespace, `$` signs, a trailing period and thousands separators (1,234 -> 1234)."""
    out = ans.str.strip_chars().str.strip_chars("$ ").str.strip_chars_end(".").str.strip_chars()
    for _ in range(2):  # 1,234,567 needs two passes: matches do not overlap
        out = out.str.replace_all(r"(\d),(\d{3})(\D|$)", "${1}${2}${3}")
    return pl.when(out.str.len_chars() > 0).then(out)


def boxed_answer(text: pl.Expr) -> pl.Expr:
    """Content of the last `\\boxed{...}` in `text` (null when there is none)."""
    last = text.str.extract_all(BOXED_RE).list.last()
    return last.str.replace(_BOXED_HEAD, "").str.strip_suffix("}")


def hash_answer(text: pl.Expr) -> pl.Expr:
    """What follows the last `####` marker (GSM8K), up to the end of its line."""
    return text.str.extract_all(HASH_RE).list.last().str.strip_prefix("####")


def answer_is_answer(text: pl.Expr) -> pl.Expr:
    """The last "the answer is ..." / "Answer: ..." phrase: its LaTeX as written, else its first number,
    else the phrase."""
    phrase = text.str.extract_all(ANSWER_IS_RE).list.last().str.replace(r"(?i)^(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?", "")
    phrase = phrase.str.replace(r"\.\s.*$", "")
    number = phrase.str.extract(f"({NUMBER_RE})", 1)
    return pl.when(phrase.str.contains(r"\\")).then(phrase).otherwise(pl.coalesce(number, phrase))


def last_number(text: pl.Expr) -> pl.Expr:
    """The last number in `text` (integers, decimals, simple fractions a/b, thousands separators)."""
    return text.str.extract_all(NUMBER_RE).list.last()


def whole_answer(text: pl.Expr, max_chars: int = 80) -> pl.Expr:
    """The whole text when it is one short line (a bare ground-truth answer such as `\\frac{1}{9}`)."""
    t = text.str.strip_chars()
    return pl.when(~t.str.contains("\n") & (t.str.len_chars() <= max_chars)).then(t)


def extract_answer(text: pl.Expr, forms: Sequence[str] = FORMS) -> tuple[pl.Expr, pl.Expr]:
    """(answer, form) expressions: the first recognised form in `forms` order, cleaned."""
    fns = {"boxed": boxed_answer, "hash": hash_answer, "answer_is": answer_is_answer, "last_number": last_number, "whole": whole_answer}
    cands = [(f, _clean(fns[f](text))) for f in forms]
    answer = pl.coalesce([c for _, c in cands])
    form = pl.coalesce([pl.when(c.is_not_null()).then(pl.lit(f)) for f, c in cands] + [pl.lit(None, dtype=pl.String)])
    return answer, form


@register
class AnswerExtractor(Generator):
    """Extracts the final answer from a solution text: `\\boxed{}` (MATH), `####` (GSM8K),
    "the answer is ..." and, as a last resort, the final number.

    Reads: `text` (default `solution`; a String column, or a List[String] of sampled solutions).
    The column is optional: when the frame lacks it (input without ground truth) the outputs
    are null. Writes: `answer` (default `answer`; String, or List[String] for a list input) and
    optional `form` (which form matched: boxed / hash / answer_is / last_number / whole; null
    when none). `forms` restricts and orders the forms tried (e.g. `("boxed", "hash")` for strict
    data); `whole` (the whole text when it is one short line) suits bare ground-truth answers.
    Use it on chain-of-thought samples before verification, and on ground-truth solutions
    (GSM8K `answer` fields) to get the gold answer. Vectorised Polars regexes; nested braces in
    `\\boxed{}` are matched to four levels.
    """

    reads = {"text": "solution"}
    writes = {"answer": "answer", "form": None}

    def __init__(self, forms: Sequence[str] = FORMS):
        bad = [f for f in forms if f not in ALL_FORMS]
        if bad or not forms:
            raise ValueError(f"forms must be a non-empty subset of {ALL_FORMS}, got {list(forms)}")
        self.forms = tuple(forms)

    def input_columns(self, cols):
        return []  # the text column is optional (checked in run)

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        src, ans, form = cols["text"], cols["answer"], cols.get("form")
        if src not in frame.columns:
            out = [pl.lit(None, dtype=pl.String).alias(ans)]
            if form:
                out.append(pl.lit(None, dtype=pl.String).alias(form))
            return frame.with_columns(out)
        is_list = isinstance(frame.schema[src], pl.List)
        if is_list:
            a, f = extract_answer(pl.element(), self.forms)
            exprs = [pl.col(src).list.eval(a).alias(ans)]
            if form:
                exprs.append(pl.col(src).list.eval(f).alias(form))
        else:
            a, f = extract_answer(pl.col(src).cast(pl.String), self.forms)
            exprs = [a.alias(ans)] + ([f.alias(form)] if form else [])
        return frame.with_columns(exprs)


# --------------------------------------------------------------------------- math-verify


import logging


class _NoTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


# off the main thread math-verify cannot time out (SIGALRM); it warns on every call about that
logging.getLogger("math_verify.parser").addFilter(_NoTimeoutWarning())
logging.getLogger("math_verify.grader").addFilter(_NoTimeoutWarning())


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=65_536)
def parse_answer(answer: str | None) -> tuple:
    """`math_verify.parse` of one answer (wrapped in `$...$` unless it already is LaTeX math),
    as a tuple (empty when nothing parsed). Timeouts use SIGALRM, so only in the main thread."""
    if answer is None or not str(answer).strip():
        return ()
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = str(answer).strip()
    if not (text.startswith("$") or text.startswith("\\(") or text.startswith("\\[") or "\\boxed" in text):
        text = f"${text}$"
    timeout = 5 if _in_main_thread() else None
    try:
        return tuple(parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=timeout))
    except Exception:  # math-verify raises on pathological input; a value that does not parse is reported as such
        return ()


def answers_match(gold: str | None, answer: str | None) -> bool:
    """True when `answer` is mathematically equivalent to `gold` under `math_verify.verify`
    (numbers to 6 decimals, symbolic equality, intervals, sets, matrices). False when either
    side does not parse."""
    if not parses(gold) or not parses(answer):
        return False
    g, a = parse_answer(gold), parse_answer(answer)
    from math_verify import verify

    timeout = 5 if _in_main_thread() else None
    try:
        return bool(verify(list(g), list(a), timeout_seconds=timeout))
    except Exception:  # a comparison math-verify cannot make is not a match
        return False


def parses(answer: str | None) -> bool:
    """Whether math-verify turned the answer into a mathematical object (a result holding only
    the input string back means it found nothing to parse, e.g. a sentence)."""
    return any(not isinstance(x, str) for x in parse_answer(answer))


_LATEX_CMD = re.compile(r"\\text\s*\{[^{}]*\}|\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")


def is_symbolic(answer: str | None) -> bool:
    """Whether `answer` is mathematics that math-verify can judge: it parses, and holds no prose
    word (three or more letters outside LaTeX commands and `\\text{}`), which math-verify would
    read as a product of symbols."""
    return answer is not None and parses(answer) and not _WORD.search(_LATEX_CMD.sub(" ", answer))


@register
class GoldAnswerParseFilter(Filter):
    """Drops rows whose ground-truth answer is present but does not parse with `math-verify`
    (reason `gold_unparseable`): such a row could never be verified and would otherwise look
    like a model failure. Rows without a ground truth (null) are kept; they go to voting.

    Reads: `gold` (default `gold_answer`). Writes nothing. Use it right after extracting the
    gold answer from a ground-truth solution.
    """

    reads = {"gold": "gold_answer"}
    writes = {}

    def run(self, frame, cols):
        # math-verify per value, in this thread (its parse timeout needs the main thread's SIGALRM)
        ok = pl.Series([g is None or parses(g) for g in frame.get_column(cols["gold"])], dtype=pl.Boolean)
        return self.apply_keep(frame, {"gold_unparseable": ok})


VERIFIED_DTYPE = pl.Boolean


@register
class MathVerifyEvaluator(Evaluator):
    """Verifies extracted answers against the ground truth with `math-verify` (symbolic and
    numeric equivalence: 0.5 = 1/2 = \\frac{1}{2}, radicals, intervals, sets, matrices).

    Reads: `answers` (default `sample_answers`; String or List[String] of sampled answers) and
    `gold` (default `gold_answer`; null = no ground truth). Writes: `correct` (default
    `sample_correct`; Boolean, or List[Boolean] per sample), `pass_rate` (Float64, share of samples
    that verify; null without gold), `verified` (Boolean: at least one sample verifies; null
    without gold), `verification` (String "math_verify" on rows with gold, else null) and
    `verification_detail` (String, e.g. "3/4 samples equal gold 18").
    Use it after `AnswerExtractor` on chain-of-thought samples; rows without gold are left for
    `SelfConsistencyVoter`.
    """

    reads = {"answers": "sample_answers", "gold": "gold_answer"}
    writes = {
        "correct": "sample_correct",
        "pass_rate": "pass_rate",
        "verified": "verified",
        "verification": "verification",
        "detail": "verification_detail",
    }

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        ans_c, gold_c = cols["answers"], cols["gold"]
        is_list = isinstance(frame.schema[ans_c], pl.List)
        golds = frame.get_column(gold_c).to_list()
        answers = frame.get_column(ans_c).to_list()
        correct: list[Any] = []
        for gold, ans in zip(golds, answers, strict=True):  # math-verify is per value
            samples = ans if is_list else [ans]
            if gold is None:
                res = None
            else:
                res = [answers_match(gold, a) for a in (samples or [])]
            correct.append(res if (is_list or res is None) else res[0])
        dtype = pl.List(pl.Boolean) if is_list else pl.Boolean
        s = pl.Series(cols["correct"], correct, dtype=dtype)
        out = frame.with_columns(s)
        as_list = pl.col(cols["correct"]) if is_list else pl.concat_list(pl.col(cols["correct"]))
        n_ok = as_list.list.sum()
        n = as_list.list.len()
        has_gold = pl.col(gold_c).is_not_null()
        return out.with_columns(
            pl.when(has_gold).then(pl.when(n > 0).then(n_ok / n).otherwise(0.0)).cast(pl.Float64).alias(cols["pass_rate"]),
            pl.when(has_gold).then(n_ok > 0).alias(cols["verified"]),
            pl.when(has_gold).then(pl.lit("math_verify")).alias(cols["verification"]),
            pl.when(has_gold)
            .then(pl.format("{}/{} samples equal gold {}", n_ok.fill_null(0), n.fill_null(0), pl.col(gold_c)))
            .alias(cols["detail"]),
        )


def _clusters(answers: list[str | None]) -> list[int | None]:
    """Cluster label per answer: equal labels = math-verify equivalent (None = no answer)."""
    reps: list[str] = []
    labels: list[int | None] = []
    for a in answers:
        if a is None or not is_symbolic(a):  # prose ("answer", "none") never wins a vote
            labels.append(None)
            continue
        for k, r in enumerate(reps):
            if r == a or answers_match(r, a):
                labels.append(k)
                break
        else:
            reps.append(a)
            labels.append(len(reps) - 1)
    return labels


@register
class SelfConsistencyVoter(Evaluator):
    """Self-consistency voting where no ground truth exists: the sampled answers of a row are
    grouped by `math-verify` equivalence and the largest group wins when its share of all
    samples reaches `min_agreement` and it holds at least `min_votes` samples (so one sample alone
    never counts as a consensus; ties go to the group of the earliest sample). Answers that
    are prose rather than mathematics (a placeholder such as "answer" echoed from the prompt)
    take no part in the vote.

    Reads: `answers` (default `sample_answers`, List[String]) and `gold` (default `gold_answer`;
    rows WITH gold are left untouched). Writes on the other rows: `correct` (List[Boolean], the
    samples in the winning group), `pass_rate` (agreement share), `verified` (Boolean: agreement
    reached), `verification` ("self_consistency") and `verification_detail` ("vote 3/4 for 18");
    plus `voted_answer` (default `voted_answer`, the winning answer; also filled for gold rows with
    the gold). Use it right after `MathVerifyEvaluator` on the same columns.
    """

    reads = {"answers": "sample_answers", "gold": "gold_answer"}
    writes = {
        "correct": "sample_correct",
        "pass_rate": "pass_rate",
        "verified": "verified",
        "verification": "verification",
        "detail": "verification_detail",
        "voted": "voted_answer",
    }

    def __init__(self, min_agreement: float = 0.5, min_votes: int = 2):
        if not 0.0 < min_agreement <= 1.0:
            raise ValueError("min_agreement must lie in (0, 1]")
        self.min_agreement, self.min_votes = min_agreement, min_votes

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        ans_c, gold_c = cols["answers"], cols["gold"]
        names = [cols[k] for k in ("correct", "pass_rate", "verified", "verification", "detail")]
        for c, t in zip(names, (pl.List(pl.Boolean), pl.Float64, pl.Boolean, pl.String, pl.String), strict=True):
            if c not in frame.columns:
                frame = frame.with_columns(pl.lit(None, dtype=t).alias(c))
        rows = []
        for gold, answers in zip(frame.get_column(gold_c).to_list(), frame.get_column(ans_c).to_list(), strict=True):
            if gold is not None:
                rows.append((None, None, None, None, None, gold))
                continue
            answers = answers or []
            labels = _clusters(answers)
            counts: dict[int, int] = {}
            for lab in labels:
                if lab is not None:
                    counts[lab] = counts.get(lab, 0) + 1
            if not counts:
                rows.append(([False] * len(answers), 0.0, False, "self_consistency", f"vote 0/{len(answers)}: no answer parsed", None))
                continue
            best = max(counts, key=lambda k: (counts[k], -labels.index(k)))
            share = counts[best] / len(answers)
            winner = answers[labels.index(best)]
            ok = share >= self.min_agreement and counts[best] >= self.min_votes  # one sample is no consensus
            rows.append(([lab == best for lab in labels], share, ok, "self_consistency", f"vote {counts[best]}/{len(answers)} for {winner}", winner))
        upd = pl.DataFrame(
            rows,
            schema={"c": pl.List(pl.Boolean), "p": pl.Float64, "v": pl.Boolean, "m": pl.String, "d": pl.String, "w": pl.String},
            orient="row",
        )
        has_gold = frame.get_column(gold_c).is_not_null()
        out = frame.with_columns(
            pl.when(pl.lit(has_gold)).then(pl.col(n)).otherwise(pl.lit(upd.get_column(k))).alias(n)
            for n, k in zip(names, ("c", "p", "v", "m", "d"), strict=True)
        )
        return out.with_columns(upd.get_column("w").alias(cols["voted"]))


@register
class VerifiedAnswerFilter(Filter):
    """Keeps only rows whose answer was verified (against the ground truth, or by a vote that
    reached agreement), and picks the solution the final row carries: the first sample whose
    answer is correct / in the winning group.

    Reads: `verified`, `correct` (List[Boolean] per sample), `solutions` (List[String]),
    `answers` (List[String]), `gold`, `voted`, `solutions_meta` (List[Struct], read only when
    `solution_meta` is written). Writes: `solution` (String), `final_answer` (String: the gold
    answer for verified rows, the voted answer for voted rows) and optional `solution_meta`
    (the chosen sample's provenance struct).
    Drop reasons: `no_answer_extracted` (no sample produced an answer), `answer_mismatch`
    (gold exists, no sample equals it), `no_consensus` (no gold, the vote did not agree).
    Use it right after the verifier / voter.
    """

    reads = {
        "verified": "verified",
        "correct": "sample_correct",
        "solutions": "solutions",
        "answers": "sample_answers",
        "gold": "gold_answer",
        "voted": "voted_answer",
        "solutions_meta": "solutions_meta",
    }
    writes = {"solution": "solution", "final_answer": "final_answer", "solution_meta": None}

    def input_columns(self, cols):
        own = super().input_columns(cols)
        return own if cols.get("solution_meta") else [(r, c) for r, c in own if r != "solutions_meta"]

    def run(self, frame, cols):
        correct, sols = pl.col(cols["correct"]), pl.col(cols["solutions"])
        first = correct.list.eval(pl.element().fill_null(False).arg_max()).list.first()
        pick = pl.when(correct.list.any()).then(sols.list.get(first, null_on_oob=True))
        answered = pl.col(cols["answers"]).list.drop_nulls().list.len() > 0
        has_gold = pl.col(cols["gold"]).is_not_null()
        picked = [pick.alias(cols["solution"]), pl.coalesce(pl.col(cols["gold"]), pl.col(cols["voted"])).alias(cols["final_answer"])]
        if cols.get("solution_meta"):
            metas = pl.col(cols["solutions_meta"])
            picked.append(pl.when(correct.list.any()).then(metas.list.get(first, null_on_oob=True)).alias(cols["solution_meta"]))
        marked = frame.with_columns(picked)
        keep = {
            "no_answer_extracted": answered,
            "answer_mismatch": ~has_gold | pl.col(cols["verified"]),
            "no_consensus": has_gold | pl.col(cols["verified"]),
        }
        return self.apply_keep(marked, keep)


@register
class AnswerTypeClassifier(Evaluator):
    """Rule-based: classifies a final answer's type: integer, decimal, fraction, radical,
    interval, matrix, set, expression (has a variable or operator), text (anything else).

    Reads: `answer` (default `final_answer`). Writes: `answer_type` (String).
    Use it to balance or stratify a dataset by answer type, or to route text answers to an LLM
    equivalence judge instead of `math-verify`.
    """

    reads = {"answer": "final_answer"}
    writes = {"answer_type": "answer_type"}

    def scores(self, cols):
        a = pl.col(cols["answer"]).str.strip_chars().str.strip_chars("$")
        return [
            pl.when(a.str.contains(r"^-?\d+$")).then(pl.lit("integer"))
            .when(a.str.contains(r"^-?\d*\.\d+$")).then(pl.lit("decimal"))
            .when(a.str.contains(r"^-?\d+/\d+$|\\d?frac\{")).then(pl.lit("fraction"))
            .when(a.str.contains(r"\\begin\{[pbvB]?matrix\}")).then(pl.lit("matrix"))
            .when(a.str.contains(r"^[\[(].*,.*[\])]$") & ~a.str.contains(r"^\(.*\)$") | a.str.contains(r"\\cup|\\infty")).then(pl.lit("interval"))
            .when(a.str.contains(r"\\sqrt")).then(pl.lit("radical"))
            .when(a.str.contains(r"^\\?\{.*\\?\}$|^\(.*,.*\)$")).then(pl.lit("set"))
            .when(a.str.contains(r"[a-zA-Z]\s*[=+\-*/^<>]|[=+\-*/^<>]\s*[a-zA-Z]|\\pi|^[a-z]$")).then(pl.lit("expression"))
            .when(a.is_not_null()).then(pl.lit("text"))
            .alias(cols["answer_type"])
        ]


@register
class PreferencePairBuilder(Generator):
    """Builds DPO-style preference pairs from sampled solutions: `chosen` is the first correct
    sample, `rejected` the first incorrect one (null when the row has no such pair).

    Reads: `solutions` (List[String]) and `correct` (List[Boolean], from the verifier or voter).
    Writes: `chosen`, `rejected` (String). Use it to turn the n-sample verification step into
    preference data for free: rows where the model was right on some samples and wrong on others.
    """

    reads = {"solutions": "solutions", "correct": "sample_correct"}
    writes = {"chosen": "chosen", "rejected": "rejected"}

    def run(self, frame, cols):
        sols, ok = pl.col(cols["solutions"]), pl.col(cols["correct"])
        good = ok.list.eval(pl.element().fill_null(False).arg_max()).list.first()
        bad = ok.list.eval((~pl.element().fill_null(False)).arg_max()).list.first()
        has_pair = ok.list.any() & (~ok.list.all())
        return frame.with_columns(
            pl.when(has_pair).then(sols.list.get(good, null_on_oob=True)).alias(cols["chosen"]),
            pl.when(has_pair).then(sols.list.get(bad, null_on_oob=True)).alias(cols["rejected"]),
        )
