"""operators/llm.py end to end against the loopback server, and the Dagster resource lifecycle."""

from __future__ import annotations

import dagster as dg
import polars as pl

from operators.base import ID, with_row_ids
from operators.llm import PromptedGenerator, PromptTemplate, SamplingParams
from resources.llm import LLMResource, OpenAIClient, make_client


class Summarize(PromptedGenerator):
    """Test generator: one prompt per row."""

    def __init__(self, llm=None):
        self.llm = llm

    template = PromptTemplate(name="summarize", user="Summarize: {text}", system="Be brief.")
    params = SamplingParams(max_tokens=32)


def frame():
    texts = ["alpha", "beta #fault=500*", "gamma", "delta", "alpha"]  # a duplicate row, a failing row
    return with_row_ids(pl.DataFrame({"text": texts, "n": list(range(5))}), source="test")


def test_prompted_generator_joins_results_by_id_with_provenance(server, cache_path):
    client = OpenAIClient(base_url=server.base_url, model="echo", cache=cache_path, max_retries=1, backoff_s=0.01)
    server.latency = (0.0, 0.05)
    op = Summarize(llm=client)
    src = frame()
    out = op(src, output="summary")
    assert out.columns == [*src.columns, "summary", "summary_meta"]
    assert out[ID].to_list() == src[ID].to_list()  # order and rows preserved
    for row in out.iter_rows(named=True):
        meta = row["summary_meta"]
        assert meta["model"] == "openai:echo" and meta["template"] == Summarize.template.version and meta["cache_key"]
        if "#fault" in row["text"]:
            assert row["summary"] is None and meta["error"] == "server_error"
        else:
            assert row["summary"] == f"echo: Summarize: {row['text']}" and meta["error"] is None and meta["cached"] is False
    rep = op.last_report.llm
    assert rep["requests"] == 5 and rep["errors"] == {"server_error": 1} and rep["cache_hits"] == 0
    assert server.requests == 3 + 2  # duplicate prompt sent once; the failing row tried twice
    # re-run: the cached rows make no request; only the failed row is retried
    server.reset_counters()
    out2 = Summarize(llm=client)(src, output="summary")
    assert server.requests == 2
    assert out2.filter(pl.col("summary").is_not_null())["summary_meta"].struct.field("cached").all()
    assert out2["summary"].to_list() == out["summary"].to_list()


def test_call_llm_with_samples_and_schema(server, cache_path):
    client = make_client("openai", base_url=server.base_url, model="echo", cache=cache_path, max_retries=0)
    op = Summarize(llm=client)
    from operators.base import OpReport

    op.last_report = OpReport()
    schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    res = op.call_llm(frame().head(2), Summarize.template.render, schema=schema, n=2)
    assert res.height == 4 and sorted(res["sample"].to_list()) == [0, 0, 1, 1]
    ok = res.filter(pl.col("error").is_null())
    assert ok.height == 2 and all('"s": "echo: Summarize: alpha"' in p for p in ok["parsed"])


def test_resource_in_dagster_reports_counters(server, cache_path, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-resource-test-key-123456")
    seen = {}

    @dg.asset
    def generated(llm: LLMResource) -> dg.MaterializeResult:
        client = llm.client()
        assert client is llm.client()  # one client per run
        out = Summarize(llm=client)(frame(), output="summary")
        seen["stats"] = llm.stats()
        seen["resource"] = llm
        return dg.MaterializeResult(metadata={"llm": dg.MetadataValue.json(llm.stats()), "rows": out.height})

    res = LLMResource(backend="openai", base_url=server.base_url, model="echo", api_key=dg.EnvVar("TEST_LLM_KEY"),
                      cache_path=str(cache_path), max_retries=0, price_in_usd_per_mtok=1.0, price_out_usd_per_mtok=2.0)
    result = dg.materialize([generated], resources={"llm": res})
    assert result.success
    st = seen["stats"]
    assert st["requests"] == 5 and st["generations"] == 4 and st["errors"] == {"server_error": 1}
    assert st["tokens_in"] > 0 and st["est_cost_usd"] > 0
    assert seen["resource"]._client is None  # torn down after execution
    mats = result.asset_materializations_for_node("generated")
    assert mats[0].metadata["llm"].data["requests"] == 5


def test_make_client_backends(tmp_path):
    c = make_client("openai", model="gpt-x", api_key="sk-abcdefgh12345", cache=False)
    assert c.model == "openai:gpt-x" and "sk-abc" not in repr(c)
    v = make_client("vllm", base_url="http://127.0.0.1:1/v1", model="org/m", cache=False)
    assert v.model == "vllm:org/m" and v.schema_mode == "json_schema"
    l = make_client("llamacpp", base_url="http://127.0.0.1:1/v1", cache=False)
    assert l.model.startswith("llamacpp:") and l.schema_mode == "json_object"


def test_vllm_in_process_client_is_lazy(cache_path):
    import pytest

    from operators.llm import LLMRequest, LLMResult
    from resources.llm import vllm_installed
    from resources.llm.cache import GenerationCache, cache_key
    from resources.llm.vllm_backend import VLLMClient

    c = make_client("vllm", in_process=True, model="org/tiny", cache=str(cache_path))
    assert isinstance(c, VLLMClient) and c.model == "vllm:org/tiny"
    req = LLMRequest(id="a", messages=[{"role": "user", "content": "hi"}])
    GenerationCache(cache_path).put(LLMResult(id="a", text="cached!", model=c.model, cache_key=cache_key(c.model, req, mode="vllm")))
    assert c.generate([req])[0].text == "cached!"  # a cache hit needs no engine
    if not vllm_installed():
        with pytest.raises(ModuleNotFoundError, match="vllm is not installed"):
            c.generate([LLMRequest(id="b", messages=[{"role": "user", "content": "miss"}])])
