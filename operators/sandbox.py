"""The one sandbox of the project: run an untrusted program (model-written code, generated tests,
synthesised operators) contained, bounded and honestly classified.

`run_python(code)` / `run_command(argv)` return one `SandboxResult` whatever the program does:
status `pass` (exit 0), `fail` (non-zero exit or a failed assertion), `timeout` (wall clock or
CPU limit), `memory` (memory limit hit), `crash` (uncaught exception other than an assertion,
or killed by a signal) or `blocked` (the program died on an operation the sandbox denies:
network, writing outside its directory, signalling other processes), with stdout/stderr excerpts,
the exit code and the wall time. `run_many` runs a batch on a thread pool (one process per program).

Limits (`Limits`, all per program)
----------------------------------
- **Process group + wall timeout**: each program starts in a new session; when `wall_s` passes the
  whole group is killed with SIGKILL (and, in `isolated` mode, the PID namespace, which takes every
  descendant with it, even one that called `setsid`).
- **CPU time** (`RLIMIT_CPU`, `cpu_s`), **address space** (`RLIMIT_AS`, `memory_mb`), **file size**
  (`RLIMIT_FSIZE`, `file_mb`), **open files** (`RLIMIT_NOFILE`), **processes** (`RLIMIT_NPROC`,
  `max_procs`; `isolated` mode only, where it counts the sandbox uid's processes), no core dumps.
- **Own temporary directory**: the program runs in a fresh directory (a size-capped tmpfs of
  `disk_mb` in `isolated` mode), removed afterwards.
- **Output caps**: at most `output_bytes` of stdout and of stderr are kept (the rest is drained and
  discarded, and `truncated` is set), so a program printing forever costs no memory.
- **Clean environment**: only PATH, HOME, LANG and PYTHON* hygiene variables; no secrets of the caller.

Two modes, chosen automatically (`sandbox_mode()`):

- `isolated` (Linux, running as root, `unshare` and `setpriv` present): the program runs in new
  network, mount and PID namespaces (`unshare --net --mount --pid`): the network namespace has
  no usable interface, so even a connect to 127.0.0.1 fails with *Network is unreachable*; every
  mount except the program's tmpfs is remounted read-only inside the namespace (a read-only view of
  the whole file system); the program runs as `nobody` (uid 65534) with no capabilities, so it can
  signal no process of the caller and `RLIMIT_NPROC` stops fork bombs. Python programs see the
  base interpreter's standard library only (the interpreter is bind-mounted read-only into the
  sandbox directory, since it may live under a directory `nobody` cannot enter).
- `fallback` (anything else): a new session with the same resource limits (but no `RLIMIT_NPROC`,
  which would count every process of the calling user), and for Python programs an audit hook
  (`sys.addaudithook`, which the program cannot remove) that denies socket creation, `os.fork`,
  signals to other processes and reading other processes' `/proc` entries (their environment). There is no read-only view of the file system in this mode: the
  program can write wherever the calling user can. Prefer `isolated` for untrusted code.

Nothing here imports Dagster or Polars.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

STATUSES = ("pass", "fail", "timeout", "memory", "crash", "blocked")
NOBODY = 65534
BLOCK_MARK = "[sandbox] blocked:"

# The last traceback line (or a marker) of an operation the sandbox denied.
_BLOCKED = re.compile(
    r"Network is unreachable|Read-only file system|Permission denied|Operation not permitted|"
    r"Address family not supported|BlockingIOError: \[Errno 11\]|ProcessLookupError|" + re.escape(BLOCK_MARK)
)
_MEMORY = re.compile(r"^MemoryError|\bMemoryError\b|Cannot allocate memory|std::bad_alloc", re.M)


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Defaults suit unit-test style programs (HumanEval, MBPP)."""

    wall_s: float = 10.0  # wall clock; the whole process group is killed after it
    cpu_s: int = 10  # RLIMIT_CPU (seconds of CPU time)
    memory_mb: int = 1024  # RLIMIT_AS (virtual address space)
    file_mb: int = 16  # RLIMIT_FSIZE (largest file the program may write)
    disk_mb: int = 64  # size of the program's tmpfs (isolated mode)
    max_procs: int = 32  # RLIMIT_NPROC (isolated mode: per sandbox uid)
    max_open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 16_384  # stdout and stderr kept, each


