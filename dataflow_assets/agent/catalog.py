"""What the agent knows about the operators: one `Card` per registered operator (kind, columns it
reads and writes, the parameters of its constructor from `inspect.signature`, its docstring),
the request's intent, and retrieval over the cards (BM25 with `bm25s`, or a small NumPy BM25
when it is absent; fused with embeddings when the optional model is installed)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl

from operators.base import REGISTRY, OperatorInfo

# --------------------------------------------------------------------------- registry


def load_registry() -> tuple[dict[str, OperatorInfo], list[str]]:
    """Import every operator module (as `operators.base.load_all`), but a module that fails to import
    is skipped with its error instead of failing the agent; returns (registry, problems)."""
    import operators

    problems: list[str] = []
    for mod in pkgutil.walk_packages(operators.__path__, "operators."):
        try:
            importlib.import_module(mod.name)
        except Exception as err:  # noqa: BLE001 - one broken module must not hide the rest
            problems.append(f"{mod.name}: {type(err).__name__}: {err}")
    from dataflow_assets.agent.user import load_user_operators

    problems += load_user_operators()
    return REGISTRY, problems


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str
    default: Any  # JSON value; `required` when there is none
    required: bool

    def json_schema(self) -> dict[str, Any]:
        ann = self.annotation.replace(" ", "")
        types: list[str] = []
        for word, t in (("bool", "boolean"), ("int", "integer"), ("float", "number"), ("str", "string"),
                        ("Sequence", "array"), ("tuple", "array"), ("list", "array"), ("Mapping", "object"), ("dict", "object")):
            if re.search(rf"\b{word}\b", ann) and t not in types:
                types.append(t)
        if "number" in types and "integer" not in types:
            types.append("integer")
        if "None" in ann or self.default is None and not self.required:
            types.append("null")
        return {"type": types} if types else {}


@dataclass(frozen=True)
class Card:
    """One operator as the agent sees it."""

    name: str
    domain: str
    kind: str
    needs_llm: bool
    reads: dict[str, str | None]
    writes: dict[str, str | None]
    params: dict[str, Param]
    doc: str
    cls: type

    @property
    def summary(self) -> str:
        return self.doc.strip().split("\n\n")[0].replace("\n", " ")

    @property
    def required_reads(self) -> dict[str, str]:
        return {r: c for r, c in self.reads.items() if c is not None}

    def brief(self) -> dict[str, Any]:
        """What the LLM planner is shown."""
        return {
            "operator": self.name,
            "kind": self.kind,
            "llm": self.needs_llm,
            "reads": self.reads,
            "writes": self.writes,
            "params": {p.name: ("REQUIRED" if p.required else p.default) for p in self.params.values()},
            "doc": self.summary[:300],
        }


def params_of(cls: type) -> dict[str, Param]:
    """The constructor's parameters whose values a plan can carry as JSON (no clients, templates or encoders)."""
    out: dict[str, Param] = {}
    for p in inspect.signature(cls).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("llm", "template", "params", "encoder", "user_params"):
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        if p.default is p.empty:
            out[p.name] = Param(p.name, ann, None, True)
        elif _jsonable(p.default if not isinstance(p.default, tuple) else list(p.default)):
            out[p.name] = Param(p.name, ann, list(p.default) if isinstance(p.default, tuple) else p.default, False)
    return out


def cards(registry: Mapping[str, OperatorInfo] | None = None) -> dict[str, Card]:
    import sys

    reg = registry if registry is not None else load_registry()[0]
    return {  # an operator whose module failed to import part-way cannot be imported by a pipeline file
        i.name: Card(i.name, i.domain, i.kind, i.needs_llm, dict(i.reads), dict(i.writes), params_of(i.cls), i.doc, i.cls)
        for i in reg.values()
        if i.cls.__module__ in sys.modules
    }


# --------------------------------------------------------------------------- intent

