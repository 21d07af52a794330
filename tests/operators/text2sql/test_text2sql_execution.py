"""Read-only SQL execution on real databases: hostile statements change nothing, leave no file and
are classified; every gold query of geography / restaurants is executed (with the known failures
of this data named); execution-accuracy comparison; Spider difficulty on Spider dev."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections import Counter

import pytest

from operators.text2sql.difficulty import components, spider_hardness
from operators.text2sql.execution import (
    ReadOnlyDatabase,
    connect_readonly,
    execute,
    extract_sql,
    has_top_level_order_by,
    results_match,
    statement_kind_ok,
)
from tests.conftest import shared


@pytest.fixture
def chinook(tmp_path):
    """A private copy of Chinook in an otherwise empty directory (to see any file appear)."""
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "chinook.sqlite"
    shutil.copyfile(shared("chinook", "Chinook_Sqlite.sqlite"), path)
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


HOSTILE = {
    "drop_table": ("DROP TABLE Album", "denied"),
    "update": ("UPDATE Artist SET Name = 'x'", "denied"),
    "delete": ("DELETE FROM Track", "denied"),
    "insert": ("INSERT INTO Genre (GenreId, Name) VALUES (999, 'x')", "denied"),
    "with_delete": ("WITH t AS (SELECT 1) DELETE FROM Track", "denied"),
    "attach": ("ATTACH DATABASE '{dir}/attached.db' AS x", "denied"),
    "writable_schema": ("PRAGMA writable_schema = 1", "denied"),
    "vacuum_into": ("VACUUM INTO '{dir}/copy.db'", "denied"),
    "create_temp": ("CREATE TEMP TABLE t AS SELECT * FROM Track", "denied"),
    "two_statements": ("SELECT 1; DROP TABLE Album", "denied"),
    "load_extension": ("SELECT load_extension('{dir}/evil.so')", "denied"),
    "runaway_cte": ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "timeout"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_statement_changes_nothing_leaves_no_file_and_is_classified(chinook, name):
    sql, expected = HOSTILE[name]
    before_sha, before_files = _sha(chinook), sorted(os.listdir(chinook.parent))
    cwd_before = sorted(os.listdir("."))
    res = execute(chinook, sql.format(dir=chinook.parent), timeout_s=0.5)
    assert res.status == expected, (res.status, res.error)
    assert _sha(chinook) == before_sha
    assert sorted(os.listdir(chinook.parent)) == before_files
    assert sorted(os.listdir(".")) == cwd_before
    assert execute(chinook, "SELECT count(*) FROM Album").rows == [(347,)]


def test_the_authorizer_denies_by_statement_kind_even_past_the_text_check(chinook):
    """The connection alone (no statement-kind check) still refuses every write, ATTACH and PRAGMA:
    a read-only URI would have let ATTACH create a file and PRAGMA writable_schema run."""
    conn = connect_readonly(chinook)
    for sql in ["DROP TABLE Album", "UPDATE Artist SET Name = 'x'", f"ATTACH '{chinook.parent}/a.db' AS a",
                "PRAGMA writable_schema = 1", "PRAGMA query_only = 0", "CREATE TABLE z (a)", "BEGIN IMMEDIATE"]:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(sql)
    conn.close()
    assert sorted(os.listdir(chinook.parent)) == ["chinook.sqlite"]
    # the reason it matters: a plain read-only connection lets ATTACH create a file
    plain = sqlite3.connect(f"{chinook.resolve().as_uri()}?mode=ro", uri=True)
    plain.execute(f"ATTACH '{chinook.parent}/leak.db' AS leak")
    plain.close()
    assert (chinook.parent / "leak.db").exists()


def test_row_cap_timeout_errors_and_statement_kinds(chinook):
    db = ReadOnlyDatabase(chinook, timeout_s=2, row_cap=100)
    capped = db.execute("SELECT * FROM Track")
    assert capped.status == "row_cap" and len(capped.rows) == 100
    ok = db.execute("SELECT Name FROM Genre ORDER BY GenreId LIMIT 2")
    assert ok.ok and ok.rows == [("Rock",), ("Jazz",)] and ok.columns == ["Name"]
    err = db.execute("SELECT nope FROM Genre")
    assert err.status == "error" and "no such column" in err.error
    assert db.execute("-- comment only").status == "denied"
    assert statement_kind_ok("  /* x */ with a as (select 1) select * from a") == (True, "")
    assert statement_kind_ok("(SELECT 1) UNION (SELECT 2)")[0]
    missing = execute(chinook.parent / "missing.sqlite", "SELECT 1")
    assert missing.status == "error" and "cannot open" in missing.error
    db.close()


def test_results_compare_like_execution_accuracy():
    assert results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")])  # row order ignored
    assert not results_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=True)
    assert results_match([(1.0,)], [(1,)]) and results_match([(0.1 + 0.2,)], [(0.3,)])
    assert results_match([("a", 1)], [(1, "a")])  # column permutation
    assert not results_match([(1,), (1,)], [(1,)])  # multiset, not set
    assert not results_match([(1,)], [(2,)]) and results_match([], [])
    assert has_top_level_order_by("SELECT a FROM t ORDER BY a") and not has_top_level_order_by("SELECT a FROM (SELECT a FROM t ORDER BY a)")
    assert extract_sql("Reasoning...\n```sql\nCREATE TABLE x(a)\n```\nso:\n```sql\nSELECT 1;\n```") == "SELECT 1"
    assert extract_sql("the answer is SELECT a FROM t; done") == "SELECT a FROM t"
    assert extract_sql("no sql here") is None


def _gold_queries(name: str) -> list[str]:
    data = json.loads(shared("text2sql_data", f"{name}.json").read_text())
    out = []
    for entry in data:
        variables = entry["sentences"][0]["variables"] if entry["sentences"] else {}
        for sql in entry["sql"]:
            for var in sorted(variables, key=len, reverse=True):
                sql = sql.replace(var, variables[var])
            out.append(sql)
    return out


def test_every_gold_sql_of_geography_and_restaurants_is_executed():
    report = {}
    for name in ("geography", "restaurants"):
        db = ReadOnlyDatabase(shared("text2sql_data", f"{name}-db.added-in-2020.sqlite"))
        results = [db.execute(q) for q in _gold_queries(name)]
        db.close()
        report[name] = (len(results), Counter(r.status for r in results), Counter(r.error for r in results if not r.ok))
    geo_n, geo_status, geo_errors = report["geography"]
    res_n, res_status, res_errors = report["restaurants"]
    print({k: (n, dict(s), dict(e)) for k, (n, s, e) in report.items()})
    assert geo_n == 259 and geo_status == Counter(ok=257, error=2)
    # SQLite has no `> ALL (subquery)`; one query selects a derived table's column it never exposes
    assert geo_errors == Counter({'near "ALL": syntax error': 1, "no such column: DERIVED_TABLEalias1.STATE_NAME": 1})
    assert res_n == 23 and res_status == Counter(ok=4, error=19)
    # the 2020 SQLite conversion names RESTAURANT's key RESTAURANT_ID; the gold SQL says RESTAURANT.ID
    assert res_errors == Counter({"no such column: RESTAURANTalias0.ID": 19})


SPIDER_HAND_LABELLED = {
    "SELECT count(*) FROM singer": "easy",
    "SELECT name ,  country ,  age FROM singer ORDER BY age DESC": "medium",
    "SELECT avg(age) ,  min(age) ,  max(age) FROM singer WHERE country  =  'France'": "medium",
    "SELECT name ,  country FROM singer WHERE song_name LIKE '%Hey%'": "medium",
    "SELECT count(*) FROM concert WHERE YEAR  =  2014 OR YEAR  =  2015": "medium",
    "SELECT T1.fname ,  T1.sex FROM student AS T1 JOIN has_pet AS T2 ON T1.stuid  =  T2.stuid GROUP BY T1.stuid HAVING count(*)  >  1": "medium",
    "SELECT T2.name FROM singer_in_concert AS T1 JOIN singer AS T2 ON T1.singer_id  =  T2.singer_id JOIN concert AS T3 ON T1.concert_id  =  T3.concert_id WHERE T3.year  =  2014": "hard",
    "SELECT country FROM singer WHERE age  >  40 INTERSECT SELECT country FROM singer WHERE age  <  30": "hard",
    "SELECT name FROM stadium EXCEPT SELECT T2.name FROM concert AS T1 JOIN stadium AS T2 ON T1.stadium_id  =  T2.stadium_id WHERE T1.year  =  2014": "hard",
    "SELECT name FROM stadium WHERE stadium_id NOT IN (SELECT stadium_id FROM concert)": "hard",
    "SELECT T1.model FROM CAR_NAMES AS T1 JOIN CARS_DATA AS T2 ON T1.MakeId  =  T2.Id WHERE T2.Weight  <  (SELECT avg(Weight) FROM CARS_DATA)": "extra",
    "SELECT T2.CountryName FROM CAR_MAKERS AS T1 JOIN COUNTRIES AS T2 ON T1.Country  =  T2.CountryId GROUP BY T1.Country ORDER BY Count(*) DESC LIMIT 1;": "extra",
    "SELECT T1.countryId ,  T1.CountryName FROM Countries AS T1 JOIN CAR_MAKERS AS T2 ON T1.CountryId  =  T2.Country GROUP BY T1.countryId HAVING count(*)  >  3 UNION SELECT T1.countryId ,  T1.CountryName FROM Countries AS T1 JOIN CAR_MAKERS AS T2 ON T1.CountryId  =  T2.Country JOIN MODEL_LIST AS T3 ON T2.Id  =  T3.Maker WHERE T3.Model  =  'fiat';": "extra",
}


def test_spider_difficulty_on_hand_labelled_spider_dev_examples():
    dev = {x["query"] for x in json.loads(shared("spider_dev", "dev.json").read_text())}
    assert set(SPIDER_HAND_LABELLED) <= dev  # the examples are real Spider dev queries
    got = {q: spider_hardness(q) for q in SPIDER_HAND_LABELLED}
    assert got == SPIDER_HAND_LABELLED
    c = components("SELECT T1.a FROM x AS T1 JOIN y AS T2 ON T1.id = T2.id WHERE T1.b IN (SELECT b FROM z) AND T2.c LIKE 'a%'")
    assert (c.joins, c.component2, c.component1) == (1, 1, 3)  # WHERE + one join + LIKE
    assert spider_hardness("DROP TABLE x") is None and spider_hardness("SELEC broken") is None


def test_spider_difficulty_distribution_on_all_of_spider_dev_matches_the_published_counts():
    """Spider's evaluation reports dev as 248 easy / 446 medium / 174 hard / 166 extra (1034)."""
    dev = json.loads(shared("spider_dev", "dev.json").read_text())
    counts = Counter(spider_hardness(x["query"]) for x in dev)
    assert counts == Counter(easy=248, medium=446, hard=174, extra=166)
