"""Runs whose process died, and bounded waits for concurrency-pool slots.

Every run the CLI starts carries `owner_tags()`: the host, the owning pid and that pid's start time
(so a recycled pid is never mistaken for the owner). Then:

- `reap_dead_runs()` marks in-progress runs whose owner is gone as FAILURE (so they can be
  re-executed from failure) and frees the pool slots of runs that are no longer in progress. A run
  killed with `kill -9` inside an LLM stage otherwise keeps its `llm` slot forever and blocks every
  later run of the pool.
- `wait_for_pools()` waits, within a bound (`DATAFLOW_POOL_WAIT_S`, default 600 s), until each pool a
  run needs has a free slot, reaping dead runs meanwhile; past the bound it raises `PoolWaitTimeout`
  naming the runs that hold the slots.
- `RunGuard` watches a run in progress from a thread: it keeps reaping, gives up a step that waits on
  a pool longer than the bound, and turns SIGTERM/SIGINT into a stop even while the main thread sits
  in Dagster's wait for a pool slot, where Dagster defers interrupts (and, in 1.13, spins at full CPU).

Dagster's own run monitoring (`run_monitoring` in dagster.yaml, run by the daemon) does the same for
runs launched by a run launcher; CLI runs execute in the CLI's process, which only the CLI can check.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

HOST_TAG = "dataflow/host"
PID_TAG = "dataflow/pid"
PID_START_TAG = "dataflow/pid_start"
IN_PROGRESS = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def pool_wait_s() -> float:
    """How long a run waits for a pool slot before giving up (`DATAFLOW_POOL_WAIT_S`, default 600)."""
    try:
        return float(os.environ.get("DATAFLOW_POOL_WAIT_S", "600"))
    except ValueError:
        return 600.0


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None when no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22: starttime (clock ticks after boot)


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that executes a run: host, pid, and the pid's start time."""
    pid = pid or os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _start_time(pid) or ""}


def owner_alive(run: dg.DagsterRun) -> bool | None:
    """Whether the process that owns `run` still runs: None when that cannot be told from here
    (no owner tags, or another host)."""
    tags = run.tags
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    fields = _proc_stat(int(tags[PID_TAG]))
    if fields is None or fields[0] in ("Z", "X"):  # gone, or a zombie nobody reaped yet
        return False
    return not tags.get(PID_START_TAG) or fields[19] == tags[PID_START_TAG]


