"""Every registered `sft` and `conversations` operator: documented, distinct, runs on a small frame
and on a zero-row frame (no LLM call, same output columns and dtypes)."""

from __future__ import annotations

import polars as pl
import pytest

from operators.base import ID, KINDS, REGISTRY, load_all, with_row_ids
from operators.core.convert import MESSAGES_DTYPE
from tests.operators.core.core_fakes import FakeLLM

load_all()
OURS = sorted(n for n, i in REGISTRY.items() if i.domain in ("sft", "conversations"))
CONFIG = {"score_threshold_filter": {"thresholds": {"quality_score": 3}}, "top_k_filter": {"k": 2}}
NEEDS_FILES = {"reward_model_scorer"}  # a local model folder: tested in test_sft_llm.py


def test_enough_documented_operators_and_core_llm_operators():
    assert len(OURS) >= 35, OURS
    core_llm = [n for n, i in REGISTRY.items() if i.domain == "core" and i.needs_llm]
    assert len(core_llm) >= 20, core_llm
    for name in OURS:
        info = REGISTRY[name]
        assert info.kind in KINDS and info.cls.__module__.split(".")[1] == info.domain
        doc = info.doc.lower()
        assert "reads" in doc and "writes" in doc and "use " in doc, name
    docs = [REGISTRY[n].doc.split("\n")[0] for n in OURS]
    assert len(set(docs)) == len(docs)


def frame() -> pl.DataFrame:
    conv = [{"role": "user", "content": "What is the boiling point of water at sea level?"},
            {"role": "assistant", "content": "It is 100 degrees Celsius at standard atmospheric pressure."}]
    data = pl.DataFrame({
        "instruction": ["What is the boiling point of water at sea level?", "Explain tides.", "List three primes."],
        "output": ["It is 100 degrees Celsius at standard atmospheric pressure.", "The moon's gravity pulls the oceans.", "2, 3 and 5."],
        "topic": ["physics", "oceans", "numbers"],
        "text": ["Water boils at 100 degrees Celsius at sea level. " * 30] * 3,
        "chunk": ["Water boils at 100 degrees Celsius at sea level."] * 3,
        "answer": ["Water boils at 100 degrees Celsius."] * 3,
        "seed": ["boiling water", "tides", "prime numbers"],
        "chat": ["USER: hi\n\nASSISTANT: hello"] * 3,
        "messages": [conv, conv, []],
        "tags": [["physics"], ["oceans", "physics"], []],
        "score": [3.0, 5.0, None],
        "quality_score": [4, 2, 5],
        "complexity_score": [2, 3, 1],
        "turn_scores": [[4, 5], [2], None],
    }, schema_overrides={"messages": MESSAGES_DTYPE})
    return with_row_ids(data, "registry")


@pytest.mark.parametrize("name", [n for n in OURS if n not in NEEDS_FILES])
def test_every_operator_runs_on_small_and_empty_frames(name):
    info = REGISTRY[name]
    client = FakeLLM()
    kwargs = dict(CONFIG.get(name, {}))
    if info.needs_llm:
        kwargs["llm"] = client
    op = info.cls(**kwargs)
    data = frame()
    before = data.clone()
    out = op(data)
    assert data.equals(before), "the input frame must not be mutated"
    expected = op.output_columns(op.resolve({}))
    assert set(expected) <= set(out.columns)
    assert out.get_column(ID).n_unique() == out.height
    client.calls.clear()
    out0 = op(data.clear())
    assert out0.height == 0 and client.calls == [], "a zero-row frame makes no LLM call"
    for col in expected:
        assert out0.schema[col] == out.schema[col], f"{col}: dtype differs on a zero-row frame"
