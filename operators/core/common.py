"""Shared machinery of the `core` operators (nothing here is registered).

`CoreLLMOperator` is the base of every LLM operator in this domain. Its prompt templates use
placeholders of three sorts, resolved in this order:

1. a *role* the operator reads (`{text}`, `{instruction}`, ...): filled from the column bound to
   that role at call time, so `Summarizer()(frame, text="body")` fills `{text}` from `body`;
2. a *prompt variable* from the configuration (`{target_language}`, `{labels}`, `{max_words}`...);
3. anything else names a frame column directly (so a user template may pull in extra columns;
   a missing one fails before any LLM call with a `ColumnError`).

Structured (JSON-schema) calls are re-validated here with `jsonschema`: a result that does not
parse or does not match the schema becomes an error of kind `schema` (in `error` and `meta.error`),
so operators only ever decode valid JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, ClassVar, Mapping

import jsonschema
import polars as pl

from operators.base import ID
from operators.llm import LLMClient, LLMOperator, PromptTemplate, SamplingParams

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.S)
_BAD = object()


def loads_loose(text: str | None) -> Any:
    """`json.loads`, tolerating a Markdown code fence around the JSON; `_BAD` when it fails."""
    if text is None:
        return _BAD
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return _BAD


def json_schema_to_dtype(schema: Mapping[str, Any]) -> pl.DataType:
    """The Polars dtype of values valid under a (simple) JSON schema.

    object with `properties` -> Struct, array with `items` -> List, string/enum -> String,
    integer -> Int64, number -> Float64, boolean -> Boolean. Anything else raises ValueError.
    """
    typ = schema.get("type")
    if isinstance(typ, list):  # ["string", "null"] and the like
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if len(non_null) == 1 else None
    if typ is None and "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        typ = "string"
    if typ == "object":
        props = schema.get("properties")
        if not props:
            raise ValueError("an object schema needs `properties` to map to a Polars struct")
        return pl.Struct({k: json_schema_to_dtype(v) for k, v in props.items()})
    if typ == "array":
        if "items" not in schema:
            raise ValueError("an array schema needs `items` to map to a Polars list")
        return pl.List(json_schema_to_dtype(schema["items"]))
    simple = {"string": pl.String, "integer": pl.Int64, "number": pl.Float64, "boolean": pl.Boolean}
    if typ in simple:
        return simple[typ]
    raise ValueError(f"cannot map JSON schema {dict(schema)!r} to a Polars dtype")


def validate_structured(res: pl.DataFrame, schema: Mapping[str, Any]) -> pl.DataFrame:
    """Check every successful result of `call_llm` against `schema`.

    `parsed` is used when the client filled it, else `text` is parsed (code fences tolerated).
    Invalid results get `parsed` null and error `schema` (also in `meta.error`).
    """
    if res.height == 0:
        return res
    validator = jsonschema.Draft202012Validator(schema)
    parsed: list[str | None] = []
    errors: list[str | None] = []
    for text, p, err in zip(res.get_column("text"), res.get_column("parsed"), res.get_column("error"), strict=True):
        if err is not None:
            parsed.append(None)
            errors.append(err)
            continue
        obj = json.loads(p) if p is not None else loads_loose(text)
        if obj is _BAD or not validator.is_valid(obj):
            parsed.append(None)
            errors.append("schema")
        else:
            parsed.append(json.dumps(obj, ensure_ascii=False))
            errors.append(None)
    err_s = pl.Series("error", errors, dtype=pl.String)
    return res.with_columns(
        pl.Series("parsed", parsed, dtype=pl.String),
        err_s,
        pl.col("meta").struct.with_fields(err_s.alias("error")),
    )


def field_of(parsed: str, name: str, dtype: pl.DataType) -> pl.Expr:
    """Decode one property of the JSON object in column `parsed`."""
    return pl.col(parsed).str.json_decode(pl.Struct({name: dtype})).struct.field(name)


class CoreLLMOperator(LLMOperator):
    """Base of the core LLM operators: template resolution, structured calls, joins on `_id`."""

    default_template: ClassVar[PromptTemplate]
    default_params: ClassVar[SamplingParams] = SamplingParams()

    def _setup(self, template: PromptTemplate | None, params: SamplingParams | None, llm: LLMClient | None) -> None:
        if template is not None and not isinstance(template, PromptTemplate):
            raise TypeError(f"{self.display_name}: template must be a PromptTemplate, got {type(template).__name__}")
        self.template = template or self.default_template
        self.params = params or self.default_params
        self.llm = llm

    # -- prompt -------------------------------------------------------------------------
    def prompt_vars(self) -> dict[str, Any]:
        """Configuration values a template may use as placeholders."""
        return {}

    def template_columns(self) -> list[str]:
        """Template placeholders that are neither roles nor prompt variables: frame columns."""
        known = set(self.reads) | set(self.prompt_vars())
        return [f for f in self.template.fields if f not in known]

    def input_columns(self, cols):
        own = super().input_columns(cols)
        seen = {c for _, c in own}
        return own + [(f"template field {f!r}", f) for f in self.template_columns() if f not in seen]

    def renderer(self, cols: Mapping[str, str | None], template: PromptTemplate | None = None) -> Callable[[dict[str, Any]], list[dict[str, str]]]:
        tpl = template or self.template
        roles = {role: cols.get(role) for role in self.reads}
        pvars = self.prompt_vars()
        extra = self.template_columns()

        def render(row: dict[str, Any]) -> list[dict[str, str]]:
            values: dict[str, Any] = {f: row[f] for f in extra if f in row}
            values.update(pvars)
            values.update({role: (row[col] if col else None) for role, col in roles.items()})
            return tpl.render(values)

        return render

    # -- calls --------------------------------------------------------------------------
    def ask(
        self,
        frame: pl.DataFrame,
        cols: Mapping[str, str | None],
        *,
        schema: Mapping[str, Any] | None = None,
        n: int = 1,
        template: PromptTemplate | None = None,
    ) -> pl.DataFrame:
        """`call_llm` with this operator's renderer; results de-duplicated on (`_id`, `sample`)
        and, with a schema, validated."""
        res = self.call_llm(frame, self.renderer(cols, template), schema=schema, n=n)
        res = res.unique(subset=[ID, "sample"], keep="first", maintain_order=True)
        return validate_structured(res, schema) if schema is not None else res

    def join_results(self, frame: pl.DataFrame, res: pl.DataFrame, exprs: list[pl.Expr], meta: str) -> pl.DataFrame:
        """Left-join per-row outputs (computed from `res` by `exprs`) and the provenance column
        `meta` onto `frame`, ON `_id`; rows whose call failed keep null outputs."""
        res = res.filter(pl.col("sample") == 0) if "sample" in res.columns else res
        right = res.select(ID, *exprs, pl.col("meta").alias(meta))
        clash = [c for c in right.columns if c != ID and c in frame.columns]
        return frame.drop(clash).join(right, on=ID, how="left", maintain_order="left")


def schema_object(properties: Mapping[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(required if required is not None else properties),
        "additionalProperties": False,
    }


# The reply-format sentence every score-judging prompt ends with (no placeholder text to copy:
# small models echo "<one sentence>" literally).
SCORE_REPLY = (
    'Reply with a JSON object with two keys: "score" (an integer from {min_score} to {max_score}) and '
    '"rationale" (one short sentence that explains the score).'
)


def score_schema(min_score: int, max_score: int) -> dict[str, Any]:
    """{"score": integer in [min, max], "rationale": short string}. The enum beside min/max lets
    grammar-constrained servers (llama.cpp) enforce the range, which they do not for min/max."""
    return schema_object(
        {
            "score": {
                "type": "integer",
                "minimum": min_score,
                "maximum": max_score,
                "enum": list(range(min_score, max_score + 1)),
            },
            "rationale": {"type": "string", "maxLength": 240},
        }
    )