def _inherited_owner(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """A re-execution launched from the UI copies its parent's tags, owner included: that owner is
    the parent's process, not this run's, so it says nothing about whether this run is alive."""
    if not run.parent_run_id:
        return False
    parent = instance.get_run_by_id(run.parent_run_id)
    keys = (HOST_TAG, PID_TAG, PID_START_TAG)
    return parent is not None and all(parent.tags.get(k) == run.tags.get(k) for k in keys)


def _describe_owner(run: dg.DagsterRun) -> str:
    return f"pid {run.tags.get(PID_TAG, '?')} on {run.tags.get(HOST_TAG, '?')}"


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark in-progress runs whose owning process died as FAILURE and free the pool slots of every
    run that is no longer in progress. Returns the ids of the runs marked failed."""
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        if owner_alive(run) is False and not _inherited_owner(instance, run):
            instance.report_run_failed(
                run,
                message=f"the process that ran it ({_describe_owner(run)}) died; marked failed by dataflow, "
                "re-execute it from failure to finish it",
            )
            failed.append(run.run_id)
    free_finished_slots(instance)
    return failed


def free_finished_slots(instance: dg.DagsterInstance, run_ids: Iterable[str] | None = None) -> list[str]:
    """Free the pool slots (claimed or pending) held by runs that are finished or unknown."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    freed = []
    for run_id in run_ids if run_ids is not None else storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            freed.append(run_id)
    return freed


class PoolWaitTimeout(RuntimeError):
    """A run waited longer than its bound for a slot in a concurrency pool."""


def _holders(instance: dg.DagsterInstance, pool: str) -> str:
    info = instance.event_log_storage.get_concurrency_info(pool)
    parts = []
    for run_id in sorted(info.active_run_ids):
        run = instance.get_run_by_id(run_id)
        parts.append(f"run {run_id[:8]}" + (f" ({_describe_owner(run)}, {run.status.value})" if run else ""))
    return ", ".join(parts) or "no run"


def full_pools(instance: dg.DagsterInstance, pools: Iterable[str]) -> list[str]:
    """The pools (of `pools`) whose slots are all claimed."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    full = []
    for pool in sorted(set(pools)):
        info = storage.get_concurrency_info(pool)
        if info.limit is not None and len(info.claimed_slots) >= info.limit:
            full.append(pool)
    return full


def wait_for_pools(
    instance: dg.DagsterInstance,
    pools: Iterable[str],
    timeout_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll_s: float = 0.5,
) -> float:
    """Wait until every pool in `pools` has a free slot, reaping dead runs meanwhile. Returns the
    seconds waited; raises `PoolWaitTimeout` past `timeout_s` (default `pool_wait_s()`)."""
    pools = [p for p in pools if p]
    timeout_s = pool_wait_s() if timeout_s is None else timeout_s
    start = time.monotonic()
    told = False
    while True:
        reap_dead_runs(instance)
        full = full_pools(instance, pools)
        if not full:
            return time.monotonic() - start
        waited = time.monotonic() - start
        holders = "; ".join(f"pool '{p}' is held by {_holders(instance, p)}" for p in full)
        if waited >= timeout_s:
            raise PoolWaitTimeout(
                f"gave up after waiting {waited:.0f} s for a free slot: {holders}. Wait for those runs, "
                f"raise the limit (`dagster instance concurrency set {full[0]} N`) or DATAFLOW_POOL_WAIT_S"
            )
        if on_wait and not told:
            on_wait(f"waiting for a free slot: {holders} (giving up after {timeout_s:.0f} s)")
            told = True
        time.sleep(poll_s)


INTERRUPTED = "interrupted (SIGTERM/SIGINT)"


class StageInterrupted(dg.Failure):
    """SIGTERM/SIGINT inside a stage that has a RetryPolicy (an LLM stage). Dagster answers an
    interrupt there by retrying the step after the policy's delay, so a stopped stage started again and
    could even run to the end; this failure forbids retries: the step fails at once, the stages after it
    are skipped, and the runner, seeing `INTERRUPTED` in the failure, stops as on Ctrl-C."""

    def __init__(self, stage: str):
        super().__init__(f"{INTERRUPTED} in stage {stage}; re-run, or re-execute the run from failure", allow_retries=False)


class RunAborted(KeyboardInterrupt):
    """Raised in the main thread by `RunGuard` to stop a run that waits too long on a pool slot, or
    that got SIGTERM/SIGINT while Dagster deferred it. A KeyboardInterrupt, so Dagster treats it as an
    interruption: the run is marked failed and its resources are torn down."""


@dataclass
class _Abort:
    reason: str
    at: float


class RunGuard:
    """Watch the runs this process executes (see the module docstring). Use as a context manager
    around the execution, in the main thread; `reason` says why it stopped a run, if it did."""

    def __init__(self, instance: dg.DagsterInstance, timeout_s: float | None = None, poll_s: float = 1.0, grace_s: float = 20.0):
        self.instance = instance
        self.timeout_s = pool_wait_s() if timeout_s is None else timeout_s
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.abort: _Abort | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dataflow-run-guard", daemon=True)
        self._main = threading.main_thread().ident

    @property
    def reason(self) -> str | None:
        return self.abort.reason if self.abort else None

    def __enter__(self) -> RunGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for run in self._own_runs(finished=True):
            free_finished_slots(self.instance, [run.run_id])

    def _own_runs(self, finished: bool = False) -> list[dg.DagsterRun]:
        tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        statuses = None if finished else IN_PROGRESS
        return list(self.instance.get_runs(filters=dg.RunsFilter(tags=tags, statuses=statuses), limit=50))

    def _watch(self) -> None:
        from dagster._utils.interrupts import check_captured_interrupt

        interrupted_since: float | None = None
        while not self._stop.wait(self.poll_s):
            try:
                reap_dead_runs(self.instance)
                if self.abort:
                    if time.monotonic() - self.abort.at > self.grace_s:
                        self._hard_stop()
                    continue
                if check_captured_interrupt():
                    # Dagster raises a captured interrupt as soon as a step is computing; one that stays
                    # pending means the main thread waits outside any step (for a pool slot)
                    interrupted_since = interrupted_since or time.monotonic()
                    if time.monotonic() - interrupted_since > 2 * self.poll_s:
                        self._raise_in_main("interrupted (SIGTERM/SIGINT) while waiting for a pool slot")
                    continue
                interrupted_since = None
                self._check_interrupted_retries()
                if not self.abort:
                    self._check_pool_waits()
            except Exception:  # noqa: BLE001, S112 - the guard must never kill the run it guards
                continue

    def _check_interrupted_retries(self) -> None:
        """Dagster answers SIGTERM/SIGINT inside a step that has a RetryPolicy by retrying the step
        ("respect retry policy when interrupts occur"), so a stopped LLM stage would start again: stop
        the run instead when one of its retries was caused by an interruption."""
        from dagster import DagsterEventType

        for run in self._own_runs():
            records = self.instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY).records
            for record in records:
                err = record.event_log_entry.dagster_event.event_specific_data.error
                while err is not None:
                    if err.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                        self._raise_in_main(f"interrupted (SIGTERM/SIGINT) in step {record.event_log_entry.step_key}; the run was stopped")
                        return
                    err = err.cause

    def _check_pool_waits(self) -> None:
        storage = self.instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return
        own = {r.run_id for r in self._own_runs()}
        if not own:
            return
        now = time.time()
        for pool in storage.get_concurrency_keys():
            info = storage.get_concurrency_info(pool)
            for step in info.pending_steps:
                if step.run_id in own and step.assigned_timestamp is None:
                    waited = now - step.enqueued_timestamp.timestamp()
                    if waited > self.timeout_s:
                        self._raise_in_main(
                            f"step {step.step_key} gave up after waiting {waited:.0f} s for a slot in pool '{pool}', "
                            f"held by {_holders(self.instance, pool)}. Wait for those runs, raise the limit "
                            f"(`dagster instance concurrency set {pool} N`) or DATAFLOW_POOL_WAIT_S"
                        )
                        return

    def _raise_in_main(self, reason: str) -> None:
        self.abort = _Abort(reason, time.monotonic())
        # the main thread is in Dagster's slot-wait loop, executing Python: an asynchronous exception
        # reaches it at once, and unwinds the run as an interruption would
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main), ctypes.py_object(RunAborted))

    def _hard_stop(self) -> None:
        """The main thread did not unwind in time: mark our runs failed, free their slots, exit."""
        for run in self._own_runs():
            self.instance.report_run_failed(run, message=f"stopped by dataflow: {self.reason}")
            self.instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        os.write(2, f"FAILED: {self.reason}\n".encode())
        os._exit(1)
