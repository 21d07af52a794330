"""The single place where Dagster `Definitions` are assembled: every shipped pipeline's assets and
checks, the resources for the environment (`DATAFLOW_ENV`: local | openai), and the executor."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from dataflow_assets.pipelines import shipped
from resources.storage import ParquetStore


def resources_for_env(env: str | None = None) -> dict[str, Any]:
    """Resources by environment: `local` serves the embedded llama.cpp model; `openai` talks to any
    OpenAI-compatible endpoint configured by environment variables (the key never leaves `EnvVar`)."""
    from resources.llm import LLMResource

    env = env or os.environ.get("DATAFLOW_ENV", "local")
    if env == "local":
        return {"store": ParquetStore(), "llm": LLMResource()}
    if env == "openai":
        return {
            "store": ParquetStore(),
            "llm": LLMResource(
                backend="openai",
                base_url=dg.EnvVar("DATAFLOW_LLM_BASE_URL"),
                model=dg.EnvVar("DATAFLOW_LLM_MODEL"),
                api_key=dg.EnvVar("DATAFLOW_LLM_API_KEY"),
            ),
        }
    raise ValueError(f"DATAFLOW_ENV={env!r}: expected 'local' or 'openai'")


def build_definitions() -> dg.Definitions:
    assets = [a for spec in shipped().values() for a in spec.assets]
    return dg.Definitions(
        assets=assets,
        resources=resources_for_env(),
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )


defs = build_definitions()
