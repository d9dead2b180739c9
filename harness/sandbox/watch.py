"""Watching one sandbox run from the parent: its output and report pipes read within their caps, the
deciding process's exit noticed (through a pidfd where the kernel has them), and every process group
killed at the end. Used by :mod:`harness.sandbox`, which starts the processes and turns what was seen
here into an ``Outcome``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

REPORT_CAP = 64 << 10  # the report pipe carries a few short lines; more is the program scribbling on it
DRAIN_S = 1.0  # after the kill, how long to wait for the pipes to close


@dataclass
class Child:
    """One sandboxed process of a run, and what its report pipe carried."""

    role: str
    process: subprocess.Popen[bytes]
    report_fd: int
    decides: bool
    report: bytearray = field(default_factory=bytearray)
    #: Exit status (negative: the signal) when it ended before the harness killed the run, else None.
    early_exit: int | None = None


def watch(children: list[Child], output_fd: int, deadline: float, cap: int) -> tuple[str | None, bytes]:
    """Collect output and reports until the deciding child exits, the deadline passes or the cap is hit.

    Then every group is killed. Returns (verdict, output): verdict is ``"timeout"``, ``"output"`` or
    None (it exited). No child is reaped here, so a pid, which is also its group id, cannot be reused
    by an unrelated process before ``killpg`` runs.
    """
    deciding = next(c for c in children if c.decides)
    output = bytearray()
    buffers = {output_fd: output, **{c.report_fd: c.report for c in children}}
    caps = {output_fd: cap, **{c.report_fd: REPORT_CAP for c in children}}
    pidfds = [_pidfd_open(c.process.pid) for c in children]
    verdict: str | None = None
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            sel.register(fd, selectors.EVENT_READ)
        watched = [fd for fd in pidfds if fd is not None]
        for fd in watched:
            sel.register(fd, selectors.EVENT_READ, data="exit")
        poll_s = None if len(watched) == len(children) else 0.01  # without pidfds, poll for the exit
        try:
            while verdict is None and _exit_status(deciding.process.pid) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    verdict = "timeout"
                    break
                for key, _ in sel.select(remaining if poll_s is None else min(remaining, poll_s)):
                    if key.data == "exit":  # a pidfd stays readable once its process ended
                        sel.unregister(key.fd)
                        watched.remove(key.fd)
                    elif not _read_into(sel, key.fd, buffers[key.fd], caps[key.fd]):
                        verdict = "output"
            if verdict is None:  # its report is complete: every writer is gone
                _read_to_end(sel, deciding.report_fd, deciding.report, REPORT_CAP, time.monotonic() + DRAIN_S)
            solution_gone = verdict is None and b"\ngone " in deciding.report
            for child in children:
                # When the judge lost the solution's process, that process is ending on its own: wait for
                # how, briefly (its first process passes that on once the namespace's process is gone).
                child.early_exit = _exit_status(child.process.pid, wait_s=DRAIN_S if solution_gone else 0.0)
                kill_group(child.process.pid)
            for fd in watched:
                sel.unregister(fd)
            # The writers are gone (or killed); take what is still in the pipes, within bounds.
            drain_until = time.monotonic() + DRAIN_S
            while sel.get_map() and time.monotonic() < drain_until:
                for key, _ in sel.select(max(0.0, drain_until - time.monotonic())):
                    if not _read_into(sel, key.fd, buffers[key.fd], caps[key.fd]) and verdict is None:
                        verdict = "output"
        finally:
            for pidfd in pidfds:
                if pidfd is not None:
                    os.close(pidfd)
    return verdict, bytes(output)


def _read_to_end(sel: selectors.BaseSelector, fd: int, buf: bytearray, cap: int, until: float) -> None:
    """Read ``fd`` until its end (or its cap, or ``until``), leaving the other registered pipes alone."""
    with selectors.DefaultSelector() as own:
        own.register(fd, selectors.EVENT_READ)
        while fd in sel.get_map() and time.monotonic() < until:
            if own.select(max(0.0, until - time.monotonic())) and not _read_into(sel, fd, buf, cap):
                break


def _read_into(sel: selectors.BaseSelector, fd: int, buf: bytearray, cap: int) -> bool:
    """Read what is available from ``fd``; False when that pushes ``buf`` past ``cap``."""
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        chunk = b""
    if not chunk:
        sel.unregister(fd)
        return True
    room = cap - len(buf)
    buf += chunk[: max(0, room)]
    if len(chunk) > room:
        sel.unregister(fd)
        return False
    return True


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # old kernel or platform: fall back to polling


def _exit_status(pid: int, wait_s: float = 0.0) -> int | None:
    """The child's exit status (negative: killed by that signal) once it exited, else None.

    Waits up to ``wait_s`` for it. Leaves it a zombie (WNOWAIT), so its pid stays ours.
    """
    give_up = time.monotonic() + wait_s
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return 0  # already reaped, which only the harness does: it exited
        if info is not None:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if time.monotonic() >= give_up:
            return None
        time.sleep(0.005)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
