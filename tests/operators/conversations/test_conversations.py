"""Conversation operators on the real ShareGPT conversations (core_text_data/eval_data.json) and
the real function-calling chat logs, with planted broken role orders; synthesis and the per-turn
judge with a deterministic fake client."""

from __future__ import annotations

import json

import polars as pl

from operators.base import ID, with_row_ids
from operators.conversations.llm import DialogueSynthesizer, TurnQualityJudge
from operators.conversations.rules import (
    ChatTranscriptParser,
    ConversationFlattener,
    ConversationLengthFilter,
    ConversationStats,
    ConversationTruncator,
    ConversationTurnSplitter,
    RepeatedTurnFilter,
    RoleAlternationValidator,
    RoleNormalizer,
    SystemPromptSetter,
    TurnCountFilter,
    TurnScoreFilter,
)
from operators.core.convert import MESSAGES_DTYPE, ChatFormatConverter
from tests.conftest import shared
from tests.operators.core.core_fakes import FakeLLM


def real_conversations() -> pl.DataFrame:
    rows = json.loads(shared("dataflow_examples", "example", "core_text_data", "eval_data.json").read_text())
    frame = pl.DataFrame({"conversations": [r["conversations"] for r in rows]})
    return with_row_ids(ChatFormatConverter("sharegpt", "messages")(frame), "conv")


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def planted() -> pl.DataFrame:
    bad = [
        [],
        msgs(("user", "hi"), ("wizard", "hello")),
        msgs(("user", "hi"), ("assistant", "  ")),
        msgs(("user", "hi"), ("system", "s"), ("assistant", "a")),
        msgs(("assistant", "hello"), ("user", "hi")),
        msgs(("user", "hi"), ("assistant", "hello"), ("user", "bye")),
        msgs(("user", "hi"), ("user", "again"), ("assistant", "hello")),
        msgs(("system", "s"), ("user", "weather?"), ("assistant", "calling"), ("tool", "sunny"), ("assistant", "It is sunny.")),
    ]
    return with_row_ids(pl.DataFrame({"messages": bad}, schema={"messages": MESSAGES_DTYPE}), "bad")


def reasons(op, data, **cols):
    op(data, **cols)
    got = dict(op.last_report.dropped_ids.iter_rows()) if op.last_report.dropped_ids is not None else {}
    return [got.get(i) for i in data.get_column(ID)]


def test_role_alternation_validator_names_each_broken_order():
    assert reasons(RoleAlternationValidator(), real_conversations()) == [None] * 5
    assert reasons(RoleAlternationValidator(), planted()) == [
        "empty_conversation", "unknown_role", "empty_turn", "system_not_first", "starts_with_assistant",
        "ends_with_user", "not_alternating", None,
    ]
    assert reasons(RoleAlternationValidator(allow_tool=False), planted())[-1] == "unknown_role"


def test_turn_count_length_repeats_and_stats_on_real_conversations():
    conv = real_conversations()
    out = TurnCountFilter(min_turns=2)(conv, num_turns="n")
    assert out.get_column("n").to_list() == [2] * out.height
    stats = ConversationStats()(conv)
    assert stats.get_column("num_messages").to_list() == [len(m) for m in conv.get_column("messages").to_list()]
    first = conv.get_column("messages").to_list()[0]
    assert stats.get_column("assistant_words")[0] == sum(len(m["content"].split()) for m in first if m["role"] == "assistant")
    assert reasons(ConversationLengthFilter(max_words=40), conv)[0] == "conversation_too_long"
    loop = with_row_ids(pl.DataFrame({"messages": [msgs(("user", "a"), ("assistant", "Same."), ("user", "b"), ("assistant", "same. "))]},
                                     schema={"messages": MESSAGES_DTYPE}), "loop")
    assert reasons(RepeatedTurnFilter(), pl.concat([conv.select(ID, "messages"), loop])) == [None] * 5 + ["repeated_assistant_turn"]


def test_transcript_parser_on_real_function_calling_logs():
    rows = pl.read_ndjson(shared("dataflow_examples", "example", "FuncCallPipeline", "chat_data.jsonl"))
    out = ChatTranscriptParser()(with_row_ids(rows, "fc"), text="chat", system="system")
    first = out.get_column("messages").to_list()[0]
    assert first[0]["role"] == "system" and first[0]["content"].startswith("You are a helpful assistant")
    assert [m["role"] for m in first[1:]] == ["user", "assistant"]
    assert first[1]["content"] == "Can you book a flight for me from New York to London?"
    assert "<|endoftext|>" not in first[2]["content"] and first[2]["content"].endswith("feel free to ask!")
    valid = RoleAlternationValidator()
    normalized = RoleNormalizer()(out)
    valid(normalized)
    assert valid.last_report.rows_out + sum(valid.last_report.dropped.values()) == rows.height


