"""Rule-based chat-format converters between Alpaca columns, ShareGPT `conversations` and OpenAI
`messages` (no LLM, vectorised with Polars list/struct expressions).

Formats
- Alpaca: `instruction`, optional `input`, `output` (and optional `system`) string columns.
- ShareGPT: a `List[Struct{from, value}]` column; `from` is `system` / `human` / `gpt`
  (also `observation` for tool results).
- OpenAI messages: a `List[Struct{role, content}]` column; `role` is `system` / `user` /
  `assistant` / `tool`.
"""

from __future__ import annotations

import polars as pl

from operators.base import Generator, register

SHAREGPT_TURN = pl.Struct({"from": pl.String, "value": pl.String})
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
SHAREGPT_DTYPE = pl.List(SHAREGPT_TURN)
MESSAGES_DTYPE = pl.List(MESSAGE)

TO_OPENAI = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool", "function_call": "assistant"}
TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


def _prompt(instruction: pl.Expr, inp: pl.Expr | None) -> pl.Expr:
    """Alpaca prompt: the instruction, followed by the input after a blank line when present."""
    if inp is None:
        return instruction
    has = inp.is_not_null() & (inp.str.strip_chars() != "")
    return pl.when(has).then(pl.concat_str(instruction, pl.lit("\n\n"), inp)).otherwise(instruction)


def _turns(parts: list[tuple[str, pl.Expr]], key: str, val: str) -> pl.Expr:
    """A list of {key: role, val: text} structs, leaving out turns whose text is null."""
    structs = [pl.struct(pl.lit(role).alias(key), text.cast(pl.String).alias(val)) for role, text in parts]
    return pl.concat_list(structs).list.eval(pl.element().filter(pl.element().struct.field(val).is_not_null()))


def _alpaca_parts(cols, user: str, assistant: str, system: str) -> list[tuple[str, pl.Expr]]:
    parts = []
    if cols.get("system"):
        parts.append((system, pl.col(cols["system"])))
    inp = pl.col(cols["input"]) if cols.get("input") else None
    parts.append((user, _prompt(pl.col(cols["instruction"]), inp)))
    parts.append((assistant, pl.col(cols["output"])))
    return parts


def _first(turns: pl.Expr, key: str, val: str, role: str) -> pl.Expr:
    """The text of the first turn with the given role (null when there is none)."""
    return turns.list.eval(pl.element().filter(pl.element().struct.field(key) == role).struct.field(val)).list.first()


def _remap(turns: pl.Expr, src: tuple[str, str], dst: tuple[str, str], mapping: dict[str, str]) -> pl.Expr:
    (sk, sv), (dk, dv) = src, dst
    return turns.list.eval(
        pl.struct(
            pl.element().struct.field(sk).replace(mapping).alias(dk),
            pl.element().struct.field(sv).alias(dv),
        )
    )


class _Converter(Generator):
    """Rule-based format conversion (not registered)."""

    def __init__(self):
        pass


@register(name="alpaca_to_sharegpt")
class AlpacaToShareGPT(_Converter):
    """Converts Alpaca columns into a ShareGPT `conversations` list (rule-based, vectorised).

    Reads: `instruction` (default `instruction`), optional `input` and `system` (default none),
    `output` (default `output`). Writes: `conversations` (List[Struct{from, value}]): an optional
    `system` turn, a `human` turn (instruction + blank line + input when input is non-empty) and a
    `gpt` turn; null texts are left out. Use it to feed Alpaca-style SFT data to trainers that
    expect ShareGPT.
    """

    reads = {"instruction": "instruction", "input": None, "output": "output", "system": None}
    writes = {"conversations": "conversations"}

    def run(self, frame, cols):
        expr = _turns(_alpaca_parts(cols, "human", "gpt", "system"), "from", "value")
        return frame.with_columns(expr.cast(SHAREGPT_DTYPE).alias(cols["conversations"]))


