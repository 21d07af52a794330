"""Code generators: instruction back-translation (code -> instruction), code generation from an
instruction, test generation, refinement from test feedback, LLM judges of code quality and of
instruction/code consistency, and code extraction from replies."""

from __future__ import annotations

import polars as pl

from operators.base import ID, Evaluator, Generator, register
from operators.code.common import extract_asserts, extract_code
from operators.core.common import (
    SCORE_REPLY,
    CoreLLMOperator,
    field_of,
    schema_object,
    score_schema,
)
from operators.llm import LLMClient, PromptTemplate, SamplingParams


class _CodeLLMGenerator(CoreLLMOperator, Generator):
    """One reply per row; `post` turns the reply text into the output column (not registered)."""

    def post(self, text: pl.Expr) -> pl.Expr:
        return text

    def run(self, frame, cols):
        out = cols["output"]
        res = self.ask(frame, cols)
        return self.join_results(frame, res, [self.post(pl.col("text")).alias(out)], f"{out}_meta")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]


@register
class CodeInstructionGenerator(_CodeLLMGenerator):
    """Instruction back-translation: writes the task instruction that a given program solves
    (OSS-Instruct / DataFlow CodeGen style), so existing code becomes (instruction, code) pairs.

    Reads: `code` (default `code`). Writes: `output` (default `instruction`, String) and
    `instruction_meta`. Use it on verified code, then pair the instruction with the code (or with
    a regenerated solution checked in the sandbox).
    """

    reads = {"code": "code"}
    writes = {"output": "instruction"}
    default_params = SamplingParams(temperature=0.2, max_tokens=256)
    default_template = PromptTemplate(
        "code_backtranslate",
        "Here is a piece of {language} code:\n```{language}\n{code}\n```\n\n"
        "Write the programming task that this code solves, as a clear, self-contained instruction a "
        "developer could implement from scratch (name the function and its inputs and outputs). "
        "Reply with the instruction only.",
        "You write precise programming exercises.",
    )

    def __init__(self, language: str = "python", template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.language = language
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"language": self.language}

    def post(self, text):
        return text.str.strip_chars()


@register
class CodeGenerator(_CodeLLMGenerator):
    """Generates code from an instruction and extracts it from the reply (last fenced block of the
    language, or the whole reply when it parses).

    Reads: `instruction` (default `instruction`). Writes: `output` (default `generated_code`,
    String; null when the reply holds no code) and `generated_code_meta`.
    Use it for code SFT synthesis; verify with `SandboxTestRunner`.
    """

    reads = {"instruction": "instruction"}
    writes = {"output": "generated_code"}
    default_params = SamplingParams(temperature=0.2, max_tokens=512)
    default_template = PromptTemplate(
        "code_generate",
        "Task:\n{instruction}\n\nWrite a correct, idiomatic {language} solution. "
        "Reply with the complete code in one fenced ```{language} block.",
        "You are an expert programmer.",
    )

    def __init__(self, language: str = "python", template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self.language = language
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"language": self.language}

    def post(self, text):
        lang = self.language
        return text.map_elements(lambda t: extract_code(t, lang), return_dtype=pl.String)


@register
class CodeTestGenerator(_CodeLLMGenerator):
    """Generates unit tests (assert statements) for an instruction and its code.

    Reads: `instruction` (default `instruction`), `code` (default `code`). Writes: `output`
    (default `generated_tests`, List[String]: every top-level `assert` in the reply's Python
    blocks, each parsing alone; empty when there is none) and `generated_tests_meta`.
    Use it when a dataset has no tests; validate the tests against trusted code with
    `SandboxTestRunner` before using them to judge other code.
    """

    reads = {"instruction": "instruction", "code": "code"}
    writes = {"output": "generated_tests"}
    default_params = SamplingParams(temperature=0.2, max_tokens=384)
    default_template = PromptTemplate(
        "code_tests",
        "Task:\n{instruction}\n\nSolution:\n```python\n{code}\n```\n\n"
        "Write {num_tests} assert statements that test the solution on typical and edge cases. "
        "Reply with the asserts only, in one ```python block.",
        "You write precise unit tests.",
    )

    def __init__(self, num_tests: int = 5, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if num_tests < 1:
            raise ValueError("num_tests must be >= 1")
        self.num_tests = num_tests
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"num_tests": self.num_tests}

    def post(self, text):
        return text.map_elements(extract_asserts, return_dtype=pl.List(pl.String))


