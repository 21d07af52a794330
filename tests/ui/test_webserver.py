"""The Dagster web UI end to end: start `dagster-webserver` on a toy pipeline, register a shard and
its dynamic partition, launch the partition's stage assets through the GraphQL API, then open the
asset graph and an asset's pages in headless Chromium (Playwright driving the Debian `chromium`)
and check that the UI shows the stage assets, their quality checks and the row-count metadata.

Screenshots go to `artifacts/ui/` (git-ignored). `docs/asset-graph.png` (committed, for the README)
is written when it is missing or when `DATAFLOW_UPDATE_DOCS=1`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from resources.storage import ShardRegistry

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "ui"
DOCS_PNG = REPO / "docs" / "asset-graph.png"
PIPELINE = "toy"  # tests/dagster/toy_defs.py: source -> lower -> {chars, min_words} -> dataset, catalog
LOCATION = "toy"
SHIPPED_LOCATION = "dataflow"  # dataflow_assets.definitions: its text_pt graph goes to docs/asset-graph.png
STAGES = ["source", "lower", "chars", "min_words", "dataset"]
CHECKS = ["schema", "non_empty", "unique_id", "kept_share_in_band"]
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("chromium is not installed (CI installs it with .ci/setup-services.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GraphQL:
    def __init__(self, base: str):
        self.base = base

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.base}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
        assert not out.get("errors"), out["errors"]
        return out["data"]


WORKSPACE_Q = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename
        ... on RepositoryLocation { repositories { name } }
        ... on PythonError { message stack } } } }
    ... on PythonError { message } } }
"""

ADD_PARTITION_M = """
mutation($sel: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $sel, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on DuplicateDynamicPartitionError { partitionName }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack } } }
"""

LAUNCH_M = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack } } }
"""

RUN_Q = """
query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { status stepStats { stepKey status } }
  ... on PythonError { message } } }
"""

EVENTS_Q = """
query($id: ID!) { logsForRun(runId: $id) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message }
    ... on ExecutionStepFailureEvent { error { message } } } } } }
"""


def prepare_instance(dagster_home: Path, extra_yaml: str = "") -> None:
    """Write dagster.yaml and create the instance's storage here, once: several processes (webserver,
    daemon, their code servers) migrating a fresh SQLite home at the same time race on alembic's
    version stamp ("alembic_version has more than one head", dagster-io/dagster#27390)."""
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + extra_yaml)
    with dg.DagsterInstance.get() as instance:
        assert Path(instance.root_directory) == dagster_home, instance.root_directory
        instance.get_runs(limit=1)


def write_workspace(tmp_path: Path, locations: dict[str, str]) -> Path:
    """A workspace.yaml loading each python module (location name -> module) from the repo root."""
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        + "".join(
            "  - python_module:\n"
            f"      module_name: {module}\n"
            f"      working_directory: {json.dumps(str(REPO))}\n"
            f"      location_name: {name}\n"
            for name, module in locations.items()
        )
    )
    return workspace


@pytest.fixture
def webserver(dataflow_home: Path, tmp_path: Path):
    """dagster-webserver on a free loopback port, with the toy pipeline as its code location."""
    # runs launch straight away (the default queued coordinator needs a dagster-daemon)
    prepare_instance(dataflow_home / "dagster", "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n")
    # the shipped pipelines as a second location: only for the README screenshot, may fail to load
    workspace = write_workspace(tmp_path, {LOCATION: "tests.dagster.toy_defs", SHIPPED_LOCATION: "dataflow_assets.definitions"})
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    log = open(tmp_path / "webserver.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the code server and run workers go with it
    )
    base = f"http://127.0.0.1:{port}"
    gql = GraphQL(base)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{log.read()[-4000:]}")
            try:
                entries = gql(WORKSPACE_Q, timeout=5)["workspaceOrError"]["locationEntries"]
                state = {e["name"]: e["locationOrLoadError"] for e in entries}
                loaded = state.get(LOCATION) or {}
                if loaded.get("__typename") == "RepositoryLocation" and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
                assert loaded.get("__typename") != "PythonError", loaded
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"dagster-webserver did not answer within 90 s:\n{log.read()[-4000:]}")
            time.sleep(0.5)
        repo_name = loaded["repositories"][0]["name"]
        shipped_ok = (state.get(SHIPPED_LOCATION) or {}).get("__typename") == "RepositoryLocation"
        yield base, gql, {"repositoryLocationName": LOCATION, "repositoryName": repo_name}, shipped_ok
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever is left of the group (code server, run workers)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


