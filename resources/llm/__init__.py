"""LLM serving: one Dagster resource (`LLMResource`), one client contract (`operators.llm.LLMClient`).

- `make_client(backend, ...)`: a client without Dagster (notebooks, tests);
- `OpenAIClient`: any OpenAI-compatible endpoint (cache, retries, structured output);
- `GenerationCache`: the content-addressed SQLite cache under `$DATAFLOW_HOME/cache/llm.sqlite`;
  `PostgresGenerationCache` the same in PostgreSQL (`DATAFLOW_CACHE_URL=postgresql://...`);
- `llamacpp_server` / `vllm_server` / `ManagedServer`: managed server subprocesses;
  `SharedServer`: one server per host, reference-counted (`server_starts()` lists its starts).
"""

from .cache import CACHE_URL_ENV, GenerationCache, PostgresGenerationCache, cache_key, default_cache_path, open_cache
from .openai_backend import CallError, ClientStats, OpenAIClient, Redactor
from .resource import BACKENDS, LLMResource, make_client
from .servers import (
    ManagedServer,
    ServerStartError,
    SharedServer,
    default_threads,
    file_sha256,
    find_smollm2_gguf,
    gguf_identity,
    llama_cpp_installed,
    llamacpp_server,
    managed,
    server_starts,
    vllm_installed,
    vllm_server,
)

__all__ = [
    "BACKENDS",
    "CACHE_URL_ENV",
    "CallError",
    "ClientStats",
    "GenerationCache",
    "LLMResource",
    "ManagedServer",
    "OpenAIClient",
    "PostgresGenerationCache",
    "Redactor",
    "ServerStartError",
    "SharedServer",
    "cache_key",
    "default_cache_path",
    "default_threads",
    "file_sha256",
    "find_smollm2_gguf",
    "gguf_identity",
    "llama_cpp_installed",
    "llamacpp_server",
    "make_client",
    "managed",
    "open_cache",
    "server_starts",
    "vllm_installed",
    "vllm_server",
]