DOMAIN_WORDS: dict[str, tuple[str, ...]] = {
    "reasoning": ("math", "problem", "problems", "equation", "solution", "solutions", "chain", "thought", "cot", "verified", "arithmetic", "gsm8k", "answer"),
    "code": ("code", "function", "program", "python", "snippet", "lint", "repository", "tests"),
    "text2sql": ("sql", "database", "query", "queries", "table", "sqlite", "schema"),
    "conversations": ("conversation", "conversations", "dialogue", "dialog", "chat", "multi", "turn", "turns"),
    "sft": ("instruction", "instructions", "response", "responses", "sft", "alpaca", "tuning", "refusal"),
    "knowledge": ("pdf", "document", "documents", "chunk", "chunks", "knowledge", "extraction"),
    "text": ("web", "pretraining", "pre", "html", "language", "english", "dedup", "duplicate", "duplicates", "clean"),
    "core": ("translate", "summarize", "summarise", "summary", "entities", "entity", "keywords", "classify", "sentiment", "paraphrase", "judge"),
}
COLUMN_DOMAINS = {"question": "reasoning", "solution": "reasoning", "code": "code", "raw_code": "code", "sql": "text2sql",
                  "db_path": "text2sql", "messages": "conversations", "chat": "conversations", "instruction": "sft", "output": "sft",
                  "text": "text", "raw_content": "text", "contents": "knowledge"}
GOALS = {
    "generate": ("generate", "add", "create", "synthesize", "synthesise", "write", "produce", "translate", "summarize",
                 "summarise", "extract", "answer", "paraphrase", "augment", "expand", "evolve"),
    "filter": ("filter", "drop", "remove", "keep", "discard", "only", "dedup", "deduplicate", "exclude"),
    "refine": ("clean", "normalize", "normalise", "fix", "strip", "tidy", "rewrite"),
    "evaluate": ("score", "rate", "judge", "evaluate", "classify", "label", "tag", "measure", "assess", "detect"),
}


def tokens(text: str) -> list[str]:
    """Lower-case word tokens; snake_case and CamelCase names are split; words are cut to their first six
    letters, a crude but dependable stem (summarize / summarizer / summary -> summar, translate /
    translator -> transl) for short operator descriptions."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text).replace("_", " ").lower()
    out = []
    for w in re.findall(r"[a-z0-9]+|[\u4e00-\u9fff]", text):
        if w in STOP_WORDS:
            continue
        out.append(re.sub(r"(?<=...)(?:ing|ed|es|s|e)$", "", w)[:6])
    return out


STOP_WORDS = frozenset(
    ["a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "that", "this", "these", "those", "it", "its", "is", "are", "be", "been", "was", "were", "each", "every", "all", "any", "some", "as", "if", "then", "than", "so", "such", "not", "no", "only", "also", "can", "may", "must", "should", "will", "would", "do", "does"]
)


@dataclass
class Intent:
    domain: str
    goals: list[str]
    scores: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        return f"domain={self.domain} goals={','.join(self.goals) or 'transform'}"


def classify_intent(request: str, columns: Mapping[str, Any] = ()) -> Intent:
    """Keywords of the request plus the names of the input's columns."""
    toks = set(tokens(request))
    scores = {d: float(len(toks & set(tokens(" ".join(ws))))) for d, ws in DOMAIN_WORDS.items()}
    for col in columns:
        if col in COLUMN_DOMAINS:
            scores[COLUMN_DOMAINS[col]] += 0.5
    domain = max(scores, key=lambda d: (scores[d], d == "text"))
    goals = [g for g, ws in GOALS.items() if toks & set(tokens(" ".join(ws)))]
    return Intent(domain, goals, scores)


# --------------------------------------------------------------------------- retrieval


def card_text(card: Card) -> str:
    return " ".join([card.name, card.name, card.domain, card.kind, card.doc,
                     " ".join(f"{k} {v or ''}" for k, v in {**card.reads, **card.writes}.items())])


class _NumpyBM25:
    """Okapi BM25 (k1=1.5, b=0.75) on a term-count matrix; used when `bm25s` is not installed."""

    def __init__(self, docs: list[list[str]], k1: float = 1.5, b: float = 0.75):
        self.vocab = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
        tf = np.zeros((len(docs), len(self.vocab)))
        for i, d in enumerate(docs):
            for t in d:
                tf[i, self.vocab[t]] += 1
        lens = tf.sum(1, keepdims=True)
        df = (tf > 0).sum(0)
        self.idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        self.w = tf * (k1 + 1) / (tf + k1 * (1 - b + b * lens / max(lens.mean(), 1)))

    def scores(self, query: list[str]) -> np.ndarray:
        idx = [self.vocab[t] for t in query if t in self.vocab]
        return (self.w[:, idx] * self.idf[idx]).sum(1) if idx else np.zeros(self.w.shape[0])


