"""Benchmark decontamination: word n-gram overlap with benchmark test sets (GSM8K test, MATH, and
any file the user names), as in the GPT-3 / Llama decontamination reports, all in Polars.

A benchmark file is jsonl / json / parquet / csv; its text is every present column among
`question`, `problem`, `instruction`, `prompt`, `text` (or the `fields` given).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import polars as pl

from operators.base import Filter, register

TEXT_FIELDS = ("question", "problem", "instruction", "prompt", "text")


def shared_data_dir() -> Path:
    """`$DATAFLOW_SHARED_DATA`, else `../shared/data` beside the repository."""
    env = os.environ.get("DATAFLOW_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def default_benchmarks() -> dict[str, str]:
    """Benchmark name -> file for the test sets found on this machine: `$DATAFLOW_BENCHMARKS`
    (comma-separated `name=path` or paths) when set, else GSM8K test and MATH test under the
    shared data folder, when present."""
    env = os.environ.get("DATAFLOW_BENCHMARKS")
    if env:
        out = {}
        for item in filter(None, (x.strip() for x in env.split(","))):
            name, _, path = item.rpartition("=")
            out[name or Path(path).stem] = path
        return out
    base = shared_data_dir()
    candidates = {"gsm8k_test": base / "gsm8k" / "test.jsonl", "math_test": base / "math" / "test.jsonl"}
    return {k: str(v) for k, v in candidates.items() if v.is_file()}


def normalize(text: pl.Expr) -> pl.Expr:
    """Lowercase words of letters and digits, single-spaced (punctuation and LaTeX marks dropped)."""
    return text.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


def ngrams(text: pl.Expr, n: int) -> pl.Expr:
    """List of the distinct word `n`-grams of the normalised text; a text shorter than `n` words
    yields itself as its only gram (so short questions are matched exactly)."""
    norm = normalize(text)
    words = norm.str.split(" ")
    grams = words.list.eval(
        pl.concat_str([pl.element().shift(-k) for k in range(n)], separator=" ").drop_nulls()
    ).list.unique()
    return pl.when(words.list.len() >= n).then(grams).otherwise(pl.concat_list(norm))


def _read_any(path: Path) -> pl.DataFrame:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return pl.read_ndjson(path, infer_schema_length=None)
    if name.endswith(".json"):
        return pl.read_json(path, infer_schema_length=None)
    if name.endswith(".parquet"):
        return pl.read_parquet(path)
    if name.endswith(".csv"):
        return pl.read_csv(path, infer_schema_length=None)
    raise ValueError(f"{path}: benchmark files must be .jsonl, .json, .parquet or .csv")


@lru_cache(maxsize=32)
def _benchmark_grams(path: str, mtime: float, n: int, fields: tuple[str, ...]) -> pl.Series:
    frame = _read_any(Path(path))
    present = [f for f in fields if f in frame.columns and frame.schema[f] == pl.String]
    if not present:
        raise ValueError(f"{path}: none of the text fields {list(fields)} found (columns: {frame.columns})")
    texts = pl.concat([frame.select(pl.col(f).alias("t")) for f in present]).drop_nulls()
    return texts.select(ngrams(pl.col("t"), n).alias("g")).explode("g").get_column("g").drop_nulls().unique()


def benchmark_ngrams(path: str | os.PathLike, n: int, fields: Sequence[str] = TEXT_FIELDS) -> pl.Series:
    """The distinct word n-grams of one benchmark file (cached per file version)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"benchmark file not found: {p}")
    return _benchmark_grams(str(p.resolve()), p.stat().st_mtime, n, tuple(fields))


def overlap_share(frame: pl.DataFrame, column: str, grams: pl.Series, n: int) -> pl.Series:
    """For each row, the share of its text's n-grams that occur in `grams` (0.0 for null text)."""
    if frame.height == 0:
        return pl.Series(column, [], dtype=pl.Float64)
    rows = frame.select(pl.int_range(pl.len()).alias("__row"), ngrams(pl.col(column), n).alias("__g"))
    hits = (
        rows.explode("__g")
        .with_columns(pl.col("__g").is_in(grams.implode()).alias("__hit"))
        .group_by("__row")
        .agg((pl.col("__hit").sum() / pl.col("__g").count()).alias("__share"))
    )
    return rows.join(hits, on="__row", how="left", maintain_order="left").get_column("__share").fill_nan(0.0).fill_null(0.0)


def contamination(frame: pl.DataFrame, columns: Sequence[str], benchmarks: Mapping[str, str], n: int, threshold: float) -> tuple[pl.Series, pl.Series]:
    """(max overlap share over columns and benchmarks, name of the first benchmark reaching
    `threshold` or null) per row."""
    best = pl.Series("overlap", [0.0] * frame.height, dtype=pl.Float64)
    hit = pl.Series("benchmark", [None] * frame.height, dtype=pl.String)
    for name, path in benchmarks.items():
        grams = benchmark_ngrams(path, n)
        for col in columns:
            share = overlap_share(frame, col, grams, n)
            hit = pl.select(pl.when(hit.is_null() & (share >= threshold)).then(pl.lit(name)).otherwise(hit)).to_series()
            best = pl.select(pl.max_horizontal(best, share)).to_series()
    return best.alias("overlap"), hit.alias("benchmark")


@register
class NgramContaminationFilter(Filter):
    """Drops rows that overlap a benchmark test set: the share of a text's word `n`-grams
    (lowercased, punctuation dropped) found in the benchmark reaches `threshold` (a text shorter
    than `n` words must match a benchmark text exactly).

    Reads: `text` (default `question`) and optional `text2` (e.g. the solution; both are
    checked). Writes: optional `overlap` (Float64, the highest share). Drop reason:
    `contaminated:<benchmark>`. `benchmarks` maps a name to a file (jsonl/json/parquet/csv with
    a question/problem/instruction/prompt/text field); default: `$DATAFLOW_BENCHMARKS`, else
    the GSM8K and MATH test sets under the shared data folder when present. The report's
    `extra` lists the benchmarks used and their n-gram counts.
    Use it before exporting training data, so evaluation on those benchmarks stays honest.
    """

    reads = {"text": "question", "text2": None}
    writes = {"overlap": None}

    def __init__(self, benchmarks: Mapping[str, str] | Sequence[str] | None = None, n: int = 8, threshold: float = 0.5):
        if n < 1 or not 0.0 < threshold <= 1.0:
            raise ValueError("n must be >= 1 and threshold in (0, 1]")
        if benchmarks is None:
            benchmarks = default_benchmarks()
        elif not isinstance(benchmarks, Mapping):
            benchmarks = {Path(p).stem: str(p) for p in benchmarks}
        self.benchmarks = {str(k): str(v) for k, v in benchmarks.items()}
        self.n, self.threshold = n, threshold

    def run(self, frame, cols):
        columns = [c for c in (cols["text"], cols.get("text2")) if c]
        overlap, bench = contamination(frame, columns, self.benchmarks, self.n, self.threshold)
        self.last_report.extra["benchmarks"] = {k: {"path": v, "ngrams": benchmark_ngrams(v, self.n).len()} for k, v in self.benchmarks.items()}
        marked = frame.with_columns(overlap.alias("__overlap"), bench.alias("__bench"))
        names = bench.drop_nulls().unique(maintain_order=True).to_list()
        keep = {f"contaminated:{b}": pl.col("__bench").ne_missing(b) for b in names}
        out = self.apply_keep(marked, keep or {"contaminated": pl.lit(True)})
        out = out.drop("__bench")
        return out.rename({"__overlap": cols["overlap"]}) if cols.get("overlap") else out.drop("__overlap")
