"""An in-process vLLM client (`vllm.LLM`), lazily imported: nothing breaks where vllm is absent.

For most uses prefer the managed `vllm serve` subprocess (`servers.vllm_server`) with the
OpenAI-compatible client: it isolates CUDA state from the Dagster process. This client shares
the generation cache and the result contract.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from operators.llm import LLMRequest, LLMResult

from .cache import GenerationCache, cache_key, open_cache
from .openai_backend import ClientStats, extract_json, validate


class VLLMClient:
    def __init__(self, model: str, *, cache: GenerationCache | str | bool | None = None, home: str | None = None, identity: str | None = None, **llm_kwargs: Any):
        self.model_name = model
        self.model = identity or f"vllm:{model}"
        self.cache = open_cache(cache, home)
        self.llm_kwargs = llm_kwargs
        self._llm = None
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
        if req.schema is not None:
            so = getattr(vllm.sampling_params, "StructuredOutputsParams", None)
            if so is not None:
                kw["structured_outputs"] = so(json=dict(req.schema))
            else:
                kw["guided_decoding"] = vllm.sampling_params.GuidedDecodingParams(json=dict(req.schema))
        return vllm.SamplingParams(**kw)

    def stats(self) -> dict[str, Any]:
        return self.stats_.to_dict()

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        reqs = list(requests)
        keys = [cache_key(self.model, r, mode="vllm") for r in reqs]
        hits = self.cache.lookup(reqs, keys) if self.cache is not None else {}
        todo = [i for i in range(len(reqs)) if i not in hits]
        out: list[LLMResult | None] = [hits.get(i) for i in range(len(reqs))]
        self.stats_.add(requests=len(reqs), cache_hits=len(hits), generations=len(todo))
        if todo:
            llm = self._engine()
            t0 = time.perf_counter()
            gens = llm.chat([list(reqs[i].messages) for i in todo], [self._sampling(reqs[i]) for i in todo], use_tqdm=False)
            dt = time.perf_counter() - t0
            done = []
            for i, g in zip(todo, gens):
                req, comp = reqs[i], g.outputs[0]
                res = LLMResult(
                    id=req.id, sample=req.sample, text=comp.text, finish_reason=comp.finish_reason,
                    tokens_in=len(g.prompt_token_ids or []), tokens_out=len(comp.token_ids), latency_s=dt,
                    model=self.model, cache_key=keys[i],
                )
                if req.schema is not None:
                    try:
                        val = extract_json(comp.text)
                        problem = validate(req.schema, val)
                    except (json.JSONDecodeError, ValueError) as err:
                        val, problem = None, f"not JSON: {err}"
                    if problem:
                        res.error, res.error_detail = "schema", problem
                        self.stats_.error("schema")
                    else:
                        res.parsed = val
                self.stats_.add(tokens_in=res.tokens_in, tokens_out=res.tokens_out)
                out[i] = res
                done.append(res)
            if self.cache is not None:
                self.cache.put_many(done)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self._llm = None
