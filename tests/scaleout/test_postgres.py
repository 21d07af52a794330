"""Scale-out storage: a Dagster instance configured by deploy/dagster.yaml on a real PostgreSQL server.

A throwaway PostgreSQL cluster (Debian's `postgresql` package: initdb + pg_ctl as an unprivileged
user, loopback port, password auth) backs runs, event logs and schedule/sensor state. The input
sensor (`sensors.inputs.input_sensor`) picks up two new files: one tick adds their dynamic partitions
and requests one run each; both runs execute with the multiprocess executor (steps in child
processes that reach PostgreSQL through the instance ref), and the test checks run records,
materialisations, check results and pool limits through the instance and directly in SQL.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
PIPELINE = "toy"  # tests/dagster/toy_defs.py
STAGE_ASSETS = ["source", "lower", "chars", "min_words", "dataset"]
PASSWORD = "dataflow-test"  # a throwaway cluster on loopback only


def _pg_bin(name: str) -> str | None:
    # Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in a temp dir, run as a non-root user (initdb refuses root)."""

    def __init__(self):
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed; CI installs them with .ci/setup-services.sh")
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no `postgres` user to own the test cluster")
            if not shutil.which("runuser"):
                pytest.skip("running as root without `runuser` to drop privileges for initdb")
        self.root = Path(tempfile.mkdtemp(prefix="dataflow-pg-"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sockets.mkdir()
        (self.root / "pw").write_text(PASSWORD + "\n")
        if self.user:
            for path in (self.root, self.sockets, self.root / "pw"):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self.port = _free_port()
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = (["runuser", "-u", self.user.pw_name, "--"] if self.user else []) + list(args)
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{self._log_tail()}")
        return proc

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""

    def start(self) -> "PostgresServer":
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={self.root / 'pw'}",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        opts = f"-p {self.port} -k {self.sockets} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        self.started = True
        return self

    def stop(self) -> None:
        try:
            if self.started:
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, db: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD, dbname=db)


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed (dev extra)")
    server = PostgresServer().start()
    try:
        con = server.connect()
        con.autocommit = True
        con.cursor().execute("create database dagster")
        con.close()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_instance(postgres: PostgresServer, dataflow_home: Path, monkeypatch):
    """DAGSTER_HOME with deploy/dagster.yaml (PostgreSQL storage, queued coordinator, concurrency)."""
    import dagster as dg

    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": PASSWORD,
        "DAGSTER_PG_DB": "dagster",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }.items():
        monkeypatch.setenv(name, value)
    config = yaml.safe_load(DEPLOY_YAML.read_text())
    assert "postgres" in config["storage"], "deploy/dagster.yaml must configure PostgreSQL storage"
    (dataflow_home / "dagster" / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    instance = dg.DagsterInstance.get()
    try:
        yield instance
    finally:
        instance.dispose()


def _sql(postgres: PostgresServer, query: str, *params) -> list[tuple]:
    con = postgres.connect("dagster")
    try:
        with con.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        con.close()


def test_deploy_config_on_postgres(pg_instance, postgres):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    inst = pg_instance
    assert isinstance(inst.run_storage, PostgresRunStorage)
    assert isinstance(inst.event_log_storage, PostgresEventLogStorage)
    assert isinstance(inst.schedule_storage, PostgresScheduleStorage)
    assert isinstance(inst.run_coordinator, QueuedRunCoordinator)
    queue = inst.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 16
    assert {limit["key"] for limit in queue.tag_concurrency_limits} >= {"dataflow/pipeline", "dagster/backfill"}
    # pool limits live in the instance (PostgreSQL); deploy/set-pool-limits.sh stores them with the CLI
    dagster_cli = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        ["bash", str(REPO / "deploy" / "set-pool-limits.sh")],
        env={**os.environ, "DAGSTER": str(dagster_cli), "DATAFLOW_LLM_POOL_LIMIT": "4"},
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name: p.limit for p in inst.event_log_storage.get_pool_limits()}.items() >= {"llm": 4, "duckdb_catalog": 1}.items()
    assert dict(_sql(postgres, "select concurrency_key, count(*) from concurrency_slots group by 1")) == {"llm": 4, "duckdb_catalog": 1}
    tables = {r[0] for r in _sql(postgres, "select tablename from pg_tables where schemaname = 'public'")}
    assert {"runs", "event_logs", "dynamic_partitions", "instigators", "jobs", "job_ticks", "concurrency_limits"} <= tables


