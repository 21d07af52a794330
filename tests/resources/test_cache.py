"""The generation cache: keys, no cached errors, fast batch lookup, concurrent processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from pathlib import Path

from operators.llm import LLMRequest, LLMResult, SamplingParams
from resources.llm import GenerationCache, cache_key, default_cache_path


ROOT = Path(__file__).resolve().parents[2]


def _req(content="hi", **kw):
    return LLMRequest(id="r1", messages=[{"role": "user", "content": content}], **kw)


def test_key_covers_everything_that_changes_the_answer():
    base = cache_key("m", _req())
    assert cache_key("m", _req()) == base
    assert cache_key("m", LLMRequest(id="other-row", messages=[{"role": "user", "content": "hi"}])) == base  # row id is not content
    variants = [
        cache_key("m2", _req()),
        cache_key("m", _req("hi!")),
        cache_key("m", LLMRequest(id="r1", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])),
        cache_key("m", _req(params=SamplingParams(seed=1))),
        cache_key("m", _req(params=SamplingParams(temperature=0.7))),
        cache_key("m", _req(params=SamplingParams(max_tokens=9))),
        cache_key("m", _req(sample=1)),
        cache_key("m", _req(schema={"type": "object"})),
    ]
    assert len(set(variants + [base])) == len(variants) + 1


def test_default_path_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / "cache" / "llm.sqlite"
    monkeypatch.delenv("DATAFLOW_HOME")
    assert default_cache_path().parts[-3:] == (".dataflow", "cache", "llm.sqlite")


def test_put_get_roundtrip_and_errors_never_cached(cache_path):
    cache = GenerationCache(cache_path)
    ok = LLMResult(id="a", text="t", parsed={"x": [1, "é"]}, finish_reason="stop", tokens_in=3, tokens_out=4, model="m", cache_key="k1")
    bad = LLMResult(id="b", error="server_error", error_detail="boom", model="m", cache_key="k2")
    assert cache.put_many([ok, bad]) == 1
    reqs = [LLMRequest(id="x", messages=[]), LLMRequest(id="y", messages=[], sample=2)]
    hits = cache.lookup(reqs, ["k1", "k2"])
    assert list(hits) == [0]
    h = hits[0]
    assert (h.id, h.text, h.parsed, h.tokens_in, h.tokens_out, h.cached, h.cache_key) == ("x", "t", {"x": [1, "é"]}, 3, 4, True, "k1")
    assert len(cache) == 1
    # a fresh connection (another process would do the same) sees it
    assert "k1" in GenerationCache(cache_path)


def test_batch_lookup_of_100k_keys_returns_every_row(cache_path):
    """Correctness at scale; the speed is measured in benchmarks/llm_client.py. The loose bound only
    catches a lookup that went quadratic or per-key (that took minutes)."""
    cache = GenerationCache(cache_path)
    n = 100_000
    cache.put_many(LLMResult(id=str(i), text=f"answer {i}", model="m", cache_key=f"{i:032x}") for i in range(n))
    keys = [f"{i:032x}" for i in range(n)]
    t0 = time.perf_counter()
    rows = cache.get_many(keys)
    dt = time.perf_counter() - t0
    assert len(rows) == n and rows[keys[123]]["text"] == "answer 123"
    assert all(rows[k]["text"] == f"answer {int(k, 16)}" for k in keys[::997])
    assert dt < 30.0, f"100k lookups took {dt:.2f}s"


WRITER = textwrap.dedent(
    """
    import sys
    from operators.llm import LLMResult
    from resources.llm import GenerationCache
    path, w, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cache = GenerationCache(path)
    for i in range(n):
        # own keys, plus keys every writer shares (the same content written concurrently)
        cache.put(LLMResult(id="x", text=f"w{w}-{i}", model="m", cache_key=f"w{w}-{i}"))
        cache.put(LLMResult(id="x", text=f"shared-{i}", model="m", cache_key=f"shared-{i}"))
        if i % 25 == 0:
            got = cache.get_many([f"w{w}-{j}" for j in range(i + 1)])
            assert len(got) == i + 1, (w, i, len(got))
    print("ok", w)
    """
)


def test_concurrent_processes_no_lost_writes(cache_path, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    GenerationCache(cache_path)  # create the table once
    n, writers = 80, 4
    procs = [
        subprocess.Popen([sys.executable, str(script), str(cache_path), str(w), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for w in range(writers)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.startswith("ok")
    cache = GenerationCache(cache_path)
    keys = [f"w{w}-{i}" for w in range(writers) for i in range(n)] + [f"shared-{i}" for i in range(n)]
    rows = cache.get_many(keys)
    assert len(rows) == len(keys) == writers * n + n
    assert all(rows[f"w{w}-{i}"]["text"] == f"w{w}-{i}" for w in range(writers) for i in range(n))
