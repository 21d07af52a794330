"""Core LLM generators: prompted text, summaries, translations, keywords, entities, questions,
answers, structured JSON extraction and self-consistency voting."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import polars as pl

from operators.base import ID, Generator, register
from operators.core.common import CoreLLMOperator, field_of, json_schema_to_dtype, schema_object
from operators.llm import LLMClient, PromptTemplate, SamplingParams


class _TextGenerator(CoreLLMOperator, Generator):
    """One free-text output column per row (not registered)."""

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        out = cols["output"]
        res = self.ask(frame, cols)
        return self.join_results(frame, res, [pl.col("text").alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class PromptedTextGenerator(_TextGenerator):
    """Free-form generator: renders a prompt template over any columns of the row and writes the
    model's reply to a new column.

    Reads: the columns named by the template's `{placeholders}` (every placeholder is a column;
    the default template answers the `instruction` column). Writes: `output` (default `generated`, String) and `<output>_meta` (provenance struct).
    Use it for any one-prompt-per-row generation that no more specific operator covers, e.g.
    `PromptedTextGenerator(PromptTemplate("rewrite", "Rewrite as a tweet: {body}"))(frame, output="tweet")`.
    Failed calls leave the output null and the error in the meta column.
    """

    reads = {}
    writes = {"output": "generated"}
    default_template = PromptTemplate(
        "prompted_generator",
        "Follow the instruction below and answer it directly.\n\nInstruction:\n{instruction}",
        "You are a helpful, accurate assistant.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)


@register
class Summarizer(_TextGenerator):
    """Summarises a text column with an LLM.

    Reads: `text` (default `text`). Writes: `summary` (String) and `summary_meta`.
    Use it to condense documents or long responses (e.g. before indexing or as a training target).
    `max_words` is available to templates as `{max_words}`.
    """

    reads = {"text": "text"}
    writes = {"output": "summary"}
    default_template = PromptTemplate(
        "summarize",
        "Summarise the following text in at most {max_words} words. Reply with the summary only.\n\nText:\n{text}",
        "You write faithful, concise summaries. Never add facts that are not in the text.",
    )

    def __init__(self, max_words: int = 60, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if max_words < 1:
            raise ValueError("max_words must be >= 1")
        self.max_words = max_words
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"max_words": self.max_words}


@register
class Translator(_TextGenerator):
    """Translates a text column into `target_language` with an LLM.

    Reads: `text` (default `text`). Writes: `translation` (String) and `translation_meta`.
    Use it to build multilingual corpora or to normalise inputs to one language. Templates may use
    `{target_language}` and `{source_language}` ("the source language" when not given).
    """

    reads = {"text": "text"}
    writes = {"output": "translation"}
    default_template = PromptTemplate(
        "translate",
        "Translate the following text from {source_language} into {target_language}. "
        "Reply with the translation only.\n\nText:\n{text}",
        "You are a professional translator. Preserve meaning, tone and formatting.",
    )

    def __init__(self, target_language: str = "English", source_language: str | None = None, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.target_language, self.source_language = target_language, source_language
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"target_language": self.target_language, "source_language": self.source_language or "its original language"}


@register
class AnswerGenerator(_TextGenerator):
    """Answers a question column with an LLM, optionally grounded in a context column.

    Reads: `question` (default `instruction`), optional `context` (default none).
    Writes: `answer` (String) and `answer_meta`.
    Use it to produce responses for instruction data (SFT) or answers for generated questions.
    """

    reads = {"question": "instruction", "context": None}
    writes = {"output": "answer"}
    default_template = PromptTemplate(
        "answer",
        "{context}\n\nAnswer the question below. When context is given above, base the answer on it.\n\nQuestion:\n{question}",
        "You are a helpful, accurate assistant. Answer clearly and completely.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)


# --------------------------------------------------------------------------- structured


class _StructuredGenerator(CoreLLMOperator, Generator):
    """A JSON-schema constrained generator writing one typed column (not registered)."""

    field: str = ""  # the schema property that becomes the output column

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        out = cols["output"]
        schema = self.schema()
        dtype = json_schema_to_dtype(schema["properties"][self.field])
        res = self.ask(frame, cols, schema=schema)
        return self.join_results(frame, res, [field_of("parsed", self.field, dtype).alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class KeywordExtractor(_StructuredGenerator):
    """Extracts up to `max_keywords` keywords/keyphrases from a text column (JSON-schema constrained).

    Reads: `text` (default `text`). Writes: `keywords` (List[String]) and `keywords_meta`.
    Use it for tagging, topic facets or retrieval metadata.
    """

    reads = {"text": "text"}
    writes = {"output": "keywords"}
    field = "keywords"
    default_template = PromptTemplate(
        "keywords",
        'Extract at most {max_keywords} keywords or short key phrases from the text below. '
        'Reply in JSON: {{"keywords": [...]}}.\n\nText:\n{text}',
    )

    def __init__(self, max_keywords: int = 8, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.max_keywords = max_keywords
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"max_keywords": self.max_keywords}

    def schema(self):
        return schema_object({"keywords": {"type": "array", "items": {"type": "string"}, "maxItems": self.max_keywords}})


@register
class EntityExtractor(_StructuredGenerator):
    """Extracts named entities (surface text + type) from a text column (JSON-schema constrained).

    Reads: `text` (default `text`). Writes: `entities` (List[Struct{text, type}]) and `entities_meta`.
    `entity_types` restricts the `type` field (a schema enum). Use it for NER-style annotation,
    knowledge-graph seeding or PII discovery.
    """

    reads = {"text": "text"}
    writes = {"output": "entities"}
    field = "entities"
    default_template = PromptTemplate(
        "entities",
        "List the named entities in the text below. Allowed types: {entity_types}. "
        'Reply in JSON: {{"entities": [{{"text": ..., "type": ...}}]}}.\n\nText:\n{text}',
    )

    def __init__(self, entity_types: Sequence[str] = ("PERSON", "ORGANIZATION", "LOCATION", "DATE", "OTHER"), template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if not entity_types:
            raise ValueError("entity_types must not be empty")
        self.entity_types = tuple(entity_types)
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"entity_types": ", ".join(self.entity_types)}

    def schema(self):
        entity = schema_object({"text": {"type": "string"}, "type": {"type": "string", "enum": list(self.entity_types)}})
        return schema_object({"entities": {"type": "array", "items": entity}})


@register
class QuestionGenerator(_StructuredGenerator):
    """Generates `num_questions` questions answerable from a text column (JSON-schema constrained).

    Reads: `text` (default `text`). Writes: `questions` (List[String]) and `questions_meta`.
    Use it to seed QA / reading-comprehension data from documents (explode the list for one
    question per row, then run `AnswerGenerator` with the text as context).
    """

    reads = {"text": "text"}
    writes = {"output": "questions"}
    field = "questions"
    default_template = PromptTemplate(
        "questions",
        "Write {num_questions} diverse questions that can be answered from the text below alone. "
        'Reply in JSON: {{"questions": [...]}}.\n\nText:\n{text}',
    )

    def __init__(self, num_questions: int = 3, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if num_questions < 1:
            raise ValueError("num_questions must be >= 1")
        self.num_questions = num_questions
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"num_questions": self.num_questions}

    def schema(self):
        return schema_object({"questions": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": self.num_questions}})


@register
class JsonExtractor(CoreLLMOperator, Generator):
    """Extracts structured data from a text column into a user-given JSON schema.

    Reads: `text` (default `text`). Writes: `extracted` — a JSON string (default) or, with
    `as_struct=True`, a Polars struct derived from the schema — and `extracted_meta`.
    Use it for information extraction (fields of invoices, product specs, ...). The schema is
    passed to the model (constrained decoding where the server supports it) and re-validated;
    a non-conforming answer leaves a null output with meta error `schema`.
    """

    reads = {"text": "text"}
    writes = {"output": "extracted"}
    default_template = PromptTemplate(
        "extract_json",
        "Extract the information from the text below as JSON that matches this JSON schema:\n"
        "{schema}\n\nReply with the JSON only.\n\nText:\n{text}",
        "You extract structured data exactly as stated in the text. Use null for missing values.",
    )
    default_schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "topics": {"type": "array", "items": {"type": "string"}}},
        "required": ["title", "topics"],
    }

    def __init__(self, schema: Mapping[str, Any] | None = None, as_struct: bool = False, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.json_schema = dict(schema or self.default_schema)
        self.as_struct = as_struct
        self.dtype = json_schema_to_dtype(self.json_schema) if as_struct else pl.String
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"schema": json.dumps(self.json_schema, ensure_ascii=False)}

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols, schema=self.json_schema)
        value = pl.col("parsed").str.json_decode(self.dtype) if self.as_struct else pl.col("parsed")
        return self.join_results(frame, res, [value.alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class SelfConsistencyGenerator(CoreLLMOperator, Generator):
    """Self-consistency: samples `n` answers per question and keeps the majority answer.

    Reads: `question` (default `instruction`). Writes: `answer` (String, the most frequent final
    answer after normalisation — trimmed, case-folded, trailing period dropped; ties go to the
    earliest sample), `agreement` (Float64, the share of successful samples that agree with it),
    optional `samples` (List[String], every successful sample's answer; off by default) and
    `answer_meta` (provenance of the winning sample). Rows whose every sample failed get null
    outputs and the first error in the meta column.
    Use it for math / short-answer reasoning where voting improves accuracy, or use `agreement`
    as a confidence score to filter on.
    """

    reads = {"question": "instruction"}
    writes = {"answer": "answer", "agreement": "agreement", "samples": None}
    default_params = SamplingParams(temperature=0.7, max_tokens=512)
    default_template = PromptTemplate(
        "self_consistency",
        "Solve the problem below. Think step by step in `reasoning`, then give only the final answer "
        'in `answer`. Reply in JSON: {{"reasoning": ..., "answer": ...}}.\n\nProblem:\n{question}',
    )
    schema = schema_object({"reasoning": {"type": "string"}, "answer": {"type": "string"}})

    def __init__(self, n: int = 5, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._setup(template, params, llm)

    @staticmethod
    def normalize(answer: pl.Expr) -> pl.Expr:
        return answer.str.strip_chars().str.replace_all(r"\s+", " ").str.strip_chars_end(".").str.to_lowercase()

    def run(self, frame, cols):
        ans, agr, smp = cols["answer"], cols["agreement"], cols.get("samples")
        res = self.ask(frame, cols, schema=self.schema, n=self.n)
        ok = res.filter(pl.col("error").is_null()).with_columns(field_of("parsed", "answer", pl.String).alias("__answer"))
        ok = ok.with_columns(self.normalize(pl.col("__answer")).alias("__key"))
        votes = ok.group_by(ID, "__key").agg(pl.len().alias("__votes"), pl.col("sample").min().alias("__first"))
        best = (
            votes.sort([ID, "__votes", "__first"], descending=[False, True, False])
            .group_by(ID, maintain_order=True)
            .first()
        )
        per_id = ok.sort(ID, "sample").group_by(ID).agg(pl.len().alias("__valid"), pl.col("__answer").alias("__samples"))
        winners = (
            best.join(ok.select(ID, "sample", "__answer", "meta"), left_on=[ID, "__first"], right_on=[ID, "sample"], how="left")
            .join(per_id, on=ID, how="left")
            .select(
                ID,
                pl.col("__answer").alias(ans),
                (pl.col("__votes") / pl.col("__valid")).cast(pl.Float64).alias(agr),
                pl.col("__samples"),
                pl.col("meta").alias("__meta"),
            )
        )
        # provenance for rows without any successful sample: the first sample's (failed) meta
        first_meta = res.sort(ID, "sample").group_by(ID, maintain_order=True).first().select(ID, pl.col("meta").alias("__meta0"))
        right = first_meta.join(winners, on=ID, how="left").select(
            ID,
            pl.col(ans),
            pl.col(agr),
            *([pl.col("__samples").alias(smp)] if smp else []),
            pl.coalesce("__meta", "__meta0").alias(f"{ans}_meta"),
        )
        clash = [c for c in right.columns if c != ID and c in frame.columns]
        return frame.drop(clash).join(right, on=ID, how="left", maintain_order="left")

    def output_columns(self, cols):
        return [c for c in (cols["answer"], cols["agreement"], cols.get("samples")) if c] + [f"{cols['answer']}_meta"]
