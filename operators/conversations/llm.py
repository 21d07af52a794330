"""LLM conversation operators: multi-turn dialogue synthesis from a seed (a simulated user and
the assistant take turns, one batched call per half-turn), and a per-turn quality judge built on
the core `LLMJudgeEvaluator`."""

from __future__ import annotations

from typing import Any

import polars as pl

from operators.base import ID, Evaluator, Generator, Operator, OpReport, register
from operators.conversations.rules import ConversationFlattener
from operators.core.common import CoreLLMOperator
from operators.core.convert import MESSAGES_DTYPE
from operators.core.evaluate import LLMJudgeEvaluator
from operators.llm import META_DTYPE, LLMClient, PromptTemplate, SamplingParams

USER_TEMPLATE = PromptTemplate(
    "dialogue_user",
    "You play a curious user talking to an AI assistant about: {seed}\n\n"
    "Conversation so far:\n{transcript}\n\n"
    "Write the user's next message: a natural follow-up question that builds on the last answer. "
    "Reply with the message only.",
    "You simulate realistic users. Never answer your own questions.",
)
OPENING_TEMPLATE = PromptTemplate(
    "dialogue_opening",
    "Write the first message a user would send to an AI assistant to start a conversation about: {seed}\n\n"
    "Reply with the message only.",
    "You simulate realistic users.",
)


def run_inner(op: Operator, frame: pl.DataFrame, **columns: str | None) -> pl.DataFrame:
    """Run a helper operator inside another operator's `run`, outside the pipeline's stage
    recording (its report stays on the helper)."""
    op.last_report = OpReport(rows_in=frame.height)
    return op.run(frame, op.resolve(columns))


@register
class DialogueSynthesizer(CoreLLMOperator, Generator):
    """Synthesises a multi-turn dialogue from a seed (a topic or an opening question): a simulated
    user and the assistant take `num_turns` turns each, one batched call per half-turn.

    Reads: `seed` (default `seed`). Writes: `messages` (List[Struct{role, content}]: an optional
    system prompt, then user / assistant turns) and `messages_meta` (provenance of the last call
    made for the row; its `error` is the first failure). With `seed_is_question=True` the seed is
    the first user message; otherwise the user's opening is generated from it. The assistant sees
    the whole conversation as chat messages (its real multi-turn prompt). A row whose call fails
    stops growing where it is, so a failed reply leaves a trailing user turn that
    `RoleAlternationValidator` drops as `ends_with_user`. Use it to build multi-turn SFT data from
    seed topics (UltraChat-style), then validate and judge each turn.
    """

    reads = {"seed": "seed"}
    writes = {"messages": "messages"}
    default_params = SamplingParams(temperature=0.7, max_tokens=384)
    default_template = PromptTemplate("dialogue_assistant", "{seed}", "You are a helpful, knowledgeable assistant. Answer accurately and concisely.")

    def __init__(
        self,
        num_turns: int = 3,
        seed_is_question: bool = False,
        system_prompt: str | None = None,
        user_params: SamplingParams | None = None,
        template: PromptTemplate | None = None,
        params: SamplingParams | None = None,
        llm: LLMClient | None = None,
    ):
        if num_turns < 1:
            raise ValueError("num_turns must be >= 1")
        self.num_turns, self.seed_is_question, self.system_prompt = num_turns, seed_is_question, system_prompt
        self.user_params = user_params or SamplingParams(temperature=0.8, max_tokens=160)
        self._setup(template, params, llm)

    def version_parts(self) -> list[Any]:
        return [*super().version_parts(), USER_TEMPLATE.user, OPENING_TEMPLATE.user]

    def _user_turn(self, state: pl.DataFrame, seed: str, first: bool) -> pl.DataFrame:
        """One user message per live row: (`_id`, text, error, meta)."""
        if first and self.seed_is_question:
            return state.select(ID, pl.col(seed).alias("text"), pl.lit(None, dtype=pl.String).alias("error"), pl.lit(None, dtype=META_DTYPE).alias("meta"))
        tpl = OPENING_TEMPLATE if first else USER_TEMPLATE
        flat = ConversationFlattener()

        def render(row: dict[str, Any]) -> list[dict[str, str]]:
            transcript = "\n\n".join(f"{flat.labels.get(m['role'], m['role'])}: {m['content']}" for m in row["__conv"] if m["role"] != "system")
            return tpl.render({"seed": row[seed], "transcript": transcript})

        res = self.call_llm(state, render, params=self.user_params)
        return res.filter(pl.col("sample") == 0).select(ID, pl.col("text").str.strip_chars(), "error", "meta")

    def _assistant_turn(self, state: pl.DataFrame) -> pl.DataFrame:
        system = self.template.system

        def render(row: dict[str, Any]) -> list[dict[str, str]]:
            msgs = [{"role": m["role"], "content": m["content"]} for m in row["__conv"]]
            if system and not any(m["role"] == "system" for m in msgs):
                msgs = [{"role": "system", "content": system}, *msgs]
            return msgs

        res = self.call_llm(state, render)
        return res.filter(pl.col("sample") == 0).select(ID, pl.col("text").str.strip_chars(), "error", "meta")

    def run(self, frame, cols):
        seed, out = cols["seed"], cols["messages"]
        start = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        state = frame.select(ID, seed).with_columns(
            pl.lit(start, dtype=MESSAGES_DTYPE).alias("__conv"), pl.lit(None, dtype=META_DTYPE).alias("__meta"), pl.lit(True).alias("__live")
        )
        totals: dict[str, Any] = {"requests": 0, "calls": 0, "cache_hits": 0, "errors": {}, "tokens_in": 0, "tokens_out": 0}
        for turn in range(self.num_turns):
            for speaker in ("user", "assistant"):
                live = state.filter(pl.col("__live"))
                if live.height == 0:
                    break
                res = self._user_turn(live, seed, turn == 0) if speaker == "user" else self._assistant_turn(live)
                for k, v in (self.last_report.llm or {}).items():
                    if k == "errors":
                        for e, n in v.items():
                            totals["errors"][e] = totals["errors"].get(e, 0) + n
                    elif k in totals:
                        totals[k] += v
                ok = pl.col("error").is_null() & (pl.col("text").fill_null("") != "")
                msg = pl.struct(pl.lit(speaker).alias("role"), pl.col("text").alias("content"))
                upd = res.select(ID, pl.when(ok).then(msg).alias("__new"), ok.alias("__ok"), pl.col("meta").alias("__m2"))
                state = state.join(upd, on=ID, how="left", maintain_order="left").with_columns(
                    pl.when(pl.col("__new").is_not_null()).then(pl.col("__conv").list.concat(pl.concat_list("__new"))).otherwise(pl.col("__conv")).alias("__conv"),
                    # the first failure's provenance is kept; otherwise the latest call's
                    pl.when(pl.col("__meta").struct.field("error").is_not_null()).then(pl.col("__meta")).otherwise(pl.coalesce("__m2", "__meta")).alias("__meta"),
                    (pl.col("__live") & pl.col("__ok").fill_null(True)).alias("__live"),
                ).drop("__new", "__ok", "__m2")
        self.last_report.llm = totals
        right = state.select(ID, pl.col("__conv").cast(MESSAGES_DTYPE).alias(out), pl.col("__meta").alias(f"{out}_meta"))
        return frame.drop([c for c in (out, f"{out}_meta") if c in frame.columns]).join(right, on=ID, how="left", maintain_order="left")

    def output_columns(self, cols):
        return [cols["messages"], f"{cols['messages']}_meta"]


