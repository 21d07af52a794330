"""Rule-based conversation operators over OpenAI-style `messages` (List[Struct{role, content}]):
role normalisation, transcript parsing, validators (role order, turn count, length, repeated
turns, per-turn scores), statistics, splitting into per-turn SFT rows, flattening to a transcript,
system prompts and truncation. Convert ShareGPT / Alpaca data first with the core
`ChatFormatConverter`."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from operators.base import ID, Evaluator, Filter, Generator, Refiner, register
from operators.core.convert import MESSAGES_DTYPE

ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user", "customer": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "ai": "assistant", "model": "assistant", "chatgpt": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "function response": "tool", "ipython": "tool",
}
# one letter per canonical role: role order is then checked with one regular expression per row
ROLE_LETTER = {"system": "s", "user": "u", "assistant": "a", "tool": "t"}
VALID_ORDER = r"^s?(?:ua(?:t+a)*)+$"


def roles_of(messages: pl.Expr) -> pl.Expr:
    return messages.list.eval(pl.element().struct.field("role"))


def contents_of(messages: pl.Expr) -> pl.Expr:
    return messages.list.eval(pl.element().struct.field("content"))


def role_string(messages: pl.Expr) -> pl.Expr:
    """The conversation's roles as letters ("suaua"); an unknown role is "x"."""
    letters = roles_of(messages).list.eval(pl.element().replace_strict(ROLE_LETTER, default="x", return_dtype=pl.String))
    return letters.list.join("")


def _words(text: pl.Expr) -> pl.Expr:
    return text.fill_null("").str.count_matches(r"\S+")


@register
class RoleNormalizer(Refiner):
    """Maps role names to the canonical user / assistant / system / tool (case-insensitive aliases
    such as Human, gpt, bot, AI, model, function) and trims every turn's content.

    Reads and rewrites: `text` (default `messages`). Unknown roles are kept lower-cased (the
    validators drop them later as `unknown_role`). The report's `modified` counts changed rows.
    Use it first on conversations gathered from several sources.
    """

    reads = {"text": "messages"}

    def __init__(self, aliases: Mapping[str, str] | None = None):
        self.aliases = {**ROLE_ALIASES, **{k.lower(): v for k, v in (aliases or {}).items()}}

    def refine(self, text, cols):
        role = pl.element().struct.field("role").str.to_lowercase().str.strip_chars()
        return text.list.eval(
            pl.struct(role.replace(self.aliases).alias("role"), pl.element().struct.field("content").str.strip_chars().alias("content"))
        ).cast(MESSAGES_DTYPE)


TRANSCRIPT_ROLES = {"USER": "user", "HUMAN": "user", "ASSISTANT": "assistant", "GPT": "assistant", "SYSTEM": "system", "FUNCTION RESPONSE": "tool"}


@register
class ChatTranscriptParser(Generator):
    """Parses a plain-text chat transcript ("USER: ...\\n\\nASSISTANT: ...") into `messages`.

    Reads: `text` (default `chat`), optional `system` (default none; a system prompt column, a
    leading "SYSTEM:" label is removed). Writes: `messages` (List[Struct{role, content}]). Turn
    labels (USER, HUMAN, ASSISTANT, GPT, SYSTEM, FUNCTION RESPONSE; case-sensitive, at a line
    start) open a turn; text before the first label is ignored; end-of-text tokens such as
    `<|endoftext|>` are removed. Use it on chat logs such as the function-calling examples
    (`system` + `chat` columns), then validate with `RoleAlternationValidator`.
    """

    reads = {"text": "chat", "system": None}
    writes = {"messages": "messages"}

    def __init__(self):
        pass

    def run(self, frame, cols):
        labels = "|".join(TRANSCRIPT_ROLES)
        marked = (
            pl.col(cols["text"]).fill_null("").str.replace_all(r"<\|endoftext\|>|<\|im_end\|>", "")
            .str.replace_all(rf"(?m)^[ \t]*({labels}):[ \t]*", "\x1e${1}\x1f")
        )
        parts = marked.str.split("\x1e").list.slice(1).list.eval(
            pl.struct(
                pl.element().str.split_exact("\x1f", 1).struct.field("field_0").replace_strict(TRANSCRIPT_ROLES, default="unknown").alias("role"),
                pl.element().str.split_exact("\x1f", 1).struct.field("field_1").str.strip_chars().alias("content"),
            )
        )
        if cols.get("system"):
            sys_text = pl.col(cols["system"]).str.replace(r"^\s*SYSTEM:\s*", "").str.strip_chars()
            sys_msg = pl.concat_list(pl.struct(pl.lit("system").alias("role"), sys_text.alias("content")))
            parts = pl.when(sys_text.fill_null("") != "").then(pl.concat_list(sys_msg, parts)).otherwise(parts)
        return frame.with_columns(parts.cast(MESSAGES_DTYPE).alias(cols["messages"]))


