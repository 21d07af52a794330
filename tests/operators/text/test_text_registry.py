"""Every registered text operator: own docstring, runs on a small and a zero-row frame, writes its
declared columns."""

from __future__ import annotations

import polars as pl
import pytest

from operators.base import REGISTRY, load_all, with_row_ids

load_all()
TEXT_OPS = sorted(name for name, info in REGISTRY.items() if info.domain == "text")

SAMPLE = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, and that is all.\n"
    "Visit https://example.com or mail a@b.org. [1]\n\nSecond paragraph with the words to have.",
    "<p>Hello &amp; world</p> 😀",
    "",
]


def test_at_least_fifty_text_operators():
    assert len(TEXT_OPS) >= 50, TEXT_OPS


@pytest.mark.parametrize("name", TEXT_OPS)
def test_operator_has_own_docstring(name):
    info = REGISTRY[name]
    assert info.doc and len(info.doc) > 40
    assert info.cls.__doc__ and info.cls.__dict__.get("__doc__"), f"{name} must define its own docstring"


def _columns(info):
    cols = {}
    for role, default in info.writes.items():
        cols[role] = default or f"out_{role}"
    return cols


@pytest.mark.parametrize("name", TEXT_OPS)
@pytest.mark.parametrize("rows", [SAMPLE, []])
def test_operator_runs_and_writes_declared_columns(name, rows):
    info = REGISTRY[name]
    frame = with_row_ids(pl.DataFrame({"text": rows}, schema={"text": pl.String}), source="t")
    op = info.cls()
    cols = _columns(info)
    out = op(frame, **cols)
    for col in cols.values():
        assert col in out.columns
    assert "text" in out.columns
    assert out.height <= frame.height
    if info.kind in ("refine", "evaluate"):
        assert out.height == frame.height
    report = op.last_report
    assert report.rows_in == frame.height and report.rows_out == out.height
    if info.kind == "filter":
        assert sum(report.dropped.values()) == frame.height - out.height
