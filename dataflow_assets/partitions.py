"""Partitions: one dynamic partition per input shard (a file, or a row slice of one).

A partition's truth lives in two records kept in step: the shard record (resources.storage.ShardRegistry:
which file and which rows) and Dagster's dynamic partition `<pipeline>_shards` (what the UI, sensors,
backfills and automation see). Every path that registers shards (`dataflow run`, the input sensor)
ends with `sync_partitions`, which adds the Dagster partition of every shard record that lacks one, and
reports Dagster partitions with no shard record (added by hand in the UI: nothing to read). Removal
(`dataflow partitions P --remove K`) deletes both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg


def shard_partitions(pipeline: str) -> dg.DynamicPartitionsDefinition:
    """Input shards of `pipeline`; the input sensor and `dataflow run` add keys from the shard registry."""
    return dg.DynamicPartitionsDefinition(name=partitions_name(pipeline))


def partitions_name(pipeline: str) -> str:
    return f"{pipeline}_shards"


@dataclass
class PartitionSync:
    added: list[str] = field(default_factory=list)  # shard records whose Dagster partition was missing
    orphans: list[str] = field(default_factory=list)  # Dagster partitions without a shard record


def sync_partitions(instance: dg.DagsterInstance, pipeline: str) -> PartitionSync:
    """Make Dagster's dynamic partitions of `pipeline` hold every shard record (in registration order);
    return what was added and the Dagster partitions that have no shard record."""
    from resources.storage import ShardRegistry

    records = ShardRegistry().in_registration_order(pipeline)
    known = set(instance.get_dynamic_partitions(partitions_name(pipeline)))
    missing = [k for k in records if k not in known]
    if missing:
        instance.add_dynamic_partitions(partitions_name(pipeline), missing)
    return PartitionSync(added=missing, orphans=sorted(known - set(records)))
