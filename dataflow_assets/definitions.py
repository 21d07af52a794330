"""The single place where Dagster `Definitions` are assembled: every shipped pipeline's assets and
checks, the resources for the environment (`DATAFLOW_ENV`: local | openai), and the executor."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from dataflow_assets.factory import split_catalog
from dataflow_assets.pipelines import shipped
from sensors.inputs import input_sensor, nightly_schedule
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


def pipeline_jobs(spec) -> list[dg.UnresolvedAssetJobDefinition]:
    """`<pipeline>_stages` (source -> stages -> dataset of one partition) and `<pipeline>_catalog`."""
    stages, catalog = split_catalog(spec.assets)
    return [
        dg.define_asset_job(f"{spec.name}_stages", selection=dg.AssetSelection.assets(*stages), description=spec.description),
        dg.define_asset_job(f"{spec.name}_catalog", selection=dg.AssetSelection.assets(*catalog)),
    ]


def build_definitions() -> dg.Definitions:
    specs = shipped().values()
    return dg.Definitions(
        assets=[a for spec in specs for a in spec.assets],
        jobs=[job for spec in specs for job in pipeline_jobs(spec)],
        sensors=[input_sensor(spec.name) for spec in specs],
        schedules=[nightly_schedule(spec.name) for spec in specs],
        resources=resources_for_env(),
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )


defs = build_definitions()


def stages_job(pipeline: str) -> dg.JobDefinition:
    """The resolved `<pipeline>_stages` job (a reconstructable target for the multiprocess executor)."""
    return defs.resolve_job_def(f"{pipeline}_stages")


def catalog_job(pipeline: str) -> dg.JobDefinition:
    return defs.resolve_job_def(f"{pipeline}_catalog")
