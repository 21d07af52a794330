"""The pipeline-to-assets factory through real Dagster runs: metadata, blocking gates, DuckDB catalog,
export manifest, staleness by code_version, and parallel processes without DuckDB lock errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from dataflow_assets.runner import QUIET
from operators.base import Pipeline
from resources.storage import ParquetStore, ShardRegistry
from tests.dagster.toy_defs import ASSETS, toy_assets

REPO = Path(__file__).resolve().parents[2]


def _shard(tmp_path: Path, name: str, texts: list) -> str:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps({"text": t}) if not isinstance(t, bytes) else t.decode() for t in texts) + "\n")
    shard = ShardRegistry().add("toy", path)
    dg.DagsterInstance.get().add_dynamic_partitions("toy_shards", [shard.key])
    return shard.key


def _materialize(assets, key):
    return dg.materialize(
        [a for a in assets if a.key.path[-1] != "catalog"],
        partition_key=key,
        instance=dg.DagsterInstance.get(),
        resources={"store": ParquetStore()},
        run_config=QUIET,
        raise_on_error=False,
    )


def test_stage_metadata_checks_catalog_and_manifest(dataflow_home, tmp_path):
    key = _shard(tmp_path, "a.jsonl", ["One Two Three", "one", "Four five six seven", 5])
    res = _materialize(ASSETS, key)
    assert res.success
    mats = {e.materialization.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()} for e in res.get_asset_materialization_events()}
    assert set(mats) == {"source", "lower", "chars", "min_words", "dataset"}
    assert mats["source"]["records_read"] == 4 and mats["source"]["rows_quarantined"] == 1
    assert mats["min_words"]["rows_in"] == 3 and mats["min_words"]["rows_out"] == 2
    assert mats["min_words"]["dropped_by_reason"] == {"min_words": 1}
    assert mats["lower"]["rows_modified"] == 2
    assert mats["chars"]["columns_added"] == "chars"
    assert mats["chars"]["scores/chars"]["p100"] == 19.0
    checks = {(e.asset_key.path[-1], e.check_name): e.passed for e in res.get_asset_check_evaluations()}
    assert checks[("min_words", "kept_share_in_band")] and checks[("chars", "unique_id")]
    assert len(checks) == 3 * 3 + 1

    cat = dg.materialize([ASSETS[-1]], instance=dg.DagsterInstance.get(), resources={"store": ParquetStore()}, run_config=QUIET)
    assert cat.success
    con = duckdb.connect(str(dataflow_home / "catalog.duckdb"), read_only=True)
    assert con.sql("select text from toy.min_words order by text").fetchall() == [("four five six seven",), ("one two three",)]
    assert con.sql("select reason from toy.min_words_dropped").fetchall() == [("min_words",)]
    assert con.sql("select field, row from toy.quarantine").fetchall() == [("text", 4)]
    con.close()

    manifest = json.loads((dataflow_home / "exports" / "toy" / "manifest.json").read_text())
    part = manifest["partitions"][0]
    assert part["rows"] == {"source": 3, "_quarantine": 1, "lower": 3, "min_words": 2, "chars": 3}
    assert [s["name"] for s in part["stages"]] == ["lower", "chars", "min_words"]
    assert part["stages"][2]["config"] == {"n": 3}
    assert len(part["input"]["sha256"]) == 64
    exported = [json.loads(line) for line in (dataflow_home / "exports" / "toy" / "dataset.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in exported) == ["four five six seven", "one two three"]


def test_failed_blocking_gate_stops_downstream_of_that_partition_only(dataflow_home, tmp_path):
    good = _shard(tmp_path, "good.jsonl", ["a b c", "d e f g"])
    bad = _shard(tmp_path, "bad.jsonl", ["a", "b", "c d e"])  # keeps 1/3 < 0.5
    assets = toy_assets(band=(0.5, 1.0))
    ok = _materialize(assets, good)
    failed = _materialize(assets, bad)
    assert ok.success
    done = {e.materialization.asset_key.path[-1] for e in failed.get_asset_materialization_events()}
    assert "min_words" in done and "dataset" not in done  # the gate blocked the export
    gate = [e for e in failed.get_asset_check_evaluations() if e.check_name == "kept_share_in_band"][0]
    assert not gate.passed and abs(gate.metadata["kept_share"].value - 1 / 3) < 1e-9
    store = ParquetStore()
    assert store.path("toy", "dataset", good).exists() and not store.path("toy", "dataset", bad).exists()
    assert store.path("toy", "min_words", bad).exists()  # the failed stage's file is still on disk


def test_code_version_marks_exactly_the_changed_stage_stale(dataflow_home, tmp_path):
    key = _shard(tmp_path, "a.jsonl", ["One Two Three", "four five six seven"])
    assert _materialize(ASSETS, key).success
    changed = toy_assets(n=4)
    versions_old = {a.key.path[-1]: a.code_versions_by_key[a.key] for a in ASSETS}
    versions_new = {a.key.path[-1]: a.code_versions_by_key[a.key] for a in changed}
    assert [k for k in versions_old if versions_old[k] != versions_new[k]] == ["min_words"]
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    resolver = get_stale_status_resolver(dg.DagsterInstance.get(), changed)
    status = {a.key.path[-1]: resolver.get_status(a.key, key) for a in changed if a.key.path[-1] != "catalog"}
    assert status["min_words"] == StaleStatus.STALE
    assert status["lower"] == status["chars"] == status["dataset"] == StaleStatus.FRESH
    # re-materialising the changed stage gives it a new data version: its downstream becomes stale
    redo = dg.materialize(
        [a for a in changed if a.key.path[-1] != "catalog"],
        selection=[dg.AssetKey(["toy", "min_words"])],
        partition_key=key,
        instance=dg.DagsterInstance.get(),
        resources={"store": ParquetStore()},
        run_config=QUIET,
    )
    assert redo.success
    resolver = get_stale_status_resolver(dg.DagsterInstance.get(), changed)
    assert resolver.get_status(dg.AssetKey(["toy", "min_words"]), key) == StaleStatus.FRESH
    assert resolver.get_status(dg.AssetKey(["toy", "dataset"]), key) == StaleStatus.STALE


def test_parallel_processes_never_fail_on_duckdb_lock(dataflow_home, tmp_path):
    keys = [_shard(tmp_path, f"p{i}.jsonl", [f"doc {i} with several words {j}" for j in range(50)]) for i in range(2)]
    script = textwrap.dedent(
        """
        import sys, dagster as dg
        from dagster import reconstructable
        from tests.dagster import toy_defs
        inst = dg.DagsterInstance.get()
        r1 = dg.execute_job(reconstructable(toy_defs.stages_job), instance=inst, tags={"dagster/partition": sys.argv[1]})
        ok = r1.success
        for _ in range(2):
            r2 = dg.execute_job(reconstructable(toy_defs.catalog_job), instance=inst)
            ok = ok and r2.success
        sys.exit(0 if ok else 1)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, k], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for k in keys]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-3000:] for e in errs)
    assert not any("Could not set lock" in e for e in errs)
    con = duckdb.connect(str(dataflow_home / "catalog.duckdb"), read_only=True)
    assert con.execute("select count(*) from toy.min_words").fetchone()[0] == 100
    con.close()


