"""LLM serving: one Dagster resource (`LLMResource`), one client contract (`operators.llm.LLMClient`).

- `make_client(backend, ...)`: a client without Dagster (notebooks, tests);
- `OpenAIClient`: any OpenAI-compatible endpoint (cache, retries, structured output);
- `GenerationCache`: the content-addressed SQLite cache under `$DATAFLOW_HOME/cache/llm.sqlite`;
- `llamacpp_server` / `vllm_server` / `ManagedServer`: managed server subprocesses.
"""

from .cache import GenerationCache, cache_key, default_cache_path
from .openai_backend import CallError, ClientStats, OpenAIClient, Redactor
from .resource import BACKENDS, LLMResource, make_client
from .servers import (
    ManagedServer,
    ServerStartError,
    default_threads,
    find_smollm2_gguf,
    gguf_identity,
    llama_cpp_installed,
    llamacpp_server,
    managed,
    vllm_installed,
    vllm_server,
)

__all__ = [
    "BACKENDS",
    "CallError",
    "ClientStats",
    "GenerationCache",
    "LLMResource",
    "ManagedServer",
    "OpenAIClient",
    "Redactor",
    "ServerStartError",
    "cache_key",
    "default_cache_path",
    "default_threads",
    "find_smollm2_gguf",
    "gguf_identity",
    "llama_cpp_installed",
    "llamacpp_server",
    "make_client",
    "managed",
    "vllm_installed",
    "vllm_server",
]
