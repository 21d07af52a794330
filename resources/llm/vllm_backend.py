"""An in-process vLLM client (`vllm.LLM`), lazily imported: nothing breaks where vllm is absent.

For most uses prefer the managed `vllm serve` subprocess (`servers.vllm_server`) with the
OpenAI-compatible client: it isolates CUDA state from the Dagster process. This client shares
the generation cache and the result contract:

- requests that miss the cache go to the engine in chunks of `chunk_size`; each chunk's answers
  are committed to the cache as soon as it completes, so a killed run keeps every finished chunk;
- `latency_s` per row is the engine's own measure for that request (arrival to finish, from
  `RequestOutput.metrics`) when it reports one, else the wall time of the row's chunk (the time
  from submitting the row to having its answer), never the whole batch's time;
- replies cut off at max_tokens (finish_reason "length") are `truncated` row errors unless
  `accept_truncated=True`.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Sequence

from operators.llm import LLMRequest, LLMResult

from .cache import cache_key, open_cache
from .openai_backend import ClientStats, extract_json, validate


def _engine_latency(output: Any) -> float | None:
    """Arrival-to-finish seconds from a vLLM `RequestOutput.metrics`, when the engine reports it."""
    m = getattr(output, "metrics", None)
    arrival, finished = getattr(m, "arrival_time", None), getattr(m, "finished_time", None) or getattr(m, "last_token_time", None)
    if isinstance(arrival, (int, float)) and isinstance(finished, (int, float)) and finished >= arrival:
        return float(finished - arrival)
    return None


class VLLMClient:
    """`LLMClient` on an in-process `vllm.LLM(model, **llm_kwargs)`.

    `engine`: an already built `vllm.LLM` to use instead of building one; `chunk_size`: rows per
    engine call (each chunk is persisted when it completes); `identity` overrides the cache
    identity (default `vllm:<model>` plus a hash of `llm_kwargs` and the `revision`).
    """

    def __init__(
        self,
        model: str,
        *,
        cache: Any = None,
        home: str | None = None,
        identity: str | None = None,
        revision: str | None = None,
        chunk_size: int = 256,
        accept_truncated: bool = False,
        engine: Any = None,
        **llm_kwargs: Any,
    ):
        self.model_name = model
        if identity is None:
            cfg = hashlib.sha256(json.dumps(llm_kwargs, sort_keys=True, default=repr).encode()).hexdigest()[:12] if llm_kwargs else ""
            identity = f"vllm:{model}" + (f":{cfg}" if cfg else "") + (f"@rev={revision}" if revision else "")
        self.model = identity
        self.cache = open_cache(cache, home)
        self.llm_kwargs = llm_kwargs
        self.chunk_size = max(1, int(chunk_size))
        self.accept_truncated = accept_truncated
        self._llm = engine
        self.stats_ = ClientStats()

    def _engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as err:
                raise ModuleNotFoundError("vllm is not installed: pip install 'dataflow[vllm]'") from err
            self._llm = LLM(model=self.model_name, **self.llm_kwargs)
        return self._llm

    def _sampling(self, req: LLMRequest):
        import vllm

        p = req.params
        kw: dict[str, Any] = dict(temperature=p.temperature, max_tokens=p.max_tokens, top_p=p.top_p, seed=p.seed + req.sample, stop=list(p.stop) or None)
        for name in ("top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            if getattr(p, name) is not None:
                kw[name] = getattr(p, name)
        for name, value in (req.extra_body or {}).items():  # vLLM's extra sampling fields (top_k, ...)
            kw.setdefault(name, value)
        if req.schema is not None:
            so = getattr(vllm.sampling_params, "StructuredOutputsParams", None)
            if so is not None:
                kw["structured_outputs"] = so(json=dict(req.schema))
            else:
                kw["guided_decoding"] = vllm.sampling_params.GuidedDecodingParams(json=dict(req.schema))
        return vllm.SamplingParams(**kw)

    def stats(self) -> dict[str, Any]:
        return self.stats_.to_dict()

    def _result(self, req: LLMRequest, key: str, output: Any, chunk_wall_s: float) -> LLMResult:
        comp = output.outputs[0]
        res = LLMResult(
            id=req.id, sample=req.sample, text=comp.text, finish_reason=comp.finish_reason,
            tokens_in=len(output.prompt_token_ids or []), tokens_out=len(comp.token_ids),
            latency_s=_engine_latency(output) or chunk_wall_s, model=self.model, cache_key=key,
        )
        if comp.finish_reason == "length" and not self.accept_truncated:
            res.error = "truncated"
            res.error_detail = f"reply cut off at max_tokens={req.params.max_tokens} (finish_reason 'length')"
        elif req.schema is not None:
            try:
                val = extract_json(comp.text)
                problem = validate(req.schema, val)
            except (json.JSONDecodeError, ValueError) as err:
                val, problem = None, f"not JSON: {err}"
            if problem:
                res.error, res.error_detail = "schema", problem
            else:
                res.parsed = val
        if res.error:
            self.stats_.error(res.error)
        self.stats_.add(tokens_in=res.tokens_in, tokens_out=res.tokens_out)
        return res

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        reqs = list(requests)
        keys = [cache_key(self.model, r, mode="vllm") for r in reqs]
        hits = self.cache.lookup(reqs, keys) if self.cache is not None else {}
        out: list[LLMResult | None] = [hits.get(i) for i in range(len(reqs))]
        # one generation per distinct key; copies fan out to repeated requests
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if i not in hits:
                first.setdefault(k, i)
        todo = list(first.values())
        self.stats_.add(requests=len(reqs), cache_hits=len(hits), generations=len(todo))
        if todo:
            llm = self._engine()
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                t0 = time.perf_counter()
                gens = llm.chat([list(reqs[i].messages) for i in chunk], [self._sampling(reqs[i]) for i in chunk], use_tqdm=False)
                wall = time.perf_counter() - t0
                done = [self._result(reqs[i], keys[i], g, wall) for i, g in zip(chunk, gens)]
                for i, res in zip(chunk, done):
                    out[i] = res
                if self.cache is not None:  # this chunk is durable before the next one starts
                    self.cache.put_many(done, prompts={keys[i]: reqs[i].messages for i in chunk})
            for i, k in enumerate(keys):
                if out[i] is None:
                    res = out[first[k]]
                    out[i] = LLMResult(**{**res.__dict__, "id": reqs[i].id, "sample": reqs[i].sample})
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self._llm = None
