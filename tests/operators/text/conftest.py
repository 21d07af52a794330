"""Fixtures of the text operator tests: real documents from ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

# tests/operators/text/conftest.py -> parents[3] is the repository root; its parent holds shared/
SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def shared_path(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset not available: {path} (these tests read real documents from ../shared/data)")
    return path


@pytest.fixture(scope="session")
def c4_frame() -> pl.DataFrame:
    return pl.read_parquet(shared_path("c4_validation_2k", "c4_validation_2k.parquet")).select("text")


@pytest.fixture(scope="session")
def dpk_frame() -> pl.DataFrame:
    return pl.read_parquet(shared_path("data_prep_kit_fixtures", "filter_input", "test1.parquet"))


@pytest.fixture(scope="session")
def dolma_frame() -> pl.DataFrame:
    path = shared_path("dolma_fixtures", "cc_en_head-0091.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pl.DataFrame({"text": [r["text"] for r in rows]})