# --------------------------------------------------------------------------- staleness sees all code

_VERSIONS = """
import json
from dataflow_assets.pipelines.text_pt import TextPretrainPipeline
print(json.dumps({s.name: s.code_version() for s in TextPretrainPipeline().trace()}))
"""


def _edit_function(path: Path, name: str) -> None:
    """Insert a real statement at the top of function `name`'s body (a code change, not a comment)."""
    import ast

    source = path.read_text()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name)
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):  # after the docstring
        first = node.body[1]
    lines = source.splitlines(keepends=True)
    indent = " " * first.col_offset
    lines.insert(first.lineno - 1, f"{indent}_edited = 1  # changed helper\n")
    path.write_text("".join(lines))


def _stage_versions(root: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", _VERSIONS], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_editing_a_shared_helper_marks_exactly_the_stages_that_use_it_stale(tmp_path):
    """`code_version` hashes the project code an operator executes, across modules: editing
    `duplicate_stats` (operators/text/_common.py), `c4_clean_lines` (refiners.py) or the n-gram
    repetition kernel (repetition.py) in a copy of the package changes the versions of the text_pt
    stages whose operators call them, and of no other stage."""
    import shutil

    def copy(root: Path) -> Path:  # one snapshot of the sources (other edits may land while the test runs)
        if (tmp_path / "base").exists():
            shutil.copytree(tmp_path / "base", root)
        else:
            for pkg in ("operators", "dataflow_assets", "resources", "sensors"):
                shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        return root

    baseline = _stage_versions(copy(tmp_path / "base"))
    cases = {
        ("operators/text/_common.py", "duplicate_stats"): {"gopher_repetition", "fineweb_quality"},
        ("operators/text/refiners.py", "c4_clean_lines"): {"c4_lines", "c4_quality"},
        ("operators/text/repetition.py", "ngram_repetition"): {"gopher_repetition"},
    }
    for (file, function), expected in cases.items():
        root = copy(tmp_path / function)
        _edit_function(root / file, function)
        versions = _stage_versions(root)
        assert set(versions) == set(baseline)
        changed = {k for k in baseline if versions[k] != baseline[k]}
        assert changed == expected, (function, changed)


# --------------------------------------------------------------------------- asset pages


def test_asset_pages_show_configuration_schema_tags_and_dropped_rows(dataflow_home, tmp_path, monkeypatch):
    """What the asset page shows: the operator's configuration (not hidden by a materialisation key of
    the same name), its full docstring, column schema, tags and owners; after a run `dagster/row_count`,
    a sample of dropped rows with their reason, and check results naming their partition."""
    monkeypatch.setenv("DATAFLOW_OWNERS", "team:data-prep")
    assets = {a.key.path[-1]: a for a in toy_assets(band=(0.0, 1.0))}
    spec = assets["min_words"].specs_by_key[dg.AssetKey(["toy", "min_words"])]
    definition = {k: getattr(v, "value", v) for k, v in spec.metadata.items()}
    assert definition["config"] == {"n": 3} and definition["operator"] == "MinWords(n=3)"
    assert sorted(c.name for c in definition["dagster/column_schema"].columns) == ["_id", "text"]
    assert {k: v for k, v in spec.tags.items() if not k.startswith("dagster/")} == {"domain": "custom", "operator_kind": "filter", "needs_llm": "no"}
    assert spec.owners == ["team:data-prep"]
    assert "Keep rows with at least `n` words" in spec.description
    assert assets["catalog"].asset_deps[dg.AssetKey(["toy", "catalog"])] == {dg.AssetKey(["toy", "dataset"])}

    key = _shard(tmp_path, "a.jsonl", ["One Two Three", "one", "two words", "Four five six seven"])
    res = _materialize(list(assets.values()), key)
    assert res.success
    mats = {e.materialization.asset_key.path[-1]: e.materialization.metadata for e in res.get_asset_materialization_events()}
    mw = mats["min_words"]
    assert "operator" not in mw and "config" not in mw  # never shadows the definition's entries
    assert mw["dagster/row_count"].value == 2 and mw["partition"].value == key
    assert sorted(c.name for c in mw["dagster/column_schema"].value.columns) == ["_id", "text"]
    dropped = mw["dropped_preview"].value
    assert sorted(r.data["text"] for r in dropped.records) == ["one", "two words"]
    assert {r.data["reason"] for r in dropped.records} == {"min_words"}
    checks = [e for e in res.get_asset_check_evaluations() if e.asset_key.path[-1] == "min_words"]
    assert {e.metadata["partition"].value for e in checks} == {key}


def test_a_filter_that_empties_a_shard_warns_unless_the_pipeline_blocks(dataflow_home, tmp_path):
    key = _shard(tmp_path, "short.jsonl", ["one", "two words"])  # min_words drops both rows
    res = _materialize(toy_assets(band=(0.0, 1.0)), key)
    assert res.success  # the export of an emptied shard is written, the check warns
    check = next(e for e in res.get_asset_check_evaluations() if (e.asset_key.path[-1], e.check_name) == ("min_words", "non_empty"))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    done = {e.materialization.asset_key.path[-1] for e in res.get_asset_materialization_events()}
    assert "dataset" in done

    from dataflow_assets.factory import pipeline_assets
    from dataflow_assets.checks import kept_share_gate
    from tests.dagster.toy_defs import Toy

    blocking = pipeline_assets(Toy(), gates=[kept_share_gate("min_words", 0.0, 1.0)], empty_filter="block")
    key2 = _shard(tmp_path, "short2.jsonl", ["three", "four words"])
    res = _materialize(blocking, key2)
    done = {e.materialization.asset_key.path[-1] for e in res.get_asset_materialization_events()}
    assert not res.success and "min_words" in done and "dataset" not in done


def test_llm_stage_pages_show_model_and_prompt_version(dataflow_home, tmp_path, monkeypatch):
    """An LLM stage's page shows its prompt template version and sampling parameters before any run,
    and the model and prompt version that produced its column after a run (loopback server)."""
    from tests.dagster import llm_defs
    from tests.llm_server import LoopbackLLMServer

    by_name = {a.key.path[-1]: a for a in llm_defs.ASSETS}
    spec = by_name["answer"].specs_by_key[dg.AssetKey(["answer", "answer"])]
    version = llm_defs.Answer().answer.template.version
    assert spec.metadata["prompt_version"] == version and spec.tags["needs_llm"] == "yes"
    assert "max_tokens" in spec.metadata["sampling"].value
    with LoopbackLLMServer() as srv:
        monkeypatch.setenv("TEST_LLM_BASE_URL", srv.base_url)
        path = tmp_path / "q.jsonl"
        path.write_text("".join(json.dumps({"question": f"what is {i}?"}) + "\n" for i in range(3)))
        shard = ShardRegistry().add("answer", path)
        dg.DagsterInstance.get().add_dynamic_partitions("answer_shards", [shard.key])
        res = dg.materialize(
            [a for a in llm_defs.ASSETS if a.key.path[-1] != "catalog"],
            partition_key=shard.key, instance=dg.DagsterInstance.get(), resources=llm_defs.resources(), run_config=QUIET,
        )
    assert res.success
    meta = next(e.materialization.metadata for e in res.get_asset_materialization_events() if e.materialization.asset_key.path[-1] == "answer")
    assert meta["llm_model"].value == "openai:echo" and meta["prompt_version"].value.endswith(version)


def test_a_stage_after_a_filter_that_emptied_the_shard_passes_its_own_non_empty_gate(dataflow_home, tmp_path):
    """`non_empty` judges a stage by what it read: the filter that emptied the shard warns; the stage
    after it read 0 rows, so its own (blocking) gate passes and the run succeeds."""
    from dataflow_assets.factory import pipeline_assets
    from tests.dagster.toy_defs import Chars, Lower, MinWords

    class Chain(Pipeline):
        name = "toy"
        input_schema = {"text": pl.String}

        def __init__(self):
            self.lower, self.min_words, self.chars = Lower(), MinWords(3), Chars()

        def forward(self, frame):
            return self.chars(self.min_words(self.lower(frame)))

    key = _shard(tmp_path, "short.jsonl", ["one", "two words"])
    res = _materialize(pipeline_assets(Chain()), key)
    assert res.success
    checks = {(e.asset_key.path[-1], e.check_name): e for e in res.get_asset_check_evaluations()}
    assert not checks[("min_words", "non_empty")].passed and checks[("min_words", "non_empty")].severity == dg.AssetCheckSeverity.WARN
    after = checks[("chars", "non_empty")]
    assert after.passed and after.metadata["rows_in"].value == 0 and after.metadata["source_rows"].value == 2
    assert {e.materialization.asset_key.path[-1] for e in res.get_asset_materialization_events()} >= {"chars", "dataset"}
