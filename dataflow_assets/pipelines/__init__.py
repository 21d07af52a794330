"""The shipped pipelines. Each module defines its `Pipeline` subclass and a `SPEC` naming it, its
quality gates and how input fields map to its columns; `definitions.py` turns every SPEC into assets."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from operators.base import Pipeline

MODULES = ["text_pt", "text_judge", "math_reasoning", "code", "text2sql", "text2sql_refine", "sft_filter", "sft_synth", "text2qa", "conversations", "conversation_filter", "knowledge", "agentic_rag"]


@dataclass
class ShippedPipeline:
    name: str
    build: Callable[[], Pipeline]
    description: str
    gates: list = field(default_factory=list)
    rename: dict[str, str] | None = None

    @cached_property
    def pipeline(self) -> Pipeline:
        return self.build()

    @cached_property
    def assets(self) -> list:
        from dataflow_assets.factory import pipeline_assets

        return pipeline_assets(self.pipeline, gates=self.gates, rename=self.rename)


def shipped() -> dict[str, ShippedPipeline]:
    specs = {}
    for mod in MODULES:
        spec = importlib.import_module(f"dataflow_assets.pipelines.{mod}").SPEC
        specs[spec.name] = spec
    # the user's pipelines ($DATAFLOW_HOME/pipelines, DATAFLOW_PIPELINES_PATH), e.g. written by `dataflow agent`
    from dataflow_assets.agent.user import user_pipelines

    specs.update(user_pipelines(set(specs)))
    return specs
