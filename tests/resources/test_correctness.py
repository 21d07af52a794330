"""An LLM cache that never serves a wrong answer (issue 8 §4), user-set timeouts (issue 9 §6) and
duplicate ids (issue 9 §5), against the real loopback server."""

from __future__ import annotations

import time

import polars as pl
import pytest

from operators.base import ID
from operators.llm import LLMOperator, LLMRequest, LLMResult, PromptTemplate, SamplingParams
from resources.llm import GenerationCache, OpenAIClient, cache_key, file_sha256, gguf_identity
from tests.llm_server import LoopbackLLMServer, echo_text


def _req(content="hi", **kw):
    return LLMRequest(id="r1", messages=[{"role": "user", "content": content}], **kw)


# --------------------------------------------------------------------------- the key


def test_key_covers_extra_body_tools_response_format_and_sampling():
    base = cache_key("m", _req())
    variants = [
        cache_key("m", _req(extra_body={"top_k": 1})),
        cache_key("m", _req(extra_body={"top_k": 100})),
        cache_key("m", _req(), extra_body={"top_k": 7}),  # the client's extra_body
        cache_key("m", _req(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])),
        cache_key("m", _req(tool_choice="required")),
        cache_key("m", _req(response_format={"type": "json_object"})),
        cache_key("m", _req(params=SamplingParams(top_k=5))),
        cache_key("m", _req(params=SamplingParams(min_p=0.1))),
        cache_key("m", _req(params=SamplingParams(frequency_penalty=0.5))),
        cache_key("m", _req(params=SamplingParams(presence_penalty=0.5))),
        cache_key("m", _req(params=SamplingParams(repetition_penalty=1.1))),
        cache_key("m", _req(params=SamplingParams(stop=("\n",)))),
        cache_key("m", _req(params=SamplingParams(top_p=0.9))),
    ]
    assert len(set(variants + [base])) == len(variants) + 1
    # the request's extra_body overrides the client's for the same field, and equal bodies agree
    assert cache_key("m", _req(extra_body={"top_k": 1}), extra_body={"top_k": 100}) == cache_key("m", _req(extra_body={"top_k": 1}))


def test_top_k_100_is_not_served_the_top_k_1_answer(server, cache_path):
    reqs = lambda k: [LLMRequest(id="a", messages=[{"role": "user", "content": "sample me"}], extra_body={"top_k": k})]
    client = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path, max_retries=0)
    assert client.generate(reqs(1))[0].ok
    second = client.generate(reqs(100))[0]
    assert second.ok and not second.cached
    assert server.requests == 2 and [b.get("top_k") for b in server.bodies] == [1, 100]
    assert client.generate(reqs(100))[0].cached and server.requests == 2


def test_client_extra_body_is_part_of_the_key(server, cache_path):
    req = [LLMRequest(id="a", messages=[{"role": "user", "content": "client-level body"}])]
    one = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path, extra_body={"top_k": 1})
    hundred = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path, extra_body={"top_k": 100})
    assert not one.generate(req)[0].cached
    assert not hundred.generate(req)[0].cached  # old code: served the top_k=1 answer
    assert server.requests == 2


def test_tools_and_response_format_reach_the_server_and_the_key(server, cache_path):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    client = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path)
    a = client.generate([_req("with tools", tools=tools, tool_choice="auto")])[0]
    b = client.generate([_req("with tools")])[0]
    c = client.generate([_req("with tools", response_format={"type": "json_object"})])[0]
    assert a.ok and b.ok and c.ok and not (a.cached or b.cached or c.cached)
    assert server.bodies[0]["tools"] == tools and server.bodies[0]["tool_choice"] == "auto"
    assert "tools" not in server.bodies[1] and server.bodies[2]["response_format"] == {"type": "json_object"}


# --------------------------------------------------------------------------- model identity


def test_external_identity_is_base_url_reported_model_and_revision(cache_path):
    req = [LLMRequest(id="a", messages=[{"role": "user", "content": "who answers?"}])]
    with LoopbackLLMServer(model="model-a") as a, LoopbackLLMServer(model="model-b") as b:
        ca = OpenAIClient(base_url=a.base_url, model="echo", cache=cache_path)
        cb = OpenAIClient(base_url=b.base_url, model="echo", cache=cache_path)
        assert ca.identity == f"openai:echo@{a.base_url}#model-a"
        assert "#model-b" in cb.identity
        assert not ca.generate(req)[0].cached
        assert not cb.generate(req)[0].cached  # old code: one identity `openai:echo` for both servers
        assert a.requests == 1 and b.requests == 1
        # a user-set revision is part of it too
        rev = OpenAIClient(base_url=a.base_url, model="echo", cache=cache_path, revision="2024-11-20")
        assert rev.identity.endswith("@rev=2024-11-20") and not rev.generate(req)[0].cached
        # the same endpoint and model again: served from the cache, no request
        again = OpenAIClient(base_url=a.base_url + "/", model="echo", cache=cache_path)
        assert again.generate(req)[0].cached and a.requests == 2
    # an explicit identity is used verbatim (no request to /models)
    assert OpenAIClient(base_url="http://127.0.0.1:9/v1", model="x", identity="pinned", cache=False).identity == "pinned"


