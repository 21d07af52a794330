"""Operator synthesis: when no registered operator fits a step, the LLM writes a new operator class.

It is accepted only after
1. an AST check: imports only from `ALLOWED_IMPORTS`, no `eval`/`exec`/`open`/`__import__`-style
   calls, no dunder attribute tricks, exactly one `@register`ed class of a known kind with a docstring;
2. a run on the sample rows in the code sandbox (`operators/sandbox.py`: its own namespaces, no
   network, read-only file system, resource limits);
3. a generated unit test, also run in the sandbox: registered once, declared output columns written,
   row-count contract of its kind (a filter never adds rows; refiners and evaluators keep them),
   deterministic (two runs equal), a zero-row frame works.
Accepted operators are written to `$DATAFLOW_HOME/operators/` (their test beside them in `tests/`)
and registered (domain `custom`).
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

REPO = Path(__file__).resolve().parents[2]
ALLOWED_IMPORTS = frozenset({
    "__future__", "polars", "operators.base", "re", "math", "json", "string", "unicodedata", "collections",
    "itertools", "functools", "typing", "statistics", "datetime", "hashlib", "dataclasses",
})
FORBIDDEN_CALLS = frozenset({"eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars", "getattr",
                             "setattr", "delattr", "input", "breakpoint", "memoryview"})
BASES = {"Filter": "filter", "Refiner": "refine", "Evaluator": "evaluate", "Generator": "generate"}

SYNTH_SYSTEM = (
    "You write one new operator for a Polars data-preparation framework. Reply with only a JSON object {\"code\": \"...\"} "
    "whose code is a complete Python module."
)
SYNTH_GUIDE = '''Rules for the module:
- `from __future__ import annotations`, `import polars as pl`, `from operators.base import Filter, Refiner, Evaluator, Generator, register`;
  no other imports except re, math, json, string, unicodedata, collections, itertools, functools, typing, statistics, datetime, hashlib.
- Exactly one class, decorated with `@register`, subclassing one of Filter / Refiner / Evaluator / Generator, with a docstring
  saying what it reads, writes and when to use it; class attributes `reads` / `writes` map role -> default column.
- Vectorised Polars expressions, no loops over rows. Kinds:
  Filter: `def keep(self, cols)` returns a boolean pl.Expr (or a dict reason -> pl.Expr) of rows to keep.
  Refiner: `reads = {"text": ...}`; `def refine(self, text, cols)` returns the new value of pl.Expr `text`.
  Evaluator: `def scores(self, cols)` returns a list of pl.Expr aliased to `cols[role]` for each written role.
  Generator: `def run(self, frame, cols)` returns a new frame with the written columns.
  `cols` maps each role to its column name.
Example:
    @register
    class DigitShareFilter(Filter):
        """Keeps rows whose text is at most `max_share` digits. Reads `text`. Writes nothing."""
        reads = {"text": "text"}
        def __init__(self, max_share: float = 0.5):
            self.max_share = max_share
        def keep(self, cols):
            t = pl.col(cols["text"])
            return t.str.count_matches(r"\\d") <= self.max_share * t.str.len_chars()
'''


@dataclass
class SynthResult:
    accepted: bool
    name: str | None = None
    path: Path | None = None
    reasons: list[str] = field(default_factory=list)
    code: str = ""
    tokens: int = 0
    sample_rows_out: int | None = None


def ast_check(code: str) -> list[str]:
    """Why this source may not run in the project (empty list: fine)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return [f"syntax error: {err.msg} (line {err.lineno})"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name not in ALLOWED_IMPORTS:
                    problems.append(f"import of {a.name!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_IMPORTS))})")
        elif isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "") not in ALLOWED_IMPORTS:
                problems.append(f"import from {node.module!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_IMPORTS))})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            problems.append(f"call to {node.func.id}() is not allowed")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr not in ("__init__", "__name__"):
            problems.append(f"access to {node.attr!r} is not allowed")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            problems.append("global/nonlocal statements are not allowed")
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    registered = [c for c in classes if any(isinstance(d, ast.Name) and d.id == "register" for d in c.decorator_list)]
    if len(registered) != 1:
        problems.append(f"define exactly one @register-ed operator class (found {len(registered)})")
    else:
        cls = registered[0]
        bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
        if not any(b in BASES for b in bases):
            problems.append(f"{cls.name} must subclass one of {sorted(BASES)}")
        if not ast.get_docstring(cls):
            problems.append(f"{cls.name} needs a docstring (what it reads, writes and when to use it)")
    return problems


TEST_TEMPLATE = '''"""Generated unit test for a synthesised operator (run in the sandbox before it is accepted)."""
import importlib.util
import json
import sys

import polars as pl

from operators.base import REGISTRY, Operator

COLUMNS = json.loads({columns!r})


def load():
    spec = importlib.util.spec_from_file_location("candidate_operator", "{module}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["candidate_operator"] = mod
    spec.loader.exec_module(mod)
    found = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Operator)
             and c.__module__ == "candidate_operator" and c.name in REGISTRY and REGISTRY[c.name].cls is c]
    assert len(found) == 1, f"expected one registered operator class, found {{len(found)}}"
    return found[0]


def sample():
    return pl.read_parquet("sample.parquet")


def test_registered_with_docstring():
    cls = load()
    assert (cls.__doc__ or "").strip(), "no docstring"
    assert cls.kind in ("filter", "refine", "evaluate", "generate")


def test_runs_on_sample_and_writes_declared_columns():
    cls = load()
    frame = sample()
    op = cls()
    out = op(frame, **COLUMNS)
    assert isinstance(out, pl.DataFrame)
    for col in op.output_columns(op.resolve(COLUMNS)):
        assert col in out.columns, f"declared output column {{col!r}} missing"
    if cls.kind == "filter":
        assert out.height <= frame.height and set(frame.columns) <= set(out.columns)
    elif cls.kind in ("refine", "evaluate"):
        assert out.height == frame.height, f"{{cls.kind}} changed the row count {{frame.height}} -> {{out.height}}"


def test_deterministic():
    cls = load()
    frame = sample()
    assert cls()(frame, **COLUMNS).equals(cls()(frame, **COLUMNS)), "two runs differ"


def test_zero_rows():
    cls = load()
    assert cls()(sample().clear(), **COLUMNS).height == 0


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
    print("ok")
'''

RUN_TEMPLATE = '''import importlib.util, json, sys
import polars as pl
from operators.base import REGISTRY, Operator
spec = importlib.util.spec_from_file_location("candidate_operator", "{module}")
mod = importlib.util.module_from_spec(spec)
sys.modules["candidate_operator"] = mod
spec.loader.exec_module(mod)
cls = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Operator) and c.__module__ == "candidate_operator" and c.name in REGISTRY][0]
frame = pl.read_parquet("sample.parquet")
out = cls()(frame, **json.loads({columns!r}))
print(json.dumps({{"name": cls.name, "kind": cls.kind, "rows_in": frame.height, "rows_out": out.height, "columns": out.columns}}))
'''


def _module_name(code: str) -> str:
    m = re.search(r"class\s+(\w+)", code)
    from operators.base import snake_case

    return snake_case(m.group(1)) if m else "synthesised_operator"


def synthesize(llm: Any, description: str, columns: Mapping[str, str], sample: pl.DataFrame, *,
               folder: Path | None = None, max_tokens: int = 1500) -> SynthResult:
    """Ask `llm` for an operator doing `description` over `columns` (role -> column), vet it, and
    register it when it passes every check."""
    from operators.llm import LLMRequest, SamplingParams
    from operators.sandbox import Limits, run_command

    user = (f"Write an operator that does: {description}\nColumn roles it must use (role -> column in the data): "
            f"{json.dumps(dict(columns))}\nSample rows: {json.dumps(sample.drop('_id', strict=False).head(3).to_dicts(), default=str, ensure_ascii=False)[:1500]}\n\n{SYNTH_GUIDE}")
    req = LLMRequest(id="agent-synth", messages=[{"role": "system", "content": SYNTH_SYSTEM}, {"role": "user", "content": user}],
                     params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
                     schema={"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]})
    res = llm.generate([req])[0]
    out = SynthResult(False, tokens=(res.tokens_in or 0) + (res.tokens_out or 0))
    code = (res.parsed or {}).get("code") if isinstance(res.parsed, dict) else None
    if not code:
        out.reasons.append(f"no code in the reply ({res.error or 'empty'}: {res.error_detail or (res.text or '')[:200]})")
        return out
    out.code = code
    problems = ast_check(code)
    if problems:
        out.reasons += [f"AST check: {p}" for p in problems]
        return out
    stem = _module_name(code)
    from operators.base import REGISTRY, with_row_ids

    if stem in REGISTRY:
        out.reasons.append(f"an operator named {stem!r} already exists; choose another class name")
        return out
    buf = io.BytesIO()
    frame = sample if "_id" in sample.columns else with_row_ids(sample, source="synth")
    frame.write_parquet(buf)
    cols_json = json.dumps(dict(columns))
    files = {f"{stem}.py": code, "sample.parquet": buf.getvalue(),
             "run_sample.py": RUN_TEMPLATE.format(module=f"{stem}.py", columns=cols_json)}
    limits = Limits(wall_s=60, cpu_s=60, memory_mb=4096)
    env = {"PYTHONPATH": str(REPO)}
    run = run_command([sys.executable, "{dir}/run_sample.py"], files, limits=limits, env=env)
    if not run.ok:
        out.reasons.append(f"sample run in the sandbox: {run.status}: {_last_line(run.stderr) or run.reason}")
        return out
    try:
        out.sample_rows_out = json.loads(run.stdout.strip().splitlines()[-1])["rows_out"]
    except (ValueError, KeyError, IndexError):
        pass
    test_src = TEST_TEMPLATE.format(module=f"{stem}.py", columns=cols_json)
    test = run_command([sys.executable, "{dir}/test_op.py"], {**files, "test_op.py": test_src}, limits=limits, env=env)
    if not test.ok:
        out.reasons.append(f"generated unit test: {test.status}: {_last_line(test.stderr) or test.reason}")
        return out
    from dataflow_assets.agent.user import USER_OPS_PACKAGE, import_file, operators_dir

    folder = folder or operators_dir()
    (folder / "tests").mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(code)
    (folder / "tests" / f"test_{stem}.py").write_text(test_src.replace(f'"{stem}.py"', repr(str(path))).replace('"sample.parquet"', repr(str(folder / "tests" / f"{stem}_sample.parquet"))))
    frame.write_parquet(folder / "tests" / f"{stem}_sample.parquet")
    try:
        mod = import_file(path, USER_OPS_PACKAGE)
    except Exception as err:  # noqa: BLE001 - e.g. a name clash at registration
        path.unlink(missing_ok=True)
        out.reasons.append(f"registration failed: {type(err).__name__}: {err}")
        return out
    from operators.base import Operator

    cls = next(c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Operator) and c.__module__ == mod.__name__)
    out.accepted, out.name, out.path = True, cls.name, path
    return out


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