@register
class RoleAlternationValidator(Filter):
    """Validates role order: an optional leading system message, then user / assistant turns that
    strictly alternate, starting with the user and ending with the assistant (tool results are
    allowed right after an assistant turn, and are followed by an assistant turn).

    Reads: `messages` (default `messages`). Writes nothing. Drop reasons, first that applies:
    `empty_conversation`, `unknown_role`, `empty_turn` (null or blank content), `system_not_first`,
    `starts_with_assistant`, `ends_with_user`, `not_alternating`. Use it on every conversation
    dataset before training: a broken role order makes chat templates fail or teaches the model
    to speak for the user.
    """

    reads = {"messages": "messages"}
    writes = {}

    def __init__(self, allow_tool: bool = True):
        self.allow_tool = allow_tool

    def keep(self, cols):
        m = pl.col(cols["messages"])
        order = role_string(m)
        body = order.str.replace(r"^s", "")
        empty_turn = contents_of(m).list.eval(pl.element().fill_null("").str.strip_chars() == "").list.any()
        valid = VALID_ORDER if self.allow_tool else r"^s?(?:ua)+$"
        return {
            "empty_conversation": m.list.len().fill_null(0) > 0,
            "unknown_role": ~order.str.contains("x" if self.allow_tool else "[xt]"),
            "empty_turn": ~empty_turn,
            "system_not_first": ~body.str.contains("s"),
            "starts_with_assistant": ~body.str.starts_with("a"),
            "ends_with_user": ~body.str.ends_with("u"),
            "not_alternating": order.str.contains(valid),
        }


@register
class TurnCountFilter(Filter):
    """Keeps conversations with between `min_turns` and `max_turns` exchanges (assistant turns).

    Reads: `messages` (default `messages`). Writes optional `num_turns` (UInt32; off by default).
    Drop reasons: `too_few_turns`, `too_many_turns`. Use it to keep only real multi-turn dialogues
    (min_turns=2) or to bound context length in number of exchanges.
    """

    reads = {"messages": "messages"}
    writes = {"num_turns": None}

    def __init__(self, min_turns: int = 1, max_turns: int | None = None):
        if max_turns is not None and max_turns < min_turns:
            raise ValueError("max_turns must be >= min_turns")
        self.min_turns, self.max_turns = min_turns, max_turns

    def turns(self, cols) -> pl.Expr:
        return roles_of(pl.col(cols["messages"])).list.eval((pl.element() == "assistant").cast(pl.UInt32)).list.sum().cast(pl.UInt32)

    def scores(self, cols):
        return [self.turns(cols).alias(cols["num_turns"])] if cols.get("num_turns") else []

    def keep(self, cols):
        n = self.turns(cols)
        keep = {"too_few_turns": n >= self.min_turns}
        if self.max_turns is not None:
            keep["too_many_turns"] = n <= self.max_turns
        return keep


@register
class ConversationLengthFilter(Filter):
    """Bounds a conversation's total length in words (all turns together), e.g. to fit a context
    window.

    Reads: `messages` (default `messages`). Writes optional `total_words` (Int64; off by default).
    Drop reasons: `conversation_too_short`, `conversation_too_long`. Use it after synthesis or
    before packing conversations for training.
    """

    reads = {"messages": "messages"}
    writes = {"total_words": None}

    def __init__(self, min_words: int = 1, max_words: int | None = 8192):
        self.min_words, self.max_words = min_words, max_words

    def total(self, cols) -> pl.Expr:
        return contents_of(pl.col(cols["messages"])).list.eval(_words(pl.element())).list.sum().cast(pl.Int64)

    def scores(self, cols):
        return [self.total(cols).alias(cols["total_words"])] if cols.get("total_words") else []

    def keep(self, cols):
        keep = {"conversation_too_short": self.total(cols) >= self.min_words}
        if self.max_words is not None:
            keep["conversation_too_long"] = self.total(cols) <= self.max_words
        return keep