def test_sensor_tick_and_two_partition_backfill_on_postgres(pg_instance, postgres, dataflow_home, tmp_path, monkeypatch):
    import dagster as dg
    from dagster import reconstructable

    from dataflow_assets.runner import QUIET
    from sensors.inputs import input_sensor
    from tests.dagster import toy_defs

    inst = pg_instance
    inbox = tmp_path / "inputs"
    monkeypatch.setenv("DATAFLOW_INPUTS", str(inbox))
    (inbox / PIPELINE).mkdir(parents=True)
    files = {
        "a.jsonl": ["One Two Three", "one", "Four five six seven"],
        "b.jsonl": ["alpha beta gamma", "delta epsilon zeta eta", "theta iota kappa", "x"],
    }
    for name, texts in files.items():
        (inbox / PIPELINE / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    # first sight: a file starts once its size and mtime held still for one tick; the next tick
    # turns both files into dynamic partitions and run requests
    sensor = input_sensor(PIPELINE, job_name="toy_stages")
    settling = sensor(dg.build_sensor_context(instance=inst, sensor_name=sensor.name))
    assert isinstance(settling, dg.SensorResult) and not settling.run_requests
    assert inst.get_dynamic_partitions(f"{PIPELINE}_shards") == []
    result = sensor(dg.build_sensor_context(instance=inst, sensor_name=sensor.name, cursor=settling.cursor))
    assert isinstance(result, dg.SensorResult)
    added = inst.get_dynamic_partitions(f"{PIPELINE}_shards")  # the sensor adds the partitions itself
    assert len(added) == 2
    requests = result.run_requests
    assert sorted(r.partition_key for r in requests) == sorted(added)
    # the next tick with the returned cursor finds nothing new
    again = sensor(dg.build_sensor_context(instance=inst, sensor_name=sensor.name, cursor=result.cursor))
    assert not again.run_requests

    # the backfill: one run per partition, steps in child processes (multiprocess executor)
    started = time.monotonic()
    run_ids = {}
    for req in requests:
        tags = {**req.tags, "dagster/partition": req.partition_key, "dataflow/pipeline": PIPELINE, "dataflow/backfill": "scaleout-test"}
        with dg.execute_job(reconstructable(toy_defs.stages_job), instance=inst, tags=tags, run_config=QUIET) as res:
            assert res.success, [e.message for e in res.all_events if e.is_failure]
            run_ids[req.partition_key] = res.run_id
    elapsed = time.monotonic() - started
    keys = sorted(run_ids)

    # through the instance
    records = inst.get_run_records(dg.RunsFilter(tags={"dataflow/backfill": "scaleout-test"}))
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == keys
    assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
    assert sorted(inst.get_dynamic_partitions(f"{PIPELINE}_shards")) == keys
    for stage in STAGE_ASSETS:
        assert inst.get_materialized_partitions(dg.AssetKey([PIPELINE, stage])) == set(keys), stage
    rows_out = {}
    for key in keys:
        [record] = inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey([PIPELINE, "min_words"]), asset_partitions=[key]), limit=1
        ).records
        rows_out[key] = record.asset_materialization.metadata["rows_out"].value
    assert sorted(rows_out.values()) == [2, 3]

    # directly in PostgreSQL
    runs = _sql(postgres, "select run_id, status from runs where run_id = any(%s)", list(run_ids.values()))
    assert sorted(s for _, s in runs) == ["SUCCESS", "SUCCESS"]
    mats = _sql(
        postgres,
        "select asset_key, partition, count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'"
        " and run_id = any(%s) group by 1, 2",
        list(run_ids.values()),
    )
    assert len(mats) == len(STAGE_ASSETS) * 2 and all(n == 1 for *_, n in mats)
    assert {p for _, p, _ in mats} == set(keys)
    assert {json.loads(a)[-1] for a, _, _ in mats} == set(STAGE_ASSETS)
    checks = _sql(
        postgres,
        "select count(*) from event_logs where dagster_event_type = 'ASSET_CHECK_EVALUATION' and run_id = any(%s)",
        list(run_ids.values()),
    )
    assert checks[0][0] == 2 * (3 * 3 + 1)  # schema/non_empty/unique_id on 3 stages + kept_share_in_band
    # the steps ran in the multiprocess executor's worker processes, not in the run's own process
    for run_id in run_ids.values():
        step_pids = {e.dagster_event.pid for e in inst.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)}
        run_pid = inst.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)[0].dagster_event.pid
        assert len(step_pids) == len(STAGE_ASSETS) and run_pid not in step_pids, (run_pid, step_pids)
    partitions = _sql(postgres, "select partition from dynamic_partitions where partitions_def_name = %s", f"{PIPELINE}_shards")
    assert sorted(p for (p,) in partitions) == keys
    print(f"two-partition backfill on PostgreSQL: {elapsed:.1f}s")

