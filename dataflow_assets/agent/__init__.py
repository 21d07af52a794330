"""The pipeline agent: a natural-language request -> a verified pipeline in the user pipelines folder.

    from dataflow_assets.agent import build_pipeline
    result = build_pipeline("clean the text and drop duplicates", "data.jsonl", rows=10)
    result.path  # $DATAFLOW_HOME/pipelines/<name>.py, loaded by Definitions next to the shipped pipelines

See `core` (the loop), `catalog` (cards, intent, retrieval), `planners`, `plan` (schema, validation,
code) and `synth` (operator synthesis).
"""

from __future__ import annotations

from dataflow_assets.agent.core import AgentResult, build_pipeline, verify

__all__ = ["AgentResult", "build_pipeline", "verify"]