@register
class RepeatedTurnFilter(Filter):
    """Drops conversations in which the same assistant reply (or the same user message) occurs
    twice, after lower-casing and collapsing whitespace: a looping dialogue.

    Reads: `messages` (default `messages`). Writes nothing. Drop reasons:
    `repeated_assistant_turn`, `repeated_user_turn`. Use it on synthesised dialogues, where a
    weak model repeats itself.
    """

    reads = {"messages": "messages"}
    writes = {}

    def __init__(self, check_user: bool = True):
        self.check_user = check_user

    def _repeats(self, m: pl.Expr, role: str) -> pl.Expr:
        texts = m.list.eval(
            pl.element().filter(pl.element().struct.field("role") == role).struct.field("content")
            .str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
        )
        return texts.list.len() > texts.list.n_unique()

    def keep(self, cols):
        m = pl.col(cols["messages"])
        keep = {"repeated_assistant_turn": ~self._repeats(m, "assistant")}
        if self.check_user:
            keep["repeated_user_turn"] = ~self._repeats(m, "user")
        return keep


@register
class TurnScoreFilter(Filter):
    """Keeps conversations whose every judged turn reaches `threshold` (or whose mean does, with
    `use_mean=True`).

    Reads: `scores` (default `turn_scores`, a List of per-turn scores such as `TurnQualityJudge`
    writes). Writes nothing. Drop reasons: `unscored_turn` (the list is null or empty or holds a
    null: a judge call failed), `low_turn_score`. Use it after `TurnQualityJudge`: one bad reply
    spoils a conversation used for training.
    """

    reads = {"scores": "turn_scores"}
    writes = {}

    def __init__(self, threshold: float = 3, use_mean: bool = False):
        self.threshold, self.use_mean = threshold, use_mean

    def keep(self, cols):
        s = pl.col(cols["scores"])
        complete = (s.list.len().fill_null(0) > 0) & ~s.list.eval(pl.element().is_null()).list.any()
        value = s.list.mean() if self.use_mean else s.list.min()
        return {"unscored_turn": complete, "low_turn_score": value >= self.threshold}


@register
class ConversationStats(Evaluator):
    """Per-conversation statistics: message count, exchanges, words by role.

    Reads: `messages` (default `messages`). Writes: `num_messages` (UInt32), `num_exchanges`
    (UInt32, assistant turns), `user_words`, `assistant_words` (Int64) and `mean_reply_words`
    (Float64). Use it to profile a conversation dataset or to feed length-aware selection.
    """

    reads = {"messages": "messages"}
    writes = {"messages_n": "num_messages", "exchanges": "num_exchanges", "user_words": "user_words",
              "assistant_words": "assistant_words", "mean_reply": "mean_reply_words"}

    def __init__(self):
        pass

    def scores(self, cols):
        m = pl.col(cols["messages"])

        def role_words(role: str) -> pl.Expr:
            return m.list.eval(
                pl.element().filter(pl.element().struct.field("role") == role).struct.field("content").str.count_matches(r"\S+")
            )

        replies = role_words("assistant")
        return [
            m.list.len().cast(pl.UInt32).alias(cols["messages_n"]),
            replies.list.len().cast(pl.UInt32).alias(cols["exchanges"]),
            role_words("user").list.sum().cast(pl.Int64).alias(cols["user_words"]),
            replies.list.sum().cast(pl.Int64).alias(cols["assistant_words"]),
            replies.list.mean().cast(pl.Float64).alias(cols["mean_reply"]),
        ]