def test_normalizer_splitter_flattener_system_and_truncation():
    raw = with_row_ids(pl.DataFrame({"messages": [msgs(("Human", " q1 "), ("GPT", "a1"), ("human", "q2"), ("bot", "a2"), ("USER", "q3"))]},
                                    schema={"messages": MESSAGES_DTYPE}), "n")
    norm = RoleNormalizer()(raw)
    assert [m["role"] for m in norm.get_column("messages")[0]] == ["user", "assistant", "user", "assistant", "user"]
    assert norm.get_column("messages")[0][0]["content"] == "q1"
    split = ConversationTurnSplitter()(norm)
    assert split.select("instruction", "output", "turn").rows() == [("q1", "a1", 0), ("q2", "a2", 1)]
    assert [len(h) for h in split.get_column("history").to_list()] == [0, 2]
    assert split.get_column(ID).n_unique() == 2 and split.get_column("parent_id").to_list() == [raw[ID][0]] * 2
    flat = ConversationFlattener()(norm)
    assert flat.get_column("transcript")[0].startswith("User: q1\n\nAssistant: a1")
    cut = ConversationTruncator(max_turns=1)(norm)
    assert cut.get_column("messages")[0].to_list() == msgs(("user", "q1"), ("assistant", "a1"))
    fixed = ConversationTruncator()(norm)
    assert len(fixed.get_column("messages")[0]) == 4
    sys = SystemPromptSetter("Be brief.")(fixed)
    assert sys.get_column("messages")[0][0] == {"role": "system", "content": "Be brief."}
    assert SystemPromptSetter(mode="remove")(sys).get_column("messages")[0].to_list() == fixed.get_column("messages")[0].to_list()


def test_dialogue_synthesis_turn_by_turn_and_failures_leave_a_trailing_user_turn():
    seeds = with_row_ids(pl.DataFrame({"seed": ["the water cycle", "black holes"]}), "seed")
    ids = seeds.get_column(ID).to_list()

    def respond(req):
        last = req.messages[-1]["content"]
        if req.messages[0]["role"] == "system" and "simulate" in req.messages[0]["content"]:
            return f"User question {len(last) % 97}?"
        return f"Answer to: {last}"

    client = FakeLLM(responder=respond)
    op = DialogueSynthesizer(num_turns=2, llm=client)
    out = op(seeds)
    conv = out.get_column("messages").to_list()[0]
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant"]
    assert conv[1]["content"] == f"Answer to: {conv[0]['content']}"
    assert len(client.calls) == 4 and op.last_report.llm["requests"] == 8
    # the assistant's second call saw the whole conversation as chat messages
    second = next(r for r in client.calls[3] if r.id == ids[0])
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "user"]
    failing = FakeLLM(responder=respond, fail={ids[1]: "timeout"})
    out2 = DialogueSynthesizer(num_turns=2, seed_is_question=True, llm=failing)(seeds)
    assert out2.get_column("messages").to_list()[1] == msgs(("user", "black holes"))
    assert out2.get_column("messages_meta").to_list()[1]["error"] == "timeout"
    assert reasons(RoleAlternationValidator(), out2) == [None, "ends_with_user"]


def test_turn_quality_judge_scores_every_reply_in_context_and_filter_uses_the_minimum():
    conv = real_conversations()
    ids = conv.get_column(ID).to_list()

    def judge(req):
        text = req.messages[-1]["content"]
        return {"rationale": "ok", "score": 2 if "Berlin" in text.split("Response:")[-1] else 5}

    client = FakeLLM(responder=judge, fail={f"{ids[4]}-turn1": "server_error"})
    out = TurnQualityJudge(llm=client)(conv)
    assert len(client.calls) == 1 and len(client.requests) == 10
    assert out.get_column("turn_scores").to_list()[1] == [5, 2]  # "Germany's capital is Berlin." scored 2
    assert out.get_column("min_turn_score").to_list()[1] == 2
    assert out.get_column("turn_scores").to_list()[4] == [5, None]
    ctx = next(r for r in client.requests if r.id == f"{ids[0]}-turn1").messages[-1]["content"]
    assert "User: Hi, can you explain what machine learning is?" in ctx and "User: Can you give me a simple example?" in ctx
    assert reasons(TurnScoreFilter(threshold=3), out) == [None, "low_turn_score", None, None, "unscored_turn"]
    assert TurnQualityJudge(llm=client)(conv.clear()).height == 0
