"""Rule-based core operators: chat-format converters and the JSON / length / LLM-error filters."""

from __future__ import annotations

import jsonschema
import polars as pl
import pytest

from operators.base import ID, with_row_ids
from operators.core.convert import FORMATS, MESSAGES_DTYPE, SHAREGPT_DTYPE, ChatFormatConverter
from operators.core.filter import JsonValidityFilter, LLMErrorFilter, ResponseLengthFilter
from operators.llm import META_DTYPE
from tests.operators.core.core_fakes import load_sft_input

# --------------------------------------------------------------------------- converters


def AlpacaToShareGPT():
    return ChatFormatConverter("alpaca", "sharegpt")


def AlpacaToMessages():
    return ChatFormatConverter("alpaca", "messages")


def ShareGPTToMessages():
    return ChatFormatConverter("sharegpt", "messages")


def MessagesToShareGPT():
    return ChatFormatConverter("messages", "sharegpt")


def ShareGPTToAlpaca():
    return ChatFormatConverter("sharegpt", "alpaca")


def MessagesToAlpaca():
    return ChatFormatConverter("messages", "alpaca")


def test_one_table_driven_converter_serves_every_format_pair():
    from operators.base import REGISTRY, load_all

    load_all()
    converters = [n for n, i in REGISTRY.items() if i.domain == "core" and "convert" in i.cls.__module__]
    assert converters == ["chat_format_converter"] and ChatFormatConverter.needs_llm is False
    assert set(FORMATS) == {"alpaca", "sharegpt", "messages"}
    with pytest.raises(ValueError, match="target format"):
        ChatFormatConverter("alpaca", "chatml")
    with pytest.raises(ValueError, match="the same"):
        ChatFormatConverter("messages", "messages")


def test_alpaca_to_sharegpt_and_messages_with_input_and_system():
    frame = pl.DataFrame(
        {
            "instruction": ["Translate", "Greet", "Ask"],
            "input": ["bonjour", "", None],
            "output": ["hello", "hi!", None],
            "sys": [None, "Be kind.", None],
        }
    )
    conv = AlpacaToShareGPT()(frame, input="input", system="sys")
    assert conv.schema["conversations"] == SHAREGPT_DTYPE
    assert conv.get_column("conversations").to_list() == [
        [{"from": "human", "value": "Translate\n\nbonjour"}, {"from": "gpt", "value": "hello"}],
        [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Greet"}, {"from": "gpt", "value": "hi!"}],
        [{"from": "human", "value": "Ask"}],
    ]
    msgs = AlpacaToMessages()(frame, input="input", system="sys", messages="chat")
    assert msgs.schema["chat"] == MESSAGES_DTYPE
    assert msgs.get_column("chat").to_list()[1] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Greet"},
        {"role": "assistant", "content": "hi!"},
    ]
    assert frame.columns == ["instruction", "input", "output", "sys"]  # input untouched


def test_sharegpt_messages_roundtrip_and_role_mapping():
    conv = pl.DataFrame(
        {
            "conversations": [
                [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "Q1"},
                    {"from": "gpt", "value": "A1"},
                    {"from": "observation", "value": "tool out"},
                    {"from": "human", "value": "Q2"},
                    {"from": "gpt", "value": "A2"},
                ],
                [],
            ]
        },
        schema={"conversations": SHAREGPT_DTYPE},
    )
    msgs = ShareGPTToMessages()(conv)
    assert [m["role"] for m in msgs.get_column("messages").to_list()[0]] == ["system", "user", "assistant", "tool", "user", "assistant"]
    assert msgs.get_column("messages").to_list()[1] == []
    back = MessagesToShareGPT()(msgs.drop("conversations"))
    assert back.get_column("conversations").to_list() == conv.get_column("conversations").to_list()

    alp = ShareGPTToAlpaca()(conv, system="system")
    assert alp.select("instruction", "output", "system").rows() == [("Q1", "A1", "S"), (None, None, None)]
    alp2 = MessagesToAlpaca()(msgs, instruction="prompt", output="completion")
    assert alp2.select("prompt", "completion").rows() == [("Q1", "A1"), (None, None)]


