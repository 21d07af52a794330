"""Operator synthesis driven by a scripted LLM: an operator is accepted only after the AST check, a
sandboxed run on the sample and its generated unit test; accepted ones land in the user operators
folder, are registered, and the written pipeline uses them (also in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import polars as pl

from dataflow_assets.agent import build_pipeline
from dataflow_assets.agent.synth import ast_check
from tests.conftest import REPO, shared

MQ = ("dataflow_examples", "example", "DataflowAgent", "mq_test_data.jsonl")

YEAR_FILTER = textwrap.dedent('''
    from __future__ import annotations

    import polars as pl

    from operators.base import Filter, register


    @register
    class MentionsAgeFilter(Filter):
        """Keeps rows whose text mentions an age ("NN-year-old"). Reads `text`. Writes nothing.
        Use it to keep clinical vignettes that state the patient's age."""

        reads = {"text": "text"}

        def keep(self, cols):
            return pl.col(cols["text"]).str.contains(r"\\d+-year-old")
''')


def _input(tmp_path):
    rows = pl.read_ndjson(shared(*MQ)).head(12).select("id", "question")
    path = tmp_path / "q.jsonl"
    rows.write_ndjson(path)
    return path, rows


def _synth_plan(description="keep questions that state the patient's age"):
    return {"name": "aged", "steps": [{"operator": "synthesize", "description": description, "columns": {"text": "question"}}]}


def test_ast_check_rejects_imports_and_escapes():
    assert ast_check(YEAR_FILTER) == []
    bad = YEAR_FILTER.replace("import polars as pl", "import polars as pl\nimport os")
    assert any("'os'" in p for p in ast_check(bad))
    assert any("eval()" in p for p in ast_check(YEAR_FILTER + "\nx = eval('1')\n"))
    assert any("__subclasses__" in p for p in ast_check(YEAR_FILTER + "\nx = ().__class__.__subclasses__()\n"))
    assert any("exactly one" in p for p in ast_check("import polars as pl\n"))


def test_synthesised_operator_is_accepted_registered_and_used(dataflow_home, tmp_path, scripted):
    path, rows = _input(tmp_path)
    _srv, llm = scripted(_synth_plan(), {"code": YEAR_FILTER})
    res = build_pipeline("keep only questions that state the patient's age", path, rows=12, llm=llm, planner="llm", echo=None)
    assert res.ok and res.synthesized == {"accepted": 1, "rejected": 0}
    assert [s.operator for s in res.plan.steps] == ["mentions_age_filter"]
    expected = rows.filter(pl.col("question").str.contains(r"\d+-year-old")).height
    assert 0 < expected < rows.height and res.output.height == expected
    op_file = dataflow_home / "operators" / "mentions_age_filter.py"
    assert op_file.exists() and (dataflow_home / "operators" / "tests" / "test_mentions_age_filter.py").exists()
    from operators.base import REGISTRY

    assert REGISTRY["mentions_age_filter"].domain == "custom"
    # a fresh process loads the written pipeline (and with it the user operator) through shipped()
    code = (f"from dataflow_assets.pipelines import shipped; import polars as pl; p = shipped()[{res.plan.name!r}].pipeline; "
            "print([s.name for s in p.check({'id': pl.Int64, 'question': pl.String})])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "DATAFLOW_HOME": str(dataflow_home)})
    assert proc.returncode == 0, proc.stderr
    assert "mentions_age_filter" in proc.stdout


def test_synthesised_operator_with_forbidden_import_is_rejected_then_plan_repaired(dataflow_home, tmp_path, scripted):
    path, _rows = _input(tmp_path)
    evil = YEAR_FILTER.replace("import polars as pl", "import polars as pl\nimport subprocess")
    fixed = {"name": "dedup", "steps": [{"operator": "exact_dedup_filter", "params": {}, "columns": {"text": "question"}}]}
    srv, llm = scripted(_synth_plan(), {"code": evil}, fixed)
    res = build_pipeline("drop duplicate questions", path, rows=12, llm=llm, planner="llm", echo=None)
    assert res.ok and res.synthesized == {"accepted": 0, "rejected": 1}
    assert res.rounds[0].stage == "synth" and "import of 'subprocess' is not allowed" in res.rounds[0].error
    assert res.rounds[0].error in srv.plan_requests[-1]["messages"][-1]["content"]  # fed back verbatim
    assert not (dataflow_home / "operators" / "mentions_age_filter.py").exists()


def test_synthesised_operator_failing_its_sample_run_is_rejected(dataflow_home, tmp_path, scripted):
    """Declares a score column it never writes: the sandboxed sample run fails, nothing is registered."""
    path, _rows = _input(tmp_path)
    broken = YEAR_FILTER.replace("MentionsAgeFilter", "BrokenAgeFilter").replace('reads = {"text": "text"}', 'reads = {"text": "text"}\n    writes = {"score": "age_score"}')
    _srv, llm = scripted(_synth_plan(), {"code": broken}, _synth_plan(), {"code": broken}, _synth_plan(), {"code": broken})
    res = build_pipeline("keep questions that state the patient's age", path, rows=12, llm=llm, planner="llm", echo=None, max_rounds=3)
    assert res.synthesized["rejected"] == 3 and res.synthesized["accepted"] == 0
    assert "sample run in the sandbox" in res.rounds[0].error and "age_score" in res.rounds[0].error
    from operators.base import REGISTRY

    assert "broken_age_filter" not in REGISTRY
    assert not list((dataflow_home / "operators").glob("*.py")) if (dataflow_home / "operators").exists() else True