@register
class CodeRefiner(CoreLLMOperator, Generator):
    """Repairs code from test feedback: rows whose tests did not all pass are sent to the model with
    the failing test and its error; passing rows keep their code without an LLM call.

    Reads: `instruction` (default `instruction`), `code` (default `generated_code`), `feedback`
    (default `exec_feedback`), `pass_rate` (default `pass_rate`). Writes: `output` (default
    `refined_code`: the repaired code for failing rows, the original for passing ones),
    `refined` (Boolean, whether a repair was asked) and `refined_code_meta`.
    Run `SandboxTestRunner` again on `refined_code` to verify the repair.
    """

    reads = {"instruction": "instruction", "code": "generated_code", "feedback": "exec_feedback", "pass_rate": "pass_rate"}
    writes = {"output": "refined_code", "refined": "refined"}
    default_params = SamplingParams(temperature=0.2, max_tokens=512)
    default_template = PromptTemplate(
        "code_refine",
        "Task:\n{instruction}\n\nCurrent solution:\n```python\n{code}\n```\n\n"
        "It fails its tests:\n{feedback}\n\nFix the solution. Reply with the complete corrected code in one ```python block.",
        "You are an expert programmer who fixes bugs precisely.",
    )

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        out, flag = cols["output"], cols["refined"]
        failing = pl.col(cols["pass_rate"]).fill_null(0.0) < 1.0
        todo = frame.filter(failing)
        res = self.ask(todo, cols)
        fixed = res.select(ID, pl.col("text").map_elements(extract_code, return_dtype=pl.String).alias("__fixed"), pl.col("meta").alias(f"{out}_meta"))
        clash = [c for c in (out, flag, f"{out}_meta") if c in frame.columns]
        return (
            frame.drop(clash)
            .join(fixed, on=ID, how="left", maintain_order="left")
            .with_columns(
                pl.when(failing).then(pl.col("__fixed")).otherwise(pl.col(cols["code"])).alias(out),
                failing.alias(flag),
            )
            .drop("__fixed")
            .select(*[c for c in frame.columns if c not in clash], out, flag, f"{out}_meta")
        )

    def output_columns(self, cols):
        return [cols["output"], cols["refined"], f"{cols['output']}_meta"]


@register
class CodeQualityJudge(CoreLLMOperator, Evaluator):
    """LLM judge of code quality (correctness risk, readability, idiom, efficiency) on an integer
    scale, with a one-sentence rationale (JSON-schema constrained).

    Reads: `code` (default `code`), `instruction` (default `instruction`; pass None to judge code
    alone). Writes: `code_quality` (Int64), `code_quality_rationale` (String), `code_quality_meta`.
    """

    reads = {"code": "code", "instruction": "instruction"}
    writes = {"score": "code_quality", "rationale": "code_quality_rationale"}
    default_params = SamplingParams(temperature=0.0, max_tokens=128)
    default_template = PromptTemplate(
        "code_quality",
        "Task (may be empty):\n{instruction}\n\nCode:\n```python\n{code}\n```\n\n"
        "Rate this code from {min_score} (poor) to {max_score} (excellent) for correctness, readability, "
        "idiomatic style and efficiency. " + SCORE_REPLY,
        "You are a strict senior code reviewer.",
    )

    def __init__(self, min_score: int = 1, max_score: int = 5, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        if min_score >= max_score:
            raise ValueError("min_score must be below max_score")
        self.min_score, self.max_score = min_score, max_score
        self._setup(template, params, llm)

    def prompt_vars(self):
        return {"min_score": self.min_score, "max_score": self.max_score}

    def run(self, frame, cols):
        res = self.ask(frame, cols, schema=score_schema(self.min_score, self.max_score))
        return self.join_results(frame, res, [field_of("parsed", "score", pl.Int64).alias(cols["score"]),
                                              field_of("parsed", "rationale", pl.String).alias(cols["rationale"])], f"{cols['score']}_meta")

    def output_columns(self, cols):
        return [cols["score"], cols["rationale"], f"{cols['score']}_meta"]


@register
class InstructionCodeConsistencyJudge(CoreLLMOperator, Evaluator):
    """LLM judge: does the code do what the instruction asks (no more, no less)?

    Reads: `instruction` (default `instruction`), `code` (default `code`). Writes: `consistent`
    (Boolean), `consistency_reason` (String) and `consistent_meta`.
    Use it after back-translation to catch instructions that describe something else than the code.
    """

    reads = {"instruction": "instruction", "code": "code"}
    writes = {"verdict": "consistent", "reason": "consistency_reason"}
    default_params = SamplingParams(temperature=0.0, max_tokens=128)
    default_template = PromptTemplate(
        "code_consistency",
        "Instruction:\n{instruction}\n\nCode:\n```python\n{code}\n```\n\n"
        'Does the code implement exactly what the instruction asks? Reply in JSON with "consistent" '
        '(true or false) and "reason" (one short sentence).',
        "You are a meticulous reviewer of code training data.",
    )
    schema = schema_object({"consistent": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 240}})

    def __init__(self, template: PromptTemplate | None = None, params: SamplingParams | None = None, llm: LLMClient | None = None):
        self._setup(template, params, llm)

    def run(self, frame, cols):
        res = self.ask(frame, cols, schema=self.schema)
        return self.join_results(frame, res, [field_of("parsed", "consistent", pl.Boolean).alias(cols["verdict"]),
                                              field_of("parsed", "reason", pl.String).alias(cols["reason"])], f"{cols['verdict']}_meta")

    def output_columns(self, cols):
        return [cols["verdict"], cols["reason"], f"{cols['verdict']}_meta"]


@register
class CodeExtractor(Generator):
    """Extracts code from free text (a model reply, a Markdown answer, a forum post): the last
    fenced block of `language` (or untagged), else the whole text when it parses as Python.

    Reads: `text` (default `response`). Writes: `code` (String; null when there is none).
    Use it on replies produced by a generic generator before syntax checks or execution.
    """

    reads = {"text": "response"}
    writes = {"code": "code"}

    def __init__(self, language: str = "python"):
        self.language = language

    def run(self, frame, cols):
        lang = self.language
        return frame.with_columns(pl.col(cols["text"]).map_elements(lambda t: extract_code(t, lang), return_dtype=pl.String).alias(cols["code"]))