@dataclass
class SandboxResult:
    """What one sandboxed program did. `status` is one of `STATUSES`."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    truncated: bool = False
    signal: int | None = None
    mode: str = ""
    reason: str = ""  # one line: why this status

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- mode


def sandbox_mode() -> str:
    """`isolated` when namespaces + uid drop are available here, else `fallback`.
    `DATAFLOW_SANDBOX_MODE=fallback` forces the weaker mode (e.g. to test it)."""
    forced = os.environ.get("DATAFLOW_SANDBOX_MODE")
    if forced == "fallback":
        return forced
    return _detect_mode()


@lru_cache(maxsize=1)
def _detect_mode() -> str:
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return "fallback"
    try:  # namespaces may be denied (seccomp, nested containers): try once
        probe = subprocess.run(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "fallback"
    return "isolated" if probe.returncode == 0 else "fallback"


# --------------------------------------------------------------------------- programs

# Runs before the user's code in fallback mode: an audit hook the program cannot remove.
_GUARD = """
import os, sys
_pid = os.getpid()
def _sandbox_guard(event, args):
    if event in ("socket.__new__", "os.fork", "os.forkpty") or (
        event in ("os.kill", "os.killpg") and args and args[0] not in (0, _pid)
    ) or (
        event == "open" and args and isinstance(args[0], str) and args[0].startswith("/proc/")
        and not args[0].startswith(("/proc/self/", "/proc/%d/" % _pid))
    ):
        sys.stderr.write("MARK " + event + "\\n"); sys.stderr.flush()
        raise PermissionError("MARK " + event)
sys.addaudithook(_sandbox_guard)
del _sandbox_guard
""".replace("MARK", BLOCK_MARK)

_RUNNER = "import runpy, sys; sys.argv = ['main.py']; runpy.run_path('{main}', run_name='__main__')"


def _python_prefix() -> Path:
    return Path(sys.base_prefix)


def _python_rel() -> str:
    """The interpreter's path relative to its prefix (e.g. bin/python3.11)."""
    exe = Path(os.path.realpath(sys.executable))
    try:
        return str(exe.relative_to(os.path.realpath(sys.base_prefix)))
    except ValueError:
        return f"bin/python{sys.version_info.major}.{sys.version_info.minor}"


# --------------------------------------------------------------------------- running


def _limit_setter(limits: Limits, nproc: bool):
    def apply() -> None:
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc:  # counts every process of the uid: only meaningful for the sandbox's own uid
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))

    return apply


def _isolated_argv(workdir: Path, inner: Sequence[str], limits: Limits, bind_python: bool) -> list[str]:
    """unshare + a small root shell that builds the read-only view, then drops to `nobody`."""
    work = workdir / "work"
    lines = [
        "mount --make-rprivate / || exit 90",
        f"mount -t tmpfs -o size={limits.disk_mb}m,mode=0777,nosuid,nodev tmpfs {_q(work)} || exit 90",
        f"cp -R {_q(workdir / 'in')}/. {_q(work)}/ && chmod -R a+rX {_q(work)} || exit 90",
    ]
    if bind_python:
        lines.append(f"mount --bind {_q(_python_prefix())} {_q(workdir / 'py')} || exit 90")
    lines += [
        # every other mount read-only (private to this namespace; the host is untouched)
        "awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do case \"$m\" in "
        f"/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/mqueue|{_q(work)}) continue;; esac; "
        "mount -o remount,bind,ro \"$m\" 2>/dev/null; done",
        f"cd {_q(work)} || exit 90",
        f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs "
        + " ".join(_q(a) for a in inner),
        "rc=$?; exit $rc",  # keep sh as PID 1 of the namespace (not exec'd away): the program is not init
    ]
    return [
        "unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
        "sh", "-c", "\n".join(lines),
    ]


def _q(s: Any) -> str:
    import shlex

    return shlex.quote(str(s))


def _clean_env(home: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONHASHSEED": "0",
    }
    env.update(extra or {})
    return env


class _Capped:
    """Drain a pipe in a thread, keeping the first `cap` bytes."""

    def __init__(self, stream, cap: int):
        self.buf, self.cap, self.truncated = bytearray(), cap, False
        self.thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self.thread.start()

    def _drain(self, stream) -> None:
        try:
            while chunk := stream.read(65536):
                room = self.cap - len(self.buf)
                if room > 0:
                    self.buf += chunk[:room]
                if len(chunk) > max(room, 0):
                    self.truncated = True
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        self.thread.join(2)
        return self.buf.decode("utf-8", "replace")


