"""Partitions definitions: one dynamic partition per input shard (a file, or a row slice of one)."""

import dagster as dg


def shard_partitions(pipeline: str) -> dg.DynamicPartitionsDefinition:
    """Input shards of `pipeline`; the input sensor and `dataflow run` add keys from the shard registry."""
    return dg.DynamicPartitionsDefinition(name=f"{pipeline}_shards")
