"""A pipeline with two LLM stages whose `llm` resource talks to the loopback test server
(`TEST_LLM_BASE_URL`); importable by Dagster's multiprocess executor and re-execution."""

import os

import dagster as dg
import polars as pl

from dataflow_assets.factory import pipeline_assets
from operators.base import Pipeline
from operators.core.evaluate import LLMJudgeEvaluator
from operators.core.generate import PromptedTextGenerator
from operators.llm import PromptTemplate
from resources.llm import LLMResource
from resources.storage import ParquetStore


class Answer(Pipeline):
    name = "answer"
    input_schema = {"question": pl.String}

    def __init__(self):
        self.answer = PromptedTextGenerator(PromptTemplate("answer", "Answer briefly: {question}"))
        self.judge = LLMJudgeEvaluator(min_score=1, max_score=5)

    def forward(self, frame):
        frame = self.answer(frame, output="answer")
        return self.judge(frame, instruction="question", response="answer")


ASSETS = pipeline_assets(Answer())


def resources():
    return {
        "store": ParquetStore(),
        "llm": LLMResource(backend="openai", base_url=os.environ.get("TEST_LLM_BASE_URL", "http://127.0.0.1:9/v1"), model="echo", max_concurrency=4, timeout_s=10),
    }


defs = dg.Definitions(
    assets=ASSETS,
    resources=resources(),
    jobs=[dg.define_asset_job("answer_stages", selection=dg.AssetSelection.assets(*[a for a in ASSETS if a.key.path[-1] != "catalog"]))],
)


def stages_job():
    return defs.resolve_job_def("answer_stages")
