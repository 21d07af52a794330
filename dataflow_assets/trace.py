"""`dataflow trace`: one row's journey through every stage of a pipeline.

For each stage (in call order) it reports whether the row is there, the columns whose value changed
or appeared, where and why it was dropped (from the stage's `_dropped` file), and for LLM stages the
model, prompt version, cache key, whether the answer came from the cache, the error if any, and the
exact prompt and response stored in the generation cache.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from dataflow_assets.factory import SOURCE
from dataflow_assets.pipelines import shipped
from operators.base import ID, Pipeline
from resources.storage import ParquetStore


def _find(store: ParquetStore, pipeline: str, stage: str, row_id: str, partition: str | None, dropped: bool = False) -> tuple[dict | None, str | None]:
    folder = store.base / pipeline / stage / ("_dropped" if dropped else "")
    files = [folder / f"{partition}.parquet"] if partition else sorted(folder.glob("*.parquet"))
    for f in files:
        if not f.exists():
            continue
        hit = pl.scan_parquet(f).filter(pl.col(ID) == row_id).collect()
        if hit.height:
            return hit.row(0, named=True), f.stem
    return None, None


def _twin(store: ParquetStore, pipeline: str, twin_id: str, partition: str | None, columns: list[str]) -> dict[str, Any]:
    """The row a dropped duplicate duplicates: its `_id`, partition and (from the source) the columns compared."""
    row, part = _find(store, pipeline, SOURCE, twin_id, partition)
    if row is None and partition:
        row, part = _find(store, pipeline, SOURCE, twin_id, None)
    twin: dict[str, Any] = {ID: twin_id, "partition": part or partition}
    if row is not None:
        twin.update({c: row[c] for c in columns if c in row})
    return twin


def _prompt_from_cache(cache_key: str | None) -> dict[str, Any] | None:
    if not cache_key:
        return None
    try:
        from resources.llm.cache import open_cache

        cache = open_cache(None)  # the store DATAFLOW_CACHE_URL names (PostgreSQL), else the home's SQLite file
        entry = cache.get_many([cache_key]).get(cache_key)
        messages = cache.prompt(cache_key)
    except Exception:  # noqa: BLE001 - tracing must work without a cache
        return None
    if not entry:
        return None
    return {"messages": messages, "response": entry.get("text")}


def trace_row(pipeline: str, row_id: str, partition: str | None = None, obj: Pipeline | None = None) -> list[dict[str, Any]]:
    """The row's journey through `pipeline` (a shipped pipeline's name, or pass the object as `obj`)."""
    stages = (obj or shipped()[pipeline].pipeline).trace()
    store = ParquetStore()
    steps: list[dict[str, Any]] = []
    row, part = _find(store, pipeline, SOURCE, row_id, partition)
    if row is None:
        raise KeyError(f"{pipeline}: no row with _id {row_id!r} in the source stage" + (f" of partition {partition}" if partition else ""))
    partition = partition or part
    upstream = getattr(obj or shipped()[pipeline].pipeline, "upstream", None)
    if upstream:  # the row came from another pipeline's export (same `_id`): its journey there first
        try:
            steps += [{**s, "stage": f"{upstream}/{s['stage']}"} for s in trace_row(upstream, row_id)]
        except KeyError:
            pass
    steps.append({"stage": SOURCE, "status": "present", "partition": partition, "values": row})
    seen: dict[str, dict] = {SOURCE: row}
    for st in stages:
        before = seen.get(st.upstream or SOURCE)
        if before is None:
            steps.append({"stage": st.name, "status": "absent (dropped upstream)"})
            continue
        now, _ = _find(store, pipeline, st.name, row_id, partition)
        step: dict[str, Any] = {"stage": st.name, "operator": type(st.operator).__name__}
        if now is None:
            dropped, _ = _find(store, pipeline, st.name, row_id, partition, dropped=True)
            if dropped is not None:
                step.update(status="dropped", reason=dropped.get("reason"))
                if dropped.get("duplicate_of"):  # a dedup stage names the row this one duplicates
                    step["duplicate_of"] = _twin(store, pipeline, dropped["duplicate_of"], dropped.get("duplicate_partition") or partition, st.reads)
            else:
                step.update(status="missing (stage not materialised for this partition?)")
            steps.append(step)
            continue
        seen[st.name] = now
        changed = {k: v for k, v in now.items() if k not in before or before[k] != v}
        step.update(status="present", changed={k: v for k, v in changed.items() if not k.endswith("_meta")})
        llm = []
        for col, meta in now.items():
            if col.endswith("_meta") and isinstance(meta, dict) and "cache_key" in meta:
                info = {"column": col.removesuffix("_meta"), **meta}
                cached = _prompt_from_cache(meta.get("cache_key"))
                if cached:
                    info.update(cached)
                llm.append(info)
        if llm:
            step["llm"] = llm
        steps.append(step)
    return steps


def format_trace(steps: list[dict[str, Any]], width: int = 200) -> str:
    def short(v: Any) -> str:
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        return text if len(text) <= width else text[: width - 3] + "..."

    lines = []
    for s in steps:
        head = f"[{s['stage']}] {s['status']}" + (f" ({s.get('operator')})" if s.get("operator") else "")
        if s.get("reason"):
            head += f": {s['reason']}"
        twin = s.get("duplicate_of")
        if twin:
            head += f", duplicate of {twin[ID]} (partition {twin.get('partition')})"
        lines.append(head)
        for k, v in (twin or {}).items():
            if k not in (ID, "partition"):
                lines.append(f"    twin {k} = {short(v)}")
        for k, v in (s.get("values") or s.get("changed") or {}).items():
            lines.append(f"    {k} = {short(v)}")
        for call in s.get("llm", []):
            lines.append(
                f"    llm[{call['column']}]: model={call.get('model')} template={call.get('template')} "
                f"cached={call.get('cached')} error={call.get('error')} key={call.get('cache_key')}"
            )
            if call.get("messages"):
                for m in call["messages"]:
                    lines.append(f"      {m.get('role')}: {short(m.get('content'))}")
            if call.get("response") is not None:
                lines.append(f"      response: {short(call['response'])}")
    return "\n".join(lines)
