"""The single place where Dagster `Definitions` are assembled: every shipped pipeline's assets and
checks, its named jobs, sensors (input files and automation conditions: running by default) and
schedules (stopped by default), the resources for the environment (`DATAFLOW_ENV`: local | openai),
and the executor (in-process by default)."""

from __future__ import annotations

import functools
import os
from typing import Any

import dagster as dg

from dataflow_assets.factory import split_catalog
from dataflow_assets.pipelines import shipped
from sensors.inputs import automation_sensor, input_sensor, nightly_schedule
from resources.storage import ParquetStore


def resources_for_env(env: str | None = None) -> dict[str, Any]:
    """Resources by environment: `local` serves the embedded llama.cpp model (one server per host,
    shared by every step and run); `openai` talks to any OpenAI-compatible endpoint configured by
    environment variables (the key never leaves `EnvVar`). In both, `DATAFLOW_LLM_TIMEOUT` (s per
    attempt), `DATAFLOW_LLM_RETRIES`, `DATAFLOW_LLM_CONCURRENCY`, `DATAFLOW_LLM_ROW_DEADLINE` (s per
    row, retries included), `DATAFLOW_LLM_RETRY_BUDGET`, `DATAFLOW_LLM_ACCEPT_TRUNCATED`,
    `DATAFLOW_LLM_REVISION` and `DATAFLOW_CACHE_URL` (postgresql://... for a shared cache) apply
    when set (`resources.llm.resource.LLM_ENV_SETTINGS`)."""
    from resources.llm import LLMResource
    from resources.llm.resource import llm_settings_from_env

    env = env or os.environ.get("DATAFLOW_ENV", "local")
    settings = llm_settings_from_env()
    if env == "local":
        return {"store": ParquetStore(), "llm": LLMResource(**settings)}
    if env == "openai":
        return {
            "store": ParquetStore(),
            "llm": LLMResource(
                backend="openai",
                base_url=dg.EnvVar("DATAFLOW_LLM_BASE_URL"),
                model=dg.EnvVar("DATAFLOW_LLM_MODEL"),
                # a keyless local server (llama.cpp, vLLM) needs no key: only bind the EnvVar when it is set
                api_key=dg.EnvVar("DATAFLOW_LLM_API_KEY") if os.environ.get("DATAFLOW_LLM_API_KEY") else None,
                **settings,
            ),
        }
    raise ValueError(f"DATAFLOW_ENV={env!r}: expected 'local' or 'openai'")


def executor() -> dg.ExecutorDefinition:
    """In-process by default: every stage of a run executes in the run's own process, so a run the UI or
    a sensor launches costs one Python start, not one per step (`text_pt` on 2,000 docs: 48 s with a
    process per step). `DATAFLOW_EXECUTOR=multiprocess` gives each step its own process again (side
    branches in parallel); Kubernetes and Celery executors come from run config (`deploy/`)."""
    if os.environ.get("DATAFLOW_EXECUTOR", "in_process") == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": 2})
    return dg.in_process_executor


def pipeline_jobs(spec) -> list[dg.UnresolvedAssetJobDefinition]:
    """`<pipeline>_stages` (source -> stages -> dataset of one partition) and `<pipeline>_catalog`,
    tagged with the pipeline: every run of the pipeline, from the CLI, the UI or a sensor, is a run of one
    of these two named jobs, so the UI can re-execute it."""
    stages, catalog = split_catalog(spec.assets)
    tags = {"dataflow/pipeline": spec.name}
    return [
        dg.define_asset_job(f"{spec.name}_stages", selection=dg.AssetSelection.assets(*stages), description=spec.description, tags=tags),
        dg.define_asset_job(f"{spec.name}_catalog", selection=dg.AssetSelection.assets(*catalog), tags=tags,
                            description=f"Refresh the DuckDB views of {spec.name} and assemble its export."),
    ]


def build_definitions() -> dg.Definitions:
    specs = shipped().values()
    return dg.Definitions(
        assets=[a for spec in specs for a in spec.assets],
        jobs=[job for spec in specs for job in pipeline_jobs(spec)],
        sensors=[*(input_sensor(spec.name) for spec in specs), automation_sensor()],
        schedules=[nightly_schedule(spec.name) for spec in specs],
        resources=resources_for_env(),
        executor=executor(),
    )


@functools.cache
def _all_definitions() -> dg.Definitions:
    return build_definitions()


@dg.definitions
def dataflow_definitions() -> dg.Definitions:
    """What `dagster dev -w workspace.yaml` (`dataflow ui`) and the daemon load: every shipped pipeline.
    Built when Dagster asks, not at import, so the CLI can import this module and build only the
    pipeline it runs (a broken pipeline elsewhere does not stop it)."""
    return _all_definitions()


def __getattr__(name: str) -> Any:  # `from dataflow_assets.definitions import defs`: built on first use
    if name == "defs":
        return _all_definitions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def pipeline_definitions(pipeline: str) -> dg.Definitions:
    """One shipped pipeline's assets, named jobs and resources (what a CLI run executes): the same job
    names and asset keys as in the full definitions, so the UI re-executes its runs there."""
    spec = shipped()[pipeline]
    return dg.Definitions(assets=spec.assets, jobs=pipeline_jobs(spec), resources=resources_for_env(), executor=executor())


def stages_job(pipeline: str) -> dg.JobDefinition:
    """The resolved `<pipeline>_stages` job (a reconstructable target: `build_reconstructable_job`)."""
    return pipeline_definitions(pipeline).resolve_job_def(f"{pipeline}_stages")


def catalog_job(pipeline: str) -> dg.JobDefinition:
    return pipeline_definitions(pipeline).resolve_job_def(f"{pipeline}_catalog")
