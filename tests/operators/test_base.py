"""The operator core: roles, kinds, the registry, Pipeline.check / trace / run."""

import polars as pl
import pytest

from operators.base import (
    REGISTRY,
    ColumnError,
    Evaluator,
    Filter,
    Pipeline,
    PipelineCheckError,
    Refiner,
    load_all,
    register,
    with_row_ids,
)


class MinWords(Filter):
    """Keep rows with at least `n` words (test operator)."""

    reads = {"text": "text"}

    def __init__(self, n: int = 3):
        self.n = n

    def keep(self, cols):
        words = pl.col(cols["text"]).str.split(" ").list.len()
        return {"too_short": words >= self.n, "too_long": words <= 8}


class Upper(Refiner):
    """Upper-case a column (test operator)."""

    def refine(self, text, cols):
        return text.str.to_uppercase()


class Length(Evaluator):
    """Character length of a column (test operator)."""

    reads = {"text": "text"}
    writes = {"output": "length"}

    def scores(self, cols):
        return [pl.col(cols["text"]).str.len_chars().alias(cols["output"])]


class Chain(Pipeline):
    input_schema = {"body": pl.String}

    def __init__(self, n: int = 3):
        self.upper = Upper()
        self.length = Length()
        self.min_words = MinWords(n)

    def forward(self, frame):
        frame = self.upper(frame, text="body")
        frame = self.length(frame, text="body", output="chars")
        return self.min_words(frame, text="body")


DOCS = pl.DataFrame({"body": ["one two three", "one", "a b c d e f g h i j", "four five six seven"]})


def test_operator_returns_new_frame_and_reports_drops_by_reason():
    frame = with_row_ids(DOCS, "t")
    before = frame.clone()
    op = MinWords(3)
    out = op(frame, text="body")
    assert frame.equals(before)  # input untouched
    assert out.get_column("body").to_list() == ["one two three", "four five six seven"]
    assert op.last_report.dropped == {"too_short": 1, "too_long": 1}
    assert sorted(op.last_report.dropped_ids.get_column("reason").to_list()) == ["too_long", "too_short"]
    assert op.last_report.rows_in == 4 and op.last_report.rows_out == 2


def test_refiner_counts_modified_rows():
    op = Upper()
    out = op(pl.DataFrame({"text": ["abc", "ABC", None]}))
    assert out.get_column("text").to_list() == ["ABC", "ABC", None]
    assert op.last_report.modified == 1


def test_unknown_role_and_missing_column_are_clear():
    with pytest.raises(TypeError, match="unknown column role"):
        Length()(DOCS, body="body")
    with pytest.raises(ColumnError, match="missing column 'text'.*available: \\['body'\\]"):
        Length()(DOCS)


def test_check_names_attribute_column_and_available_columns():
    with pytest.raises(PipelineCheckError) as err:
        Chain().check({"text": pl.String})
    msg = str(err.value)
    assert "Chain.upper" in msg and "'body'" in msg and "['text', '_id']" in msg


def test_trace_yields_stage_graph_without_running_anything():
    stages = Chain().trace()
    assert [s.name for s in stages] == ["upper", "length", "min_words"]
    assert [s.upstream for s in stages] == [None, "upper", "length"]
    assert stages[1].reads == ["body"] and stages[1].writes == ["chars"]
    assert "chars" in stages[2].schema and stages[2].schema["chars"] == pl.UInt32


def test_code_version_follows_configuration():
    a, b, c = Chain(3).trace(), Chain(3).trace(), Chain(4).trace()
    assert [s.code_version() for s in a] == [s.code_version() for s in b]
    changed = [s.name for s, t in zip(a, c) if s.code_version() != t.code_version()]
    assert changed == ["min_words"]


def test_pipeline_runs_without_dagster_and_keeps_reports():
    p = Chain()
    out = p(DOCS)
    assert out.get_column("body").to_list() == ["ONE TWO THREE", "FOUR FIVE SIX SEVEN"]
    assert out.get_column("chars").to_list() == [13, 19]
    reports = dict(p.stage_reports())
    assert reports["min_words"].dropped == {"too_short": 1, "too_long": 1}
    assert reports["upper"].modified == 4


def test_forward_logic_outside_operators_is_rejected_by_check():
    class Sneaky(Chain):
        def forward(self, frame):
            frame = self.upper(frame, text="body").with_columns(pl.lit(1).alias("x"))
            return self.length(frame, text="body")

    with pytest.raises(PipelineCheckError, match="changed outside an operator"):
        Sneaky().check()


def test_row_ids_are_stable_and_unique_for_duplicates():
    frame = pl.DataFrame({"text": ["a", "b", "a"]})
    ids1 = with_row_ids(frame, "f.jsonl").get_column("_id").to_list()
    ids2 = with_row_ids(frame, "f.jsonl").get_column("_id").to_list()
    ids3 = with_row_ids(frame, "g.jsonl").get_column("_id").to_list()
    assert ids1 == ids2 and len(set(ids1)) == 3
    assert ids1[2] == ids1[0] + "-1"
    assert set(ids1).isdisjoint(ids3)


def test_row_ids_do_not_depend_on_how_rows_are_sliced(monkeypatch):
    """The digests are computed a slice of rows at a time (bounded memory); an id is still the hash of
    the source name and the row's JSON, whatever slice the row falls in, and a duplicate in a later
    slice still gets its occurrence counter."""
    import hashlib
    import operators.base as base

    frame = pl.DataFrame({"text": ["a", "b", "a", "c", "b"], "n": [1, 2, 1, None, 2]})
    monkeypatch.setattr(base, "_ID_SLICE_ROWS", 2)
    ids = with_row_ids(frame, "f.jsonl").get_column("_id").to_list()
    first = hashlib.blake2b(b'f.jsonl\x00{"text":"a","n":1}', digest_size=8).hexdigest()
    null = hashlib.blake2b(b'f.jsonl\x00{"text":"c","n":null}', digest_size=8).hexdigest()
    assert ids[0] == first and ids[2] == first + "-1" and ids[3] == null and ids[4] == ids[1] + "-1"
    monkeypatch.setattr(base, "_ID_SLICE_ROWS", 10_000)
    assert with_row_ids(frame, "f.jsonl").get_column("_id").to_list() == ids


def test_register_requires_docstring_and_valid_kind():
    with pytest.raises(TypeError, match="docstring"):

        @register
        class NoDoc(Filter):
            def keep(self, cols):
                return pl.lit(True)

    with pytest.raises(TypeError, match="kind"):

        @register
        class BadKind(Filter):
            """Doc."""

            kind = "transform"


def test_registry_records_columns_and_domain():
    @register(domain="custom")
    class CountWords(Evaluator):
        """Counts words in `text`, writing `words`."""

        reads = {"text": "text"}
        writes = {"output": "words"}

        def scores(self, cols):
            return [pl.col(cols["text"]).str.split(" ").list.len().alias(cols["output"])]

    info = REGISTRY["count_words"]
    assert (info.domain, info.kind, info.needs_llm, info.reads, info.writes) == ("custom", "evaluate", False, {"text": "text"}, {"output": "words"})
    assert info.to_dict()["doc"].startswith("Counts words")
    del REGISTRY["count_words"]


def test_every_registered_operator_has_docstring_and_columns():
    infos = load_all()
    assert len(infos) >= 50
    for info in infos.values():
        assert info.doc and len(info.doc) > 20, info.name
        assert info.kind in ("generate", "evaluate", "filter", "refine")