@register
class AlpacaToMessages(_Converter):
    """Converts Alpaca columns into OpenAI chat `messages` (rule-based, vectorised).

    Reads: `instruction` (default `instruction`), optional `input` and `system` (default none),
    `output` (default `output`). Writes: `messages` (List[Struct{role, content}]): an optional
    `system` message, a `user` message (instruction + blank line + input when input is non-empty)
    and an `assistant` message; null texts are left out. Use it to prepare SFT data for
    OpenAI-format fine-tuning or chat templates.
    """

    reads = {"instruction": "instruction", "input": None, "output": "output", "system": None}
    writes = {"messages": "messages"}

    def run(self, frame, cols):
        expr = _turns(_alpaca_parts(cols, "user", "assistant", "system"), "role", "content")
        return frame.with_columns(expr.cast(MESSAGES_DTYPE).alias(cols["messages"]))


@register(name="sharegpt_to_messages")
class ShareGPTToMessages(_Converter):
    """Converts a ShareGPT `conversations` list into OpenAI `messages` (rule-based, vectorised).

    Reads: `conversations` (List[Struct{from, value}]). Writes: `messages`
    (List[Struct{role, content}]); roles map human->user, gpt->assistant, system->system,
    observation->tool, function_call->assistant; unknown roles are kept as they are.
    Use it to normalise ShareGPT corpora to the OpenAI chat format.
    """

    reads = {"conversations": "conversations"}
    writes = {"messages": "messages"}

    def run(self, frame, cols):
        expr = _remap(pl.col(cols["conversations"]), ("from", "value"), ("role", "content"), TO_OPENAI)
        return frame.with_columns(expr.cast(MESSAGES_DTYPE).alias(cols["messages"]))


@register(name="messages_to_sharegpt")
class MessagesToShareGPT(_Converter):
    """Converts OpenAI `messages` into a ShareGPT `conversations` list (rule-based, vectorised).

    Reads: `messages` (List[Struct{role, content}]). Writes: `conversations`
    (List[Struct{from, value}]); roles map user->human, assistant->gpt, system->system,
    tool->observation; unknown roles are kept as they are.
    Use it for trainers or tools that expect ShareGPT.
    """

    reads = {"messages": "messages"}
    writes = {"conversations": "conversations"}

    def run(self, frame, cols):
        expr = _remap(pl.col(cols["messages"]), ("role", "content"), ("from", "value"), TO_SHAREGPT)
        return frame.with_columns(expr.cast(SHAREGPT_DTYPE).alias(cols["conversations"]))


@register(name="sharegpt_to_alpaca")
class ShareGPTToAlpaca(_Converter):
    """Converts a ShareGPT `conversations` list into Alpaca columns (rule-based, vectorised).

    Reads: `conversations` (List[Struct{from, value}]). Writes: `instruction` (the first `human`
    turn), `output` (the first `gpt` turn) and optional `system` (the first `system` turn; off by
    default). Later turns of multi-turn conversations are not kept: Alpaca holds one exchange.
    Use it to turn chat data into single-turn instruction data.
    """

    reads = {"conversations": "conversations"}
    writes = {"instruction": "instruction", "output": "output", "system": None}

    def run(self, frame, cols):
        conv = pl.col(cols["conversations"])
        exprs = [
            _first(conv, "from", "value", "human").cast(pl.String).alias(cols["instruction"]),
            _first(conv, "from", "value", "gpt").cast(pl.String).alias(cols["output"]),
        ]
        if cols.get("system"):
            exprs.append(_first(conv, "from", "value", "system").cast(pl.String).alias(cols["system"]))
        return frame.with_columns(exprs)


@register
class MessagesToAlpaca(_Converter):
    """Converts OpenAI `messages` into Alpaca columns (rule-based, vectorised).

    Reads: `messages` (List[Struct{role, content}]). Writes: `instruction` (the first `user`
    message), `output` (the first `assistant` message) and optional `system` (the first `system`
    message; off by default). Later turns are not kept: Alpaca holds one exchange.
    Use it to turn OpenAI-format chats into single-turn instruction data.
    """

    reads = {"messages": "messages"}
    writes = {"instruction": "instruction", "output": "output", "system": None}

    def run(self, frame, cols):
        msgs = pl.col(cols["messages"])
        exprs = [
            _first(msgs, "role", "content", "user").cast(pl.String).alias(cols["instruction"]),
            _first(msgs, "role", "content", "assistant").cast(pl.String).alias(cols["output"]),
        ]
        if cols.get("system"):
            exprs.append(_first(msgs, "role", "content", "system").cast(pl.String).alias(cols["system"]))
        return frame.with_columns(exprs)