def _launch_partition(gql: GraphQL, selector: dict, key: str) -> str:
    params = {
        "selector": {**selector, "jobName": "__ASSET_JOB", "assetSelection": [{"path": [PIPELINE, s]} for s in STAGES]},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
    }
    launched = gql(LAUNCH_M, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _wait_for_run(gql: GraphQL, run_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = gql(RUN_Q, {"id": run_id})["runOrError"]
        if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        time.sleep(1)
    pytest.fail(f"run {run_id} did not finish within {timeout} s")


def test_ui_shows_assets_checks_and_row_counts(webserver, dataflow_home, tmp_path):
    chromium = _chromium()
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (dev extra)")
    sync_playwright, PlaywrightTimeout = playwright.sync_playwright, playwright.TimeoutError
    base, gql, selector, shipped_ok = webserver

    # a shard of 4 records: one malformed (quarantined), one dropped by min_words
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join([json.dumps({"text": "One Two Three"}), json.dumps({"text": "one"}), json.dumps({"text": "Four five six seven"}), '{"text": 5}']) + "\n")
    shard = ShardRegistry().add(PIPELINE, data)
    added = gql(ADD_PARTITION_M, {"sel": selector, "name": f"{PIPELINE}_shards", "key": shard.key})["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess", added

    run_id = _launch_partition(gql, selector, shard.key)
    run = _wait_for_run(gql, run_id)
    if run["status"] != "SUCCESS":
        events = gql(EVENTS_Q, {"id": run_id})["logsForRun"].get("events", [])
        pytest.fail(f"run {run_id}: {run['status']}\n" + "\n".join(str(e) for e in events[-30:]))
    steps = {s["stepKey"]: s["status"] for s in run["stepStats"]}
    assert len(steps) == len(STAGES) and set(steps.values()) == {"SUCCESS"}, steps

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # a fresh profile per test (Playwright passes it as --user-data-dir)
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 620},
        )
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(45_000)

            dismissed = []

            def visit(path: str, wait_for: str) -> str:
                page.goto(base + path)
                page.get_by_text(wait_for, exact=True).first.wait_for()
                if not dismissed:  # the first-visit "Join the Dagster community" dialog pops up late
                    skip = page.get_by_role("button", name="Skip")
                    try:
                        skip.wait_for(timeout=15_000)
                    except PlaywrightTimeout:
                        pass
                    else:
                        skip.click()
                        skip.wait_for(state="detached")
                    dismissed.append(True)
                page.wait_for_load_state("networkidle")
                assert page.get_by_role("dialog").count() == 0, "a dialog covers the page"
                return page.inner_text("body")

            # the asset graph of the pipeline's group
            text = visit(f"/locations/{LOCATION}/asset-groups/{PIPELINE}", "min_words")
            for name in [*STAGES, "catalog"]:
                page.get_by_text(name, exact=True).first.wait_for()
            text = page.inner_text("body")
            assert all(name in text for name in [*STAGES, "catalog"]), text[:2000]
            page.screenshot(path=ARTIFACTS / "asset-graph.png")
            if not DOCS_PNG.exists() or os.environ.get("DATAFLOW_UPDATE_DOCS") == "1":
                if shipped_ok:  # the shipped text_pt pipeline for the README, else the toy graph
                    # a long chain: laid out top to bottom in a README-wide viewport, so its names stay
                    # readable at the width GitHub shows the image (no downscaling of a 2,000 px strip)
                    page.evaluate("localStorage.setItem('asset-graph-direction', JSON.stringify('vertical'))")
                    page.set_viewport_size({"width": 880, "height": 2650})
                    visit(f"/locations/{SHIPPED_LOCATION}/asset-groups/text_pt", "fineweb_quality")
                    page.mouse.move(440, 1400)
                    for _ in range(3):  # zoom out three steps: the whole chain, names still readable
                        page.keyboard.down("Control")
                        page.mouse.wheel(0, 100)
                        page.keyboard.up("Control")
                        page.wait_for_timeout(400)
                    page.mouse.move(870, 200)  # no hover highlight in the picture
                    page.wait_for_timeout(2500)
                DOCS_PNG.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=DOCS_PNG)
                assert DOCS_PNG.stat().st_size < 400_000
                page.evaluate("localStorage.removeItem('asset-graph-direction')")
                page.set_viewport_size({"width": 1200, "height": 620})

            # a stage asset's overview: latest materialisation metadata of the partition
            text = visit(f"/assets/{PIPELINE}/min_words?partition={shard.key}", "rows_out")
            assert "Latest check results" in text and shard.key in text
            for field in ("rows_in", "rows_out", "rows_dropped", "dropped_by_reason", "dropped_preview", "config", "operator_class"):
                assert field in text, field  # the definition's entries (config) are not hidden by the run's
            page.screenshot(path=ARTIFACTS / "asset-overview.png", full_page=True)

            # its quality checks, all evaluated in the run and passed
            text = visit(f"/assets/{PIPELINE}/min_words?view=checks", "unique_id")
            for check in CHECKS:
                assert check in text, check
            assert "Succeeded" in text and "Failed" not in text
            assert text.count("Succeeded") >= len(CHECKS)
            page.screenshot(path=ARTIFACTS / "asset-checks.png", full_page=True)

            # the partition's materialisation event with its row counts
            text = visit(f"/assets/{PIPELINE}/min_words?view=events&partition={shard.key}", "rows_out")
            assert f"Partition {shard.key} materialized in run {run_id[:8]}" in text
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            assert lines[lines.index("rows_out") + 1] == "2" and lines[lines.index("rows_in") + 1] == "3"
            page.screenshot(path=ARTIFACTS / "asset-events.png", full_page=True)

            # the source asset reports the quarantined record
            text = visit(f"/assets/{PIPELINE}/source?view=events&partition={shard.key}", "rows_quarantined")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            assert lines[lines.index("rows_quarantined") + 1] == "1" and lines[lines.index("records_read") + 1] == "4"
        finally:
            browser.close()
