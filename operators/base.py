"""The operator core: `Operator`, its four kinds, `@register`, and the PyTorch-style `Pipeline`.

Nothing here imports Dagster. A pipeline runs on a Polars frame in a notebook or a test;
the Dagster layer (`dataflow_assets.factory`) replays the stages that `Pipeline.trace()` records.

Conventions
- Configuration (thresholds, templates, the LLM client) goes to `__init__`.
- Column names go to the call, as keyword arguments named after the operator's *roles*:
  `WordCountFilter(min_words=50)(frame, text="raw_content")`. Each operator declares its roles
  in `reads` / `writes` (role -> default column name); a role whose default is `None` is optional.
- Calling an operator returns a new frame and never mutates its input.
"""

from __future__ import annotations

import ast
import contextvars
import hashlib
import importlib
import inspect
import json
import re
import sys
import textwrap
import time
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Iterator, Mapping

import polars as pl

KINDS = ("generate", "evaluate", "filter", "refine")
ID = "_id"


class ColumnError(KeyError):
    """An operator was called on a frame that lacks a column it reads."""

    def __init__(self, operator: str, column: str, role: str, available: list[str]):
        self.operator, self.column, self.role, self.available = operator, column, role, available
        super().__init__(
            f"{operator}: missing column {column!r} (role {role!r}); columns available: {available}"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class PipelineCheckError(ValueError):
    """`Pipeline.check()` found a problem before any row was processed."""


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A hash that is stable across processes and Python versions (unlike `hash()`)."""
    payload = json.dumps(parts, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.blake2b(payload.encode(), digest_size=length // 2).hexdigest()


# --------------------------------------------------------------------------- reports


@dataclass
class OpReport:
    """What one operator call did: the asset layer turns this into Dagster metadata."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_ids: pl.DataFrame | None = None  # `_id`, `reason` of every dropped row
    modified: int | None = None  # refiners: rows whose value changed
    llm: dict[str, Any] = field(default_factory=dict)  # calls, cache_hits, errors, tokens...
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- operators


class Operator:
    """Base class of every operator. Subclasses set `kind`, `reads`, `writes` and implement `run`."""

    kind: ClassVar[str] = ""
    domain: ClassVar[str] = ""
    name: ClassVar[str] = ""
    needs_llm: ClassVar[bool] = False
    reads: ClassVar[Mapping[str, str | None]] = {}
    writes: ClassVar[Mapping[str, str | None]] = {}

    _config: dict[str, Any]
    last_report: OpReport | None

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
            bound.apply_defaults()
            cfg = dict(list(bound.arguments.items())[1:])
        except TypeError:  # let __init__ raise its own, clearer error
            cfg = {}
        params = inspect.signature(cls.__init__).parameters
        for key, val in list(cfg.items()):  # flatten **kwargs, drop an empty *args
            if params[key].kind is inspect.Parameter.VAR_KEYWORD:
                cfg.pop(key)
                cfg.update(val)
            elif params[key].kind is inspect.Parameter.VAR_POSITIONAL and not val:
                cfg.pop(key)
        cfg.pop("llm", None)  # the client is bound at run time; its model identity is in the cache key
        obj._config = cfg
        obj.last_report = None
        return obj

    # -- column resolution --------------------------------------------------------------
    def resolve(self, columns: Mapping[str, str | None]) -> dict[str, str | None]:
        roles = {**self.reads, **self.writes}
        unknown = set(columns) - set(roles)
        if unknown:
            raise TypeError(
                f"{self.display_name}: unknown column role(s) {sorted(unknown)}; "
                f"this operator reads {dict(self.reads)} and writes {dict(self.writes)}"
            )
        return {**roles, **columns}

    def input_columns(self, cols: Mapping[str, str | None]) -> list[tuple[str, str]]:
        """(role, column) pairs this call reads. Override for operators with variable inputs."""
        return [(role, cols[role]) for role in self.reads if cols.get(role)]

    def output_columns(self, cols: Mapping[str, str | None]) -> list[str]:
        """Columns this call adds or rewrites."""
        return [cols[role] for role in self.writes if cols.get(role)]

    @property
    def display_name(self) -> str:
        return self.name or snake_case(type(self).__name__)

    # -- calling ------------------------------------------------------------------------
    def __call__(self, frame: pl.DataFrame, **columns: str | None) -> pl.DataFrame:
        if not isinstance(frame, pl.DataFrame):
            raise TypeError(f"{self.display_name}: expected a polars DataFrame, got {type(frame).__name__}")
        cols = self.resolve(columns)
        for role, col in self.input_columns(cols):
            if col not in frame.columns:
                raise ColumnError(self.display_name, col, role, frame.columns)
        recorder = _RECORDER.get()
        start = time.perf_counter()
        self.last_report = OpReport(rows_in=frame.height)
        out = self.run(frame, cols)
        report = self.last_report
        report.rows_out = out.height
        report.seconds = time.perf_counter() - start
        missing = [c for c in self.output_columns(cols) if c not in out.columns]
        if missing:
            raise RuntimeError(f"{self.display_name}: declared output column(s) {missing} were not written")
        if recorder is not None:
            recorder.record(self, frame, out, columns, cols)
        return out

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        raise NotImplementedError

    # -- identity -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def version_parts(self) -> list[Any]:
        """What the code_version hashes: the project code this operator executes (its class, its
        project base classes and every project function, class or module-level value they reference,
        transitively; see `code_closure`) and its configuration (LLM ops add prompt text)."""
        return [type(self).__module__, type(self).__qualname__, code_closure(type(self)), self._config]

    def code_version(self) -> str:
        return stable_hash(*self.version_parts())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


class Generator(Operator):
    """Adds generated columns (usually with an LLM)."""

    kind = "generate"


class Evaluator(Operator):
    """Adds score columns; drops nothing."""

    kind = "evaluate"

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        return frame.with_columns(self.scores(cols))

    def scores(self, cols: dict[str, str | None]) -> list[pl.Expr]:
        """Expressions that compute the score columns (aliased to the written columns)."""
        raise NotImplementedError


class Refiner(Operator):
    """Rewrites one column in place and counts the rows it changed."""

    kind = "refine"
    reads = {"text": "text"}

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        col = cols["text"]
        out = frame.with_columns(self.refine(pl.col(col), cols).alias(col))
        self.count_modified(frame, out, col)
        return out

    def count_modified(self, before: pl.DataFrame, after: pl.DataFrame, col: str) -> None:
        """Record in the report how many rows of `col` changed (nulls compare equal)."""
        changed = before.get_column(col).ne_missing(after.get_column(col)) if before.height else None
        self.last_report.modified = int(changed.sum()) if changed is not None else 0

    def output_columns(self, cols: Mapping[str, str | None]) -> list[str]:
        return [cols["text"]]

    def refine(self, text: pl.Expr, cols: dict[str, str | None]) -> pl.Expr:
        raise NotImplementedError


class Filter(Operator):
    """Drops rows. `keep()` returns a boolean expression, or a dict reason -> boolean expression
    (a row is dropped for the first reason whose expression is false or null)."""

    kind = "filter"

    def keep(self, cols: dict[str, str | None]) -> pl.Expr | dict[str, pl.Expr]:
        raise NotImplementedError

    def scores(self, cols: dict[str, str | None]) -> list[pl.Expr]:
        """Optional score columns written beside the decision (e.g. the measured ratio)."""
        return []

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        scores = self.scores(cols)
        return self.apply_keep(frame.with_columns(scores) if scores else frame, self.keep(cols))

    def apply_keep(self, frame: pl.DataFrame, keep: pl.Expr | pl.Series | dict[str, Any]) -> pl.DataFrame:
        """Apply a keep mask (or reason -> mask dict), record dropped counts and ids."""
        conds = keep if isinstance(keep, dict) else {self.display_name: keep}
        reasons = [
            pl.when(~(pl.lit(c) if isinstance(c, pl.Series) else c).fill_null(False)).then(pl.lit(why))
            for why, c in conds.items()
        ]
        reason = pl.coalesce(*reasons, pl.lit(None, dtype=pl.String))
        marked = frame.with_columns(reason.alias("__drop_reason"))
        dropped = marked.filter(pl.col("__drop_reason").is_not_null())
        counts = dropped.get_column("__drop_reason").value_counts()
        self.last_report.dropped = {r: int(n) for r, n in counts.iter_rows()}
        if ID in frame.columns:
            self.last_report.dropped_ids = dropped.select(ID, pl.col("__drop_reason").alias("reason"))
        return marked.filter(pl.col("__drop_reason").is_null()).drop("__drop_reason")


# --------------------------------------------------------------------------- code versions

# Top-level packages of this project: code in them that an operator references is part of its version.
PROJECT_PACKAGES = frozenset({"operators", "resources", "dataflow_assets", "sensors"})


def _is_project_module(name: str, anchor: str) -> bool:
    """A module of this project (or of the package the operator itself lives in), never a library."""
    top = name.split(".")[0]
    if top not in PROJECT_PACKAGES and top != anchor:
        return False
    file = getattr(sys.modules.get(name), "__file__", None) or ""
    return "site-packages" not in file or top in PROJECT_PACKAGES


@dataclass(frozen=True)
class _ModuleIndex:
    """One module's top-level definitions (name -> source text) and imports (name -> (module, attr))."""

    defs: dict[str, str]
    imports: dict[str, tuple[str, str | None]]


def _imports_of(nodes: Any, module: str) -> dict[str, tuple[str, str | None]]:
    """`import a.b as c` -> c: (a.b, None); `from a.b import x as y` -> y: (a.b, x); relative imports resolved."""
    out: dict[str, tuple[str, str | None]] = {}
    package = module if hasattr(sys.modules.get(module), "__path__") else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                out[a.asname or a.name] = (base, a.name)
    return out


@lru_cache(maxsize=None)
def _module_index(module: str) -> _ModuleIndex | None:
    try:
        source = inspect.getsource(sys.modules.get(module) or importlib.import_module(module))
        tree = ast.parse(source)
    except (ImportError, OSError, TypeError, SyntaxError):
        return None
    defs: dict[str, str] = {}
    lines = source.splitlines()

    def text(node: ast.stmt) -> str:  # the statement with its decorators, dedented
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        return textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno])) + "\n"

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[node.name] = text(node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            defs[name.id] = defs.get(name.id, "") + text(node)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit([*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])])

    visit(tree.body)
    return _ModuleIndex(defs, _imports_of(ast.walk(tree), module))


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _references(source: str, module: str, index: _ModuleIndex, anchor: str) -> set[tuple[str, str]]:
    """The project definitions (module, name) that `source` (a definition in `module`) refers to."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return set()
    imports = {**index.imports, **_imports_of(ast.walk(tree), module)}  # function-level imports too
    found: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        chain = _dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if not chain:
            continue
        head, rest = chain[0], chain[1:]
        if head in imports:
            mod, attr = imports[head]
            if attr is not None:
                if f"{mod}.{attr}" in sys.modules:  # `from pkg import submodule`
                    mod, attr = f"{mod}.{attr}", None
                else:
                    if _is_project_module(mod, anchor):
                        found.add((mod, attr))
                    continue
            while rest and f"{mod}.{rest[0]}" in sys.modules:  # `import a.b` then `a.b.c.f`
                mod, rest = f"{mod}.{rest[0]}", rest[1:]
            if rest and _is_project_module(mod, anchor):
                found.add((mod, rest[0]))
        elif head in index.defs:
            found.add((module, head))
    return found


def _definition_source(module: str, name: str) -> str | None:
    index = _module_index(module)
    return index.defs.get(name) if index is not None else None


@lru_cache(maxsize=None)
def _definition_refs(module: str, name: str, anchor: str) -> frozenset[tuple[str, str]]:
    """The references of one top-level definition (parsed once per process)."""
    index = _module_index(module)
    return frozenset(_references(index.defs[name], module, index, anchor)) if index is not None else frozenset()


@lru_cache(maxsize=None)
def code_closure(cls: type) -> tuple[tuple[str, str], ...]:
    """The project code an operator class executes: the class's source, its project base classes and
    every project function, class or module-level value they reference, followed transitively across
    the project's modules (also through imports inside functions). Returns sorted
    (`module.name`, hash of its source) pairs, so editing a shared helper such as `duplicate_stats`
    changes the version of exactly the operators that use it, and nothing else's.

    Found statically (`ast`), by name: a reference made only dynamically (`getattr(module, name)`)
    is not followed; library code (outside the project's packages) is not hashed.
    """
    module, anchor = cls.__module__, cls.__module__.split(".")[0]
    index = _module_index(module)
    if index is None or "." in cls.__qualname__ or cls.__qualname__ not in index.defs:
        try:  # a class made in a function or a notebook: its own source, its references in its module
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            source = cls.__qualname__
        start = {(module, cls.__qualname__): source}
    else:
        start = {(module, cls.__qualname__): index.defs[cls.__qualname__]}
    for base in cls.__mro__[1:]:
        if base is not object and _is_project_module(base.__module__, anchor):
            base_index = _module_index(base.__module__)
            if base_index is not None and base.__qualname__ in base_index.defs:
                start[(base.__module__, base.__qualname__)] = base_index.defs[base.__qualname__]
    seen: dict[tuple[str, str], str] = {}
    todo = list(start.items())
    while todo:
        (mod, name), source = todo.pop()
        if (mod, name) in seen:
            continue
        seen[(mod, name)] = source
        refs = _definition_refs(mod, name, anchor) if source is _definition_source(mod, name) else None
        if refs is None:  # a class outside its module's top level: parse its own source
            mod_index = _module_index(mod)
            refs = _references(source, mod, mod_index, anchor) if mod_index is not None else set()
        for ref in refs:
            ref_index = _module_index(ref[0])
            if ref not in seen and ref_index is not None and ref[1] in ref_index.defs:
                todo.append((ref, ref_index.defs[ref[1]]))
    return tuple(sorted((f"{m}.{n}", hashlib.blake2b(s.encode(), digest_size=8).hexdigest()) for (m, n), s in seen.items()))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class OperatorInfo:
    name: str
    domain: str
    kind: str
    needs_llm: bool
    reads: dict[str, str | None]
    writes: dict[str, str | None]
    doc: str
    cls: type[Operator]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "domain": self.domain,
            "kind": self.kind,
            "needs_llm": self.needs_llm,
            "reads": self.reads,
            "writes": self.writes,
            "doc": self.doc,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
        }


REGISTRY: dict[str, OperatorInfo] = {}


def register(cls: type[Operator] | None = None, *, name: str | None = None, domain: str | None = None):
    """Class decorator: record an operator in the registry (name, domain, kind, LLM need, columns, doc).

    The domain defaults to the `operators.<domain>` sub-package the class lives in.
    """

    def wrap(c: type[Operator]) -> type[Operator]:
        if c.kind not in KINDS:
            raise TypeError(f"{c.__qualname__}: kind must be one of {KINDS}, got {c.kind!r}")
        doc = inspect.getdoc(c)
        if not doc or doc == inspect.getdoc(c.__mro__[1]):
            raise TypeError(f"{c.__qualname__}: every registered operator needs its own docstring")
        parts = c.__module__.split(".")
        dom = domain or (parts[1] if len(parts) > 2 and parts[0] == "operators" else "custom")
        nm = name or snake_case(c.__name__)
        if nm in REGISTRY and REGISTRY[nm].cls is not c:
            existing = REGISTRY[nm].cls
            if (existing.__module__, existing.__qualname__) != (c.__module__, c.__qualname__):
                raise ValueError(f"operator name {nm!r} registered twice ({existing.__module__} and {c.__module__})")
        c.name, c.domain = nm, dom
        REGISTRY[nm] = OperatorInfo(nm, dom, c.kind, c.needs_llm, dict(c.reads), dict(c.writes), doc, c)
        return c

    return wrap(cls) if cls is not None else wrap


def load_all() -> dict[str, OperatorInfo]:
    """Import every operator module so the registry is complete."""
    import importlib
    import pkgutil

    import operators

    for mod in pkgutil.walk_packages(operators.__path__, "operators."):
        importlib.import_module(mod.name)
    return REGISTRY


# --------------------------------------------------------------------------- pipelines


@dataclass
class Stage:
    """One operator call in a traced `forward()`; the Dagster layer makes one asset of it."""

    name: str  # attribute name in the pipeline (suffixed _2, _3 when called again)
    attr: str
    operator: Operator
    columns: dict[str, str | None]  # the call's keyword arguments, replayed as-is
    upstream: str | None  # the stage whose output this call consumed; None = the source
    reads: list[str]
    writes: list[str]
    schema: dict[str, pl.DataType]  # output schema
    report: OpReport | None = None
    is_output: bool = False  # its output is what forward() returned

    def run(self, frame: pl.DataFrame) -> pl.DataFrame:
        return self.operator(frame, **self.columns)

    def code_version(self) -> str:
        return stable_hash(self.operator.code_version(), self.columns)


class _Recorder:
    def __init__(self, pipeline: "Pipeline", source: pl.DataFrame, strict: bool):
        self.pipeline, self.strict = pipeline, strict
        self.names = {id(op): attr for attr, op in pipeline.operators().items()}
        self.produced: dict[int, str | None] = {}  # id(frame) -> the stage that returned it (None: the source)
        self.stages: dict[str, Stage] = {}
        self._produced(source, None)

    def _produced(self, frame: pl.DataFrame, stage: str | None) -> None:
        # Held weakly: a strong reference kept every stage's output alive for the whole call (the 100k-doc
        # text_pt call peaked at 3.0 GB, five rewritten copies of the text column among it). The entry
        # leaves with its frame, so a later frame that reuses the id is never taken for it.
        self.produced[id(frame)] = stage
        weakref.finalize(frame, self.produced.pop, id(frame), None)

    def record(self, op, frame, out, columns, cols) -> None:
        attr = self.names.get(id(op))
        if attr is None:
            raise PipelineCheckError(
                f"{type(self.pipeline).__name__}.forward() called {op!r}, which is not an attribute of the "
                "pipeline: assign every operator in __init__"
            )
        src = self.produced.get(id(frame), ...)
        if src is ... and self.strict:
            raise PipelineCheckError(
                f"{type(self.pipeline).__name__}.forward(): the frame passed to {attr!r} was changed outside an "
                "operator; move that logic into an operator so every stage can be replayed"
            )
        name, k = attr, 2
        while name in self.stages:
            name, k = f"{attr}_{k}", k + 1
        self.stages[name] = Stage(
            name=name,
            attr=attr,
            operator=op,
            columns=dict(columns),
            upstream=None if src is ... else src,
            reads=[c for _, c in op.input_columns(cols)],
            writes=op.output_columns(cols),
            schema=dict(out.schema),
            report=op.last_report,
        )
        self._produced(out, name)


_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("dataflow_recorder", default=None)


class Pipeline:
    """A pipeline: operators are attributes set in `__init__`, chained in `forward(frame)`.

    `check(schema)` runs `forward` on a zero-row frame (no LLM call) and fails with the operator's
    attribute name and the missing column; `trace(schema)` returns the stage graph; calling the
    pipeline runs it for real and leaves per-stage reports in `last_stages`.
    """

    name: ClassVar[str] = ""
    input_schema: ClassVar[Mapping[str, pl.DataType]] = {}  # columns the source must provide
    description: ClassVar[str] = ""

    last_stages: dict[str, Stage]

    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    @property
    def pipeline_name(self) -> str:
        return self.name or snake_case(type(self).__name__).removesuffix("_pipeline")

    def operators(self) -> dict[str, Operator]:
        return {k: v for k, v in vars(self).items() if isinstance(v, Operator)}

    def bind_llm(self, client: Any) -> "Pipeline":
        """Give every LLM operator its client: the one mechanism used by notebooks and Dagster alike."""
        for op in self.operators().values():
            if op.needs_llm:
                op.llm = client
        return self

    def __call__(self, frame: pl.DataFrame) -> pl.DataFrame:
        if ID not in frame.columns:
            frame = with_row_ids(frame, source=self.pipeline_name)
        out, stages = self._run(frame, strict=False)
        self.last_stages = stages
        return out

    def _run(self, frame: pl.DataFrame, strict: bool) -> tuple[pl.DataFrame, dict[str, Stage]]:
        rec = _Recorder(self, frame, strict)
        token = _RECORDER.set(rec)
        try:
            out = self.forward(frame)
        finally:
            _RECORDER.reset(token)
        produced = rec.produced.get(id(out))
        if produced is not None:
            rec.stages[produced].is_output = True
        return out, rec.stages

    def empty_frame(self, schema: Mapping[str, pl.DataType] | None = None) -> pl.DataFrame:
        schema = dict(schema if schema is not None else self.input_schema)
        schema.setdefault(ID, pl.String)
        return pl.DataFrame(schema=schema)

    def trace(self, schema: Mapping[str, pl.DataType] | None = None) -> list[Stage]:
        """Run `forward` on a zero-row frame and return its stages in call order."""
        frame = self.empty_frame(schema)
        try:
            _, stages = self._run(frame, strict=True)
        except ColumnError as err:
            attr = next((a for a, op in self.operators().items() if op.display_name == err.operator), err.operator)
            raise PipelineCheckError(
                f"{type(self).__name__}.{attr} ({err.operator}) reads column {err.column!r} "
                f"(role {err.role!r}), which does not exist at that point; columns available: {err.available}"
            ) from err
        if not stages:
            raise PipelineCheckError(f"{type(self).__name__}.forward() called no operator")
        return list(stages.values())

    def output_stage(self, schema: Mapping[str, pl.DataType] | None = None) -> str:
        """The stage whose output `forward()` returns (the pipeline's final dataset)."""
        return output_of(self.trace(schema), type(self).__name__)

    def check(self, schema: Mapping[str, pl.DataType] | None = None) -> list[Stage]:
        """Validate the pipeline against an input schema before any real run; returns the stages."""
        return self.trace(schema)

    def stage_reports(self) -> Iterator[tuple[str, OpReport]]:
        for name, st in getattr(self, "last_stages", {}).items():
            yield name, st.report


def output_of(stages: list[Stage], pipeline: str = "pipeline") -> str:
    """The name of the traced stage whose output `forward()` returned."""
    for stage in stages:
        if stage.is_output:
            return stage.name
    raise PipelineCheckError(f"{pipeline}.forward() must return the output of an operator call")


SOURCE_ID = "source_id"


_ID_SLICE_ROWS = 10_000  # rows JSON-encoded at a time by `with_row_ids`


def with_row_ids(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Add a stable `_id`: a hash of the source name and the row's content, plus an occurrence
    counter so exact duplicate rows stay distinct (and dedup can still see them).

    Input rows that carry their own id keep it, right after `_id`, so users can join back: an input
    `_id` column becomes `source_id` (`source__id` if the input also has a `source_id`), an `id`
    column stays `id`."""
    if ID in frame.columns:
        frame = frame.rename({ID: SOURCE_ID if SOURCE_ID not in frame.columns else f"source_{ID}"})
    own = [c for c in (SOURCE_ID, f"source_{ID}", "id") if c in frame.columns]
    if own:
        frame = frame.select(*own, pl.exclude(own))
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, dtype=pl.String).alias(ID)).select(ID, pl.exclude(ID))
    # hashlib per row: Polars' own hash is not stable across versions, and an id must be. The rows are
    # encoded a slice at a time: encoding all of them at once held a second copy of the whole frame
    # (100,000 C4 documents: +420 MB of transient memory, still resident when the next stage started).
    prefix = f"{source}\x00"
    digests = pl.Series(
        [
            hashlib.blake2b((prefix + c).encode(), digest_size=8).hexdigest()
            for part in frame.iter_slices(_ID_SLICE_ROWS)
            for c in part.select(pl.struct(pl.all()).struct.json_encode()).to_series()
        ],
        dtype=pl.String,
    )
    ids = pl.DataFrame({"d": digests}).select(
        pl.when(pl.int_range(pl.len()).over("d") == 0)
        .then(pl.col("d"))
        .otherwise(pl.col("d") + "-" + pl.int_range(pl.len()).over("d").cast(pl.String))
    ).to_series()
    return frame.with_columns(ids.alias(ID)).select(ID, pl.exclude(ID))
