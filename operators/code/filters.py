"""Code filters: syntax, size/line shape, comment ratio, auto-generated and data files, secrets,
dangerous calls, language, and test pass rate. Heuristics are vectorised Polars expressions;
parsers (Python `ast`, `json`, `sqlglot`) run once per row."""

from __future__ import annotations

import ast
import json
from typing import Sequence

import polars as pl

from operators.base import Filter, register
from operators.code.common import python_syntax_error


def _syntax_error(code: str | None, language: str | None) -> str | None:
    lang = (language or "python").lower()
    if code is None:
        return "no code"
    if lang == "python":
        return python_syntax_error(code)
    if lang == "json":
        try:
            json.loads(code)
        except ValueError as err:
            return f"JSONDecodeError: {err}"
        return None
    if lang == "sql":
        import sqlglot

        try:
            sqlglot.parse(code, read="sqlite")
        except sqlglot.errors.SqlglotError as err:
            return f"ParseError: {str(err).splitlines()[0]}"
        return None
    return None  # no parser for this language here: not judged


@register
class CodeSyntaxFilter(Filter):
    """Parses each program with its language's parser (Python `ast`, JSON, SQL via sqlglot) and drops
    the ones that do not parse; languages without a parser here pass unjudged.

    Reads: `code` (default `code`), optional `language` (default none: every row is Python).
    Writes: `syntax_error` (String, null when it parses). Dropped reason: `syntax_error`.
    Use it first on model-written or scraped code: nothing downstream should run unparseable code.
    """

    reads = {"code": "code", "language": None}
    writes = {"error": "syntax_error"}

    def scores(self, cols):
        lang = cols.get("language")
        fields = [pl.col(cols["code"]).alias("c"), (pl.col(lang) if lang else pl.lit(None, dtype=pl.String)).alias("l")]
        return [pl.struct(fields).map_elements(lambda r: _syntax_error(r["c"], r["l"]), return_dtype=pl.String).alias(cols["error"])]

    def keep(self, cols):
        return {"syntax_error": pl.col(cols["error"]).is_null()}


@register
class CodeLengthFilter(Filter):
    """Keeps programs whose size and line shape look like real source code: characters and lines
    within bounds, no line longer than `max_line_length`, mean line length at most `max_mean_line`.

    Reads: `code` (default `code`). Writes: `code_lines` (Int64), `max_line_length` (Int64).
    Dropped reasons: `too_short`, `too_long`, `long_lines` (minified or generated), `few_lines`, `many_lines`.
    Use it to remove one-liners, minified bundles and huge files (The Stack / StarCoder style).
    """

    reads = {"code": "code"}
    writes = {"lines": "code_lines", "longest": "max_line_length"}

    def __init__(self, min_chars: int = 20, max_chars: int = 100_000, min_lines: int = 2, max_lines: int = 5_000,
                 max_line_length: int = 1_000, max_mean_line: float = 100.0):
        self.min_chars, self.max_chars, self.min_lines, self.max_lines = min_chars, max_chars, min_lines, max_lines
        self.max_line_length, self.max_mean_line = max_line_length, max_mean_line

    def scores(self, cols):
        lines = pl.col(cols["code"]).str.strip_chars_end("\n").str.split("\n")
        return [lines.list.len().cast(pl.Int64).alias(cols["lines"]),
                lines.list.eval(pl.element().str.len_chars()).list.max().cast(pl.Int64).alias(cols["longest"])]

    def keep(self, cols):
        n = pl.col(cols["code"]).str.len_chars()
        lines = pl.col(cols["lines"])
        return {
            "too_short": n >= self.min_chars,
            "too_long": n <= self.max_chars,
            "few_lines": lines >= self.min_lines,
            "many_lines": lines <= self.max_lines,
            "long_lines": (pl.col(cols["longest"]) <= self.max_line_length) & (n / lines <= self.max_mean_line),
        }


@register
class CodeCommentRatioFilter(Filter):
    """Keeps programs whose share of comment characters lies in [`min_ratio`, `max_ratio`]: no
    documentation at all is allowed by default, but files that are mostly comments (licences,
    commented-out code) are dropped.

    Reads: `code` (default `code`). Writes: `comment_ratio` (Float64; `#` and `//` line comments
    and `/* */`, `\"\"\" \"\"\"` blocks over all non-blank characters).
    Dropped reasons: `too_few_comments`, `too_many_comments`.
    """

    reads = {"code": "code"}
    writes = {"ratio": "comment_ratio"}

    def __init__(self, min_ratio: float = 0.0, max_ratio: float = 0.8):
        if not 0 <= min_ratio <= max_ratio <= 1:
            raise ValueError("need 0 <= min_ratio <= max_ratio <= 1")
        self.min_ratio, self.max_ratio = min_ratio, max_ratio

    def scores(self, cols):
        code = pl.col(cols["code"])
        comments = code.str.extract_all(r'(?m)(#|//)[^\n]*$|/\*(?s:.*?)\*/|"""(?s:.*?)"""|\'\'\'(?s:.*?)\'\'\'')
        comment_chars = comments.list.eval(pl.element().str.replace_all(r"\s", "").str.len_chars()).list.sum()
        total = code.str.replace_all(r"\s", "").str.len_chars()
        return [pl.when(total > 0).then(comment_chars / total).otherwise(0.0).cast(pl.Float64).alias(cols["ratio"])]

    def keep(self, cols):
        r = pl.col(cols["ratio"])
        return {"too_few_comments": r >= self.min_ratio, "too_many_comments": r <= self.max_ratio}


