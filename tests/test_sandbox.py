"""The sandbox (`operators/sandbox.py`) on real programs: every HumanEval canonical solution and every
MBPP reference solution passes its own tests inside it, and hostile programs (writing outside the
sandbox, opening a socket, fork bombs, 10 GB allocations, infinite loops, killing the parent,
reading the caller's secrets, escaping the process group, flooding stdout) are contained,
classified, and the next program still runs."""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from operators.sandbox import (
    Limits,
    classify,
    run_command,
    run_many,
    run_python,
    sandbox_mode,
)
from tests.conftest import REPO, shared

ISOLATED = sandbox_mode() == "isolated"
needs_isolated = pytest.mark.skipif(not ISOLATED, reason="needs the isolated sandbox mode (root + unshare + setpriv)")


def _humaneval() -> list[dict]:
    with gzip.open(shared("humaneval", "HumanEval.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f]


def humaneval_program(p: dict) -> str:
    return f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"


def mbpp_program(m: dict) -> str:
    return "\n".join([m["code"], m.get("test_setup_code") or "", *m["test_list"], ""])


def _nobody_processes() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == 65534:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


# --------------------------------------------------------------------------- statuses


def test_statuses_of_ordinary_programs():
    ok = run_python("import sys; print(sum(range(10))); print('warn', file=sys.stderr)")
    assert (ok.status, ok.returncode, ok.stdout, ok.stderr.strip()) == ("pass", 0, "45\n", "warn")
    assert ok.seconds > 0 and ok.mode == sandbox_mode()
    failed = run_python("def f(x):\n    return x + 1\nassert f(1) == 3, 'f(1) should be 3'")
    assert failed.status == "fail" and "AssertionError: f(1) should be 3" in failed.reason
    assert run_python("import sys; sys.exit(3)").status == "fail"
    crashed = run_python("def f():\n    return undefined_name\nf()")
    assert crashed.status == "crash" and crashed.reason.startswith("NameError")
    syntax = run_python("def broken(:\n  pass")
    assert syntax.status == "crash" and "SyntaxError" in syntax.reason
    echoed = run_python("import sys; print(sys.stdin.read().upper())", stdin="hello")
    assert echoed.stdout == "HELLO\n"


def test_classify_rules():
    assert classify(0, "", False, "fallback")[0] == "pass"
    assert classify(None, "", True, "isolated")[0] == "timeout"
    assert classify(-24, "", False, "fallback")[0] == "timeout"  # SIGXCPU
    assert classify(128 + 24, "", False, "isolated")[0] == "timeout"
    assert classify(1, "Traceback...\nMemoryError\n", False, "fallback")[0] == "memory"
    assert classify(1, "Traceback...\nOSError: [Errno 101] Network is unreachable", False, "isolated")[0] == "blocked"
    assert classify(-11, "", False, "fallback")[:2] == ("crash", 11)


def test_program_files_and_scratch_directory_are_its_own():
    a = run_python("import os; open('out.txt', 'w').write('a'); print(sorted(os.listdir('.')), open('data.txt').read())",
                   files={"data.txt": "payload"})
    assert a.status == "pass" and a.stdout.strip().endswith("payload") and "out.txt" in a.stdout
    b = run_python("import os; print(sorted(os.listdir('.')))")
    assert b.status == "pass" and "out.txt" not in b.stdout  # a fresh directory per program


# --------------------------------------------------------------------------- real data


def test_every_humaneval_canonical_solution_passes_its_tests():
    problems = _humaneval()
    assert len(problems) == 164
    results = run_many([humaneval_program(p) for p in problems], workers=2)
    failed = {p["task_id"]: (r.status, r.reason) for p, r in zip(problems, results) if not r.ok}
    assert failed == {}, failed
    # and a wrong solution fails its tests: the check can fail
    wrong = dict(problems[0], canonical_solution="    return not " + problems[0]["canonical_solution"].strip().removeprefix("return ") + "\n")
    assert run_python(humaneval_program(wrong)).status in ("fail", "crash")


@pytest.mark.slow
def test_every_mbpp_reference_solution_passes_its_tests():
    rows = [json.loads(line) for line in shared("mbpp", "mbpp.jsonl").read_text().splitlines()]
    assert len(rows) == 974
    results = run_many([mbpp_program(m) for m in rows], workers=2)
    failed = {m["task_id"]: (r.status, r.reason) for m, r in zip(rows, results) if not r.ok}
    print(f"MBPP reference solutions passing in the sandbox: {len(rows) - len(failed)}/{len(rows)}")
    assert failed == {}, failed


# --------------------------------------------------------------------------- hostile programs


def test_hostile_programs_are_contained_classified_and_the_run_goes_on(tmp_path, monkeypatch):
    secret = f"sk-sandbox-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("DATAFLOW_TEST_SECRET", secret)
    outside = [tmp_path / "escaped.txt", REPO / f".sandbox-escape-{uuid.uuid4().hex}"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    me = os.getpid()
    hostile = {
        "write_outside": "\n".join(f"open({str(p)!r}, 'w').write('pwned')" for p in outside),
        "socket": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "allocate_10gb": "x = bytearray(10 * 1024 ** 3)\nprint(len(x))",
        "infinite_loop": "while True:\n    pass",
        "kill_parent": f"import os, signal\nos.kill({me}, signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGKILL)",
        "read_secrets": (
            "import os\nprint(os.environ.get('DATAFLOW_TEST_SECRET'))\n"
            f"print(open('/proc/{me}/environ', 'rb').read())"
        ),
        "escape_group": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\nprint('parent done')",
        "flood_stdout": "while True:\n    print('x' * 1000)",
        "normal": "print('still running')",
    }
    limits = Limits(wall_s=4, cpu_s=3, memory_mb=512, output_bytes=4096)
    before = set(_nobody_processes())
    start = time.perf_counter()
    results = dict(zip(hostile, run_many(list(hostile.values()), workers=2, limits=limits)))
    elapsed = time.perf_counter() - start
    status = {k: r.status for k, r in results.items()}
    # nothing got out (fallback mode has no read-only view: documented, and tested only here)
    if ISOLATED:
        assert not any(p.exists() for p in outside), [p for p in outside if p.exists()]
        assert status["write_outside"] == "blocked"
    for p in outside:
        p.unlink(missing_ok=True)
    try:
        conn, _ = listener.accept()
        conn.close()
        raise AssertionError("a sandboxed program connected to the caller's loopback socket")
    except socket.timeout:
        pass
    finally:
        listener.close()
    everything = "".join(r.stdout + r.stderr for r in results.values())
    assert secret not in everything
    # classified
    assert status["socket"] == "blocked"
    assert status["fork_bomb"] in ("blocked", "timeout", "crash")
    assert status["allocate_10gb"] == "memory"
    assert status["infinite_loop"] == "timeout" and results["infinite_loop"].seconds < limits.wall_s + 3
    assert status["kill_parent"] == "blocked"
    assert status["flood_stdout"] == "timeout" and results["flood_stdout"].truncated
    assert len(results["flood_stdout"].stdout) <= limits.output_bytes
    # isolated: the setsid'd child is killed with the PID namespace; fallback: fork itself is denied
    assert status["escape_group"] == ("pass" if ISOLATED else "blocked") and results["escape_group"].seconds < limits.wall_s + 3
    assert status["normal"] == "pass" and results["normal"].stdout == "still running\n"
    assert elapsed < 60
    # no process of the sandbox survives its call (the setsid'd sleeper included)
    time.sleep(0.5)
    if ISOLATED:
        assert set(_nobody_processes()) - before == set()
    # and a normal program still runs afterwards
    assert run_python("print(6 * 7)").stdout == "42\n"


@needs_isolated
def test_isolated_mode_network_namespace_and_read_only_view():
    net = run_python("import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=2)")
    assert net.status == "blocked" and "Network is unreachable" in net.reason
    ro = run_python("open('/tmp/sandbox-ro-probe', 'w')")
    assert ro.status == "blocked" and "Read-only file system" in ro.reason
    assert not Path("/tmp/sandbox-ro-probe").exists()
    who = run_python("import os; print(os.getuid(), os.getppid())")
    assert who.stdout.split() == ["65534", "1"]  # nobody, inside its own PID namespace
    # a non-Python command runs under the same isolation
    sh = run_command(["sh", "-c", "echo hi > ok.txt && cat ok.txt && touch /etc/sandbox-probe"])
    assert sh.stdout == "hi\n" and sh.status == "blocked" and not Path("/etc/sandbox-probe").exists()


def test_fallback_mode_blocks_sockets_and_signals(monkeypatch):
    monkeypatch.setenv("DATAFLOW_SANDBOX_MODE", "fallback")
    assert sandbox_mode() == "fallback"
    net = run_python("import socket\nsocket.socket()")
    assert net.status == "blocked" and "socket" in net.reason
    kill = run_python(f"import os\nos.kill({os.getpid()}, 9)")
    assert kill.status == "blocked"
    fork = run_python("import os\nos.fork()")
    assert fork.status == "blocked"
    mem = run_python("x = bytearray(10 * 1024 ** 3)", limits=Limits(memory_mb=512))
    assert mem.status == "memory"
    assert run_python("print('ok')").stdout == "ok\n"