def test_gguf_identity_hashes_the_whole_file_once_and_covers_the_config(tmp_path, monkeypatch):
    import hashlib

    from resources.llm import servers

    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "home"))
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    a.parent.mkdir()
    b.parent.mkdir()
    body = b"GGUF" + bytes(range(256)) * 20_000  # ~5 MB, same size, differ only in the middle
    a.write_bytes(body)
    b.write_bytes(body[:2_500_000] + b"X" + body[2_500_001:])
    ia, ib = gguf_identity(a, n_ctx=2048), gguf_identity(b, n_ctx=2048)
    assert ia != ib  # the old identity (name + size + head/tail) was the same for both
    assert ia.split(":")[3] == hashlib.sha256(body).hexdigest()[:16]
    assert gguf_identity(a, n_ctx=4096) != ia
    assert gguf_identity(a, n_ctx=2048, server_args=["--chat_format", "chatml"]) != ia
    # thread count and port do not change answers: same identity
    args = ["--n_threads", "3", "--port", "1234", "--n_gpu_layers", "0"]
    assert servers._answer_args(args) == ["--n_gpu_layers", "0"]

    # memoized by path + size + mtime, also across processes (the memo file)
    from resources import storage

    storage._HASHES.clear()
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(storage.hashlib, "file_digest", lambda *x, **k: calls.append(1) or real(*x, **k))
    assert file_sha256(a) == hashlib.sha256(body).hexdigest() and calls == []  # read from the memo file
    a.write_bytes(body[::-1])  # new content, new mtime: hashed again
    assert file_sha256(a) == hashlib.sha256(body[::-1]).hexdigest() and calls == [1]
    file_sha256(a)
    assert calls == [1]


def test_managed_llamacpp_identity_is_the_gguf_not_a_shared_name(monkeypatch, tmp_path):
    from resources.llm import servers

    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(servers, "llama_cpp_installed", lambda: True)
    monkeypatch.setattr(servers, "_llama_server_flags", lambda py: frozenset())
    m1, m2 = tmp_path / "one.gguf", tmp_path / "two.gguf"
    m1.write_bytes(b"GGUF1" + b"\0" * 100)
    m2.write_bytes(b"GGUF2" + b"\0" * 100)
    s1, s2 = servers.llamacpp_server(m1, n_ctx=512), servers.llamacpp_server(m2, n_ctx=512)
    assert s1.identity != s2.identity and "local" not in s1.identity
    c1, c2 = OpenAIClient(server=s1, model="local", cache=False), OpenAIClient(server=s2, model="local", cache=False)
    req = _req()
    assert c1.key_for(req) != c2.key_for(req)


# --------------------------------------------------------------------------- truncated replies


def test_length_finish_is_a_truncated_error_not_cached(server, cache_path):
    req = [LLMRequest(id="a", messages=[{"role": "user", "content": "long story #fault=length*"}], params=SamplingParams(max_tokens=4))]
    client = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path, max_retries=3)
    res = client.generate(req)[0]
    assert res.error == "truncated" and "max_tokens=4" in res.error_detail and server.requests == 1  # not retried
    assert len(GenerationCache(cache_path)) == 0
    again = client.generate(req)[0]
    assert again.error == "truncated" and not again.cached and server.requests == 2
    # the option accepts them: a success, cached
    ok = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path, accept_truncated=True)
    res = ok.generate(req)[0]
    assert res.ok and res.finish_reason == "length" and res.text == echo_text("long story #fault=length*")
    assert ok.generate(req)[0].cached


# --------------------------------------------------------------------------- flush cost


class _CountingCache(GenerationCache):
    def __init__(self, path):
        super().__init__(path)
        self.flushes: list[tuple[int, int]] = []  # (results, prompts looked up)

    def put_many(self, results, prompts=None):
        results = list(results)
        self.flushes.append((len(results), len(prompts or {})))
        return super().put_many(results, prompts)


def test_flush_costs_the_rows_flushed_not_all_prompts(server, cache_path):
    server.latency = (0.0, 0.01)  # answers arrive over many loop ticks: many flushes
    cache = _CountingCache(cache_path)
    client = OpenAIClient(base_url=server.base_url, model="echo", cache=cache, max_concurrency=8, transport="aiohttp")
    n = 300
    res = client.generate([LLMRequest(id=f"r{i}", messages=[{"role": "user", "content": f"flush {i}"}]) for i in range(n)])
    assert all(r.ok for r in res) and len(cache) == n
    assert len(cache.flushes) > 5
    # each flush handed over only its own rows' prompts (old code: all 300 every time)
    assert all(p == r for r, p in cache.flushes) and sum(p for _, p in cache.flushes) == n
    assert cache.prompt(res[7].cache_key) == [{"role": "user", "content": "flush 7"}]