AUTOGEN_MARKERS = (
    r"auto-?generated", r"autogenerated", r"generated by", r"do not edit", r"don't edit", r"code generator",
    r"this file was generated", r"@generated", r"generated from", r"protoc-gen", r"<auto-generated",
)


@register
class AutoGeneratedCodeFilter(Filter):
    """Drops machine-generated source: a generator marker ("auto-generated", "DO NOT EDIT",
    "@generated", "generated by protoc" ...) in the first `head_lines` lines, or a file name of a
    known generated kind (`_pb2.py`, `.min.js`, lock files, migrations).

    Reads: `code` (default `code`), optional `path` (default none). Writes: nothing.
    Dropped reasons: `autogen_marker`, `autogen_path`.
    """

    reads = {"code": "code", "path": None}

    def __init__(self, head_lines: int = 10, markers: Sequence[str] = AUTOGEN_MARKERS):
        self.head_lines, self.markers = head_lines, tuple(markers)

    def keep(self, cols):
        head = pl.col(cols["code"]).str.split("\n").list.head(self.head_lines).list.join("\n").str.to_lowercase()
        out = {"autogen_marker": ~head.str.contains("(" + "|".join(self.markers) + ")")}
        if cols.get("path"):
            out["autogen_path"] = ~pl.col(cols["path"]).fill_null("").str.contains(
                r"(_pb2(_grpc)?\.py|\.pb\.go|\.min\.(js|css)|package-lock\.json|yarn\.lock|Cargo\.lock|/migrations/\d+)"
            )
        return out


@register
class DataFileFilter(Filter):
    """Drops files that are data rather than code: mostly numbers/string literals, long encoded
    blobs (base64 / hex runs), or very few alphabetic characters.

    Reads: `code` (default `code`). Writes: `alpha_ratio` (Float64, letters over non-blank
    characters) and `blob_chars` (Int64, characters in base64/hex runs of 64+ characters or
    `'...' * N` repeated literals). Dropped reasons: `low_alpha` (alpha_ratio < `min_alpha`),
    `encoded_blob` (blob share > `max_blob_share`), `numeric_table` (digit share > `max_digit_share`).
    Use it on scraped repositories where data dumps sit next to source files.
    """

    reads = {"code": "code"}
    writes = {"alpha": "alpha_ratio", "blobs": "blob_chars"}

    def __init__(self, min_alpha: float = 0.25, max_blob_share: float = 0.3, max_digit_share: float = 0.5):
        self.min_alpha, self.max_blob_share, self.max_digit_share = min_alpha, max_blob_share, max_digit_share

    def scores(self, cols):
        code = pl.col(cols["code"])
        nonblank = code.str.replace_all(r"\s", "").str.len_chars()
        alpha = code.str.count_matches(r"[A-Za-z]")
        blobs = code.str.extract_all(r"[A-Za-z0-9+/=]{64,}|(?:0x)?[0-9a-fA-F]{64,}|(['\"])[^'\"\n]{4,}['\"]\s*\*\s*\d{2,}")
        blob_chars = blobs.list.eval(pl.element().str.len_chars()).list.sum().cast(pl.Int64)
        return [pl.when(nonblank > 0).then(alpha / nonblank).otherwise(0.0).cast(pl.Float64).alias(cols["alpha"]),
                blob_chars.alias(cols["blobs"])]

    def keep(self, cols):
        code = pl.col(cols["code"])
        nonblank = code.str.replace_all(r"\s", "").str.len_chars().clip(lower_bound=1)
        digits = code.str.count_matches(r"[0-9]")
        return {
            "low_alpha": pl.col(cols["alpha"]) >= self.min_alpha,
            "encoded_blob": pl.col(cols["blobs"]) / nonblank <= self.max_blob_share,
            "numeric_table": digits / nonblank <= self.max_digit_share,
        }