class _Bm25s:
    def __init__(self, docs: list[list[str]]):
        import bm25s

        self.n = len(docs)
        self.model = bm25s.BM25()
        self.model.index(docs, show_progress=False)

    def scores(self, query: list[str]) -> np.ndarray:
        return np.asarray(self.model.get_scores(query)) if query else np.zeros(self.n)


@dataclass
class Candidate:
    card: Card
    score: float
    reasons: list[str]

    def line(self) -> str:
        return f"{self.card.name} ({self.card.kind}, {self.score:.2f}): {'; '.join(self.reasons)}"


class Retriever:
    """BM25 over the cards (name, docstring, reads/writes), plus cosine similarity of embeddings when
    the optional model is installed (`embed` extra), fused by reciprocal rank."""

    def __init__(self, catalog: Mapping[str, Card], use_embeddings: bool | None = None):
        self.cards = list(catalog.values())
        docs = [tokens(card_text(c)) for c in self.cards]
        try:
            self.bm25: Any = _Bm25s(docs)
            self.engine = "bm25s"
        except ImportError:
            self.bm25, self.engine = _NumpyBM25(docs), "numpy-bm25"
        self.embeddings = None
        if use_embeddings is None:  # opt-in: loading the model costs about a minute on a small CPU
            import os

            use_embeddings = os.environ.get("DATAFLOW_AGENT_EMBEDDINGS", "") not in ("", "0")
        if use_embeddings:
            from operators.core.embeddings import embedding_model_available

            use_embeddings = embedding_model_available()
        if use_embeddings:
            try:
                from operators.core.embeddings import load_default_encoder

                self.encoder = load_default_encoder()
                self.embeddings = self._encode([f"{c.name}: {c.summary}" for c in self.cards])
                self.engine += "+embeddings"
            except Exception as err:  # noqa: BLE001 - retrieval still works on BM25 alone
                warnings.warn(f"embeddings unavailable ({err}); BM25 only")

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = np.asarray(self.encoder.encode(texts), dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)

    def scores(self, query: str) -> np.ndarray:
        bm = self.bm25.scores(tokens(query))
        if self.embeddings is None:
            return bm
        cos = self.embeddings @ self._encode([query])[0]
        rank_bm = np.argsort(np.argsort(-bm))
        rank_cos = np.argsort(np.argsort(-cos))
        fused = 1 / (60 + rank_bm) + 1 / (60 + rank_cos)
        return fused * (bm.max() or 1) * 30  # on BM25's scale, so thresholds stay meaningful

    def search(self, query: str, columns: Mapping[str, Any] = (), k: int = 12) -> list[Candidate]:
        """The `k` best operators for `query`, each with its reasons (matched words, input columns it can read)."""
        scores = self.scores(query)
        qt = set(tokens(query))
        cols = set(columns)
        out = []
        for i in np.argsort(-scores)[: max(k * 3, k)]:
            card = self.cards[i]
            reasons = []
            words = sorted(qt & set(tokens(card_text(card))))
            if words:
                reasons.append("matches " + ", ".join(words[:6]))
            present = [c for c in card.required_reads.values() if c in cols]
            bonus = 0.0
            if present:
                reasons.append("reads " + ", ".join(present) + " (in the input)")
                bonus = 0.5 * len(present) / max(len(card.required_reads), 1)
            if scores[i] > 0 or present:
                out.append(Candidate(card, float(scores[i]) + bonus, reasons or ["related"]))
        out.sort(key=lambda c: -c.score)
        return out[:k]


@lru_cache(maxsize=1)
def default_catalog() -> tuple[dict[str, Card], tuple[str, ...]]:
    reg, problems = load_registry()
    return cards(reg), tuple(problems)


def schema_of(frame: pl.DataFrame) -> dict[str, pl.DataType]:
    return {c: t for c, t in frame.schema.items() if c != "_id"}


def main_text_column(frame: pl.DataFrame) -> str | None:
    """The string column with the longest mean length: the text a generic operator should read."""
    strings = [c for c, t in frame.schema.items() if t == pl.String and c != "_id"]
    if not strings:
        return None
    if frame.height == 0:
        return strings[0]
    lens = frame.select(pl.col(c).str.len_chars().mean().alias(c) for c in strings).row(0)
    return max(zip(strings, lens), key=lambda x: x[1] or 0)[0]

