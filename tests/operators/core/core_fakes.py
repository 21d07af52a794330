"""Test doubles for the core operators: a deterministic fake LLM client and a fake encoder."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl

from operators.llm import LLMRequest, LLMResult

REPO = Path(__file__).resolve().parents[3]
SFT_INPUT = ("dataflow_examples", "example", "GeneralTextPipeline", "sft_input.jsonl")


def load_sft_input() -> pl.DataFrame:
    """Rows (instruction, output) of the shared GeneralTextPipeline example (../shared/data beside
    the repo root), or a skip with the reason when it is absent."""
    from tests.conftest import shared

    return pl.read_ndjson(shared(*SFT_INPUT))


def user_text(req: LLMRequest) -> str:
    return next(m["content"] for m in req.messages if m["role"] == "user")


def minimal_instance(schema: Mapping[str, Any]) -> Any:
    """A small value valid under a (simple) JSON schema."""
    if "enum" in schema:
        return schema["enum"][0]
    typ = schema.get("type")
    if typ == "object":
        return {k: minimal_instance(v) for k, v in schema.get("properties", {}).items()}
    if typ == "array":
        return [minimal_instance(schema.get("items", {"type": "string"}))]
    if typ == "integer":
        return schema.get("minimum", 1)
    if typ == "number":
        return 0.5
    if typ == "boolean":
        return True
    return "x"


Responder = Callable[[LLMRequest], Any]


class FakeLLM:
    """Deterministic in-test LLM client.

    - `responder(request)` returns a str (the text) or a JSON-able value (sent as text and, when the
      request had a schema and `parse` is on, as `parsed`). The default echoes the prompt for free
      text and answers a minimal valid instance for a schema.
    - `fail` maps row ids (or (id, sample) pairs) to an error kind.
    - results come back shuffled (fixed seed) so operators must match them by `_id`.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        fail: Mapping[Any, str] | None = None,
        shuffle: bool = True,
        parse: bool = True,
        model: str = "fake-model",
    ):
        self.responder = responder or self.default
        self.fail = dict(fail or {})
        self.shuffle, self.parse, self.model = shuffle, parse, model
        self.calls: list[list[LLMRequest]] = []

    @property
    def requests(self) -> list[LLMRequest]:
        return [r for batch in self.calls for r in batch]

    @staticmethod
    def default(req: LLMRequest) -> Any:
        if req.schema is not None:
            return minimal_instance(req.schema)
        return "ECHO:" + user_text(req)[-40:]

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        self.calls.append(list(requests))
        out = []
        for req in requests:
            key = hashlib.sha1(json.dumps([req.id, req.sample, list(req.messages)], default=str).encode()).hexdigest()[:12]
            err = self.fail.get((req.id, req.sample), self.fail.get(req.id))
            if err:
                out.append(LLMResult(id=req.id, sample=req.sample, error=err, error_detail="injected", model=self.model, cache_key=key))
                continue
            val = self.responder(req)
            text = val if isinstance(val, str) else json.dumps(val)
            parsed = None
            if req.schema is not None and self.parse and not isinstance(val, str):
                parsed = val
            out.append(
                LLMResult(
                    id=req.id, sample=req.sample, text=text, parsed=parsed, model=self.model, cache_key=key,
                    finish_reason="stop", tokens_in=10, tokens_out=5,
                )
            )
        if self.shuffle:
            random.Random(1234).shuffle(out)
        return out


class FakeEncoder:
    """Bag-of-words hashing encoder: equal texts embed equally, disjoint texts are orthogonal-ish."""

    dim = 64

    def __init__(self):
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        mat = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                mat[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return mat
