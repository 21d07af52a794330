"""A small branching pipeline and its Definitions, importable by Dagster's multiprocess executor."""

import dagster as dg
import polars as pl

from dataflow_assets.checks import kept_share_gate
from dataflow_assets.factory import pipeline_assets
from operators.base import Evaluator, Filter, Pipeline, Refiner
from resources.storage import ParquetStore


class Lower(Refiner):
    """Lower-case `text` (test operator)."""

    def refine(self, text, cols):
        return text.str.to_lowercase()


class MinWords(Filter):
    """Keep rows with at least `n` words in `text` (test operator)."""

    reads = {"text": "text"}

    def __init__(self, n: int = 3):
        self.n = n

    def keep(self, cols):
        return pl.col(cols["text"]).str.split(" ").list.len() >= self.n


class Chars(Evaluator):
    """Write the character count of `text` (test operator)."""

    reads = {"text": "text"}
    writes = {"output": "chars"}

    def scores(self, cols):
        return [pl.col(cols["text"]).str.len_chars().alias(cols["output"])]


class Toy(Pipeline):
    name = "toy"
    input_schema = {"text": pl.String}

    def __init__(self, n: int = 3):
        self.lower = Lower()
        self.min_words = MinWords(n)
        self.chars = Chars()

    def forward(self, frame):
        low = self.lower(frame)
        self.chars(low)  # a side branch: runs in parallel with min_words under the multiprocess executor
        return self.min_words(low)


def toy_assets(n: int = 3, band=(0.2, 1.0)):
    return pipeline_assets(Toy(n), gates=[kept_share_gate("min_words", *band)])


ASSETS = toy_assets()
STAGES = dg.AssetSelection.assets(*[a for a in ASSETS if a.key.path[-1] != "catalog"])
defs = dg.Definitions(
    assets=ASSETS,
    resources={"store": ParquetStore()},
    jobs=[
        dg.define_asset_job("toy_stages", selection=STAGES),
        dg.define_asset_job("toy_catalog", selection=dg.AssetSelection.assets(ASSETS[-1])),
    ],
    executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
)


def stages_job():
    return defs.resolve_job_def("toy_stages")


def catalog_job():
    return defs.resolve_job_def("toy_catalog")
