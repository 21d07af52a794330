"""The generation cache in PostgreSQL (issue 8 §4, across hosts): same keys, same batched lookups as
SQLite, selected by `DATAFLOW_CACHE_URL`, safe with two processes writing the same keys at once.

Runs against a real PostgreSQL cluster started the way tests/scaleout does (its `PostgresServer`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from operators.llm import LLMRequest, LLMResult
from resources.llm import GenerationCache, OpenAIClient, PostgresGenerationCache, cache_key, open_cache

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (dev extra, via dagster-postgres)")
    from tests.scaleout.test_postgres import PASSWORD, PostgresServer

    server = PostgresServer().start()
    try:
        con = server.connect()
        con.autocommit = True
        con.cursor().execute("create database llmcache")
        con.close()
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{server.port}/llmcache"
    finally:
        server.stop()


@pytest.fixture
def pg_cache(pg_url):
    cache = PostgresGenerationCache(pg_url)
    cache._tx(lambda cur: cur.execute("TRUNCATE dataflow_llm_generations, dataflow_llm_prompts"))
    yield cache
    cache.close()


def _reqs(n: int, tag: str = "p"):
    return [LLMRequest(id=f"r{i}", messages=[{"role": "user", "content": f"{tag} {i}"}]) for i in range(n)]


def test_roundtrip_like_sqlite(pg_cache, cache_path):
    lite = GenerationCache(cache_path)
    ok = LLMResult(id="a", text="t", parsed={"x": [1, "é"]}, finish_reason="stop", tokens_in=3, tokens_out=4, model="m", cache_key="k1")
    bad = LLMResult(id="b", error="server_error", error_detail="boom", model="m", cache_key="k2")
    msgs = {"k1": [{"role": "user", "content": "hé"}]}
    for cache in (pg_cache, lite):
        assert cache.put_many([ok, bad], prompts=msgs) == 1
        assert cache.put_many([ok]) == 1  # writing the same key again is fine
    reqs = [LLMRequest(id="x", messages=[]), LLMRequest(id="y", messages=[], sample=2)]
    hits_pg, hits_lite = pg_cache.lookup(reqs, ["k1", "k2"]), lite.lookup(reqs, ["k1", "k2"])
    assert list(hits_pg) == [0] and hits_pg[0] == hits_lite[0]
    assert pg_cache.get_many(["k1"])["k1"]["parsed"] == lite.get_many(["k1"])["k1"]["parsed"]
    assert pg_cache.prompt("k1") == msgs["k1"] and pg_cache.prompt("k2") is None
    assert len(pg_cache) == 1 and "k1" in pg_cache
    pg_cache.delete(["k1"])
    assert len(pg_cache) == 0
    assert "dataflow-test" not in repr(pg_cache) and "llmcache" in repr(pg_cache)


def test_batched_lookup_of_many_keys(pg_cache):
    n = 30_000
    reqs = _reqs(n, "bulk")
    keys = [cache_key("m", r) for r in reqs]
    pg_cache.put_many(LLMResult(id=r.id, text=f"a{i}", model="m", cache_key=k) for i, (r, k) in enumerate(zip(reqs, keys)))
    t0 = time.perf_counter()
    hits = pg_cache.lookup(reqs, keys)
    took = time.perf_counter() - t0
    assert len(hits) == n and hits[12_345].text == "a12345"
    assert took < 10, took  # three `= ANY(...)` queries of 10k keys


def test_selected_by_env_and_used_by_the_client(pg_url, pg_cache, server, monkeypatch):
    from resources.llm import LLMResource

    monkeypatch.setenv("DATAFLOW_CACHE_URL", pg_url)
    assert isinstance(open_cache(None), PostgresGenerationCache)
    assert open_cache(False) is None
    reqs = _reqs(40, "via env")
    client = OpenAIClient(base_url=server.base_url, model="echo")  # cache=None: the store the env names
    assert all(r.ok for r in client.generate(reqs)) and server.requests == 40
    res = OpenAIClient(base_url=server.base_url, model="echo").generate(reqs)
    assert all(r.cached for r in res) and server.requests == 40 and len(pg_cache) == 40
    # the Dagster resource picks it up from the environment too
    llm = LLMResource(backend="openai", base_url=server.base_url, model="echo")
    assert isinstance(llm.client().cache, PostgresGenerationCache)
    assert all(r.cached for r in llm.client().generate(reqs))
    llm.close()


WRITER = textwrap.dedent(
    """
    import random, sys, time
    from operators.llm import LLMResult
    from resources.llm import PostgresGenerationCache
    url, tag, n, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    cache = PostgresGenerationCache(url)
    keys = [f"key{i:05d}" for i in range(n)]
    batches = [keys[i : i + 200] for i in range(0, n, 200)]
    random.Random(tag).shuffle(batches)   # each writer in its own order: overlapping transactions
    while time.time() < start_at:
        time.sleep(0.005)
    for batch in batches:
        random.Random(tag + batch[0]).shuffle(batch)
        cache.put_many([LLMResult(id=k, text=f"{tag}:{k}", model="m", cache_key=k) for k in batch],
                       prompts={k: [{"role": "user", "content": k}] for k in batch})
    print("done", len(cache), flush=True)
    """
)


def test_two_processes_write_the_same_keys_at_once(pg_url, pg_cache, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n, start_at = 4000, time.time() + 3.0  # both begin writing at the same moment
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, str(script), pg_url, tag, str(n), str(start_at)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag in ("A", "B")
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert len(pg_cache) == n
    rows = pg_cache.get_many([f"key{i:05d}" for i in range(n)])
    assert len(rows) == n and all(r["text"] in (f"A:{k}", f"B:{k}") for k, r in rows.items())
    assert pg_cache.prompt("key00042") == [{"role": "user", "content": "key00042"}]