@register
class ConversationFlattener(Generator):
    """Renders a conversation as one plain-text transcript ("User: ...\\n\\nAssistant: ...").

    Reads: `messages` (default `messages`). Writes: `transcript` (String). Role labels come from
    `labels` (role -> label; unknown roles are capitalised). Use it to run text operators on whole
    conversations: exact / MinHash dedup, language id, or a judge over the full dialogue.
    """

    reads = {"messages": "messages"}
    writes = {"transcript": "transcript"}

    def __init__(self, labels: Mapping[str, str] | None = None, separator: str = "\n\n"):
        self.labels = dict(labels or {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"})
        self.separator = separator

    def run(self, frame, cols):
        role = pl.element().struct.field("role")
        label = role.replace(self.labels)
        line = pl.concat_str(label, pl.lit(": "), pl.element().struct.field("content").fill_null(""))
        text = pl.col(cols["messages"]).list.eval(line).list.join(self.separator)
        return frame.with_columns(text.alias(cols["transcript"]))


@register
class ConversationTurnSplitter(Generator):
    """Splits each conversation into one SFT row per assistant turn: the user message it answers,
    the reply, and the conversation before that user message as history.

    Reads: `messages` (default `messages`). Writes: `instruction` (the user turn), `output` (the
    assistant reply), `history` (List[Struct{role, content}], earlier messages, system included),
    `turn` (UInt32, 0-based), `parent_id` and a new `_id` per turn (`<parent>-turn<k>`). An
    assistant turn not directly preceded by a user turn is skipped. Use it to train or filter
    multi-turn data with single-turn SFT operators, or to judge turns one by one.
    """

    reads = {"messages": "messages"}
    writes = {"instruction": "instruction", "output": "output", "history": "history", "turn": "turn", "parent": "parent_id"}

    def __init__(self):
        pass

    def run(self, frame, cols):
        m = cols["messages"]
        pos = frame.select(ID, pl.col(m).alias("__m")).with_columns(
            pl.int_ranges(0, pl.col("__m").list.len()).alias("__i")
        ).explode("__i").filter(pl.col("__i").is_not_null())
        pos = pos.with_columns(
            pl.col("__m").list.get(pl.col("__i")).alias("__cur"),
            pl.when(pl.col("__i") > 0).then(pl.col("__m").list.get(pl.col("__i") - 1, null_on_oob=True)).alias("__prev"),
        ).filter(
            (pl.col("__cur").struct.field("role") == "assistant") & (pl.col("__prev").struct.field("role") == "user")
        )
        pos = pos.with_columns(pl.int_range(pl.len()).over(ID).cast(pl.UInt32).alias("__k"))
        turns = pos.select(
            ID,
            pl.col("__prev").struct.field("content").alias(cols["instruction"]),
            pl.col("__cur").struct.field("content").alias(cols["output"]),
            pl.col("__m").list.head(pl.col("__i") - 1).cast(MESSAGES_DTYPE).alias(cols["history"]),
            pl.col("__k").alias(cols["turn"]),
        )
        body = frame.drop([c for c in turns.columns if c != ID and c in frame.columns])
        out = body.join(turns, on=ID, how="inner", maintain_order="left")
        return out.with_columns(pl.col(ID).alias(cols["parent"]), (pl.col(ID) + "-turn" + pl.col(cols["turn"]).cast(pl.String)).alias(ID))


@register
class SystemPromptSetter(Refiner):
    """Adds, replaces or removes the system message of each conversation.

    Reads and rewrites: `text` (default `messages`). `mode`: `add_if_missing` (prepend `prompt`
    when there is no system message), `replace` (every conversation gets exactly `prompt` as its
    first message), `remove` (drop system messages). Use it to give a dataset one persona, or to
    strip system prompts that leak a source's identity.
    """

    reads = {"text": "messages"}
    MODES = ("add_if_missing", "replace", "remove")

    def __init__(self, prompt: str = "You are a helpful assistant.", mode: str = "add_if_missing"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self.prompt, self.mode = prompt, mode

    def refine(self, text, cols):
        no_sys = text.list.eval(pl.element().filter(pl.element().struct.field("role") != "system"))
        if self.mode == "remove":
            return no_sys.cast(MESSAGES_DTYPE)
        sys_msg = pl.concat_list(pl.struct(pl.lit("system").alias("role"), pl.lit(self.prompt).alias("content")))
        with_new = pl.concat_list(sys_msg, no_sys).cast(MESSAGES_DTYPE)
        if self.mode == "replace":
            return with_new
        has = roles_of(text).list.contains("system")
        return pl.when(has).then(text).otherwise(with_new).cast(MESSAGES_DTYPE)


@register
class ConversationTruncator(Refiner):
    """Cuts conversations to at most `max_turns` exchanges and removes a trailing user message
    (a question nobody answered).

    Reads and rewrites: `text` (default `messages`). Messages after the `max_turns`-th assistant
    turn are dropped (system and earlier messages kept). The report's `modified` counts changed
    rows. Use it to bound training length, or to repair dialogues whose last reply failed.
    """

    reads = {"text": "messages"}

    def __init__(self, max_turns: int | None = None, drop_trailing_user: bool = True):
        self.max_turns, self.drop_trailing_user = max_turns, drop_trailing_user

    def refine(self, text, cols):
        out = text
        if self.max_turns is not None:
            # number of assistant turns strictly before each message; keep messages whose count < max
            before = pl.element().struct.field("role").eq("assistant").cast(pl.UInt32).cum_sum() - pl.element().struct.field("role").eq("assistant").cast(pl.UInt32)
            out = out.list.eval(pl.element().filter(before < self.max_turns))
        if self.drop_trailing_user:
            last_user = out.list.last().struct.field("role") == "user"
            out = pl.when(last_user.fill_null(False)).then(out.list.head(out.list.len() - 1)).otherwise(out)
        return out.cast(MESSAGES_DTYPE)
