"""Code evaluators: lint score (pyflakes), structural complexity (Python AST), language detection
(extension and content), sandboxed test pass rate, and execution-verified outputs."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl

from operators.base import Evaluator, register
from operators.code.common import CONTENT_SIGNALS, EXTENSIONS, run_call, run_tests
from operators.sandbox import Limits, status_of_error


class _Collect:
    """A pyflakes reporter that only counts and keeps messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.syntax = False

    def unexpectedError(self, filename, msg) -> None:  # noqa: N802 - pyflakes' reporter interface
        self.syntax = True

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:  # noqa: N802
        self.syntax = True

    def flake(self, message) -> None:
        self.messages.append(message.message % message.message_args)


def lint(code: str | None) -> dict[str, Any]:
    from pyflakes.api import check

    rep = _Collect()
    check(code or "", "code.py", rep)
    if rep.syntax:
        return {"count": None, "messages": None, "score": None}
    n = len(rep.messages)
    return {"count": n, "messages": rep.messages[:20], "score": 1.0 / (1.0 + n)}


@register
class CodeLintScorer(Evaluator):
    """Lints Python with pyflakes (used as a library): undefined names, unused imports and
    variables, redefinitions, f-strings without placeholders, ...

    Reads: `code` (default `code`). Writes: `lint_count` (Int64, messages), `lint_messages`
    (List[String], the first 20) and `lint_score` (Float64 = 1 / (1 + messages): 1.0 is clean).
    All three are null for code that does not parse. Use it to rank or filter generated code.
    """

    reads = {"code": "code"}
    writes = {"count": "lint_count", "messages": "lint_messages", "score": "lint_score"}

    def run(self, frame, cols):
        dtype = pl.Struct({"count": pl.Int64, "messages": pl.List(pl.String), "score": pl.Float64})
        res = pl.col(cols["code"]).map_elements(lint, return_dtype=dtype).alias("__lint")
        return frame.with_columns(res).with_columns(
            [pl.col("__lint").struct.field(k).alias(cols[k]) for k in ("count", "messages", "score")]
        ).drop("__lint")


def _complexity(code: str | None) -> dict[str, Any]:
    try:
        tree = ast.parse(code or "")
    except (SyntaxError, ValueError):
        return {"functions": None, "branches": None, "depth": None}
    branch_nodes = (ast.If, ast.For, ast.While, ast.AsyncFor, ast.Try, ast.With, ast.BoolOp, ast.IfExp, ast.comprehension, ast.match_case)
    blocks = (ast.If, ast.For, ast.While, ast.AsyncFor, ast.Try, ast.With, ast.AsyncWith, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

    def depth(node: ast.AST, d: int = 0) -> int:
        here = d + isinstance(node, blocks)
        return max([here, *(depth(c, here) for c in ast.iter_child_nodes(node))])

    return {
        "functions": sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) for n in ast.walk(tree)),
        "branches": sum(isinstance(n, branch_nodes) for n in ast.walk(tree)),
        "depth": depth(tree),
    }


@register
class CodeComplexityEvaluator(Evaluator):
    """Structural complexity of Python code from its AST: number of functions, decision points
    (if / loops / try / boolean operators / comprehensions: the McCabe count minus one) and the
    deepest block nesting.

    Reads: `code` (default `code`). Writes: `n_functions`, `cyclomatic` (decision points + 1),
    `max_nesting` (Int64; null when the code does not parse).
    Use it to balance a dataset between trivial and involved programs or to drop deeply nested code.
    """

    reads = {"code": "code"}
    writes = {"functions": "n_functions", "cyclomatic": "cyclomatic", "depth": "max_nesting"}

    def run(self, frame, cols):
        dtype = pl.Struct({"functions": pl.Int64, "branches": pl.Int64, "depth": pl.Int64})
        res = pl.col(cols["code"]).map_elements(_complexity, return_dtype=dtype).alias("__cx")
        return frame.with_columns(res).with_columns(
            pl.col("__cx").struct.field("functions").alias(cols["functions"]),
            (pl.col("__cx").struct.field("branches") + 1).alias(cols["cyclomatic"]),
            pl.col("__cx").struct.field("depth").alias(cols["depth"]),
        ).drop("__cx")


@register
class CodeLanguageDetector(Evaluator):
    """Detects a program's language from its file extension when there is one, else from content
    signals (shebang, `#include`, `package`/`func`, `fn`/`let mut`, `def`/`import`, `SELECT ... FROM`, ...).

    Reads: `code` (default `code`), optional `path` (default none; a file name or path).
    Writes: `language` (String, lower-case; `unknown` when nothing matches) and
    `language_source` (`extension` or `content`). Vectorised; no model.
    Use it before `CodeLanguageFilter` or per-language syntax checks.
    """

    reads = {"code": "code", "path": None}
    writes = {"language": "language", "source": "language_source"}

    def run(self, frame, cols):
        code = pl.col(cols["code"]).fill_null("")
        by_content = pl.lit("unknown")
        for lang, pattern in reversed(CONTENT_SIGNALS):
            by_content = pl.when(code.str.contains(pattern)).then(pl.lit(lang)).otherwise(by_content)
        if cols.get("path"):
            ext = pl.col(cols["path"]).fill_null("").str.extract(r"\.([A-Za-z0-9+]+)$").str.to_lowercase()
            by_ext = ext.replace_strict(EXTENSIONS, default=None, return_dtype=pl.String)
        else:
            by_ext = pl.lit(None, dtype=pl.String)
        return frame.with_columns(
            pl.coalesce(by_ext, by_content).alias(cols["language"]),
            pl.when(by_ext.is_not_null()).then(pl.lit("extension")).otherwise(pl.lit("content")).alias(cols["source"]),
        )