# --------------------------------------------------------------------------- timeouts


def test_env_settings_reach_the_resource_and_bound_a_hung_endpoint(server, dataflow_home, monkeypatch):
    from dataflow_assets.definitions import resources_for_env

    server.slow_s = 30.0  # the reply hangs far past any sane timeout
    monkeypatch.setenv("DATAFLOW_LLM_BASE_URL", server.base_url)
    monkeypatch.setenv("DATAFLOW_LLM_MODEL", "echo")
    monkeypatch.setenv("DATAFLOW_LLM_API_KEY", "sk-test-timeouts")
    for var, value in {"DATAFLOW_LLM_TIMEOUT": "0.4", "DATAFLOW_LLM_RETRIES": "50", "DATAFLOW_LLM_CONCURRENCY": "3",
                       "DATAFLOW_LLM_ROW_DEADLINE": "1.5", "DATAFLOW_LLM_ACCEPT_TRUNCATED": "true"}.items():
        monkeypatch.setenv(var, value)
    llm = resources_for_env("openai")["llm"]
    assert (llm.timeout_s, llm.max_retries, llm.max_concurrency, llm.row_deadline_s, llm.accept_truncated) == (0.4, 50, 3, 1.5, True)
    assert resources_for_env("local")["llm"].row_deadline_s == 1.5
    import dagster as dg

    with dg.build_resources({"llm": llm}) as built:  # resolves the EnvVars as a run does
        llm = built.llm
        assert llm.base_url == server.base_url and llm.api_key == "sk-test-timeouts"
        client = llm.client()
        reqs = [LLMRequest(id=f"h{i}", messages=[{"role": "user", "content": f"hung {i} #fault=slow*"}]) for i in range(3)]
        reqs.append(LLMRequest(id="fine", messages=[{"role": "user", "content": "answers at once"}]))
        t0 = time.monotonic()
        res = client.generate(reqs)
        took = time.monotonic() - t0
    by_id = {r.id: r for r in res}
    assert by_id["fine"].ok
    assert all(by_id[f"h{i}"].error == "timeout" for i in range(3)), [r.error_detail for r in res]
    assert "row deadline" in by_id["h0"].error_detail
    # 3 hung rows in parallel, each cut at its 1.5 s deadline (50 retries x 0.4 s would be 20 s+)
    assert took < 10.0, took


def test_malformed_env_setting_is_one_clear_error(monkeypatch):
    from dataflow_assets.definitions import resources_for_env

    monkeypatch.setenv("DATAFLOW_LLM_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"^DATAFLOW_LLM_TIMEOUT='soon': expected a number of seconds$"):
        resources_for_env("local")
    monkeypatch.setenv("DATAFLOW_LLM_TIMEOUT", "0")
    with pytest.raises(ValueError, match="must be > 0"):
        resources_for_env("local")


def test_row_deadline_without_env(server, cache_path):
    server.slow_s = 30.0
    client = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path, timeout_s=5.0, max_retries=5, row_deadline_s=0.8)
    t0 = time.monotonic()
    res = client.generate([_req("stuck #fault=slow*")])[0]
    assert res.error == "timeout" and time.monotonic() - t0 < 2.0


# --------------------------------------------------------------------------- duplicate ids


class _Answer(LLMOperator):
    template = PromptTemplate("answer", "Q: {q}")

    def __init__(self, llm=None):
        from operators.base import OpReport

        self.llm = llm
        self.last_report = OpReport()

    def run(self, frame, cols):  # pragma: no cover - only call_llm is exercised
        return frame


def test_repeated_ids_are_refused_never_misaligned(server, cache_path):
    client = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path)
    ids = [f"id{i % 5}" for i in range(10)]  # 5 ids, each twice, with different prompts
    frame = pl.DataFrame({ID: ids, "q": [f"question {i}" for i in range(10)]})
    op = _Answer(client)
    with pytest.raises(ValueError, match=r"`_id` must be unique.*5 repeated id\(s\): 'id0' x2"):
        op.call_llm(frame, op.template.render)
    assert server.requests == 0  # refused before any call
    # unique ids: every row gets its own answer
    ok = frame.with_columns(pl.format("u{}", pl.int_range(pl.len())).alias(ID))
    out = op.call_llm(ok, op.template.render).join(ok, on=ID)
    assert out.height == 10 and (out["text"] == ("echo: Q: " + out["q"])).all()
    with pytest.raises(ValueError, match="1 null id"):
        op.call_llm(pl.DataFrame({ID: ["a", None], "q": ["x", "y"]}), op.template.render)


def test_results_are_llmresults(server, cache_path):  # the contract the operators rely on
    res = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path).generate([_req("contract")])
    assert isinstance(res[0], LLMResult) and res[0].cache_key