def run_command(
    argv: Sequence[str],
    files: dict[str, str | bytes] | None = None,
    *,
    stdin: str | bytes | None = None,
    limits: Limits = Limits(),
    env: dict[str, str] | None = None,
    _python: bool = False,
) -> SandboxResult:
    """Run `argv` in the sandbox. `files` (relative name -> content) are copied into its fresh
    working directory first; `{dir}` in `argv` is replaced by that directory's path (so
    `["sh", "{dir}/run.sh"]` works)."""
    mode = sandbox_mode()
    base = Path(tempfile.mkdtemp(prefix="dataflow-sbx-"))
    try:
        os.chmod(base, 0o755)
        work, staged = base / "work", base / "in"
        work.mkdir()
        staged.mkdir()
        for name, content in (files or {}).items():
            p = (staged / name).resolve()
            if staged.resolve() not in p.parents:
                raise ValueError(f"sandbox file name escapes its directory: {name!r}")
            p.parent.mkdir(parents=True, exist_ok=True)
            (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        argv = [a.replace("{dir}", str(work)) for a in argv]
        if mode == "isolated":
            if _python:
                (base / "py").mkdir()
                argv = [str(base / "py" / _python_rel()), *argv[1:]]
            full = _isolated_argv(base, argv, limits, bind_python=_python)
        else:
            shutil.copytree(staged, work, dirs_exist_ok=True)
            full = list(argv)
        return _execute(full, str(work), stdin, limits, _clean_env(work, env), mode)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_python(
    code: str,
    *,
    stdin: str | bytes | None = None,
    limits: Limits = Limits(),
    files: dict[str, str | bytes] | None = None,
    env: dict[str, str] | None = None,
) -> SandboxResult:
    """Run Python source `code` as `__main__` in the sandbox (see the module docstring for limits).

    The program is `main.py` in its working directory; `files` go beside it. Only the standard library is
    importable in `isolated` mode.
    """
    files = {**(files or {}), "main.py": code}
    runner = _RUNNER.format(main="{dir}/main.py")
    if sandbox_mode() == "fallback":
        runner = _GUARD + "\n" + runner
    return run_command([sys.executable, "-I", "-c", runner], files, stdin=stdin, limits=limits, env=env, _python=True)


def _execute(argv: list[str], cwd: str, stdin: str | bytes | None, limits: Limits, env: dict[str, str], mode: str) -> SandboxResult:
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_limit_setter(limits, nproc=mode == "isolated"),
            close_fds=True,
        )
    except OSError as err:
        return SandboxResult("crash", None, "", str(err), 0.0, mode=mode, reason=f"could not start: {err}")
    out, err = _Capped(proc.stdout, limits.output_bytes), _Capped(proc.stderr, limits.output_bytes)
    if stdin is not None:
        try:
            proc.stdin.write(stdin.encode() if isinstance(stdin, str) else stdin)
            proc.stdin.close()
        except OSError:
            pass
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        try:  # whatever happened, nothing of this program outlives the call
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    seconds = time.perf_counter() - start
    stdout, stderr = out.text(), err.text()
    rc = proc.returncode
    status, sig, reason = classify(rc, stderr, timed_out, mode, limits)
    return SandboxResult(status, rc, stdout, stderr, seconds, out.truncated or err.truncated, sig, mode, reason)


def classify(rc: int | None, stderr: str, timed_out: bool, mode: str, limits: Limits = Limits()) -> tuple[str, int | None, str]:
    """(status, signal, reason) from the exit code, stderr and whether the wall clock ran out."""
    if timed_out:
        return "timeout", signal.SIGKILL, f"wall clock limit {limits.wall_s:g}s"
    sig = None
    if rc is not None and rc < 0:
        sig = -rc
    elif mode == "isolated" and rc is not None and rc > 128 and rc != 255:
        sig = rc - 128  # the namespace's shell reports a signal death as 128 + N
    if rc == 90 and mode == "isolated":
        return "crash", None, "the sandbox could not set up its namespace"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and "CPU time limit" in stderr):
        return "timeout", sig, f"CPU time limit {limits.cpu_s}s"
    tail = "\n".join(stderr.strip().splitlines()[-3:])
    if _MEMORY.search(tail):
        return "memory", sig, f"memory limit {limits.memory_mb} MB"
    if sig == signal.SIGXFSZ:
        return "blocked", sig, f"file size limit {limits.file_mb} MB"
    if sig is not None:
        return "crash", sig, f"killed by signal {signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig}"
    if rc == 0:
        return "pass", None, "exit 0"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if BLOCK_MARK in stderr or _BLOCKED.search(last):
        return "blocked", None, last[:200]
    if last.startswith("AssertionError") or "Traceback" not in stderr:
        return "fail", None, last[:200] or f"exit code {rc}"
    return "crash", None, last[:200]


def status_of_error(message: str | None) -> str | None:
    """`blocked` / `memory` when an error message a program caught and reported itself (e.g. a
    test harness) shows a sandbox denial or the memory limit; else None."""
    if not message:
        return None
    if BLOCK_MARK in message or _BLOCKED.search(message):
        return "blocked"
    if _MEMORY.search(message):
        return "memory"
    return None


def run_many(programs: Iterable[str], *, workers: int = 2, limits: Limits = Limits(), stdin: Sequence[str | None] | None = None) -> list[SandboxResult]:
    """Run many Python programs, `workers` at a time; results in input order."""
    progs = list(programs)
    ins = list(stdin) if stdin is not None else [None] * len(progs)
    if not progs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda pair: run_python(pair[0], stdin=pair[1], limits=limits), zip(progs, ins)))


__all__ = ["Limits", "SandboxResult", "STATUSES", "classify", "run_command", "run_many", "run_python", "sandbox_mode", "status_of_error"]
