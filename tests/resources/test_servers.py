"""Managed server processes: health wait, clean stop, no orphans (even after SIGKILL), start failures.

Uses the loopback server script as the managed process (fast); the real llama.cpp server is in
test_llamacpp.py (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from operators.llm import LLMRequest
from resources.llm import ManagedServer, OpenAIClient, ServerStartError, default_threads

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
LOOPBACK = [sys.executable, str(TESTS / "llm_server.py"), "--port", "{port}"]


def group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process in the process group?"""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_dead(pgid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def test_start_health_use_stop(cache_path):
    with ManagedServer(LOOPBACK, name="loopback", startup_timeout_s=30) as srv:
        assert srv.running
        pgid = srv.proc.pid
        assert os.getpgid(pgid) == pgid != os.getpgid(0)  # its own process group
        res = OpenAIClient(base_url=srv.base_url, model="echo", cache=cache_path).generate(
            [LLMRequest(id="a", messages=[{"role": "user", "content": "managed"}])]
        )
        assert res[0].text == "echo: managed"
    assert not srv.running
    assert wait_dead(pgid)
    assert not srv.log_path.exists()  # a clean stop removes the automatic log


def test_client_starts_managed_server_lazily_and_close_stops_it(cache_path):
    srv = ManagedServer(LOOPBACK, name="loopback", startup_timeout_s=30)
    client = OpenAIClient(server=srv, model="echo", cache=cache_path)
    reqs = [LLMRequest(id="a", messages=[{"role": "user", "content": "lazy"}])]
    assert not srv.running
    with client:
        assert client.generate(reqs)[0].ok
        assert srv.running
        pgid = srv.proc.pid
    assert not srv.running and wait_dead(pgid)
    # all cached: a new client does not start the server at all
    srv2 = ManagedServer(LOOPBACK, name="loopback")
    assert OpenAIClient(server=srv2, model="echo", cache=cache_path).generate(reqs)[0].cached
    assert not srv2.running


ORPHAN = textwrap.dedent(
    """
    import sys, time
    from resources.llm import ManagedServer
    srv = ManagedServer(sys.argv[1:], name="loopback", startup_timeout_s=30).start()
    print(srv.proc.pid, srv.log_path, flush=True)
    time.sleep(600)
    """
)


def test_no_orphan_when_the_owner_is_sigkilled(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(ORPHAN)
    owner = subprocess.Popen([sys.executable, str(script), *LOOPBACK], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pid, log_path = owner.stdout.readline().split()
        pgid = int(pid)
        assert group_alive(pgid)
        owner.kill()  # SIGKILL: no atexit, no finally
        owner.wait(10)
        assert wait_dead(pgid, timeout=15), "managed server outlived its owner"
        Path(log_path).unlink(missing_ok=True)
    finally:
        if owner.poll() is None:
            owner.kill()


def test_exit_before_healthy_raises_with_log_tail():
    srv = ManagedServer([sys.executable, "-c", "import sys; print('model file is corrupt'); sys.exit(3)"], name="broken")
    with pytest.raises(ServerStartError, match="model file is corrupt"):
        srv.start()
    assert not srv.running
    assert srv.log_path.exists()  # kept for diagnosis after a failed start
    srv.log_path.unlink()


def test_health_timeout_kills_the_group():
    srv = ManagedServer([sys.executable, "-c", "import time; time.sleep(60)"], name="mute", startup_timeout_s=1.0)
    with pytest.raises(ServerStartError, match="not healthy"):
        srv.start()
    assert srv.proc is None
    srv.log_path.unlink(missing_ok=True)


def test_default_threads_leave_a_core_free():
    assert 1 <= default_threads() <= max(1, (os.cpu_count() or 1) - 1)


def test_llamacpp_launcher_command(monkeypatch, tmp_path):
    from resources.llm import servers

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(servers, "llama_cpp_installed", lambda: True)
    monkeypatch.setattr(servers, "_llama_server_flags", lambda py: frozenset({"--model", "--port"}))
    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "home"))
    srv = servers.llamacpp_server(gguf, n_threads=3, n_ctx=512, shared=False)
    cmd = srv.cmd
    assert cmd[1:3] == ["-m", "llama_cpp.server"] and cmd[cmd.index("--model") + 1] == str(gguf)
    assert cmd[cmd.index("--n_threads") + 1] == "3" and cmd[cmd.index("--port") + 1] == str(srv.port)
    assert srv.identity.startswith("llamacpp:tiny.gguf:104:")
    # the default: one server per host for this configuration, same identity, port chosen at start
    shared = servers.llamacpp_server(gguf, n_threads=3, n_ctx=512)
    assert isinstance(shared, servers.SharedServer) and shared.identity == srv.identity
    assert shared.cmd_template[shared.cmd_template.index("--port") + 1] == "{port}"
    assert shared.dir.parent == tmp_path / "home" / "servers" / __import__("socket").gethostname()
    assert servers.llamacpp_server(gguf, n_threads=3, n_ctx=1024).key != shared.key
    with pytest.raises(FileNotFoundError):
        servers.llamacpp_server(tmp_path / "missing.gguf")
