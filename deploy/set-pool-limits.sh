#!/usr/bin/env bash
# Store the concurrency-pool limits in the instance (PostgreSQL). dagster.yaml can only set a
# default for every pool, so run this once per deployment (and after changing the vLLM fleet):
#   DAGSTER_HOME=/opt/dagster/dagster_home deploy/set-pool-limits.sh
#
# llm             at most this many LLM stage steps at once, across all runs. Each step already sends
#                 its rows concurrently (LLMResource), so keep llm x per-step concurrency close to
#                 what the vLLM replicas can batch: replicas x --max-num-seqs.
# duckdb_catalog  the catalog refresh writes one DuckDB file: one at a time.
set -euo pipefail
DAGSTER=${DAGSTER:-dagster}
"$DAGSTER" instance concurrency set llm "${DATAFLOW_LLM_POOL_LIMIT:-8}"
"$DAGSTER" instance concurrency set duckdb_catalog 1
"$DAGSTER" instance concurrency get --all 2>/dev/null || "$DAGSTER" instance concurrency get llm
