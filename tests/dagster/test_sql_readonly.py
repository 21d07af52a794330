"""`dataflow sql` is read-only (issue 10 §4): statements that write, install, load, attach or change
settings are refused with one line before anything runs, and the DuckDB session itself is locked
down (no file access outside DATAFLOW_HOME, no extensions, configuration locked), so a statement
that slips past the statement check still cannot write or read outside the home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def catalog(dataflow_home):
    from resources.storage import ParquetStore

    store = ParquetStore()
    store.write("p", "stage", "k0", pl.DataFrame({"_id": ["a", "b"], "x": [1, 2]}))
    store.refresh_catalog("p", ["stage"])
    return store.catalog_path


def _sql(home: Path, query: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATAFLOW_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "dataflow_assets.cli", "sql", query], cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_statements_that_are_not_reads_are_refused_in_one_line(dataflow_home, catalog, tmp_path):
    out_csv = dataflow_home / "out.csv"  # even inside the home: sql never writes
    refused = {
        f"copy (select 1) to '{out_csv}'": "COPY",
        f"export database '{dataflow_home / 'dump'}'": "EXPORT",
        "install httpfs": "LOAD",
        "load httpfs": "LOAD",
        f"attach '{tmp_path / 'other.duckdb'}' as other": "ATTACH",
        "set enable_external_access = true": "SET",
        "create table t as select 1": "CREATE",
        "select 1; copy (select 1) to 'x.csv'": "COPY",  # several statements: nothing runs if one is refused
    }
    for query, kind in refused.items():
        res = _sql(dataflow_home, query, tmp_path)
        assert res.returncode == 2, (query, res.stdout, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "refused" in lines[0] and f"{kind} statement" in lines[0], (query, res.stderr)
        assert "Traceback" not in res.stderr and res.stdout == ""
    assert not out_csv.exists() and not (dataflow_home / "dump").exists() and not (tmp_path / "x.csv").exists()
    assert not (tmp_path / "other.duckdb").exists()


def test_reads_outside_the_home_are_refused(dataflow_home, catalog, tmp_path):
    for query in ("select * from read_csv('/etc/passwd')", "select * from read_text('/etc/hostname')"):
        res = _sql(dataflow_home, query, tmp_path)
        assert res.returncode == 2 and "refused" in res.stderr and "Permission" in res.stderr, res.stderr
        assert "root:" not in res.stdout and "Traceback" not in res.stderr


def test_reads_and_several_statements_show_each_result(dataflow_home, catalog, tmp_path):
    res = _sql(dataflow_home, "select sum(x) as total from p.stage; describe p.stage; show all tables", tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("-- [") == 3 and "total" in res.stdout and "column_name" in res.stdout
    assert f"DATAFLOW_HOME={dataflow_home}" in res.stderr
    bad = _sql(dataflow_home, "selec 1", tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "bad SQL" in bad.stderr
    missing = _sql(dataflow_home, "select * from p.nope", tmp_path)
    assert missing.returncode == 2 and "bad SQL" in missing.stderr and "show all tables" in missing.stderr


def test_the_session_itself_cannot_write_install_attach_or_unlock(dataflow_home, catalog, tmp_path):
    from dataflow_assets.cli import read_only_catalog

    con = read_only_catalog(catalog, dataflow_home)
    try:
        assert con.execute("select count(*) from p.stage").fetchone() == (2,)  # views over files in the home read
        for stmt in (
            f"copy (select 1) to '{tmp_path / 'x.csv'}'",  # (a COPY inside the home is refused by the statement check)
            f"export database '{tmp_path / 'dump'}'",
            "install httpfs",
            f"attach '{tmp_path / 'y.duckdb'}' as y",
            "select * from read_csv('/etc/passwd')",
            "set enable_external_access = true",
            "set lock_configuration = false",
            "reset allowed_directories",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(stmt)
        assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.duckdb").exists()
    finally:
        con.close()
