"""The agent's loop: inspect the input, classify the intent, retrieve operators, plan, verify
(`Pipeline.check(schema)`, then a run on sample rows), repair from the exact error (at most
`max_rounds` rounds per planner), and write the verified pipeline into the user pipelines folder.

Only a pipeline that passed both checks is written; otherwise the result is a failure report with the
last error. The LLM planner (when a capable model is configured) goes first; the deterministic planner
is the fallback, and the only planner for the small embedded model.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from dataflow_assets.agent.catalog import (
    Card,
    Retriever,
    classify_intent,
    default_catalog,
    schema_of,
)
from dataflow_assets.agent.plan import Plan, load_source, render, validate_plan
from dataflow_assets.agent.planners import DeterministicPlanner, LLMPlanner, PlanError

_SEQ = itertools.count()


@dataclass
class Round:
    planner: str
    number: int
    plan: list[str]
    stage: str  # plan | check | run | ok
    error: str | None = None
    rows_in: int = 0
    rows_out: int = 0


@dataclass
class AgentResult:
    ok: bool
    request: str
    path: Path | None = None
    plan: Plan | None = None
    source: str = ""
    rounds: list[Round] = field(default_factory=list)
    output: pl.DataFrame | None = None
    error: str | None = None
    planner: str = ""
    intent: str = ""
    candidates: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    synthesized: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "path": str(self.path) if self.path else None, "planner": self.planner,
            "rounds": len(self.rounds), "operators": len(self.plan.steps) if self.plan and self.ok else 0,
            "error": self.error, "tokens": self.tokens, "seconds": round(self.seconds, 2), "synthesized": self.synthesized,
        }


@dataclass
class Verdict:
    ok: bool
    stage: str
    error: str | None = None
    output: pl.DataFrame | None = None
    rows_in: int = 0


def is_embedded(llm: Any) -> bool:
    """The managed llama.cpp model (small by default): plan deterministically, use it only to run LLM stages."""
    return getattr(llm, "server", None) is not None and "llamacpp" in str(getattr(llm, "identity", "") or getattr(llm, "label", "")).lower() \
        or "smollm" in str(getattr(llm, "identity", "")).lower()


def verify(source: str, schema: dict[str, pl.DataType], sample: pl.DataFrame, llm: Any = None) -> Verdict:
    """`check(schema)` on the pipeline the source defines, building its Dagster assets, then a run on the sample."""
    try:
        mod = load_source(source, f"dataflow_agent_candidate_{next(_SEQ)}")
        spec = mod.SPEC
        pipe = spec.build()
    except Exception as err:  # noqa: BLE001 - reported to the planner verbatim
        return Verdict(False, "check", f"the generated code does not load: {type(err).__name__}: {err}")
    try:
        pipe.check(schema)
        spec.pipeline.check(schema)
        _ = spec.assets  # what Definitions will build
    except Exception as err:  # noqa: BLE001
        return Verdict(False, "check", f"{type(err).__name__}: {err}")
    if any(op.needs_llm for op in pipe.operators().values()):
        if llm is None:
            return Verdict(False, "run", "the plan has LLM operators but no model is configured")
        pipe.bind_llm(llm)
    try:
        out = pipe(sample.drop("_id", strict=False) if "_id" in sample.columns else sample)
    except Exception as err:  # noqa: BLE001
        return Verdict(False, "run", f"{type(err).__name__}: {err}", rows_in=sample.height)
    reports = list(pipe.stage_reports())
    for name, rep in reports:
        llm_stats = (rep.llm if rep else {}) or {}
        kinds = llm_stats.get("errors") or {}  # error kind -> rows (operators.llm.summarize)
        requests = int(llm_stats.get("requests", 0) or 0)
        errors = sum(kinds.values()) if isinstance(kinds, dict) else int(kinds or 0)
        if requests and errors >= requests:
            return Verdict(False, "run", f"stage {name!r}: all {requests} LLM requests failed ({kinds})", out, sample.height)
    if out.height == 0:
        trail = ", ".join(f"{n}: {r.rows_in}->{r.rows_out}" for n, r in reports if r)
        return Verdict(False, "run", f"empty output: the sample run kept 0 of {sample.height} rows ({trail})", out, sample.height)
    return Verdict(True, "ok", None, out, sample.height)


def read_sample(path: str | Path, rows: int) -> pl.DataFrame:
    from operators.io import read_input

    res = read_input(path, stop=rows)
    if res.frame.height == 0:
        raise ValueError(f"{path}: no readable rows in the first {rows} records ({res.quarantined} quarantined)")
    return res.frame


def unique_path(folder: Path, name: str, taken: set[str]) -> tuple[str, Path]:
    for k in itertools.count(1):
        cand = name if k == 1 else f"{name}_{k}"
        path = folder / f"{cand}.py"
        if cand not in taken and not path.exists():
            return cand, path
    raise AssertionError


def _shipped_names() -> set[str]:
    try:
        from dataflow_assets.pipelines import MODULES, shipped

        try:
            return set(shipped())
        except Exception:  # noqa: BLE001 - a broken shipped module must not stop the agent
            return set(MODULES)
    except ImportError:
        return set()


def build_pipeline(
    request: str,
    input: str | Path | pl.DataFrame,
    *,
    rows: int = 10,
    out: str | Path | None = None,
    llm: Any = None,
    planner: str = "auto",
    max_rounds: int = 3,
    synthesize: bool = True,
    write: bool = True,
    echo: Callable[[str], None] | None = print,
    catalog: dict[str, Card] | None = None,
) -> AgentResult:
    """Turn `request` into a verified pipeline over `input` (a file or a frame); see the module doc.

    planner: "auto" (the LLM planner when `llm` is a capable model, else deterministic), "llm" or
    "deterministic". The deterministic planner always runs after a failed LLM planner.
    """
    say = echo or (lambda _m: None)
    t0 = time.perf_counter()
    if catalog is None:
        catalog, problems = default_catalog()
        for p in problems:
            say(f"warning: operator module skipped: {p}")
    sample = input if isinstance(input, pl.DataFrame) else read_sample(input, rows)
    sample = sample.head(rows)
    schema = schema_of(sample)
    intent = classify_intent(request, schema)
    result = AgentResult(False, request, intent=intent.describe())
    say(f"input: {sample.height} sample rows; columns {', '.join(f'{c}: {t}' for c, t in schema.items())}")
    say(f"intent: {intent.describe()}")
    retriever = _retriever(catalog)
    candidates = retriever.search(request, schema, k=12)
    result.candidates = [c.line() for c in candidates]
    say(f"retrieval ({retriever.engine}): " + "; ".join(c.card.name for c in candidates[:8]))
    if planner == "auto":
        planner = "llm" if llm is not None and not is_embedded(llm) else "deterministic"
    order = ["llm", "deterministic"] if planner == "llm" else ["deterministic"]
    last_error = None
    for kind in order:
        p = LLMPlanner(llm, catalog, synthesis=synthesize) if kind == "llm" else DeterministicPlanner(catalog, retriever)
        plan = None
        for number in range(1, max_rounds + 1):
            try:
                if plan is None and number == 1:
                    plan = p.propose(request, schema, sample, intent, candidates)
                elif kind == "llm":
                    plan = p.repair(plan, last_error, reply=getattr(p, "last_reply", None))
                else:
                    plan = p.repair(plan, last_error) if plan is not None else None
            except PlanError as err:
                last_error = str(err)
                result.rounds.append(Round(kind, number, [], "plan", last_error))
                say(f"[{kind} round {number}] plan rejected: {last_error}")
                plan = None
                continue
            if plan is None or not plan.steps:
                last_error = last_error or "the planner found no operator for this request"
                result.rounds.append(Round(kind, number, [], "plan", "no plan: " + last_error))
                say(f"[{kind} round {number}] no plan left ({last_error})")
                break
            say(f"[{kind} round {number}] plan {plan.name}:")
            for line in plan.describe():
                say(f"    {line}")
            synth_error = _synthesize_steps(plan, catalog, sample, llm, result, say, p) if kind == "llm" else None
            if synth_error:
                last_error = synth_error
                result.rounds.append(Round(kind, number, plan.describe(), "synth", last_error))
                say(f"[{kind} round {number}] synthesis failed: {last_error}")
                continue
            problems = validate_plan(plan, catalog, schema)
            if problems:
                last_error = "\n".join(problems)
                result.rounds.append(Round(kind, number, plan.describe(), "check", last_error))
                say(f"[{kind} round {number}] check failed: {last_error}")
                continue
            source = render(plan, catalog, request, schema)
            v = verify(source, schema, sample, llm)
            result.rounds.append(Round(kind, number, plan.describe(), v.stage, v.error, v.rows_in, v.output.height if v.output is not None else 0))
            if not v.ok:
                last_error = v.error
                say(f"[{kind} round {number}] {v.stage} failed: {v.error}")
                continue
            say(f"[{kind} round {number}] check() passed; sample run {v.rows_in} -> {v.output.height} rows")
            result.ok, result.plan, result.output, result.planner = True, plan, v.output, kind
            result.source = render(plan, catalog, request, schema, verified=f"verified: check() and a sample run ({v.rows_in} -> {v.output.height} rows)")
            break
        if isinstance(p, LLMPlanner):
            result.tokens += p.tokens
        if result.ok:
            break
        if kind == "llm":
            say("the LLM planner did not produce a passing plan; falling back to the deterministic planner")
    result.seconds = time.perf_counter() - t0
    if not result.ok:
        result.error = f"no pipeline passed verification after {len(result.rounds)} round(s); last error: {last_error}"
        say(f"FAILED: {result.error}")
        return result
    if write:
        result.path = write_pipeline(result, out)
        say(f"wrote {result.path}")
    return result


def write_pipeline(result: AgentResult, out: str | Path | None) -> Path:
    from dataflow_assets.agent.user import pipelines_dir

    if out is not None:
        path = Path(out).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        folder = pipelines_dir()
        folder.mkdir(parents=True, exist_ok=True)
        name, path = unique_path(folder, result.plan.name, _shipped_names())
        if name != result.plan.name:  # a clash: the class and SPEC name follow the file name
            result.source = result.source.replace(f"name = {result.plan.name!r}", f"name = {name!r}").replace(
                f"ShippedPipeline(name={result.plan.name!r}", f"ShippedPipeline(name={name!r}")
            result.plan.name = name
    tmp = path.with_suffix(".py.tmp")
    tmp.write_text(result.source)
    tmp.replace(path)
    return path


def _synthesize_steps(plan: Plan, catalog: dict[str, Card], sample: pl.DataFrame, llm: Any, result: AgentResult,
                      say: Callable[[str], None], planner: Any) -> str | None:
    """Replace every "synthesize" step by a new, vetted operator; the first rejection is the round's error."""
    from dataflow_assets.agent.catalog import cards
    from dataflow_assets.agent.plan import SYNTHESIZE
    from dataflow_assets.agent.synth import synthesize
    from operators.base import REGISTRY

    for i, step in enumerate(plan.steps, 1):
        if step.operator != SYNTHESIZE:
            continue
        if not getattr(planner, "synthesis", False):
            return f"step {i}: operator synthesis is turned off; use a listed operator"
        say(f"    synthesising an operator for step {i}: {step.description}")
        res = synthesize(llm, step.description, step.columns, sample)
        result.tokens += res.tokens
        if not res.accepted:
            result.synthesized["rejected"] += 1
            return f"step {i}: the synthesised operator was rejected: " + "; ".join(res.reasons)
        result.synthesized["accepted"] += 1
        card = cards({res.name: REGISTRY[res.name]})[res.name]
        catalog[res.name] = card
        getattr(planner, "_cands", {})[res.name] = card
        roles = {**card.reads, **card.writes}
        step.operator, step.columns = res.name, {r: c for r, c in step.columns.items() if r in roles}
        step.why = step.why or f"synthesised ({res.path}): {step.description}"
        say(f"    accepted {res.name} ({card.kind}) -> {res.path}")
    return None


_RETRIEVERS: dict[int, Retriever] = {}


def _retriever(catalog: dict[str, Card]) -> Retriever:
    key = id(catalog)
    if key not in _RETRIEVERS:
        _RETRIEVERS[key] = Retriever(catalog)
    return _RETRIEVERS[key]
