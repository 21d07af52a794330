"""The LLM contract that operators code against (no Dagster, no HTTP here).

An `LLMClient` takes a batch of `LLMRequest`s, each tied to a row `_id` (and a sample index),
and returns one `LLMResult` per request. Results are matched back to rows by (`_id`, sample),
never by position. A failed request is a result with `error` set; it never fails the batch.

Implementations live in `resources/llm/` (OpenAI-compatible HTTP, managed llama.cpp / vLLM
servers) and share the generation cache in `resources/llm/cache.py`.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import polars as pl

from operators.base import ID, Generator, Operator, stable_hash

ERROR_KINDS = ("rate_limited", "server_error", "timeout", "connection", "bad_response", "schema", "client_error", "truncated")
"""Row error kinds. `truncated`: the reply was cut off at `max_tokens` (finish_reason "length"); not
cached, unless the client is told to accept truncated replies."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    # optional sampling settings: sent only when set (None = the server's default)
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt: `{column}` placeholders in `user` (and `system`) are filled per row.

    `version` is a hash of the text, so editing a prompt changes the stage's code_version and
    every generated row records which prompt produced it.
    """

    name: str
    user: str
    system: str | None = None

    @property
    def version(self) -> str:
        return f"{self.name}@{stable_hash(self.system, self.user, length=12)}"

    @property
    def fields(self) -> list[str]:
        names: list[str] = []
        for text in (self.system or "", self.user):
            for _, fname, _, _ in string.Formatter().parse(text):
                if fname and fname not in names:
                    names.append(fname)
        return names

    def render(self, values: Mapping[str, Any]) -> list[dict[str, str]]:
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": self.system.format_map(_Strs(values))})
        msgs.append({"role": "user", "content": self.user.format_map(_Strs(values))})
        return msgs


class _Strs(dict):
    def __getitem__(self, key):
        val = dict.__getitem__(self, key)
        if val is None:
            return ""
        return val if isinstance(val, str) else json.dumps(val, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class LLMRequest:
    id: str  # the row's `_id`
    messages: tuple[Mapping[str, str], ...] | list[Mapping[str, str]]
    params: SamplingParams = SamplingParams()
    schema: Mapping[str, Any] | None = None  # JSON schema for structured output
    sample: int = 0  # sample index when n > 1 (part of the cache key)
    # everything else that can change the answer is part of the request, hence of the cache key
    extra_body: Mapping[str, Any] | None = None  # merged into the request body (e.g. {"top_k": 1})
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: Any = None
    response_format: Mapping[str, Any] | None = None  # sent as is when no `schema` is given


@dataclass
class LLMResult:
    id: str
    sample: int = 0
    text: str | None = None
    parsed: Any = None  # the JSON value when a schema was given and it validated
    finish_reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    model: str = ""
    cache_key: str = ""
    cached: bool = False
    error: str | None = None  # one of ERROR_KINDS
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class LLMClient(Protocol):
    """What operators need from a model: a stable identity (for cache keys) and batch generation."""

    model: str

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]: ...


def summarize(results: Sequence[LLMResult]) -> dict[str, Any]:
    """Counters an operator reports as stage metadata."""
    errors: dict[str, int] = {}
    for r in results:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        "requests": len(results),
        "calls": sum(1 for r in results if not r.cached),
        "cache_hits": sum(1 for r in results if r.cached),
        "errors": errors,
        "tokens_in": sum(r.tokens_in for r in results if not r.cached),
        "tokens_out": sum(r.tokens_out for r in results if not r.cached),
    }


def _one_result_per_request(requests: Sequence[LLMRequest], results: Sequence[LLMResult], model: str) -> list[LLMResult]:
    """Exactly one result per (id, sample) requested, whatever the client returned: duplicates
    (first kept) and results for ids never asked are dropped, so joins on `_id` cannot multiply
    rows; a request left unanswered gets a `bad_response` error result, so it is reported and
    handled like any other failure instead of surfacing as a row with a null meta."""
    wanted = {(q.id, q.sample) for q in requests}
    out: dict[tuple[str, int], LLMResult] = {}
    for r in results:
        key = (r.id, r.sample)
        if key in wanted and key not in out:
            out[key] = r
    for q in requests:
        if (q.id, q.sample) not in out:
            out[(q.id, q.sample)] = LLMResult(
                id=q.id, sample=q.sample, model=model, error="bad_response", error_detail="the client returned no result for this request"
            )
    return list(out.values())


def check_unique_ids(frame: pl.DataFrame, who: str) -> None:
    """Refuse a frame whose `_id` column has repeats or nulls: LLM answers are joined back by `_id`,
    so a repeated id would hand one row another row's answer."""
    ids = frame.get_column(ID)
    nulls = ids.null_count()
    dup = frame.lazy().group_by(ID).agg(pl.len().alias("n")).filter(pl.col("n") > 1).sort("n", ID, descending=[True, False]).collect()
    if nulls or dup.height:
        shown = ", ".join(f"{k!r} x{n}" for k, n in dup.head(5).iter_rows())
        more = f" (and {dup.height - 5} more)" if dup.height > 5 else ""
        raise ValueError(
            f"{who}: `_id` must be unique to match LLM answers to rows; "
            + (f"{dup.height} repeated id(s): {shown}{more}" if dup.height else "")
            + ("; " if dup.height and nulls else "")
            + (f"{nulls} null id(s)" if nulls else "")
            + ". Give each row its own `_id` (e.g. operators.base.stable_hash of its content and position) before the LLM stage."
        )