def test_converters_roundtrip_real_sft_rows():
    data = load_sft_input()
    msgs = AlpacaToMessages()(data)
    back = MessagesToAlpaca()(msgs.drop("instruction", "output"))
    assert back.select("instruction", "output").equals(data.select("instruction", "output"))
    share = MessagesToShareGPT()(msgs)
    back2 = ShareGPTToAlpaca()(share.drop("instruction", "output", "messages"))
    assert back2.select("instruction", "output").equals(data.select("instruction", "output"))


# --------------------------------------------------------------------------- JSON validity


def test_json_validity_filter_reasons():
    frame = with_row_ids(
        pl.DataFrame({"output": ['{"a": 1}', "```json\n{\"a\": 2}\n```", "[1, 2]", "{oops", None, '{"a": "x"}']}),
        source="json",
    )
    ids = frame.get_column(ID).to_list()
    op = JsonValidityFilter()
    assert op(frame).get_column(ID).to_list() == [ids[0], ids[1], ids[2], ids[5]]
    assert op.last_report.dropped == {"invalid_json": 2}

    strict = JsonValidityFilter(strip_fences=False, require_object=True, schema={"type": "object", "properties": {"a": {"type": "integer"}}})
    out = strict(frame)
    assert out.get_column(ID).to_list() == [ids[0]]
    assert dict(strict.last_report.dropped_ids.iter_rows()) == {
        ids[1]: "invalid_json",
        ids[2]: "not_object",
        ids[3]: "invalid_json",
        ids[4]: "invalid_json",
        ids[5]: "schema_mismatch",
    }


def test_json_validity_filter_rejects_bad_schema():
    with pytest.raises(jsonschema.exceptions.SchemaError):
        JsonValidityFilter(schema={"type": 12})


# --------------------------------------------------------------------------- length


def test_response_length_filter_words_and_chars():
    frame = pl.DataFrame({"resp": ["", "one two", "one two three four five", None, "x" * 20]})
    op = ResponseLengthFilter(min_length=2, max_length=4, unit="words")
    out = op(frame, text="resp", length="n_words")
    assert out.get_column("resp").to_list() == ["one two"]
    assert out.get_column("n_words").to_list() == [2]
    assert op.last_report.dropped == {"too_short": 3, "too_long": 1}

    chars = ResponseLengthFilter(min_length=5, max_length=None, unit="chars")(frame, text="resp")
    assert chars.get_column("resp").to_list() == ["one two", "one two three four five", "x" * 20]
    with pytest.raises(ValueError):
        ResponseLengthFilter(unit="tokens")


def test_response_length_filter_on_real_data():
    data = load_sft_input()
    out = ResponseLengthFilter(min_length=3)(data)
    assert "Paris." not in out.get_column("output").to_list()
    assert out.height == data.height - 1


# --------------------------------------------------------------------------- LLM errors


def test_llm_error_filter_drops_failed_rows():
    meta = lambda err: {"model": "m", "template": "t", "cache_key": "k", "cached": False, "error": err}  # noqa: E731
    frame = with_row_ids(
        pl.DataFrame(
            {"answer": ["a", None, "c", None], "answer_meta": [meta(None), meta("timeout"), meta(None), None]},
            schema_overrides={"answer_meta": META_DTYPE},
        ),
        source="err",
    )
    ids = frame.get_column(ID).to_list()
    op = LLMErrorFilter()
    out = op(frame, meta="answer_meta")
    assert out.get_column("answer").to_list() == ["a", "c"]
    assert dict(op.last_report.dropped_ids.iter_rows()) == {ids[1]: "llm_error:timeout", ids[3]: "llm_error:missing"}
