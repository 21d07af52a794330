"""SFT operators driven by a model: Deita-style instruction complexity, InsTag-style tagging,
Evol-Instruct rewriting, Condor-style question synthesis from seed topics, QA pairs from
documents (Text2QA), and reward-model scoring with a local sequence-classification model.

Quality of a response is judged with the core `LLMJudgeEvaluator` (operators/core/evaluate.py);
these operators add what that judge does not measure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from operators.base import ID, Evaluator, Generator, register, stable_hash
from operators.core.common import CoreLLMOperator, field_of, schema_object
from operators.llm import LLMClient, PromptTemplate, SamplingParams


@register
class InstructionComplexityScorer(CoreLLMOperator, Evaluator):
    """Deita-style complexity score of an instruction alone (how much reasoning, knowledge and
    constraint-following it demands), on an integer scale.

    Reads: `instruction` (default `instruction`). Writes: `complexity` (default
    `complexity_score`, Int64 in [`min_score`, `max_score`]; null when the call failed) and
    `<complexity>_meta`. The answer is JSON-schema constrained, rationale first. Use it with the
    core judge's quality score (combine them with `DeitaScoreCombiner`) to prefer instructions
    that teach more than trivia look-ups.
    """

    reads = {"instruction": "instruction"}
    writes = {"complexity": "complexity_score"}
    default_params = SamplingParams(temperature=0.0, max_tokens=192)
    default_template = PromptTemplate(
        "deita_complexity",
        "Rate the complexity of the instruction below from {min_score} to {max_score}:\n"
        "{min_score} = a trivial look-up or one-step task; {max_score} = demands multi-step reasoning, expert knowledge "
        "and several constraints at once. Judge the instruction only, not how hard it is to answer well.\n\n"
        "Instruction:\n{instruction}\n\n"
        'Reply with a JSON object: "rationale" (one short sentence) then "score" (an integer).',
        "You are an expert annotator of instruction-tuning data.",
    )

    def __init__(self, min_score: int = 1, max_score: int = 6, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if min_score >= max_score:
            raise ValueError("min_score must be below max_score")
        self.min_score, self.max_score = min_score, max_score
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"min_score": self.min_score, "max_score": self.max_score}

    @property
    def schema(self) -> dict[str, Any]:
        score = {"type": "integer", "minimum": self.min_score, "maximum": self.max_score, "enum": list(range(self.min_score, self.max_score + 1))}
        return schema_object({"rationale": {"type": "string", "maxLength": 240}, "score": score})

    def run(self, frame, cols):
        c = cols["complexity"]
        res = self.ask(frame, cols, schema=self.schema)
        return self.join_results(frame, res, [field_of("parsed", "score", pl.Int64).alias(c)], f"{c}_meta")

    def output_columns(self, cols):
        return [cols["complexity"], f"{cols['complexity']}_meta"]


@register
class InstructionTagger(CoreLLMOperator, Evaluator):
    """InsTag-style open tagging: fine-grained intention / skill tags of an instruction.

    Reads: `instruction` (default `instruction`). Writes: `tags` (List[String], lower-cased,
    trimmed, de-duplicated; empty when the call failed), `num_tags` (UInt32, InsTag's complexity
    proxy) and `tags_meta`. Use it for diversity analysis and selection (`TagCoverageFilter`), and
    to report which skills a dataset covers.
    """

    reads = {"instruction": "instruction"}
    writes = {"tags": "tags", "count": "num_tags"}
    default_params = SamplingParams(temperature=0.0, max_tokens=192)
    default_template = PromptTemplate(
        "instag",
        "List the fine-grained tags that describe the user intentions and the skills or knowledge needed to answer "
        "the instruction below (e.g. \"python\", \"data structure comparison\", \"performance analysis\"). "
        'Give 1 to {max_tags} short lower-case tags. Reply in JSON: {{"tags": [...]}}.\n\nInstruction:\n{instruction}',
        "You are a precise annotator of instruction-tuning data.",
    )

    def __init__(self, max_tags: int = 8, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if max_tags < 1:
            raise ValueError("max_tags must be >= 1")
        self.max_tags = max_tags
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"max_tags": self.max_tags}

    @property
    def schema(self) -> dict[str, Any]:
        return schema_object({"tags": {"type": "array", "items": {"type": "string", "maxLength": 60}, "minItems": 1, "maxItems": self.max_tags}})

    def run(self, frame, cols):
        t, n = cols["tags"], cols["count"]
        res = self.ask(frame, cols, schema=self.schema)
        tags = field_of("parsed", "tags", pl.List(pl.String)).list.eval(
            pl.element().str.to_lowercase().str.strip_chars().filter(pl.element().str.strip_chars() != "")
        ).list.unique(maintain_order=True)
        out = self.join_results(frame, res, [tags.alias(t)], f"{t}_meta")
        out = out.with_columns(pl.col(t).fill_null(pl.lit([], dtype=pl.List(pl.String))))
        return out.with_columns(pl.col(t).list.len().cast(pl.UInt32).alias(n))

    def output_columns(self, cols):
        return [cols["tags"], cols["count"], f"{cols['tags']}_meta"]


EVOLUTIONS = {
    "constraints": "Add one or two realistic constraints or requirements to it.",
    "deepen": "Make it ask for deeper understanding: the why and how, not just the what.",
    "concretize": "Replace general concepts with a more specific, concrete situation.",
    "reasoning": "Rewrite it so that answering needs explicit multi-step reasoning.",
}


@register
class InstructionEvolver(CoreLLMOperator, Generator):
    """Evol-Instruct (in-depth evolving): rewrites an instruction into a harder, still answerable
    one with one evolution method per row (constraints, deepen, concretize, reasoning; chosen
    deterministically from the row `_id`).

    Reads: `instruction` (default `instruction`). Writes: `evolved` (default
    `evolved_instruction`, String; null when the call failed or the model returned the
    instruction unchanged), `evolution` (String, the method used) and `<evolved>_meta`. Use it to
    raise the complexity of a seed set before answering it (Deita's / WizardLM's data recipe).
    """

    reads = {"instruction": "instruction"}
    writes = {"evolved": "evolved_instruction", "method": "evolution"}
    default_params = SamplingParams(temperature=0.7, max_tokens=384)
    default_template = PromptTemplate(
        "evol_instruct",
        "Rewrite the instruction below into a more complex version that a knowledgeable person could still answer. "
        "{method_text} Keep it self-contained and do not answer it. Reply with the new instruction only.\n\n"
        "Instruction:\n{instruction}",
        "You are an instruction rewriter.",
    )

    def __init__(self, methods: Sequence[str] = tuple(EVOLUTIONS), template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        unknown = set(methods) - set(EVOLUTIONS)
        if not methods or unknown:
            raise ValueError(f"methods must be a non-empty subset of {sorted(EVOLUTIONS)}")
        self.methods = tuple(methods)
        self._setup(template, params, llm)

    def template_columns(self):
        return [f for f in super().template_columns() if f != "method_text"]

    def renderer(self, cols, template=None):
        """`{method_text}` is filled per row from the evolution method picked for it."""
        tpl, m = template or self.template, cols["method"]
        roles = {role: cols.get(role) for role in self.reads}

        def render(row):
            values = {r: (row[c] if c else None) for r, c in roles.items()}
            values["method_text"] = EVOLUTIONS[row[m]]
            return tpl.render(values)

        return render

    def run(self, frame, cols):
        ev, m = cols["evolved"], cols["method"]
        # a stable choice per row: blake2b of the `_id` (Polars' hash is not stable across versions)
        pick = pl.col(ID).map_batches(
            lambda ids: pl.Series([self.methods[int(stable_hash(i), 16) % len(self.methods)] for i in ids], dtype=pl.String),
            return_dtype=pl.String,
        )
        with_m = frame.with_columns(pick.alias(m))
        res = self.ask(with_m, cols)
        text = pl.col("text").str.strip_chars()
        out = self.join_results(with_m, res, [pl.when(text != "").then(text).alias(ev)], f"{ev}_meta")
        same = out.get_column(ev).str.to_lowercase().str.strip_chars() == out.get_column(cols["instruction"]).str.to_lowercase().str.strip_chars()
        return out.with_columns(pl.when(same.fill_null(False)).then(None).otherwise(pl.col(ev)).alias(ev))

    def output_columns(self, cols):
        return [cols["evolved"], cols["method"], f"{cols['evolved']}_meta"]


class _ListToRows(CoreLLMOperator, Generator):
    """A structured call returns a list per row; each element becomes its own row with a new
    `_id` (`<parent>-<tag><k>`) and `parent_id`. A row whose call failed makes no rows and is
    counted in the report as dropped `llm_error:<kind>` (not registered)."""

    id_tag = "x"

    def explode_results(self, frame: pl.DataFrame, res: pl.DataFrame, field: str, item: pl.DataType, parent: str, meta: str) -> pl.DataFrame:
        res = res.filter(pl.col("sample") == 0)
        items = res.select(ID, field_of("parsed", field, pl.List(item)).alias("__items"), pl.col("meta").alias(meta), "error")
        failed = items.filter(pl.col("error").is_not_null() | pl.col("__items").is_null() | (pl.col("__items").list.len() == 0))
        why = pl.concat_str(pl.lit("llm_error:"), pl.col("error").fill_null("empty"))
        self.last_report.dropped = {r: int(n) for r, n in failed.select(why.alias("r")).get_column("r").value_counts().iter_rows()}
        self.last_report.dropped_ids = failed.select(ID, why.alias("reason"))
        rows = (
            items.filter(pl.col("error").is_null())
            .drop("error")
            .explode("__items")
            .filter(pl.col("__items").is_not_null())
            .with_columns(pl.int_range(pl.len()).over(ID).cast(pl.String).alias("__k"))
        )
        body = frame.join(rows, on=ID, how="inner", maintain_order="left")
        return body.with_columns(pl.col(ID).alias(parent), (pl.col(ID) + f"-{self.id_tag}" + pl.col("__k")).alias(ID)).drop("__k")


@register
class TopicQuestionGenerator(_ListToRows):
    """Condor-style question synthesis: writes `n` diverse user questions for a seed topic (and
    optional task type), one output row per question.

    Reads: `topic` (default `topic`), optional `task_type` (default none). Writes: `question`
    (default `instruction`, String), `parent_id` (the seed row's `_id`), a new `_id` per question
    (`<parent>-q<k>`) and `<question>_meta`. Seed rows whose call failed make no rows; they are
    reported as dropped `llm_error:<kind>`. Use it at the start of SFT synthesis, followed by
    dedup of the generated questions and `TopicBalancer`.
    """

    reads = {"topic": "topic", "task_type": None}
    writes = {"question": "instruction", "parent": "parent_id"}
    id_tag = "q"
    default_params = SamplingParams(temperature=0.8, max_tokens=512)
    default_template = PromptTemplate(
        "condor_questions",
        "Write {n} different questions that real users could ask an AI assistant about the topic \"{topic}\"{task}. "
        "Vary their difficulty and angle; each must be self-contained and answerable. "
        'Reply in JSON: {{"questions": [...]}}.',
        "You write realistic, diverse user requests.",
    )

    def __init__(self, n: int = 3, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"n": self.n}

    def template_columns(self):
        return [f for f in super().template_columns() if f != "task"]

    def renderer(self, cols, template=None):
        """The `{task}` phrase is filled per row from the task-type column (empty when unbound)."""
        tpl, tt = template or self.template, cols.get("task_type")
        roles = {role: cols.get(role) for role in self.reads}
        pvars = self.prompt_vars()

        def render(row):
            values = {**pvars, **{r: (row[c] if c else None) for r, c in roles.items()}}
            values["task"] = f" as a {row[tt]} task" if tt and row.get(tt) else ""
            return tpl.render(values)

        return render

    @property
    def schema(self) -> dict[str, Any]:
        return schema_object({"questions": {"type": "array", "items": {"type": "string", "maxLength": 400}, "minItems": 1, "maxItems": self.n}})

    def run(self, frame, cols):
        q = cols["question"]
        res = self.ask(frame, cols, schema=self.schema)
        out = self.explode_results(frame, res, "questions", pl.String, cols["parent"], f"{q}_meta")
        return out.rename({"__items": q}) if q not in out.columns else out.drop(q).rename({"__items": q})

    def output_columns(self, cols):
        return [cols["question"], cols["parent"], f"{cols['question']}_meta"]


@register
class QAPairGenerator(_ListToRows):
    """Text2QA: generates up to `n` question-answer pairs from a passage, one output row per pair,
    each answer meant to be stated in the passage.

    Reads: `text` (default `chunk`). Writes: `question` (default `instruction`), `answer`
    (default `output`), `parent_id` (the passage row's `_id`), a new `_id` per pair
    (`<parent>-p<k>`) and `<question>_meta`. Pairs with an empty question or answer are left out;
    passages whose call failed make no rows and are reported as dropped `llm_error:<kind>`. Use it
    on document chunks (`DocumentChunker`), then check grounding (`LexicalGroundingFilter`,
    `GroundednessJudge`).
    """

    reads = {"text": "chunk"}
    writes = {"question": "instruction", "answer": "output", "parent": "parent_id"}
    id_tag = "p"
    default_params = SamplingParams(temperature=0.3, max_tokens=768)
    default_template = PromptTemplate(
        "text2qa",
        "Read the passage and write up to {n} question-answer pairs about its most important facts. Each question must "
        "be answerable from the passage alone, and each answer must restate what the passage says, in one or two "
        'sentences. Reply in JSON: {{"pairs": [{{"question": "...", "answer": "..."}}]}}.\n\nPassage:\n{text}',
        "You write faithful reading-comprehension questions. Never use facts that are not in the passage.",
    )
    PAIR = pl.Struct({"question": pl.String, "answer": pl.String})

    def __init__(self, n: int = 3, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"n": self.n}

    @property
    def schema(self) -> dict[str, Any]:
        pair = schema_object({"question": {"type": "string", "maxLength": 400}, "answer": {"type": "string", "maxLength": 800}})
        return schema_object({"pairs": {"type": "array", "items": pair, "minItems": 1, "maxItems": self.n}})

    def run(self, frame, cols):
        q, a = cols["question"], cols["answer"]
        res = self.ask(frame, cols, schema=self.schema)
        out = self.explode_results(frame, res, "pairs", self.PAIR, cols["parent"], f"{q}_meta")
        out = out.drop([c for c in (q, a) if c in out.columns]).with_columns(
            pl.col("__items").struct.field("question").str.strip_chars().alias(q),
            pl.col("__items").struct.field("answer").str.strip_chars().alias(a),
        ).drop("__items")
        return out.filter((pl.col(q).fill_null("") != "") & (pl.col(a).fill_null("") != ""))

    def output_columns(self, cols):
        return [cols["question"], cols["answer"], cols["parent"], f"{cols['question']}_meta"]


@register
class RewardModelScorer(Evaluator):
    """Reward-style scoring with a local sequence-classification reward model (Hugging Face
    format, e.g. a DeBERTa or Skywork reward model saved on disk; nothing is downloaded).

    Reads: `instruction` (default `instruction`), `response` (default `output`). Writes: `reward`
    (Float64: the model's scalar output, or with several labels the logit of `label`). The pair is
    encoded with the tokenizer's chat template when it has one, else as a text pair; batches of
    `batch_size` run on CPU (or `device`). Use it where a reward model is configured, as a second
    opinion beside the LLM judge, then keep by threshold or top-k on `reward`.
    """

    reads = {"instruction": "instruction", "response": "output"}
    writes = {"reward": "reward"}

    def __init__(self, model_path: str, label: int = 0, batch_size: int = 16, max_length: int = 1024, device: str = "cpu"):
        self.model_path, self.label, self.batch_size, self.max_length, self.device = str(model_path), label, batch_size, max_length, device
        self._model: Any = None

    def _load(self):
        if self._model is None:
            try:
                from transformers import (
                    AutoModelForSequenceClassification,
                    AutoTokenizer,
                )
            except ImportError as err:  # pragma: no cover - torch/transformers are in the embed extra
                raise RuntimeError("RewardModelScorer needs `transformers` and `torch` (pip install -e '.[embed]')") from err
            self._tok = AutoTokenizer.from_pretrained(self.model_path)
            self._model = AutoModelForSequenceClassification.from_pretrained(self.model_path).to(self.device).eval()
        return self._tok, self._model

    def encode(self, instructions: list[str], responses: list[str]):
        tok, _ = self._load()
        if getattr(tok, "chat_template", None):
            texts = [tok.apply_chat_template([{"role": "user", "content": i}, {"role": "assistant", "content": r}], tokenize=False)
                     for i, r in zip(instructions, responses, strict=True)]
            return tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return tok(instructions, responses, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def run(self, frame, cols):
        out_col = cols["reward"]
        if frame.height == 0:
            return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(out_col))
        import torch

        _, model = self._load()
        ins = frame.get_column(cols["instruction"]).fill_null("").to_list()
        res = frame.get_column(cols["response"]).fill_null("").to_list()
        scores: list[float] = []
        with torch.inference_mode():
            for s in range(0, len(ins), self.batch_size):
                batch = self.encode(ins[s : s + self.batch_size], res[s : s + self.batch_size]).to(self.device)
                logits = model(**batch).logits
                scores.extend(logits[:, self.label].float().cpu().tolist())
        return frame.with_columns(pl.Series(out_col, scores, dtype=pl.Float64))
