"""Runs a server command and kills it when the parent process goes away (even after SIGKILL).

Usage (by `servers.ManagedServer`, as a file path so no package import is needed):
    python _watchdog.py PARENT_PID -- cmd args...

The watchdog is the leader of the server's process group, so `killpg` from the parent stops
both; if the parent dies without cleaning up (SIGKILL, crash), the watchdog sees its parent pid
change and terminates the server, then kills it after a grace period.
"""

import os
import signal
import subprocess
import sys
import time


def main() -> int:
    parent = int(sys.argv[1])
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

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        code = child.poll()
        if code is not None:
            return code
        if os.getppid() != parent:
            stop()
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
