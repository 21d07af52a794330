"""Runs a server command and kills it when its users go away (even after SIGKILL).

Usage (by `servers.ManagedServer` / `servers.SharedServer`, as a file path so no package import
is needed):
    python _watchdog.py PARENT_PID -- cmd args...         one owner: the parent process
    python _watchdog.py --users STATE_JSON -- cmd args...  shared: every user listed in the file

The watchdog is the leader of the server's process group, so `killpg` from any user stops both.
With one owner, the watchdog stops the server when its parent pid changes (the owner died
without cleaning up: SIGKILL, crash). Shared, it reads the state file (written atomically by
`servers.SharedServer` under its lock) and stops the server when no listed user process is alive
any more, or when the file no longer names this watchdog (another server replaced it), taking
the same lock and removing the state so the next user starts a fresh server. With `linger_s`
in the state, an unused server waits that long for a new user first (the next run of a backfill
reuses the loaded model); a user that joins meanwhile keeps it.

The helpers `process_start` / `user_alive` are imported by `servers.py` too (one definition of
"alive": same pid and same start time, so a reused pid is not mistaken for the user).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot, from /proc) or None when it is not
    running or is a zombie. Where /proc is absent, "?" for any live pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22 of stat: starttime


def user_alive(user: dict) -> bool:
    start = process_start(int(user.get("pid", 0)))
    return start is not None and (user.get("start") in (None, "?") or start == "?" or start == user.get("start"))


def _read_state(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main() -> int:
    shared = sys.argv[1] == "--users"
    state_path = sys.argv[2] if shared else None
    parent = None if shared else int(sys.argv[1])
    cmd = sys.argv[sys.argv.index("--") + 1 :]
    child = subprocess.Popen(cmd)  # same process group as this watchdog

    def stop(*_):
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        os._exit(0)

    def users_gone() -> bool:
        state = _read_state(state_path)
        if state is None or state.get("pid") != os.getpid():
            return True
        return not any(user_alive(u) for u in state.get("users", []))

    def linger_s() -> float:
        """How long an unused server waits for a new user (0 when the state is gone or replaced)."""
        state = _read_state(state_path)
        if state is None or state.get("pid") != os.getpid():
            return 0.0
        return float(state.get("linger_s") or 0.0)

    def stop_if_unused() -> None:
        """Under the users' lock: when no user is left, remove the state (if it still names this
        watchdog) and stop the server while holding the lock, so a user arriving meanwhile
        waits and then starts a fresh server instead of joining a dying one."""
        import fcntl

        lock = os.path.join(os.path.dirname(state_path), "lock")
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if not users_gone():
                return
            state = _read_state(state_path)
            if state is not None and state.get("pid") == os.getpid():
                with contextlib.suppress(OSError):
                    os.unlink(state_path)
            stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    grace_until = time.monotonic() + 5.0  # the starter writes the state right after spawning us
    idle_from = None
    while True:
        code = child.poll()
        if code is not None:
            return code
        if shared:
            now = time.monotonic()
            if now > grace_until and users_gone():
                idle_from = idle_from or now
                if now - idle_from >= linger_s():
                    try:
                        stop_if_unused()
                    except OSError:  # the lock file is gone (home removed): nobody can use us
                        stop()
            else:
                idle_from = None
        elif os.getppid() != parent:
            stop()
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