SECRET_PATTERNS = {
    "private_key": r"-----BEGIN (RSA |EC |DSA |OPENSSH |PGP )?PRIVATE KEY",
    "aws_key": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "slack_token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "openai_key": r"\bsk-(proj-)?[A-Za-z0-9_-]{20,}",
    "google_api_key": r"\bAIza[0-9A-Za-z_-]{35}\b",
    "password_assignment": r"(?i)\b(password|passwd|secret|api_key|apikey|token)\s*[:=]\s*['\"][^'\"\s]{8,}['\"]",
}


@register
class CodeSecretsFilter(Filter):
    """Drops code that embeds credentials: private keys, AWS / GitHub / Slack / OpenAI / Google
    keys, and hard-coded password/token string assignments.

    Reads: `code` (default `code`). Writes: nothing. Dropped reason: `secret_<kind>` for the first
    kind found. Use it before anything leaves the pipeline (training data must not carry live keys).
    """

    reads = {"code": "code"}

    def __init__(self, kinds: Sequence[str] = tuple(SECRET_PATTERNS)):
        unknown = set(kinds) - set(SECRET_PATTERNS)
        if unknown:
            raise ValueError(f"unknown secret kinds {sorted(unknown)}; known: {list(SECRET_PATTERNS)}")
        self.kinds = tuple(kinds)

    def keep(self, cols):
        code = pl.col(cols["code"])
        return {f"secret_{k}": ~code.str.contains(SECRET_PATTERNS[k]) for k in self.kinds}


DANGEROUS_CALLS = {
    "os.system", "os.popen", "os.remove", "os.unlink", "os.rmdir", "os.kill", "os.fork", "os.execv", "os.execl",
    "shutil.rmtree", "subprocess.run", "subprocess.call", "subprocess.Popen", "subprocess.check_output",
    "socket.socket", "socket.create_connection", "urllib.request.urlopen", "requests.get", "requests.post",
    "eval", "exec", "__import__", "compile", "ctypes.CDLL",
}


def _dangerous(code: str | None) -> str | None:
    try:
        tree = ast.parse(code or "")
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in DANGEROUS_CALLS:
                return name
    return None


@register
class DangerousCodeFilter(Filter):
    """Static screen for programs that should not become training targets: calls that delete files,
    spawn processes, open network connections or evaluate strings (`os.system`, `shutil.rmtree`,
    `subprocess.*`, `socket.*`, `requests.*`, `eval`, `exec`, ...), found by walking the Python AST.

    Reads: `code` (default `code`). Writes: `dangerous_call` (String, the first such call or
    null). Dropped reason: `dangerous_call`. The sandbox contains such programs anyway; this
    decides what is *kept*.
    """

    reads = {"code": "code"}
    writes = {"call": "dangerous_call"}

    def scores(self, cols):
        return [pl.col(cols["code"]).map_elements(_dangerous, return_dtype=pl.String).alias(cols["call"])]

    def keep(self, cols):
        return {"dangerous_call": pl.col(cols["call"]).is_null()}


@register
class CodeLanguageFilter(Filter):
    """Keeps rows whose detected language (from `CodeLanguageDetector`) is in `keep`.

    Reads: `language` (default `language`). Writes: nothing. Dropped reason: `language`.
    """

    reads = {"language": "language"}

    def __init__(self, keep: Sequence[str] = ("python",)):
        if not keep:
            raise ValueError("keep must name at least one language")
        self.languages = tuple(x.lower() for x in keep)

    def keep(self, cols):
        return {"language": pl.col(cols["language"]).str.to_lowercase().is_in(list(self.languages))}


@register
class PassRateFilter(Filter):
    """Keeps rows whose sandboxed test pass rate (from `SandboxTestRunner`) reaches `min_pass_rate`
    and, with `require_pass=True` (default), whose run status is `pass`: every kept row carries an
    execution-verified label.

    Reads: `pass_rate` (default `pass_rate`), `status` (default `exec_status`). Writes: nothing.
    Dropped reasons, first match: `exec_<status>` (the run ended as timeout / memory / crash /
    blocked / fail), `not_executed` (no pass rate), `tests_failed` (pass rate below the minimum).
    """

    reads = {"pass_rate": "pass_rate", "status": "exec_status"}

    def __init__(self, min_pass_rate: float = 1.0, require_pass: bool = True):
        if not 0 <= min_pass_rate <= 1:
            raise ValueError("min_pass_rate must be in [0, 1]")
        self.min_pass_rate, self.require_pass = min_pass_rate, require_pass

    def keep(self, cols):
        rate, st = pl.col(cols["pass_rate"]), pl.col(cols["status"])
        out = {}
        if self.require_pass:  # the run's own outcome is the most telling reason: first
            for s in ("timeout", "memory", "crash", "blocked", "fail"):
                out[f"exec_{s}"] = st != s
        out.update({"not_executed": rate.is_not_null(), "tests_failed": rate >= self.min_pass_rate})
        return out