@register
class TurnQualityJudge(CoreLLMOperator, Evaluator):
    """Per-turn quality judge: scores every assistant reply of a conversation in the context of
    the dialogue before it, with the core LLM judge (rationale first, JSON-schema constrained).

    Reads: `messages` (default `messages`). Writes: `turn_scores` (List[Int64], one per assistant
    turn in order; null entries for failed judge calls), `min_turn_score` (Int64), `mean_turn_score`
    (Float64) and `turn_scores_meta` (provenance of the first turn's judgement; its `error` is the
    first failure). All turns of all conversations go in one batch. Use it before
    `TurnScoreFilter` to drop dialogues with any weak reply.
    """

    reads = {"messages": "messages"}
    writes = {"scores": "turn_scores", "min": "min_turn_score", "mean": "mean_turn_score"}
    default_params = SamplingParams(temperature=0.0, max_tokens=160)
    default_template = LLMJudgeEvaluator.default_template

    def __init__(self, criteria: str = "helpfulness, correctness and coherence with the earlier conversation", min_score: int = 1, max_score: int = 5,
                 template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.criteria, self.min_score, self.max_score = criteria, min_score, max_score
        self._setup(template, params, llm)
        self.judge = LLMJudgeEvaluator(criteria=criteria, min_score=min_score, max_score=max_score, template=self.template, params=self.params)

    def template_columns(self):
        return []  # the template is the inner judge's: its placeholders are filled per turn, not from frame columns

    def run(self, frame, cols):
        s, mn, me = cols["scores"], cols["min"], cols["mean"]
        from operators.conversations.rules import ConversationTurnSplitter

        turns = run_inner(ConversationTurnSplitter(), frame.select(ID, cols["messages"]), messages=cols["messages"], parent="__parent",
                          instruction="__user", output="__reply", history="__hist", turn="__turn")
        ctx = run_inner(ConversationFlattener(), turns.with_columns(
            pl.col("__hist").list.concat(pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("__user").alias("content")))).alias("__ctx_m")
        ), messages="__ctx_m", transcript="__context")
        self.judge.llm = self._client() if turns.height else self.llm
        judged = run_inner(self.judge, ctx, instruction="__context", response="__reply", score="__score", rationale=None)
        self.last_report.llm = self.judge.last_report.llm
        per = judged.sort("__parent", "__turn").group_by("__parent", maintain_order=True).agg(
            pl.col("__score").alias(s), pl.col("__score_meta").first().alias(f"{s}_meta"),
        )
        right = per.rename({"__parent": ID}).with_columns(
            pl.col(s).list.min().alias(mn), pl.col(s).list.mean().cast(pl.Float64).alias(me)
        )
        out = frame.drop([c for c in right.columns if c != ID and c in frame.columns]).join(right, on=ID, how="left", maintain_order="left")
        return out.with_columns(pl.col(s).cast(pl.List(pl.Int64)), pl.col(mn).cast(pl.Int64), pl.col(f"{s}_meta").cast(META_DTYPE))

    def output_columns(self, cols):
        return [cols["scores"], cols["min"], cols["mean"], f"{cols['scores']}_meta"]
