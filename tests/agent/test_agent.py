"""The pipeline agent: retrieval, intent, the deterministic planner, verification, the written file
(loaded by `shipped()` next to the shipped pipelines), the LLM planner driven by a scripted LLM on
loopback (unknown operators, wrong columns, malformed JSON: repaired or a clean failure), the CLI,
and the exported pipeline materialised by Dagster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from dataflow_assets.agent import build_pipeline
from dataflow_assets.agent.catalog import (
    Retriever,
    _NumpyBM25,
    classify_intent,
    default_catalog,
    tokens,
)
from tests.conftest import REPO, shared

ABBREV = ("dataflow_examples", "example", "GeneralTextPipeline", "abbreviation.jsonl")
MQ = ("dataflow_examples", "example", "DataflowAgent", "mq_test_data.jsonl")


@pytest.fixture(scope="module")
def catalog():
    cat, _ = default_catalog()
    return cat


@pytest.fixture(scope="module")
def retriever(catalog):
    return Retriever(catalog, use_embeddings=False)


def _questions_with_duplicates(tmp_path, n: int = 6, dups: int = 3):
    rows = pl.read_ndjson(shared(*MQ)).head(n).select("id", "question")
    frame = pl.concat([rows, rows.head(dups)])
    path = tmp_path / "questions.jsonl"
    frame.write_ndjson(path)
    return path, frame


# --------------------------------------------------------------------------- retrieval + intent


@pytest.mark.parametrize("query,expected", [
    ("remove exact duplicate rows", "exact_dedup_filter"),
    ("translate the text into English", "translator"),
    ("summarize each document", "summarizer"),
    ("drop rows whose SQL has a syntax error", "sql_syntax_filter"),
])
def test_retrieval_puts_the_right_operator_first_with_reasons(retriever, query, expected):
    top = retriever.search(query, {"text": pl.String}, k=5)
    assert expected in [c.card.name for c in top[:3]], [c.line() for c in top]
    assert all(c.reasons for c in top)


def test_numpy_bm25_fallback_ranks_like_bm25s(catalog, retriever):
    from dataflow_assets.agent.catalog import card_text

    docs = [tokens(card_text(c)) for c in retriever.cards]
    fallback = _NumpyBM25(docs)
    for q in ("remove exact duplicate rows", "translate the text into English", "extract named entities"):
        a = retriever.cards[int(fallback.scores(tokens(q)).argmax())].name
        b = retriever.cards[int(retriever.bm25.scores(tokens(q)).argmax())].name
        assert a == b


def test_intent_from_request_and_columns():
    assert classify_intent("add a verified chain-of-thought answer to these math problems").domain == "reasoning"
    assert classify_intent("keep only SQL queries that run on the database").domain == "text2sql"
    assert classify_intent("drop duplicates", {"messages": pl.List(pl.String)}).domain in ("conversations", "text")
    assert "filter" in classify_intent("drop duplicates").goals


def test_plan_schema_admits_only_registered_operators_and_real_parameters(catalog):
    import jsonschema

    from dataflow_assets.agent.plan import plan_schema

    schema = plan_schema({k: catalog[k] for k in ("exact_dedup_filter", "language_filter")})
    ok = {"name": "x", "steps": [{"operator": "language_filter", "params": {"keep": ["en"], "min_confidence": 0.5}, "columns": {"text": "body"}}]}
    jsonschema.validate(ok, schema)
    for bad in (
        {"name": "x", "steps": [{"operator": "magic_cleaner", "columns": {}}]},
        {"name": "x", "steps": [{"operator": "language_filter", "params": {"no_such_param": 1}, "columns": {}}]},
        {"name": "x", "steps": [{"operator": "language_filter", "columns": {"no_such_role": "text"}}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# --------------------------------------------------------------------------- deterministic path


def test_deterministic_agent_writes_a_verified_pipeline_that_definitions_load(dataflow_home, tmp_path):
    path, frame = _questions_with_duplicates(tmp_path)
    lines: list[str] = []
    res = build_pipeline("normalise unicode, then drop duplicate questions", path, rows=20, echo=lines.append)
    assert res.ok and res.planner == "deterministic" and len(res.rounds) == 1
    assert [s.operator for s in res.plan.steps] == ["unicode_normalizer", "exact_dedup_filter"]
    assert res.output.height == frame.height - 3  # the three repeated questions are gone
    assert res.path == dataflow_home / "pipelines" / f"{res.plan.name}.py"
    src = res.path.read_text()
    assert "text='question'" in src and "class " in src and "def forward" in src
    assert any(line.startswith("wrote ") for line in lines) and any("check() passed" in line for line in lines)

    from dataflow_assets.pipelines import shipped

    specs = shipped()
    assert res.plan.name in specs and "text_pt" in specs  # next to the shipped pipelines
    stages = specs[res.plan.name].pipeline.check({"id": pl.Int64, "question": pl.String})
    assert [s.name for s in stages] == ["unicode_normalizer", "exact_dedup_filter"]


def test_deterministic_planner_repairs_by_dropping_the_failing_step(dataflow_home, tmp_path, catalog):
    """A filter that keeps nothing: the run reports 'empty output', the planner drops that step, round 2 passes."""
    path, _ = _questions_with_duplicates(tmp_path)
    res = build_pipeline("drop duplicate questions, keep only French text", path, rows=20, echo=None)
    assert res.ok
    assert res.rounds[0].stage == "run" and "empty output" in res.rounds[0].error
    assert [s.operator for s in res.plan.steps] == ["exact_dedup_filter"]


def test_clean_failure_when_nothing_fits_writes_nothing(dataflow_home, tmp_path):
    path = tmp_path / "numbers.jsonl"
    pl.DataFrame({"n": [1, 2, 3]}).write_ndjson(path)
    res = build_pipeline("translate every sentence into German", path, echo=None)
    assert not res.ok and res.path is None and res.error.startswith("no pipeline passed verification")
    assert not (dataflow_home / "pipelines").exists() or not list((dataflow_home / "pipelines").iterdir())


def test_name_clash_with_a_shipped_pipeline_gets_a_new_name(dataflow_home, tmp_path):
    path, _ = _questions_with_duplicates(tmp_path)
    res = build_pipeline("drop duplicates", path, echo=None)
    first = res.plan.name
    res2 = build_pipeline("drop duplicates", path, echo=None)
    assert res2.ok and res2.plan.name == f"{first}_2" and f"name = '{first}_2'" in res2.path.read_text()


def test_a_broken_user_pipeline_is_skipped_with_a_warning(dataflow_home):
    folder = dataflow_home / "pipelines"
    folder.mkdir()
    (folder / "broken.py").write_text("raise RuntimeError('oops')\n")
    from dataflow_assets.pipelines import shipped

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        specs = shipped()
    assert "text_pt" in specs and any("broken.py" in str(w.message) and "oops" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- LLM path (scripted, loopback)


def _step(op, **columns):
    return {"operator": op, "params": {}, "columns": columns}


def test_llm_plan_with_unknown_operator_is_repaired(dataflow_home, tmp_path, scripted):
    path, frame = _questions_with_duplicates(tmp_path)
    srv, llm = scripted(
        {"name": "dedup_questions", "steps": [_step("magic_cleaner", text="question")]},
        {"name": "dedup_questions", "steps": [_step("exact_dedup_filter", text="question")]},
    )
    res = build_pipeline("drop duplicate questions", path, rows=20, llm=llm, planner="llm", echo=None)
    assert res.ok and res.planner == "llm" and len(res.rounds) == 2
    assert res.rounds[0].stage == "plan" and "magic_cleaner" in res.rounds[0].error
    assert res.output.height == frame.height - 3
    # the error went back to the model verbatim, and the schema admitted only registered operators
    assert res.rounds[0].error in srv.plan_requests[1]["messages"][-1]["content"]
    schema = srv.plan_requests[0]["response_format"]["json_schema"]["schema"]
    names = {v["properties"]["operator"]["const"] for v in schema["properties"]["steps"]["items"]["anyOf"]}
    assert "synthesize" in names  # synthesis is on: the one non-registered choice, a request for a new operator
    assert names - {"synthesize"} <= set(default_catalog()[0]) and "exact_dedup_filter" in names
    assert res.tokens > 0


def test_llm_plan_with_wrong_column_is_repaired(dataflow_home, tmp_path, scripted):
    path, _ = _questions_with_duplicates(tmp_path)
    srv, llm = scripted(
        {"name": "dedup_questions", "steps": [_step("exact_dedup_filter", text="body")]},
        {"name": "dedup_questions", "steps": [_step("exact_dedup_filter", text="question")]},
    )
    res = build_pipeline("drop duplicate questions", path, rows=20, llm=llm, planner="llm", echo=None)
    assert res.ok and len(res.rounds) == 2
    err = res.rounds[0].error
    assert res.rounds[0].stage == "check" and "'body'" in err and "does not exist" in err
    assert err in srv.plan_requests[1]["messages"][-1]["content"]


def test_llm_malformed_json_is_repaired(dataflow_home, tmp_path, scripted):
    path, _ = _questions_with_duplicates(tmp_path)
    _srv, llm = scripted('{"name": "x", "steps": [', {"name": "dedup", "steps": [_step("exact_dedup_filter", text="question")]})
    res = build_pipeline("drop duplicate questions", path, rows=20, llm=llm, planner="llm", echo=None)
    assert res.ok and res.planner == "llm" and len(res.rounds) == 2
    assert "not valid JSON" in res.rounds[0].error


def test_llm_stage_in_plan_runs_on_the_sample(dataflow_home, tmp_path, scripted):
    path, _ = _questions_with_duplicates(tmp_path)
    _srv, llm = scripted({"name": "sum", "steps": [_step("summarizer", text="question", output="summary")]})
    res = build_pipeline("summarise the questions", path, rows=4, llm=llm, planner="llm", echo=None)
    assert res.ok and res.output["summary"].to_list()[0].startswith("echo:")


def test_llm_that_keeps_failing_ends_in_a_clean_failure(dataflow_home, tmp_path, scripted):
    path = tmp_path / "numbers.jsonl"
    pl.DataFrame({"n": [1, 2, 3]}).write_ndjson(path)
    bad = {"name": "x", "steps": [_step("exact_dedup_filter", text="text")]}
    _srv, llm = scripted(bad, "not json", {"name": "x", "steps": [_step("nope")]})
    res = build_pipeline("drop duplicate texts", path, llm=llm, planner="llm", echo=None)
    assert not res.ok and res.path is None
    assert [r.planner for r in res.rounds][:3] == ["llm"] * 3 and res.rounds[-1].planner == "deterministic"
    assert "last error" in res.error
    assert not (dataflow_home / "pipelines").exists() or not list((dataflow_home / "pipelines").iterdir())


# --------------------------------------------------------------------------- Dagster + CLI


def test_exported_pipeline_materialises_in_dagster(dataflow_home, tmp_path):
    from dataflow_assets.factory import split_catalog
    from dataflow_assets.pipelines import shipped
    from dataflow_assets.runner import QUIET, instance, register_shards
    from resources.storage import ParquetStore

    path, frame = _questions_with_duplicates(tmp_path)
    res = build_pipeline("drop duplicate questions", path, rows=20, echo=None)
    assert res.ok
    spec = shipped()[res.plan.name]
    shard = register_shards(spec, [path])[0]
    stages, _catalog = split_catalog(spec.assets)
    result = dg.materialize(stages, partition_key=shard.key, instance=instance(),
                            resources={"store": ParquetStore()}, run_config=QUIET, raise_on_error=False)
    assert result.success
    out = ParquetStore().read(spec.name, "exact_dedup_filter", shard.key)
    assert out.height == frame.height - 3 and out["question"].n_unique() == out.height


def _cli(args, home, **env):
    return subprocess.run([sys.executable, "-m", "dataflow_assets.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "DATAFLOW_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), **env})


def test_cli_agent_writes_the_pipeline_and_reports(dataflow_home):
    src = shared(*ABBREV)
    proc = _cli(["agent", "clean the text and drop duplicates", "--input", str(src), "--llm", "none", "--json"], dataflow_home)
    assert proc.returncode == 0, proc.stderr
    assert "round 1" in proc.stdout and "sample output" in proc.stdout and "written to" in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["operators"] >= 2 and os.path.exists(summary["path"])
    bad = _cli(["agent", "clean", "--input", str(dataflow_home / "missing.jsonl")], dataflow_home)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    empty = dataflow_home / "empty.jsonl"
    empty.write_text("")
    bad = _cli(["agent", "clean", "--input", str(empty)], dataflow_home)
    assert bad.returncode == 2 and "no readable rows" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_embedded_model_end_to_end(dataflow_home, tmp_path):
    """The embedded SmolLM2 model runs the LLM stage of a deterministic plan on real rows."""
    pytest.importorskip("llama_cpp")
    from dataflow_assets.agent.cli import make_llm

    src = shared(*ABBREV)
    llm = make_llm("embedded")
    try:
        res = build_pipeline("summarize the text", src, rows=2, llm=llm, echo=None)
    finally:
        llm.close()
    assert res.ok and res.planner == "deterministic"
    assert [s.operator for s in res.plan.steps] == ["summarizer"]
    assert res.output["summary"].str.len_chars().min() > 0


@pytest.mark.parametrize("rel,request_text,expected", [
    (("spider_dev", "dev.json"), "keep only SQL queries that parse and drop duplicate questions",
     [("sql_syntax_filter", {"sql": "query"}), ("exact_dedup_filter", {"text": "question"})]),  # `sql` holds JSON, not SQL
    (("dataflow_examples", "example", "FuncCallPipeline", "chat_data.jsonl"), "parse the chat transcripts into messages, drop conversations with repeated turns",
     [("chat_transcript_parser", {"text": "chat"}), ("repeated_turn_filter", {"messages": "messages"})]),  # reads what step 1 writes
    (("dataflow_examples", "example", "GeneralTextPipeline", "abbreviation.jsonl"), "translate every sentence into German",
     [("translator", {"text": "raw_content"})]),
])
def test_deterministic_bindings_on_real_inputs(catalog, retriever, rel, request_text, expected):
    from dataflow_assets.agent.core import read_sample
    from dataflow_assets.agent.planners import DeterministicPlanner

    sample = read_sample(shared(*rel), 3)
    schema = {c: t for c, t in sample.schema.items() if c != "_id"}
    plan = DeterministicPlanner(catalog, retriever).propose(request_text, schema, sample, classify_intent(request_text, schema), [])
    assert [(s.operator, s.columns) for s in plan.steps] == expected
    if plan.steps[0].operator == "translator":
        assert plan.steps[0].params == {"target_language": "German"}


def test_definitions_include_the_agents_pipeline_and_its_jobs(dataflow_home, tmp_path):
    path, _ = _questions_with_duplicates(tmp_path)
    res = build_pipeline("drop duplicate questions", path, rows=20, echo=None)
    from dataflow_assets.definitions import build_definitions

    defs = build_definitions()
    job = defs.resolve_job_def(f"{res.plan.name}_stages")
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert f"{res.plan.name}/exact_dedup_filter" in keys and job.name == f"{res.plan.name}_stages"


def test_an_llm_stage_whose_every_call_fails_fails_verification(dataflow_home, tmp_path, scripted):
    """Every summary request errors (the loopback server answers 400): the round fails naming the stage and
    the error kinds, and no pipeline is written."""
    path = tmp_path / "q.jsonl"
    pl.DataFrame({"question": ["what is 1+1? #fault=400*", "what is 2+2? #fault=400*"]}).write_ndjson(path)
    _srv, llm = scripted({"name": "sum", "steps": [_step("summarizer", text="question")]})
    res = build_pipeline("summarise the questions", path, llm=llm, planner="llm", echo=None, max_rounds=1)
    assert not res.ok and res.rounds[0].stage == "run"
    assert "stage 'summarizer': all 2 LLM requests failed" in res.rounds[0].error and "client_error" in res.rounds[0].error
    assert res.path is None


@pytest.mark.slow
def test_cli_agent_with_the_embedded_model_by_default(dataflow_home):
    """No endpoint configured: `dataflow agent` uses the embedded model for the LLM stage and plans deterministically."""
    pytest.importorskip("llama_cpp")
    src = shared(*ABBREV)
    env = {k: "" for k in ("DATAFLOW_LLM_BASE_URL",)}
    proc = _cli(["agent", "summarize the text", "--input", str(src), "--rows", "2", "--json"], dataflow_home, **env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["planner"] == "deterministic" and summary["operators"] == 1
    assert "summarizer" in Path(summary["path"]).read_text()
