"""Fixtures for the LLM serving tests: a real loopback OpenAI-compatible server and a cache path."""

from __future__ import annotations

import pytest

from tests.llm_server import LoopbackLLMServer


@pytest.fixture(scope="module")
def llm_server():
    """One loopback server per test module; counters reset for every test."""
    with LoopbackLLMServer(latency=(0.0, 0.02), retry_after=0.05, slow_s=3.0) as srv:
        yield srv


@pytest.fixture()
def server(llm_server):
    llm_server.reset_counters()
    llm_server.latency = (0.0, 0.02)
    llm_server.retry_after = 0.05
    return llm_server


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Every test here gets its own DATAFLOW_HOME: shared-server state, hash memos and default
    caches never land in the repository's ./.dataflow (a test that needs a specific home sets it)."""
    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "dataflow-home"))
    monkeypatch.delenv("DATAFLOW_CACHE_URL", raising=False)
    monkeypatch.setenv("DATAFLOW_LLM_SERVER_LINGER", "0")  # shared servers stop when their last user leaves (test_shared_server tests the linger)


@pytest.fixture()
def cache_path(tmp_path):
    return tmp_path / "cache" / "llm.sqlite"
