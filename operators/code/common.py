"""Shared helpers of the `code` operators (nothing here is registered): code extraction from model
replies, assert extraction, the test harness run in the sandbox, and language tables."""

from __future__ import annotations

import ast
import json
import re
import secrets
from typing import Any, Sequence

from operators.sandbox import Limits, SandboxResult, run_python

_FENCE = re.compile(r"```([A-Za-z0-9_+#-]*)[ \t]*\n(.*?)```", re.S)
PY_LANGS = {"", "python", "py", "python3"}


def extract_code(text: str | None, language: str = "python") -> str | None:
    """The code in a model reply: the last fenced block tagged `language` (or untagged), else the
    whole reply when it parses as Python and is more than a bare word. None when nothing fits."""
    if not text:
        return None
    tags = PY_LANGS if language == "python" else {"", language.lower()}
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in tags]
    if blocks:
        return blocks[-1].strip("\n")
    if language == "python" and _looks_like_python(text):
        return text
    return None


def _looks_like_python(text: str) -> bool:
    """Parses, and is more than bare names / literals (so plain prose like `nothing` is not code)."""
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError):
        return False
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, (ast.Name, ast.Constant))) for n in body)


def python_syntax_error(code: str | None) -> str | None:
    """None when `code` parses as Python, else `SyntaxError: msg (line N)`."""
    if code is None:
        return "no code"
    try:
        ast.parse(code)
    except SyntaxError as err:
        return f"SyntaxError: {err.msg} (line {err.lineno})"
    except (ValueError, MemoryError, RecursionError) as err:  # null bytes, absurd nesting
        return f"{type(err).__name__}: {err}"
    return None


def extract_asserts(text: str | None) -> list[str]:
    """Every top-level `assert` statement in the reply's Python blocks (or in the reply itself),
    each as source text that parses on its own."""
    if not text:
        return []
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in PY_LANGS] or [text]
    out: list[str] = []
    for block in blocks:
        try:
            tree = ast.parse(block)
        except SyntaxError:
            # keep the assert lines that parse alone
            for line in block.splitlines():
                line = line.strip()
                if line.startswith("assert ") and python_syntax_error(line) is None:
                    out.append(line)
            continue
        out.extend(ast.unparse(node) for node in tree.body if isinstance(node, ast.Assert))
    return out


# The harness runs first: it reads a per-run nonce from stdin (so the program under test cannot
# print a forged report), executes the solution in its own namespace, then each test separately.
_HARNESS = r'''
import json as _json, sys as _sys, traceback as _tb
def _dataflow_harness():
    nonce = _sys.stdin.readline().strip()
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    with open("tests.json", encoding="utf-8") as f:
        tests = _json.load(f)
    ns = {"__name__": "__main__"}
    report = {"passed": 0, "total": len(tests), "first_failure": None, "loaded": False}
    try:
        exec(compile(source, "solution.py", "exec"), ns)
        report["loaded"] = True
    except BaseException as e:
        report["first_failure"] = "solution: " + "".join(_tb.format_exception_only(type(e), e)).strip()[:400]
    if report["loaded"]:
        for src in tests:
            try:
                exec(compile(src, "<test>", "exec"), ns)
                report["passed"] += 1
            except BaseException as e:
                if report["first_failure"] is None:
                    msg = "".join(_tb.format_exception_only(type(e), e)).strip()
                    report["first_failure"] = (src[:200] + " -> " + msg)[:400]
    _sys.stdout.flush()
    print("\n" + nonce + _json.dumps(report), flush=True)
    _sys.exit(0 if report["loaded"] and report["passed"] == report["total"] else 1)
_dataflow_harness()
'''


def run_tests(code: str, tests: Sequence[str], limits: Limits = Limits()) -> tuple[SandboxResult, dict[str, Any] | None]:
    """Run `code` then each test (assert statements or small programs) in the sandbox.
    Returns the sandbox result and the harness report (`passed`, `total`, `first_failure`), or
    None when the program died before reporting."""
    nonce = f"__DATAFLOW_REPORT_{secrets.token_hex(8)}__"
    res = run_python(_HARNESS, stdin=nonce + "\n", limits=limits, files={"solution.py": code, "tests.json": json.dumps(list(tests))})
    report = None
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(nonce):
            try:
                report = json.loads(line[len(nonce):])
            except ValueError:
                report = None
            break
    return res, report


_CALL_HARNESS = r'''
import json as _json, sys as _sys
def _dataflow_call():
    nonce = _sys.stdin.readline().strip()
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    with open("call.txt", encoding="utf-8") as f:
        call = f.read()
    ns = {"__name__": "__dataflow__"}
    exec(compile(source, "solution.py", "exec"), ns)
    value = eval(compile(call, "<call>", "eval"), ns)
    print("\n" + nonce + _json.dumps(repr(value)), flush=True)
_dataflow_call()
'''


def run_call(code: str, call: str, limits: Limits = Limits()) -> tuple[SandboxResult, str | None]:
    """Evaluate the expression `call` after running `code` in the sandbox; the `repr` of its value."""
    nonce = f"__DATAFLOW_VALUE_{secrets.token_hex(8)}__"
    res = run_python(_CALL_HARNESS, stdin=nonce + "\n", limits=limits, files={"solution.py": code, "call.txt": call})
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(nonce):
            return res, json.loads(line[len(nonce):])
    return res, None


EXTENSIONS = {
    "py": "python", "pyw": "python", "ipynb": "jupyter", "js": "javascript", "mjs": "javascript", "cjs": "javascript",
    "ts": "typescript", "tsx": "typescript", "jsx": "javascript", "java": "java", "c": "c", "h": "c",
    "cc": "cpp", "cpp": "cpp", "cxx": "cpp", "hpp": "cpp", "cs": "csharp", "go": "go", "rs": "rust",
    "rb": "ruby", "php": "php", "swift": "swift", "kt": "kotlin", "scala": "scala", "sh": "shell",
    "bash": "shell", "sql": "sql", "r": "r", "lua": "lua", "pl": "perl", "hs": "haskell", "json": "json",
    "yaml": "yaml", "yml": "yaml", "toml": "toml", "md": "markdown", "html": "html", "css": "css", "xml": "xml",
}

# content signals, checked in order (first match wins); anchored patterns keep them specific
CONTENT_SIGNALS: list[tuple[str, str]] = [
    ("python", r"(?m)^#!.*\bpython"),
    ("shell", r"(?m)^#!.*\b(ba|z|da)?sh\b"),
    ("php", r"<\?php"),
    ("cpp", r"(?m)^\s*#include\s*<(iostream|vector|string|map|algorithm)>|std::"),
    ("c", r"(?m)^\s*#include\s*[<\"]"),
    ("java", r"(?m)^\s*(public\s+)?(final\s+)?class\s+\w+.*\{|System\.out\.print|^\s*import\s+java\."),
    ("go", r"(?m)^package\s+\w+\s*$|^func\s+\w*\s*\("),
    ("rust", r"(?m)^\s*(pub\s+)?fn\s+\w+\s*[<(]|let\s+mut\s|^use\s+std::"),
    ("javascript", r"(?m)^\s*(const|let|var)\s+\w+\s*=|function\s*\w*\s*\(|=>\s*[{(]|console\.log|require\("),
    ("sql", r"(?im)^\s*(select\s.+\sfrom\s|create\s+table\s|insert\s+into\s)"),
    ("python", r"(?m)^\s*(def\s+\w+\s*\(.*\)\s*(->.*)?:|class\s+\w+.*:|import\s+\w+|from\s+[\w.]+\s+import\s)"),
]
