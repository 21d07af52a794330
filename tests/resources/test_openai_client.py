"""OpenAIClient against a real loopback HTTP server: alignment, faults, retries, cache, schema."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.llm_server import echo_text
from operators.llm import ERROR_KINDS, LLMClient, LLMRequest, SamplingParams
from resources.llm import OpenAIClient

TRANSPORTS = ["openai", "aiohttp"]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}}, "required": ["answer", "n"]}


def client(server, cache_path, **kw):
    opts = dict(base_url=server.base_url, model="echo", cache=cache_path, timeout_s=1.0, max_retries=3, backoff_s=0.01, backoff_max_s=0.05)
    opts.update(kw)
    return OpenAIClient(**opts)


def rows(n, tag, fault=None):
    return [
        LLMRequest(id=f"{tag}-{i}", messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": f"{tag} row {i}" + (f" #fault={fault(i)}" if fault and fault(i) else "")}])
        for i in range(n)
    ]


def prompt_of(req):
    return req.messages[-1]["content"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_row_answered_by_its_own_prompt_out_of_order(server, cache_path, transport):
    server.latency = (0.0, 0.03)  # replies come back out of order
    c = client(server, cache_path, transport=transport, max_concurrency=32)
    assert isinstance(c, LLMClient)
    reqs = rows(150, f"align-{transport}")
    res = c.generate(reqs)
    assert len(res) == len(reqs)
    assert {r.id for r in res} == {q.id for q in reqs}
    by_id = {r.id: r for r in res}
    for q in reqs:
        r = by_id[q.id]
        assert r.ok and r.text == echo_text(prompt_of(q)) and r.model == "openai:echo" and not r.cached
    assert server.requests == 150
    # a second run makes zero requests and returns the same answers
    server.reset_counters()
    again = client(server, cache_path, transport=transport).generate(list(reversed(reqs)))
    assert server.requests == 0
    assert all(r.cached for r in again)
    assert {r.id: r.text for r in again} == {r.id: r.text for r in res}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_faults_are_retried_or_recorded(server, cache_path, transport):
    tag = f"faults-{transport}"
    plan = {
        0: None, 1: "429", 2: "500,503", 3: "slow", 4: "reset", 5: "truncated", 6: "malformed", 7: "empty",
        8: "500*", 9: "400", 10: "429*", 11: "slow*",
    }
    reqs = rows(len(plan), tag, fault=plan.get)
    c = client(server, cache_path, transport=transport, timeout_s=0.5, max_retries=2)
    t0 = time.perf_counter()
    res = c.generate(reqs)
    assert time.perf_counter() - t0 < 10
    by_id = {r.id: r for r in res}
    assert len(by_id) == len(reqs)
    for i in range(8):  # transient faults: retried, then answered with the row's own content
        r = by_id[f"{tag}-{i}"]
        assert r.ok, (i, r.error, r.error_detail)
        assert r.text == echo_text(prompt_of(reqs[i]))
    expect = {8: "server_error", 9: "client_error", 10: "rate_limited", 11: "timeout"}
    for i, kind in expect.items():
        r = by_id[f"{tag}-{i}"]
        assert r.error == kind and r.error in ERROR_KINDS and r.text is None and r.error_detail
    # retries bounded: persistent faults got 1 + max_retries attempts, a 400 is never retried
    first = {prompt_of(q): q for q in reqs}
    for i, n in {8: 3, 9: 1, 10: 3, 11: 3}.items():
        assert server.attempts[prompt_of(reqs[i])] == n, (i, server.attempts[prompt_of(reqs[i])])
    stats = c.stats()
    assert stats["errors"] == {"server_error": 1, "client_error": 1, "rate_limited": 1, "timeout": 1}
    assert stats["retries"] == sum(server.attempts[p] - 1 for p in first)
    # a re-run retries only the failed rows (errors are never cached)
    server.reset_counters()
    res2 = client(server, cache_path, transport=transport, timeout_s=0.5, max_retries=0).generate(reqs)
    assert server.requests == 4
    assert sum(r.cached for r in res2) == 8


def test_retry_after_is_honoured(server, cache_path):
    server.retry_after = 0.4
    reqs = rows(1, "retry-after", fault=lambda i: "429")
    res = client(server, cache_path, backoff_s=0.001).generate(reqs)
    assert res[0].ok and res[0].latency_s >= 0.4
    assert server.faults["429"] == 1


def test_retry_budget_caps_total_retries(server, cache_path):
    reqs = rows(20, "budget", fault=lambda i: "503*")
    c = client(server, cache_path, max_retries=5, retry_budget=7)
    res = c.generate(reqs)
    assert all(r.error == "server_error" for r in res)
    assert server.requests == 20 + 7
    assert c.stats()["retries"] == 7


def test_identical_prompts_sent_once_and_fanned_out(server, cache_path):
    msgs = [{"role": "user", "content": "dedup me"}]
    reqs = [LLMRequest(id=f"d{i}", messages=msgs) for i in range(5)] + [LLMRequest(id="d-s1", messages=msgs, sample=1)]
    res = client(server, cache_path).generate(reqs)
    assert [r.id for r in res] == [q.id for q in reqs]
    assert [r.sample for r in res] == [0, 0, 0, 0, 0, 1]
    assert all(r.ok and r.text == "echo: dedup me" for r in res)
    assert server.requests == 2  # one per distinct (prompt, sample)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_structured_output_validation_and_repair(server, cache_path, transport):
    tag = f"schema-{transport}"
    reqs = [
        LLMRequest(id="good", messages=[{"role": "user", "content": f"{tag} good"}], schema=SCHEMA),
        LLMRequest(id="repaired", messages=[{"role": "user", "content": f"{tag} once #fault=badschema"}], schema=SCHEMA),
        LLMRequest(id="bad", messages=[{"role": "user", "content": f"{tag} always #fault=badschema*"}], schema=SCHEMA),
    ]
    c = client(server, cache_path, transport=transport)
    res = {r.id: r for r in c.generate(reqs)}
    assert res["good"].parsed == {"answer": f"echo: {tag} good", "n": len(f"echo: {tag} good")}
    assert res["repaired"].ok and res["repaired"].parsed["answer"] == f"echo: {tag} once #fault=badschema"
    assert res["bad"].error == "schema" and res["bad"].parsed is None and "answer" in res["bad"].error_detail
    assert server.requests == 1 + 2 + 2  # one repair turn each, no more
    rf = server.bodies[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == SCHEMA
    assert c.stats()["repairs"] == 2
    # the repair turn carried the bad reply and the schema
    repair = [b for b in server.bodies if len(b["messages"]) == 3][0]["messages"]
    assert repair[1]["role"] == "assistant" and "schema" in repair[2]["content"]


def test_schema_modes(server, cache_path):
    req = [LLMRequest(id="m", messages=[{"role": "user", "content": "modes"}], schema=SCHEMA)]
    client(server, cache_path, schema_mode="json_object", cache=False).generate(req)
    assert server.bodies[-1]["response_format"] == {"type": "json_object", "schema": SCHEMA}
    res = client(server, cache_path, schema_mode="prompt", cache=False).generate(req)
    assert "response_format" not in server.bodies[-1]
    assert server.bodies[-1]["messages"][0]["role"] == "system" and "JSON schema" in server.bodies[-1]["messages"][0]["content"]
    assert res[0].text == "echo: modes"  # the loopback server ignores prompt-only instructions
    assert res[0].error == "schema"


def test_sampling_params_and_samples_reach_the_server(server, cache_path):
    p = SamplingParams(temperature=0.5, max_tokens=7, top_p=0.9, seed=11, stop=("\n",))
    client(server, cache_path).generate([LLMRequest(id="p", messages=[{"role": "user", "content": "params"}], params=p, sample=2)])
    b = server.bodies[-1]
    assert (b["temperature"], b["max_tokens"], b["top_p"], b["seed"], b["stop"], b["model"]) == (0.5, 7, 0.9, 13, ["\n"], "echo")


def test_generate_inside_a_running_event_loop(server, cache_path):
    c = client(server, cache_path)

    async def main():
        return c.generate(rows(3, "in-loop"))  # sync call from async code: runs on a private thread

    res = asyncio.run(main())
    assert [r.ok for r in res] == [True] * 3


def test_generate_from_worker_threads(server, cache_path):
    import threading

    c = client(server, cache_path)
    out = {}

    def work(k):
        out[k] = c.generate(rows(4, f"thread-{k}"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r.ok and r.text == echo_text(f"thread-{k} row {r.id.rsplit('-', 1)[1]}") for k in range(3) for r in out[k])
    assert server.requests == 12


def test_agenerate_and_empty_batch(server, cache_path):
    c = client(server, cache_path)
    assert c.generate([]) == []
    res = asyncio.run(c.agenerate(rows(2, "async")))
    assert all(r.ok for r in res)
    assert server.requests == 2


def test_connection_refused_is_a_row_error(cache_path):
    c = OpenAIClient(base_url="http://127.0.0.1:9/v1", model="x", cache=cache_path, max_retries=1, backoff_s=0.01, timeout_s=1)
    res = c.generate([LLMRequest(id="a", messages=[{"role": "user", "content": "x"}])])
    assert res[0].error == "connection" and res[0].id == "a"


def test_helpers_retry_after_redaction_json():
    import email.utils

    from resources.llm.openai_backend import Redactor, extract_json, parse_retry_after, status_kind

    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after({"retry-after": when}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
    assert [status_kind(s) for s in (429, 408, 500, 503, 409, 400, 401, 404)] == [
        "rate_limited", "timeout", "server_error", "server_error", "server_error", "client_error", "client_error", "client_error"]
    red = Redactor("my-secret-key")
    assert red("key my-secret-key, Authorization: Bearer abc.def sk-proj-ABCDEFGH1234") == "key ***, Authorization: Bearer *** sk-***"
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": [1, 2]} hope it helps') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        extract_json("no json here")
