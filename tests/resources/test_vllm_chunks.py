"""The in-process vLLM client persists answers chunk by chunk and records per-row latency honestly
(issue 8 §4). No GPU or vllm here: a stand-in engine object with `vllm.LLM.chat`'s shape, only
inside this unit test."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from operators.llm import LLMRequest, SamplingParams
from resources.llm import GenerationCache
from resources.llm.vllm_backend import VLLMClient


class StandInEngine:
    """`chat(messages_list, sampling_list, use_tqdm=False)` -> one RequestOutput-like object per
    conversation, in order. Records what the cache held at each call; `die_after` chunks raises
    (a run killed mid-stage)."""

    def __init__(self, cache: GenerationCache, seconds_per_chunk: float = 0.05, metrics: bool = False, die_after: int | None = None,
                 finish: str = "stop"):
        self.cache, self.seconds, self.metrics, self.die_after, self.finish = cache, seconds_per_chunk, metrics, die_after, finish
        self.calls: list[int] = []
        self.cached_at_call: list[int] = []

    def chat(self, conversations, sampling, use_tqdm=False):
        assert len(conversations) == len(sampling)
        if self.die_after is not None and len(self.calls) == self.die_after:
            raise RuntimeError("engine died")
        self.cached_at_call.append(len(self.cache))
        self.calls.append(len(conversations))
        now = time.time()
        time.sleep(self.seconds)
        outs = []
        for k, conv in enumerate(conversations):
            text = "answer to " + conv[-1]["content"]
            metrics = SimpleNamespace(arrival_time=now, finished_time=now + 0.001 * (k + 1)) if self.metrics else None
            outs.append(SimpleNamespace(
                prompt_token_ids=[1, 2, 3],
                outputs=[SimpleNamespace(text=text, token_ids=list(range(len(text.split()))), finish_reason=self.finish)],
                metrics=metrics,
            ))
        return outs


@pytest.fixture
def client_factory(cache_path, monkeypatch):
    monkeypatch.setattr(VLLMClient, "_sampling", lambda self, req: {"max_tokens": req.params.max_tokens})  # no vllm import

    def make(**engine_kw):
        cache = GenerationCache(cache_path)
        engine = StandInEngine(cache, **engine_kw)
        return VLLMClient("org/tiny", cache=cache, engine=engine, chunk_size=3), engine, cache

    return make


def _reqs(n: int, **kw):
    return [LLMRequest(id=f"r{i}", messages=[{"role": "user", "content": f"q{i}"}], **kw) for i in range(n)]


def test_each_chunk_is_persisted_before_the_next_runs(client_factory):
    client, engine, cache = client_factory()
    res = client.generate(_reqs(8))
    assert [r.text for r in res] == [f"answer to q{i}" for i in range(8)] and all(r.ok for r in res)
    assert engine.calls == [3, 3, 2]
    assert engine.cached_at_call == [0, 3, 6]  # old code: one call for all rows, persisted at the end
    assert len(cache) == 8 and cache.prompt(res[4].cache_key) == [{"role": "user", "content": "q4"}]


def test_a_crash_keeps_the_finished_chunks(client_factory):
    client, _, cache = client_factory(die_after=2)
    with pytest.raises(RuntimeError, match="engine died"):
        client.generate(_reqs(8))
    assert len(cache) == 6  # two chunks completed before the engine died
    client2, engine2, _ = client_factory()
    res = client2.generate(_reqs(8))
    assert sum(r.cached for r in res) == 6 and engine2.calls == [2]  # only the unanswered rows


def test_latency_is_per_row_not_the_whole_batch(client_factory):
    client, _, _ = client_factory(seconds_per_chunk=0.1)
    res = client.generate(_reqs(9))
    lat = [r.latency_s for r in res]
    # each row waited for its own chunk (~0.1 s), not for all three chunks (~0.3 s)
    assert all(0.09 <= x < 0.2 for x in lat), lat
    client, _, _ = client_factory(metrics=True)
    res = client.generate(_reqs(3, params=SamplingParams(seed=1)))
    assert [round(r.latency_s, 4) for r in res] == [0.001, 0.002, 0.003]  # the engine's own per-request measure


def test_truncated_and_duplicates(client_factory):
    client, engine, cache = client_factory(finish="length")
    res = client.generate(_reqs(2))
    assert [r.error for r in res] == ["truncated", "truncated"] and len(cache) == 0
    client, engine, cache = client_factory()
    twice = [LLMRequest(id=f"d{i}", messages=[{"role": "user", "content": "same"}]) for i in range(4)]
    res = client.generate(twice)
    assert engine.calls == [1] and [r.id for r in res] == ["d0", "d1", "d2", "d3"] and len({r.text for r in res}) == 1
