"""Durability under SIGKILL, and API keys never leaking into logs, errors, reprs or the cache."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from operators.llm import LLMRequest
from resources.llm import GenerationCache, LLMResource, OpenAIClient

ROOT = Path(__file__).resolve().parents[2]

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from operators.llm import LLMRequest
    from resources.llm import OpenAIClient
    base_url, cache = sys.argv[1], sys.argv[2]
    client = OpenAIClient(base_url=base_url, model="echo", cache=cache, max_concurrency=4)
    reqs = [LLMRequest(id=f"k{i}", messages=[{"role": "user", "content": f"kill row {i}"}]) for i in range(40)]
    print("start", flush=True)
    client.generate(reqs)
    print("finished", flush=True)
    """
)


def test_sigkill_mid_stage_loses_nothing_completed(server, cache_path, tmp_path):
    server.latency = (0.05, 0.25)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), server.base_url, str(cache_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while server.completed < 12 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.4)  # let in-flight requests of the dead process land
    first_run = server.requests
    done = len(GenerationCache(cache_path))
    assert 0 < done < 40, done
    assert first_run < 40  # it really was killed mid-way
    server.reset_counters()
    server.latency = 0.0
    reqs = [LLMRequest(id=f"k{i}", messages=[{"role": "user", "content": f"kill row {i}"}]) for i in range(40)]
    res = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path).generate(reqs)
    assert server.requests == 40 - done
    assert sum(r.cached for r in res) == done
    assert all(r.ok and r.text == f"echo: kill row {r.id[1:]}" for r in res)


SECRET = "sk-test-S3CRET-0123456789abcdef"


def test_api_key_never_leaks(server, cache_path, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    reqs = [
        LLMRequest(id="ok", messages=[{"role": "user", "content": "secret ok"}]),
        LLMRequest(id="401", messages=[{"role": "user", "content": "secret #fault=401*"}]),
        LLMRequest(id="500", messages=[{"role": "user", "content": "secret #fault=500*"}]),
        LLMRequest(id="429", messages=[{"role": "user", "content": "secret #fault=429,500"}]),
        LLMRequest(id="slow", messages=[{"role": "user", "content": "secret #fault=slow*"}]),
    ]
    texts: list[str] = []
    for transport in ("openai", "aiohttp"):
        c = OpenAIClient(base_url=server.base_url, model="echo", api_key=SECRET, cache=cache_path, max_retries=1,
                         backoff_s=0.01, timeout_s=0.3, transport=transport)
        res = c.generate(reqs)
        by = {r.id: r for r in res}
        assert by["ok"].ok and by["401"].error == "client_error" and by["500"].error == "server_error"
        assert "***" in by["401"].error_detail  # the server quoted the key; we redacted it
        texts += [repr(r) for r in res] + [repr(c), str(c.stats())]
    assert server.auth_headers and all(h == f"Bearer {SECRET}" for h in server.auth_headers)  # it was sent
    # the Dagster resource: repr, metadata
    monkeypatch.setenv("TEST_LLM_SECRET", SECRET)
    seen = {}

    @dg.asset
    def uses_llm(llm: LLMResource) -> dg.MaterializeResult:
        out = llm.client().generate(reqs[:2])
        seen["repr"] = repr(llm)
        return dg.MaterializeResult(metadata={"llm": dg.MetadataValue.json(llm.stats()), "errors": [r.error_detail or "" for r in out]})

    result = dg.materialize(
        [uses_llm],
        resources={"llm": LLMResource(backend="openai", base_url=server.base_url, model="echo", api_key=dg.EnvVar("TEST_LLM_SECRET"), cache_path=str(cache_path))},
    )
    assert result.success
    texts.append(seen["repr"])
    for ev in result.all_events:
        texts.append(str(ev))
    # an exception raised from the client's HTTP layer, stringified
    try:
        raise RuntimeError(OpenAIClient(base_url=server.base_url, model="m", api_key=SECRET, cache=False)._redact(f"Authorization: Bearer {SECRET}"))
    except RuntimeError as err:
        texts.append(str(err))
    out, err = capfd.readouterr()
    texts += [out, err] + [r.getMessage() for r in caplog.records] + [caplog.text]
    leaked = [t for t in texts if SECRET in t or SECRET[8:] in t]
    assert not leaked, leaked[:3]
    blob = b"".join(p.read_bytes() for p in cache_path.parent.iterdir() if p.is_file())
    assert blob and SECRET.encode() not in blob and SECRET[8:].encode() not in blob
