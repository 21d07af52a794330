"""A plan (operators, parameters, column bindings), its JSON schema for the LLM, its validation
against the registry, and the readable `Pipeline` source it becomes."""

from __future__ import annotations

import datetime as _dt
import json
import keyword
import re
import textwrap
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from dataflow_assets.agent.catalog import Card


@dataclass
class Step:
    operator: str
    params: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)  # role -> column
    why: str = ""
    description: str = ""  # operator "synthesize": what the new operator must do


@dataclass
class Plan:
    name: str
    steps: list[Step]
    planner: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": [asdict(s) for s in self.steps]}

    def describe(self) -> list[str]:
        lines = []
        for i, s in enumerate(self.steps, 1):
            cols = ", ".join(f"{r}={c!r}" for r, c in s.columns.items())
            params = ", ".join(f"{k}={v!r}" for k, v in s.params.items())
            lines.append(f"{i}. {s.operator}({params}) [{cols}]" + (f"  - {s.why}" if s.why else ""))
        return lines

    @classmethod
    def from_json(cls, value: Any, name: str = "agent_pipeline") -> Plan:
        """Parse the LLM's reply (a JSON string or value); raises ValueError with the exact problem."""
        if isinstance(value, str):
            text = value.strip()
            m = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
            text = m.group(1) if m else text
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"the reply is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
        if not isinstance(value, dict) or not isinstance(value.get("steps"), list):
            raise ValueError('the reply must be a JSON object {"name": ..., "steps": [...]}')  # noqa: TRY004 - a malformed reply, reported to the model
        steps = []
        for i, s in enumerate(value["steps"], 1):
            if not isinstance(s, dict) or not isinstance(s.get("operator"), str):
                raise ValueError(f'step {i} must be an object with an "operator" string')  # noqa: TRY004
            params, columns = s.get("params") or {}, s.get("columns") or {}
            if not isinstance(params, dict) or not isinstance(columns, dict):
                raise ValueError(f'step {i}: "params" and "columns" must be objects')  # noqa: TRY004
            steps.append(Step(s["operator"], dict(params), {str(k): str(v) for k, v in columns.items()}, str(s.get("why", "")),
                              str(s.get("description", ""))))
        return cls(safe_name(str(value.get("name") or name)), steps)


def safe_name(text: str, fallback: str = "agent_pipeline") -> str:
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40].strip("_")
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = f"{fallback}_{name}" if name else fallback
    return name


def name_from_request(request: str) -> str:
    stop = {"the", "a", "an", "and", "then", "of", "to", "with", "for", "these", "this", "each", "every", "my", "all", "in", "on", "by", "please"}
    words = [w for w in re.findall(r"[a-z0-9]+", request.lower()) if w not in stop][:4]
    return safe_name("_".join(words) or "agent_pipeline")


# --------------------------------------------------------------------------- schema + validation


SYNTHESIZE = "synthesize"


def plan_schema(candidates: Mapping[str, Card], synthesis: bool = False) -> dict[str, Any]:
    """The JSON schema of a plan: only these operators, their real parameters and their column roles
    (plus, with `synthesis`, a step asking for a new operator: a description and its column roles)."""
    variants = []
    if synthesis:
        variants.append({
            "type": "object",
            "properties": {"operator": {"const": SYNTHESIZE}, "description": {"type": "string"},
                           "columns": {"type": "object", "additionalProperties": {"type": "string"}}, "why": {"type": "string"}},
            "required": ["operator", "description", "columns"],
            "additionalProperties": False,
        })
    for card in candidates.values():
        variants.append({
            "type": "object",
            "properties": {
                "operator": {"const": card.name},
                "params": {"type": "object", "properties": {p.name: p.json_schema() for p in card.params.values()}, "additionalProperties": False},
                "columns": {"type": "object", "properties": {r: {"type": "string"} for r in {**card.reads, **card.writes}}, "additionalProperties": False},
                "why": {"type": "string"},
            },
            "required": ["operator", "columns"],
            "additionalProperties": False,
        })
    return {
        "type": "object",
        "properties": {"name": {"type": "string"}, "steps": {"type": "array", "minItems": 1, "maxItems": 8, "items": {"anyOf": variants}}},
        "required": ["name", "steps"],
        "additionalProperties": False,
    }


def validate_plan(plan: Plan, catalog: Mapping[str, Card], schema: Mapping[str, Any]) -> list[str]:
    """Problems a plan has before any code runs: unknown operators, parameters or roles, reads of
    columns that do not exist at that point, missing required parameters."""
    problems = []
    cols = set(schema)
    if not plan.steps:
        return ["the plan has no steps"]
    for i, step in enumerate(plan.steps, 1):
        card = catalog.get(step.operator)
        if card is None:
            problems.append(f"step {i}: unknown operator {step.operator!r}; use one of the listed operators")
            continue
        bad = sorted(set(step.params) - set(card.params))
        if bad:
            problems.append(f"step {i} ({card.name}): unknown parameter(s) {bad}; its parameters are {sorted(card.params)}")
        missing = [p.name for p in card.params.values() if p.required and p.name not in step.params]
        if missing:
            problems.append(f"step {i} ({card.name}): missing required parameter(s) {missing}")
        roles = {**card.reads, **card.writes}
        bad = sorted(set(step.columns) - set(roles))
        if bad:
            problems.append(f"step {i} ({card.name}): unknown column role(s) {bad}; it reads {card.reads} and writes {card.writes}")
        for role, default in card.reads.items():
            col = step.columns.get(role, default)
            if col is not None and col not in cols:
                problems.append(f"step {i} ({card.name}): reads column {col!r} (role {role!r}), which does not exist at that point; columns available: {sorted(cols)}")
        if card.kind == "refine":
            continue
        for role, default in card.writes.items():
            col = step.columns.get(role, default)
            if col:
                cols.add(col)
        cols |= _dynamic_writes(card, step)
    return problems


