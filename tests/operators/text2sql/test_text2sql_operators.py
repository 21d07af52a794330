"""Text-to-SQL operators on the real Chinook and geography databases; LLM operators with the in-test
fake client (results shuffled, matched by `_id`)."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from operators.base import ID, load_all, with_row_ids
from operators.text2sql.evaluate import (
    CoTVoter,
    ExecutionAccuracyEvaluator,
    ExecutionVerifiedFilter,
    QuestionSQLConsistencyFilter,
    SchemaLinker,
    SQLComponentClassifier,
    SQLDialectTranspiler,
    SQLExecutabilityFilter,
    SQLExecutionClassifier,
    SQLExecutionEvaluator,
    SQLNormalizer,
    SQLSyntaxFilter,
)
from operators.text2sql.generate import (
    CoTGenerator,
    PromptBuilder,
    QuestionFromSQLGenerator,
    SchemaExtractor,
    SQLGenerator,
    SQLVariationGenerator,
)
from tests.conftest import shared
from tests.operators.core.core_fakes import FakeLLM, user_text


@pytest.fixture(scope="module")
def chinook() -> str:
    return str(shared("chinook", "Chinook_Sqlite.sqlite"))


@pytest.fixture(scope="module")
def geography() -> str:
    return str(shared("text2sql_data", "geography-db.added-in-2020.sqlite"))


def frame_of(**cols) -> pl.DataFrame:
    return with_row_ids(pl.DataFrame(cols), source="t2s-test")


def test_text2sql_domain_registers_at_least_15_distinct_operators():
    ops = {n: i for n, i in load_all().items() if i.domain == "text2sql"}
    assert len(ops) >= 15, sorted(ops)
    assert {"generate", "filter", "evaluate", "refine"} <= {i.kind for i in ops.values()}
    assert len({i.cls for i in ops.values()}) == len(ops)


def test_schema_extractor_reads_ddl_samples_and_foreign_keys(chinook, geography, tmp_path):
    frame = frame_of(db_id=["chinook", "geography", "chinook", "missing"], db_path=[chinook, geography, chinook, str(tmp_path / "no.sqlite")])
    out = SchemaExtractor(sample_values=2)(frame, db="db_path")
    ck = out.row(0, named=True)
    assert 'CREATE TABLE [Album]' in ck["schema"] or "CREATE TABLE" in ck["schema"]
    assert "Album.ArtistId -> Artist.ArtistId" in ck["schema"] and "-- examples from Genre: GenreId: 1, 2; Name: Rock, Jazz" in ck["schema"]
    assert len(ck["tables"]) == 11 and ck["example_sql"] == 'SELECT * FROM "Album" LIMIT 3'
    geo = out.row(1, named=True)
    assert set(geo["tables"]) >= {"border_info", "city", "state", "river"}
    assert out["schema"][2] == ck["schema"] and out["schema"][3] is None
    assert out.height == 4 and out[ID].to_list() == frame[ID].to_list()
    small = SchemaExtractor(max_chars=1500)(frame, db="db_path")["schema"][0]
    assert len(small) <= 1500 and "-- examples" not in small and "more tables omitted" in small
    assert small.startswith(ck["schema"].split("\n")[0])
    no_samples = SchemaExtractor(max_chars=len(ck["schema"]) - 1)(frame, db="db_path")["schema"][0]
    assert "-- examples" not in no_samples and "omitted" not in no_samples  # example values go first


def test_sql_generator_asks_each_difficulty_and_extracts_the_query(chinook):
    frame = SchemaExtractor()(frame_of(db_path=[chinook]))

    def reply(req):
        diff = re.search(r"query of (\w+) difficulty", user_text(req)).group(1)
        return f"Here you go:\n```sql\nSELECT '{diff}' AS d, count(*) FROM Track;\n```"

    llm = FakeLLM(responder=reply)
    out = SQLGenerator(per_difficulty=2, llm=llm)(frame)
    assert out.height == 8 and out[ID].n_unique() == 8
    assert sorted(out["difficulty"].value_counts()["count"].to_list()) == [2, 2, 2, 2]
    for d, sql in zip(out["difficulty"], out["sql"]):
        assert sql == f"SELECT '{d}' AS d, count(*) FROM Track"
    assert "several joins, or a nested sub-query" in user_text([r for r in llm.requests if "hard difficulty" in user_text(r)][0])
    with pytest.raises(ValueError):
        SQLGenerator(difficulties=["impossible"])


def test_syntax_and_executability_filters_drop_with_reasons(chinook):
    frame = frame_of(
        db_path=[chinook] * 6,
        sql=["SELECT Name FROM Genre WHERE GenreId = 1", "SELEC nope", "SELECT nope FROM Genre",
             "DROP TABLE Album", "SELECT Name FROM Genre WHERE GenreId = -1", "SELECT count(*) FROM Track"],
    )
    syn = SQLSyntaxFilter()
    parsed = syn(frame)
    assert syn.last_report.dropped == {"sql_syntax": 2} and parsed.height == 4  # SELEC, and DROP (not a query)
    ex = SQLExecutabilityFilter(timeout_s=2)
    kept = ex(frame)  # without the syntax filter in front: execution alone refuses the DROP
    assert kept["sql"].to_list() == ["SELECT Name FROM Genre WHERE GenreId = 1", "SELECT count(*) FROM Track"]
    assert ex.last_report.dropped == {"exec_error": 1, "exec_denied": 2, "exec_empty": 1}
    assert kept["exec_status"].to_list() == ["ok", "ok"] and kept["exec_rows"].to_list() == [1, 1]
    assert kept["exec_digest"].null_count() == 0


def test_execution_evaluator_keeps_every_row_and_the_filter_reuses_its_status(chinook, monkeypatch):
    frame = frame_of(db_path=[chinook] * 3, sql=["SELECT count(*) FROM Genre", "DELETE FROM Genre", "SELECT * FROM Genre WHERE 0"])
    ev = SQLExecutionEvaluator()(frame)
    assert ev.height == 3 and ev["exec_status"].to_list() == ["ok", "denied", "empty"]
    import operators.text2sql.evaluate as ev_mod

    monkeypatch.setattr(ev_mod, "_execute_all", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-executed")))
    flt = SQLExecutabilityFilter()
    kept = flt(ev)  # filters on the evaluator's status without executing again
    assert kept["sql"].to_list() == ["SELECT count(*) FROM Genre"] and flt.last_report.dropped == {"exec_denied": 1, "exec_empty": 1}
    ver = ExecutionVerifiedFilter()
    assert ver(frame_of(exec_verified=[True, False, None])).height == 1 and ver.last_report.dropped == {"not_verified": 2}


def test_question_generation_and_consistency_filter(chinook):
    frame = SchemaExtractor()(frame_of(db_path=[chinook] * 3, sql=["SELECT count(*) FROM Album", "SELECT Name FROM Artist LIMIT 1", "SELECT 1"]))
    q = QuestionFromSQLGenerator(llm=FakeLLM(responder=lambda r: "  How many albums are there?  "))(frame)
    assert q["question"].to_list() == ["How many albums are there?"] * 3
    ids = q[ID].to_list()

    def verdict(req):
        return {"consistent": "count(*) FROM Album" in user_text(req), "reason": "checked"}

    flt = QuestionSQLConsistencyFilter(llm=FakeLLM(responder=verdict, fail={ids[2]: "timeout"}))
    kept = flt(q)
    assert kept[ID].to_list() == [ids[0]] and kept["consistent"].to_list() == [True]
    assert flt.last_report.dropped == {"inconsistent": 1, "judge_failed": 1}


def test_cot_generation_and_voting_by_execution_result(chinook):
    frame = SchemaExtractor()(frame_of(
        db_path=[chinook, chinook],
        question=["How many genres?", "Name of genre 1?"],
        sql=["SELECT count(*) FROM Genre", "SELECT Name FROM Genre WHERE GenreId = 1"],
    ))

    def reply(req):
        if "How many genres" in user_text(req):
            sql = ["SELECT count(*) FROM Track", "SELECT count(GenreId) FROM Genre", "SELECT COUNT(*) FROM Genre g"][req.sample]
        else:
            sql = "SELECT Name FROM Genre WHERE GenreId = 2"
        return f"Step 1: look at the tables.\n```sql\n{sql}\n```"

    cot = CoTGenerator(n=3, llm=FakeLLM(responder=reply))(frame)
    assert [len(c) for c in cot["cot_candidates"]] == [3, 3]
    voted = CoTVoter()(cot)
    first, second = voted.row(0, named=True), voted.row(1, named=True)
    assert first["cot_sql"] == "SELECT count(GenreId) FROM Genre" and first["cot_votes"] == 2
    assert first["cot_agreement"] == pytest.approx(2 / 3) and first["exec_verified"] is True
    assert second["cot"] is None and second["exec_verified"] is False and second["cot_votes"] == 0


def test_component_and_execution_difficulty(chinook):
    frame = SchemaExtractor()(frame_of(
        db_path=[chinook] * 3,
        question=["q1", "q2", "q3"],
        sql=["SELECT count(*) FROM Genre", "SELECT T1.Title FROM Album AS T1 JOIN Artist AS T2 ON T1.ArtistId = T2.ArtistId WHERE T2.Name = 'AC/DC'", "not sql"],
    ))
    comp = SQLComponentClassifier()(frame)
    assert comp["component_difficulty"].to_list() == ["easy", "medium", None]
    assert comp["sql_joins"].to_list() == [1 - 1, 1, None]

    def attempt(req):  # q1: 5 of 5 right; q2: 1 of 5 right
        if "q1" in user_text(req):
            return "```sql\nSELECT count(*) FROM Genre\n```"
        good = "SELECT Title FROM Album WHERE ArtistId = 1"
        return f"```sql\n{good if req.sample == 0 else 'SELECT 0'}\n```"

    out = SQLExecutionClassifier(n=5, llm=FakeLLM(responder=attempt))(frame)
    assert out["exec_correct"].to_list() == [5, 1, None]
    assert out["exec_difficulty"].to_list() == ["easy", "hard", None]


def test_execution_accuracy_schema_linking_normalising_transpiling_and_prompts(chinook):
    frame = frame_of(
        db_path=[chinook] * 3,
        sql=["SELECT Name, GenreId FROM Genre ORDER BY GenreId LIMIT 3", "SELECT count(*) FROM Track", "SELECT count(*) FROM Album"],
        predicted_sql=["SELECT GenreId, Name FROM Genre ORDER BY GenreId LIMIT 3", "SELECT count(TrackId) FROM Track", "SELECT 5"],
        question=["a?", "b?", "c?"],
        schema=["CREATE TABLE Genre(...)"] * 3,
    )
    ex = ExecutionAccuracyEvaluator()(frame)
    assert ex["ex_match"].to_list() == [True, True, False]
    link = SchemaLinker()(frame_of(sql=["SELECT T1.Title FROM Album AS T1 JOIN Artist AS T2 ON T1.ArtistId = T2.ArtistId"]))
    assert link["linked_tables"].to_list() == [["album", "artist"]] and link["linked_columns"].to_list() == [["artistid", "title"]]
    norm = SQLNormalizer()
    normed = norm(frame_of(sql=["select  name from   genre;", "SELEC broken"]))
    assert normed["sql"].to_list() == ["SELECT name FROM genre", "SELEC broken"] and norm.last_report.modified == 1
    tr = SQLDialectTranspiler(source="mysql")(frame_of(sql=["SELECT `Name` FROM `Genre` LIMIT 1"]))
    assert tr["sql"].to_list() == ['SELECT "Name" FROM "Genre" LIMIT 1']
    prompts = PromptBuilder(format="alpaca")(frame)
    assert prompts["prompt"][0].startswith("### Instruction:") and "CREATE TABLE Genre(...)" in prompts["prompt"][0] and "Question: a?" in prompts["prompt"][0]
    custom = PromptBuilder(format="Q: {question} S: {schema}")(frame)
    assert custom["prompt"][1] == "Q: b? S: CREATE TABLE Genre(...)"
    with pytest.raises(ValueError):
        PromptBuilder(format="nothing")


def test_sql_variation_generator_extracts_the_variant(chinook):
    frame = frame_of(sql=["SELECT count(*) FROM Album"], schema=["CREATE TABLE Album(...)"])
    out = SQLVariationGenerator(llm=FakeLLM(responder=lambda r: "```sql\nSELECT count(*) FROM Artist\n```"))(frame)
    assert out["sql_variant"].to_list() == ["SELECT count(*) FROM Artist"]
    assert json.loads(json.dumps(out["sql_variant_meta"][0]))["model"] == "fake-model"


def test_zero_row_frames_make_no_call(chinook):
    llm = FakeLLM()
    empty = pl.DataFrame(schema={ID: pl.String, "db_path": pl.String, "schema": pl.String, "example_sql": pl.String})
    out = SQLGenerator(llm=llm)(empty)
    assert out.height == 0 and "sql" in out.columns and llm.calls == []
