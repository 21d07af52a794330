"""Two planners with one contract: propose a `Plan` for a request, and repair it from the exact
error of the last verification round.

- `DeterministicPlanner`: no model needed. It splits the request into clauses, maps each clause to an
  operator (a keyword table, else the clause's best BM25 match whose name shares a word with it),
  binds every column the operator reads to an input column (same name, a known synonym, else the
  main text column for text-like roles) and repairs by dropping the step the error names.
- `LLMPlanner`: asks the model for a JSON plan constrained by `plan_schema` (only the retrieved
  operators, their real parameters and column roles); errors go back verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from dataflow_assets.agent.catalog import Candidate, Card, Intent, Retriever, tokens
from dataflow_assets.agent.plan import (
    Plan,
    Step,
    _attr_names,
    name_from_request,
    plan_schema,
    validate_plan,
)

# clause pattern -> operators to try, in order (the first that exists and can be bound wins)
RULES: list[tuple[str, tuple[str, ...]]] = [
    (r"html|markup", ("html_tag_remover",)),
    (r"\burls?\b|links?", ("url_remover",)),
    (r"unicode|normali[sz]", ("unicode_normalizer",)),
    (r"clean|tidy|whitespace", ("unicode_normalizer", "whitespace_normalizer", "code_whitespace_normalizer")),
    (r"empty|blank", ("empty_text_filter", "question_presence_filter")),
    (r"near[- ]?dup|fuzzy|minhash|similar", ("minhash_dedup_filter",)),
    (r"dedup|duplicat", ("exact_dedup_filter",)),
    (r"translat", ("translator",)),
    (r"english|language|chinese|french|german|spanish", ("language_filter",)),
    (r"summar", ("summarizer",)),
    (r"entit|\bner\b|named", ("entity_extractor",)),
    (r"keyword|key ?phrase", ("keyword_extractor",)),
    (r"paraphras|rephrase|augment", ("paraphraser",)),
    (r"sentiment|classif|categor|label", ("label_classifier",)),
    (r"chain[- ]of[- ]thought|\bcot\b|step[- ]by[- ]step|reasoning|solution", ("chain_of_thought_generator",)),
    (r"question.*(generat|creat|writ|make)|(generat|creat|writ|make).*question", ("question_generator",)),
    (r"answer", ("answer_generator",)),
    (r"judge|score|rate|rating|grade", ("llm_judge", "prompted_filter")),
    (r"refus", ("refusal_filter",)),
    (r"json", ("json_validity_filter",)),
    (r"too (?:short|long)|length", ("response_length_filter", "pair_length_filter", "code_length_filter")),
    (r"secret|password|credential", ("code_secrets_filter",)),
    (r"transcript|chat.*messages|parse .*chat", ("chat_transcript_parser",)),
    (r"repeat\w* turns?|turn", ("repeated_turn_filter", "turn_count_filter")),
    (r"syntax|pars|valid (?:sql|code)", ("sql_syntax_filter", "code_syntax_filter")),
    (r"gibberish", ("gibberish_instruction_filter",)),
    (r"chunk|split", ("sentence_chunker", "token_chunker")),
    (r"repetit|repeated", ("gopher_repetition_filter", "repeated_turn_filter")),
    (r"quality|low[- ]quality|heuristic", ("gopher_quality_filter", "extraction_quality_filter")),
]

# role -> input column names that can stand in for it
SYNONYMS: dict[str, tuple[str, ...]] = {
    "text": ("text", "content", "contents", "raw_content", "document", "body", "sentence", "instruction", "question", "prompt", "chunk", "output", "response"),
    "question": ("question", "problem", "instruction", "prompt", "query", "input"),
    "instruction": ("instruction", "question", "prompt", "query", "problem", "input"),
    "output": ("output", "response", "answer", "completion", "solution"),
    "response": ("response", "output", "answer", "completion"),
    "answer": ("answer", "final_answer", "output", "response"),
    "code": ("code", "raw_code", "solution", "completion", "text", "content"),
    "sql": ("sql", "query", "SQL"),
    "messages": ("messages", "conversations", "conversation", "chat"),
    "chat": ("chat", "transcript", "dialogue"),
    "gold": ("gold_answer", "answer", "golden_answer"),
    "db": ("db_path", "database"),
    "seed": ("seed", "topic", "instruction", "question", "text"),
    "topic": ("topic", "seed", "category"),
}
LANGUAGES = {"english": "en", "french": "fr", "german": "de", "spanish": "es", "chinese": "zh", "japanese": "ja",
             "russian": "ru", "italian": "it", "portuguese": "pt", "korean": "ko", "arabic": "ar", "dutch": "nl"}


def infer_params(card: Card, clause: str) -> dict[str, Any]:
    """Parameters a clause states outright: the languages to keep, the target language of a translation."""
    langs = [code for word, code in LANGUAGES.items() if re.search(rf"\b{word}\b", clause, re.IGNORECASE)]
    if card.name == "language_filter" and langs and "keep" in card.params:
        return {"keep": langs}
    if card.name == "translator" and "target_language" in card.params:
        m = re.search(r"\b(?:in|into|to)\s+([A-Z][a-z]+)", clause)
        if m and m.group(1).lower() in LANGUAGES:
            return {"target_language": m.group(1)}
    return {}


TEXTY = {"text", "question", "instruction", "prompt", "seed", "topic", "chunk", "claim", "source", "context", "response", "output"}
STRINGY = {"code", "sql", "chat", "answer", "gold"}  # string columns only, but never the generic main-text fallback


LOOKS = {"sql": re.compile(r"^\s*(select|with|insert|update|delete|create)\b", re.IGNORECASE)}


def _fits(role: str, col: str, values: Mapping[str, Any] | None) -> bool:
    """A sample value that contradicts the role (JSON where SQL is expected) rules the column out."""
    v = (values or {}).get(col)
    if not isinstance(v, str):
        return True
    if role in LOOKS:
        return bool(LOOKS[role].search(v))
    return not (role in TEXTY and v.lstrip()[:1] in "{[" and v.strip()[-1:] in "}]")


def bind(card: Card, schema: Mapping[str, pl.DataType], main_text: str | None, values: Mapping[str, Any] | None = None) -> dict[str, str] | None:
    """Explicit columns for every role the operator needs, or None when one cannot be bound. Text-like
    roles take string columns only (the main text column as the last resort); two roles of one call
    never share a column."""
    out: dict[str, str] = {}
    for role, default in card.reads.items():
        if default is None:
            continue
        names = [default, role, *SYNONYMS.get(role, ()), *SYNONYMS.get(default, ())]
        stringy = role in TEXTY or role in STRINGY
        col = next((c for c in names if c in schema and c not in out.values() and (not stringy or schema[c] == pl.String)
                    and _fits(role, c, values)), None)
        if col is None and role in TEXTY and main_text in schema and schema[main_text] == pl.String and main_text not in out.values():
            col = main_text
        if col is None:
            return None
        out[role] = col
    taken = set(schema)
    for role, default in card.writes.items():  # never overwrite an input column with a generated one
        if default and default in taken and card.kind != "refine" and default not in out.values():
            out[role] = f"{card.name}_{default}"
    return out


def _after(card: Card, step: Step, schema: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    if card.kind == "refine":
        return schema
    new = dict(schema)
    for role, default in card.writes.items():
        col = step.columns.get(role, default)
        if col:
            new.setdefault(col, pl.String)
    return new


def clauses(request: str) -> list[str]:
    parts = re.split(r",|;|\.\s|\bthen\b|\band\b|\bafter that\b|，|。|、", request, flags=re.IGNORECASE)
    return [p.strip() for p in parts if p.strip()]


@dataclass
class DeterministicPlanner:
    catalog: Mapping[str, Card]
    retriever: Retriever
    name: str = "deterministic"
    max_steps: int = 6
    _values: dict = field(default_factory=dict)

    def propose(self, request: str, schema: Mapping[str, pl.DataType], sample: pl.DataFrame, intent: Intent,
                candidates: list[Candidate], **_: Any) -> Plan:
        from dataflow_assets.agent.catalog import main_text_column

        main = main_text_column(sample.drop("_id", strict=False)) if sample.width else None
        self._values = {c: sample[c].drop_nulls().head(1).to_list()[0] if sample[c].null_count() < sample.height else None
                        for c in sample.columns if c != "_id"}
        steps: list[Step] = []
        cur = dict(schema)
        for clause in clauses(request):  # in the request's order; each clause sees the columns earlier steps write
            hit = self._rule(clause, cur, main) or self._retrieved(clause, cur, main)
            if hit is None or hit[0] in [s.operator for s in steps]:
                continue
            card = self.catalog[hit[0]]
            step = Step(hit[0], infer_params(card, clause), bind(card, cur, main, self._values), hit[1])
            steps.append(step)
            cur = _after(card, step, cur)
        if not steps:  # nothing recognisable: a safe generic clean-up of the main text
            for op in ("unicode_normalizer", "exact_dedup_filter"):
                cols = bind(self.catalog[op], cur, main, self._values) if op in self.catalog else None
                if cols is not None:
                    steps.append(Step(op, {}, cols, "default clean-up for a request with no recognised step"))
        return Plan(name_from_request(request), steps[: self.max_steps], self.name)

    def _rule(self, clause: str, schema, main) -> tuple[str, str] | None:
        for pattern, ops in RULES:
            m = re.search(pattern, clause, re.IGNORECASE)
            if not m:
                continue
            for op in ops:
                if op in self.catalog and bind(self.catalog[op], schema, main, self._values) is not None:
                    return op, f"'{m.group(0)}' in the request"
        return None

    def _retrieved(self, clause: str, schema, main) -> tuple[str, str] | None:
        words = {w[:5] for w in tokens(clause) if len(w) > 3}
        for cand in self.retriever.search(clause, schema, k=5):
            name_words = {w[:5] for w in tokens(cand.card.name)}
            if words & name_words and bind(cand.card, schema, main, self._values) is not None:
                return cand.card.name, f"retrieved for '{clause}' ({'; '.join(cand.reasons)})"
        return None

    def repair(self, plan: Plan, error: str, **_: Any) -> Plan | None:
        """Drop the step the error names (else the last one); None when nothing is left."""
        if not plan.steps:
            return None
        idx = len(plan.steps) - 1
        m = re.search(r"step (\d+)", error)
        emptied = re.search(r"(\w+): [1-9]\d*->0\b", error)  # the stage that dropped the last rows
        named = re.search(r"stage '(\w+)'|\.(\w+) \(\w+\) reads column", error)
        attrs = _attr_names(plan)
        if m and 0 < int(m.group(1)) <= len(plan.steps):
            idx = int(m.group(1)) - 1
        elif emptied and emptied.group(1) in attrs:
            idx = attrs.index(emptied.group(1))
        elif named and (named.group(1) or named.group(2)) in attrs:
            idx = attrs.index(named.group(1) or named.group(2))
        else:
            for i, s in enumerate(plan.steps):
                if re.search(rf"\b{re.escape(s.operator)}\b", error):
                    idx = i
                    break
        steps = [s for i, s in enumerate(plan.steps) if i != idx]
        return Plan(plan.name, steps, plan.planner) if steps else None


PLAN_SYSTEM = (
    "You compose data-preparation pipelines from registered operators. Reply with only a JSON object "
    '{"name": "snake_case_name", "steps": [{"operator": NAME, "params": {...}, "columns": {ROLE: COLUMN}, "why": "..."}]}. '
    "Use only the operators listed, only their listed params, and bind every role an operator reads to a column "
    "that exists at that point (an input column, or one an earlier step writes). Steps run in order."
)
SYNTH_HINT = (
    '\nIf no listed operator can do a step, use {"operator": "synthesize", "description": WHAT IT MUST DO, '
    '"columns": {ROLE: COLUMN}} (roles it reads and writes) and a new operator will be written and tested for it.'
)


def _sample_rows(sample: pl.DataFrame, n: int = 3, width: int = 160) -> list[dict[str, Any]]:
    rows = sample.drop("_id", strict=False).head(n).to_dicts()
    return [{k: (str(v)[:width] if v is not None else None) for k, v in r.items()} for r in rows]


@dataclass
class LLMPlanner:
    llm: Any
    catalog: Mapping[str, Card]
    name: str = "llm"
    synthesis: bool = False
    max_tokens: int = 1500
    tokens: int = 0
    calls: int = 0
    history: list[dict[str, str]] = field(default_factory=list)

    def messages(self, request: str, schema, sample, candidates: list[Candidate]) -> list[dict[str, str]]:
        user = (
            f"Request: {request}\n\nInput columns: {json.dumps({c: str(t) for c, t in schema.items()})}\n"
            f"Sample rows: {json.dumps(_sample_rows(sample), ensure_ascii=False)}\n\n"
            "Operators you may use (reads/writes: role -> default column):\n"
            + "\n".join(json.dumps(c.card.brief(), ensure_ascii=False) for c in candidates)
        )
        return [{"role": "system", "content": PLAN_SYSTEM}, {"role": "user", "content": user + (SYNTH_HINT if self.synthesis else "")}]

    def propose(self, request: str, schema, sample, intent, candidates: list[Candidate], **_: Any) -> Plan:
        self.history = self.messages(request, schema, sample, candidates)
        self._cands = {c.card.name: c.card for c in candidates}
        return self._ask(request)

    def repair(self, plan: Plan | None, error: str, reply: str | None = None, **_: Any) -> Plan:
        last = reply if reply is not None else json.dumps(plan.to_dict() if plan else {}, ensure_ascii=False)
        self.history += [{"role": "assistant", "content": last},
                         {"role": "user", "content": f"That plan failed with this error:\n{error}\nReply with a corrected plan (JSON only)."}]
        return self._ask(None)

    def _ask(self, request: str | None) -> Plan:
        from operators.llm import LLMRequest, SamplingParams

        req = LLMRequest(id=f"agent-plan-{self.calls}", messages=list(self.history),
                         params=SamplingParams(max_tokens=self.max_tokens, temperature=0.0),
                         schema=plan_schema(self._cands, self.synthesis))
        self.calls += 1
        res = self.llm.generate([req])[0]
        self.tokens += (res.tokens_in or 0) + (res.tokens_out or 0)
        self.last_reply = res.text or ""
        if res.error and res.error != "schema":
            raise PlanError(f"the model call failed ({res.error}): {res.error_detail}", self.last_reply)
        try:
            plan = Plan.from_json(res.parsed if res.ok and res.parsed is not None else (res.text or ""))
        except ValueError as err:
            raise PlanError(str(err), self.last_reply) from err
        plan.planner = self.name
        problems = validate_plan(plan, {**self.catalog, **self._cands}, {}) if res.error == "schema" else []
        problems = [p for p in problems if "does not exist at that point" not in p]
        if res.error == "schema":
            detail = "; ".join(problems) or res.error_detail or "it does not match the plan schema"
            raise PlanError(f"the plan does not match the schema: {detail}", self.last_reply)
        return plan


class PlanError(ValueError):
    """A reply that is not a usable plan; `reply` is what the model said (sent back with the error)."""

    def __init__(self, message: str, reply: str = ""):
        super().__init__(message)
        self.reply = reply
