"""Quality gates: the checks every stage gets (schema, non-empty, unique `_id`) and domain gates that
a shipped pipeline attaches to one of its stages. They run inside the stage's materialisation (so
they see exactly the partition just written) and are declared `blocking`, so a failure stops the
stages downstream of that partition in the same run while other partitions go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import dagster as dg
import polars as pl

from operators.base import ID


@dataclass
class GateInput:
    """What a gate sees: the stage output for one partition, the partition's source row count, the
    columns the stage declares it writes and the rows the stage itself read."""

    frame: pl.DataFrame
    source_rows: int
    declared: list[str]  # columns the stage declares it writes
    input_rows: int | None = None  # rows the stage read (None: the source row count)


@dataclass
class Gate:
    """A named check on one stage's output. `fn` returns (passed, metadata)."""

    name: str
    description: str
    fn: Callable[[GateInput], tuple[bool, dict[str, Any]]]
    stage: str | None = None  # None: every stage
    blocking: bool = True

    def spec(self, key: dg.AssetKey) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.name, asset=key, description=self.description, blocking=self.blocking)

    def evaluate(self, key: dg.AssetKey, data: GateInput) -> dg.AssetCheckResult:
        passed, meta = self.fn(data)
        return dg.AssetCheckResult(
            asset_key=key,
            check_name=self.name,
            passed=bool(passed),
            severity=dg.AssetCheckSeverity.ERROR if self.blocking else dg.AssetCheckSeverity.WARN,
            metadata=meta,
        )


def _schema(d: GateInput) -> tuple[bool, dict[str, Any]]:
    missing = [c for c in [ID, *d.declared] if c not in d.frame.columns]
    return not missing, {"missing_columns": ", ".join(missing) or "none", "columns": len(d.frame.columns)}


def _non_empty(d: GateInput) -> tuple[bool, dict[str, Any]]:
    # judged against what the stage read: an empty input (an empty file, or a shard an upstream
    # filter emptied, whose own gate already said so) is not this stage's failure
    rows_in = d.source_rows if d.input_rows is None else d.input_rows
    return d.frame.height > 0 or rows_in == 0, {"rows": d.frame.height, "rows_in": rows_in, "source_rows": d.source_rows}


def _unique_id(d: GateInput) -> tuple[bool, dict[str, Any]]:
    dupes = d.frame.height - d.frame.get_column(ID).n_unique() if ID in d.frame.columns else d.frame.height
    return dupes == 0, {"duplicate_ids": int(dupes), "rows": d.frame.height}


STANDARD_GATES = [
    Gate("schema", "The stage output has `_id` and every column the stage declares it writes.", _schema),
    Gate("non_empty", "The stage output has at least one row when the stage read any.", _non_empty),
    Gate("unique_id", "No `_id` appears twice in the stage output.", _unique_id),
]


def kept_share_gate(stage: str, low: float, high: float, blocking: bool = True) -> Gate:
    """Share of the partition's source rows that survive to `stage` must lie in [low, high]:
    too low means a filter is misconfigured or the input is junk; too high means filters do nothing."""

    def fn(d: GateInput) -> tuple[bool, dict[str, Any]]:
        if not d.source_rows:  # an empty input: no share to judge
            return True, {"kept_share": 0.0, "band": f"[{low}, {high}]", "rows": 0, "source_rows": 0}
        share = d.frame.height / d.source_rows
        return low <= share <= high, {"kept_share": float(share), "band": f"[{low}, {high}]", "rows": d.frame.height}

    return Gate("kept_share_in_band", f"Share of source rows kept through {stage} lies in [{low}, {high}].", fn, stage, blocking)


def non_null_share_gate(stage: str, column: str, minimum: float, name: str | None = None, blocking: bool = True) -> Gate:
    """Share of rows with a non-null `column` (e.g. an LLM score) must be at least `minimum`."""

    def fn(d: GateInput) -> tuple[bool, dict[str, Any]]:
        if not d.frame.height:  # no rows to score (an empty input, or all dropped upstream): nothing is unscored
            return True, {f"{column}_share": 0.0, "minimum": minimum, "rows": 0}
        share = float(d.frame.get_column(column).is_not_null().mean() or 0.0)
        return share >= minimum, {f"{column}_share": share, "minimum": minimum, "rows": d.frame.height}

    return Gate(name or f"{column}_share", f"At least {minimum:.0%} of rows have {column}.", fn, stage, blocking)


def gates_for(stage: str, extra: list[Gate]) -> list[Gate]:
    return STANDARD_GATES + [g for g in extra if g.stage == stage]


__all__ = ["Gate", "GateInput", "STANDARD_GATES", "gates_for", "kept_share_gate", "non_null_share_gate"]
