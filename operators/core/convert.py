"""One rule-based, table-driven chat-format converter between Alpaca columns, ShareGPT
`conversations` and OpenAI `messages` (no LLM, vectorised with Polars list/struct expressions).

Formats (the table `FORMATS`)
- `alpaca`: `instruction`, optional `input`, `output` (and optional `system`) string columns.
- `sharegpt`: a `List[Struct{from, value}]` column; `from` is `system` / `human` / `gpt`
  (also `observation` for tool results).
- `messages` (OpenAI): a `List[Struct{role, content}]` column; `role` is `system` / `user` /
  `assistant` / `tool`.

Every conversion goes through one canonical turn list (OpenAI roles): the source format's table
entry says how to read it into that form, the target's how to write it out, so adding a format is
one table row, not a new operator per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from operators.base import Generator, register

SHAREGPT_TURN = pl.Struct({"from": pl.String, "value": pl.String})
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
SHAREGPT_DTYPE = pl.List(SHAREGPT_TURN)
MESSAGES_DTYPE = pl.List(MESSAGE)

TO_OPENAI = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool", "function_call": "assistant"}
TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


@dataclass(frozen=True)
class ChatFormat:
    """One row of the format table: a list-of-turns column (`role_key`/`text_key` struct fields,
    `to_canonical`/`from_canonical` role maps) or, for Alpaca, `None` keys (single exchange in columns)."""

    name: str
    column_role: str | None  # the operator role holding the turn list (None: Alpaca columns)
    role_key: str | None = None
    text_key: str | None = None
    to_canonical: dict[str, str] | None = None
    from_canonical: dict[str, str] | None = None

    @property
    def dtype(self) -> pl.DataType:
        return pl.List(pl.Struct({self.role_key: pl.String, self.text_key: pl.String}))


FORMATS: dict[str, ChatFormat] = {
    "alpaca": ChatFormat("alpaca", None),
    "sharegpt": ChatFormat("sharegpt", "conversations", "from", "value", TO_OPENAI, TO_SHAREGPT),
    "messages": ChatFormat("messages", "messages", "role", "content", {}, {}),
}
ALPACA_ROLES = ("instruction", "input", "output", "system")


def _prompt(instruction: pl.Expr, inp: pl.Expr | None) -> pl.Expr:
    """Alpaca prompt: the instruction, followed by the input after a blank line when present."""
    if inp is None:
        return instruction
    has = inp.is_not_null() & (inp.str.strip_chars() != "")
    return pl.when(has).then(pl.concat_str(instruction, pl.lit("\n\n"), inp)).otherwise(instruction)


def _canonical_from_alpaca(cols: dict[str, str | None]) -> pl.Expr:
    """Alpaca columns -> List[Struct{role, content}], leaving out turns whose text is null."""
    parts: list[tuple[str, pl.Expr]] = []
    if cols.get("system"):
        parts.append(("system", pl.col(cols["system"])))
    inp = pl.col(cols["input"]) if cols.get("input") else None
    parts.append(("user", _prompt(pl.col(cols["instruction"]), inp)))
    parts.append(("assistant", pl.col(cols["output"])))
    structs = [pl.struct(pl.lit(r).alias("role"), t.cast(pl.String).alias("content")) for r, t in parts]
    return pl.concat_list(structs).list.eval(pl.element().filter(pl.element().struct.field("content").is_not_null()))


def _remap(turns: pl.Expr, src: tuple[str, str], dst: tuple[str, str], mapping: dict[str, str]) -> pl.Expr:
    (sk, sv), (dk, dv) = src, dst
    role = pl.element().struct.field(sk)
    return turns.list.eval(pl.struct((role.replace(mapping) if mapping else role).alias(dk), pl.element().struct.field(sv).alias(dv)))


def _first(turns: pl.Expr, role: str) -> pl.Expr:
    """The content of the first canonical turn with the given role (null when there is none)."""
    return turns.list.eval(pl.element().filter(pl.element().struct.field("role") == role).struct.field("content")).list.first().cast(pl.String)


@register(name="chat_format_converter")
class ChatFormatConverter(Generator):
    """Converts chat data between the `alpaca`, `sharegpt` and `messages` (OpenAI) formats with one
    table-driven rule (no LLM, vectorised).

    Reads, by `source` format: `alpaca` -> `instruction` (default `instruction`), `output`
    (default `output`), optional `input` and `system` (default none); `sharegpt` ->
    `conversations` (List[Struct{from, value}]); `messages` -> `messages`
    (List[Struct{role, content}]). Writes, by `target` format, the same roles: a turn list, or
    for `alpaca` the first user turn as `instruction`, the first assistant turn as `output` and,
    when the `system` role is bound, the first system turn (later turns are not kept: Alpaca holds
    one exchange). Alpaca's prompt is the instruction plus a blank line plus the input when the
    input is non-empty; null texts are left out of turn lists. Roles map human<->user,
    gpt<->assistant, observation<->tool, function_call->assistant; unknown roles are kept as they
    are. Use it to feed SFT data to a trainer that expects another chat format, or to normalise a
    mixed corpus to one format before the conversation validators.
    """

    reads = {"instruction": "instruction", "input": None, "output": "output", "system": None, "conversations": "conversations", "messages": "messages"}
    writes = {}

    def __init__(self, source: str = "alpaca", target: str = "messages"):
        for what, fmt in (("source", source), ("target", target)):
            if fmt not in FORMATS:
                raise ValueError(f"{what} format must be one of {sorted(FORMATS)}, got {fmt!r}")
        if source == target:
            raise ValueError("source and target formats are the same")
        self.source, self.target = source, target

    def _roles(self, fmt: str) -> list[str]:
        spec = FORMATS[fmt]
        return [spec.column_role] if spec.column_role else list(ALPACA_ROLES)

    def input_columns(self, cols):
        return [(r, cols[r]) for r in self._roles(self.source) if cols.get(r)]

    def output_columns(self, cols):
        if FORMATS[self.target].column_role:
            return [cols[FORMATS[self.target].column_role]]
        return [cols[r] for r in ("instruction", "output", "system") if cols.get(r)]

    def run(self, frame, cols):
        src, dst = FORMATS[self.source], FORMATS[self.target]
        if src.column_role is None:
            turns = _canonical_from_alpaca(cols)
        else:
            turns = _remap(pl.col(cols[src.column_role]), (src.role_key, src.text_key), ("role", "content"), src.to_canonical)
        if dst.column_role is None:
            exprs = [_first(turns, "user").alias(cols["instruction"]), _first(turns, "assistant").alias(cols["output"])]
            if cols.get("system"):
                exprs.append(_first(turns, "system").alias(cols["system"]))
            return frame.with_columns(exprs)
        out = _remap(turns, ("role", "content"), (dst.role_key, dst.text_key), dst.from_canonical)
        return frame.with_columns(out.cast(dst.dtype).alias(cols[dst.column_role]))