@register
class SandboxTestRunner(Evaluator):
    """Runs each program and its tests in the sandbox (`operators.sandbox`: own process group and
    temp dir, CPU/memory/output limits, no network, read-only view) and records the outcome.

    Reads: `code` (default `code`), `tests` (default `tests`, List[String] of assert statements or
    small test programs, each run separately after the code). Writes: `pass_rate` (Float64,
    passed / total; null when the run produced no report), `tests_passed`, `tests_total` (Int64),
    `exec_status` (pass / fail / timeout / memory / crash / blocked), `exec_feedback` (String:
    the first failing test and its error, or the stderr tail; null on pass) and `exec_seconds`.
    Rows with no code or no tests get status `fail` and a null pass rate. `workers` programs run
    at a time. Use it to label generated code as execution-verified, then `PassRateFilter`.
    """

    reads = {"code": "code", "tests": "tests"}
    writes = {"rate": "pass_rate", "passed": "tests_passed", "total": "tests_total", "status": "exec_status",
              "feedback": "exec_feedback", "seconds": "exec_seconds"}

    def __init__(self, workers: int = 2, wall_s: float = 10.0, cpu_s: int = 10, memory_mb: int = 1024):
        self.workers = workers
        self.limits = Limits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb)

    def _one(self, pair: tuple[str | None, list[str] | None]) -> dict[str, Any]:
        code, tests = pair
        if not code or not tests:
            return {"rate": None, "passed": None, "total": len(tests or []), "status": "fail",
                    "feedback": "no code" if not code else "no tests", "seconds": 0.0}
        res, report = run_tests(code, tests, self.limits)
        if report is None:
            tail = "\n".join(res.stderr.strip().splitlines()[-5:]) or res.reason
            return {"rate": None, "passed": None, "total": len(tests), "status": res.status if res.status != "pass" else "fail",
                    "feedback": tail[:1000], "seconds": res.seconds}
        total = report["total"]
        status = res.status
        if status == "fail":  # the harness caught the error: classify it like the sandbox would
            status = status_of_error(report["first_failure"]) or "fail"
        return {"rate": report["passed"] / total if total else None, "passed": report["passed"], "total": total,
                "status": status, "feedback": report["first_failure"], "seconds": res.seconds}

    def run(self, frame, cols):
        pairs = list(zip(frame.get_column(cols["code"]).to_list(), frame.get_column(cols["tests"]).to_list()))
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = list(pool.map(self._one, pairs))
        dtypes = {"rate": pl.Float64, "passed": pl.Int64, "total": pl.Int64, "status": pl.String, "feedback": pl.String, "seconds": pl.Float64}
        self.last_report.extra["exec_status"] = {s: sum(r["status"] == s for r in results) for s in {r["status"] for r in results}}
        return frame.with_columns([pl.Series(cols[k], [r[k] for r in results], dtype=t) for k, t in dtypes.items()])


@register
class CodeOutputAnnotator(Evaluator):
    """Execution-verified outputs: runs the code in the sandbox, evaluates a call expression (e.g.
    `f(3, 'a')`) and records the `repr` of its value, for output-prediction data (CRUXEval style)
    or to attach ground truth to generated inputs.

    Reads: `code` (default `code`), `call` (default `call`). Writes: `output` (default
    `call_output`, String `repr`; null when the call failed) and `<output>_status` (sandbox status).
    """

    reads = {"code": "code", "call": "call"}
    writes = {"output": "call_output"}

    def __init__(self, workers: int = 2, wall_s: float = 10.0):
        self.workers, self.limits = workers, Limits(wall_s=wall_s)

    def run(self, frame, cols):
        pairs = list(zip(frame.get_column(cols["code"]).to_list(), frame.get_column(cols["call"]).to_list()))

        def one(pair):
            code, call = pair
            if not code or not call:
                return None, "fail"
            res, value = run_call(code, call, self.limits)
            return value, ("fail" if value is None and res.status == "pass" else res.status)

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = list(pool.map(one, pairs))
        out = cols["output"]
        return frame.with_columns(
            pl.Series(out, [v for v, _ in results], dtype=pl.String),
            pl.Series(f"{out}_status", [s for _, s in results], dtype=pl.String),
        )

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_status"]