META_DTYPE = pl.Struct(
    {
        "model": pl.String,
        "template": pl.String,
        "cache_key": pl.String,
        "cached": pl.Boolean,
        "error": pl.String,
    }
)


class LLMOperator(Operator):
    """Mixin for LLM-driven operators: holds the client, builds requests per row, joins results by `_id`.

    Subclasses call `self.generate_column(...)` from `run`. Provenance (model, template version,
    cache key, cached, error) lands in a struct column `<output>_meta` beside each output.
    """

    needs_llm: ClassVar[bool] = True
    template: PromptTemplate | None = None
    params: SamplingParams = SamplingParams()
    llm: LLMClient | None = None

    def version_parts(self) -> list[Any]:
        tpl = self.template
        return [*super().version_parts(), tpl.version if tpl else None, tpl.system if tpl else None, tpl.user if tpl else None]

    def _client(self) -> LLMClient:
        if self.llm is None:
            raise RuntimeError(
                f"{self.display_name}: no LLM client bound; pass llm=... or call pipeline.bind_llm(client)"
            )
        return self.llm

    def call_llm(
        self,
        frame: pl.DataFrame,
        render: Callable[[dict[str, Any]], list[dict[str, str]]],
        *,
        schema: Mapping[str, Any] | None = None,
        n: int = 1,
        params: SamplingParams | None = None,
        extra_body: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> pl.DataFrame:
        """One request per row (x `n` samples). Returns a frame keyed by (`_id`, `sample`) with
        `text`, `parsed` (JSON string), `error` and the provenance struct `meta`.

        A zero-row frame makes no call. Rows are matched by `_id`, never by position, so a frame
        whose `_id`s are not unique is refused (`ValueError`) rather than risk giving one row
        another row's answer.
        """
        if ID not in frame.columns:
            raise ValueError(f"{self.display_name}: LLM operators need the `_id` column to match results to rows")
        check_unique_ids(frame, self.display_name)
        params = params or self.params
        out_schema = {ID: pl.String, "sample": pl.Int64, "text": pl.String, "parsed": pl.String, "error": pl.String, "meta": META_DTYPE}
        if frame.height == 0:
            self.last_report.llm = summarize([])
            return pl.DataFrame(schema=out_schema)
        requests = [
            LLMRequest(
                id=row[ID], messages=render(row), params=params, schema=schema, sample=k,
                extra_body=extra_body, tools=tools, response_format=response_format,
            )
            for row in frame.iter_rows(named=True)
            for k in range(n)
        ]
        client = self._client()
        results = _one_result_per_request(requests, client.generate(requests), getattr(client, "model", ""))
        self.last_report.llm = summarize(results)
        template = self.template.version if self.template else None
        return pl.DataFrame(
            {
                ID: [r.id for r in results],
                "sample": [r.sample for r in results],
                "text": [r.text if r.ok else None for r in results],
                "parsed": [json.dumps(r.parsed, ensure_ascii=False) if r.ok and r.parsed is not None else None for r in results],
                "error": [r.error for r in results],
                "meta": [
                    {"model": r.model, "template": template, "cache_key": r.cache_key, "cached": r.cached, "error": r.error}
                    for r in results
                ],
            },
            schema=out_schema,
        )


class PromptedGenerator(LLMOperator, Generator):
    """Shared base for 'template over columns -> one new text column' generators (not registered)."""

    writes = {"output": "generated"}

    def input_columns(self, cols):
        return [(f, f) for f in self.template.fields] + super().input_columns(cols)

    def run(self, frame: pl.DataFrame, cols: dict[str, str | None]) -> pl.DataFrame:
        out = cols["output"]
        res = self.call_llm(frame, self.template.render)
        res = res.select(ID, pl.col("text").alias(out), pl.col("meta").alias(f"{out}_meta"))
        return frame.join(res, on=ID, how="left", maintain_order="left")

    def output_columns(self, cols):
        return [cols["output"], f"{cols['output']}_meta"]