def _dynamic_writes(card: Card, step: Step) -> set[str]:
    if card.name == "multi_aspect_scorer":
        prefix = step.params.get("prefix", "aspect_")
        aspects = step.params.get("aspects") or {"helpfulness": 1, "correctness": 1, "clarity": 1}
        return {f"{prefix}{a}" for a in aspects}
    return set()


# --------------------------------------------------------------------------- code


def dtype_source(dtype: pl.DataType) -> str:
    """`pl.List(pl.String)`-style source for a dtype."""
    text = repr(dtype) if not isinstance(dtype, type) else dtype.__name__
    return re.sub(r"\b([A-Z][A-Za-z0-9]*)\b", r"pl.\1", text)


def _class_name(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_")) + "Pipeline"


def _attr_names(plan: Plan) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in plan.steps:
        base = s.operator
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return out


def render(plan: Plan, catalog: Mapping[str, Card], request: str, input_schema: Mapping[str, pl.DataType], *,
           verified: str = "", user_ops: bool = False) -> str:
    """The plan as an ordinary `Pipeline` subclass plus its `SPEC`."""
    cls_name = _class_name(plan.name)
    imports: dict[str, list[str]] = {}
    for s in plan.steps:
        cls = catalog[s.operator].cls
        imports.setdefault(cls.__module__, [])
        if cls.__name__ not in imports[cls.__module__]:
            imports[cls.__module__].append(cls.__name__)
    used = []
    for s in plan.steps:
        card = catalog[s.operator]
        for role, default in card.reads.items():
            col = s.columns.get(role, default)
            if col in input_schema and col not in used:
                used.append(col)
    lines = ['"""' + f"{request.strip()}".replace('"""', "'''") + "\n\nWritten by `dataflow agent` on " +
             _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC") + (f"; {verified}" if verified else "") +
             '. Edit freely: it is an ordinary pipeline."""', "", "from __future__ import annotations", "", "import polars as pl", "",
             "from operators.base import Pipeline"]
    user = [m for m in imports if m.startswith("dataflow_user_operators")]
    for mod in sorted(m for m in imports if m not in user):
        lines.append(f"from {mod} import {', '.join(sorted(imports[mod]))}")
    if user:
        lines += ["from dataflow_assets.agent.user import load_user_operators", "", "load_user_operators()  # the user operators folder"]
        for mod in sorted(user):
            lines.append(f"from {mod} import {', '.join(sorted(imports[mod]))}  # noqa: E402")
    desc = request.strip().splitlines()[0][:120] if request.strip() else plan.name
    lines += ["", "", f"class {cls_name}(Pipeline):", f'    """{desc.replace(chr(34), chr(39))}"""', "",
              f"    name = {plan.name!r}",
              "    input_schema = {" + ", ".join(f"{c!r}: {dtype_source(input_schema[c])}" for c in used) + "}",
              f"    description = {desc!r}", "", "    def __init__(self):"]
    attrs = _attr_names(plan)
    for attr, s in zip(attrs, plan.steps):
        cls = catalog[s.operator].cls
        args = ", ".join(f"{k}={v!r}" for k, v in s.params.items())
        if s.why:
            lines.append(f"        # {s.why}")
        lines.append(f"        self.{attr} = {cls.__name__}({args})")
    lines += ["", "    def forward(self, frame: pl.DataFrame) -> pl.DataFrame:"]
    for attr, s in zip(attrs, plan.steps):
        card = catalog[s.operator]
        cols = {r: s.columns[r] for r in {**card.reads, **card.writes} if r in s.columns}
        args = "".join(f", {r}={c!r}" for r, c in cols.items())
        lines.append(f"        frame = self.{attr}(frame{args})")
    lines += ["        return frame", "", "", "def _spec():", "    from dataflow_assets.pipelines import ShippedPipeline", "",
              f"    return ShippedPipeline(name={plan.name!r}, build={cls_name}, description={cls_name}.description)", "", "", "SPEC = _spec()", ""]
    return "\n".join(lines)


def load_source(source: str, module_name: str = "dataflow_agent_candidate"):
    """Execute generated source as a module and return it (nothing is written to disk)."""
    import sys
    import types

    mod = types.ModuleType(module_name)
    mod.__file__ = f"<{module_name}>"
    sys.modules[module_name] = mod  # dataclasses and code_closure look modules up by name
    try:
        exec(compile(source, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - code this module rendered from registered operators
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return mod


def dedent(text: str) -> str:
    return textwrap.dedent(text)
