"""Run untrusted Python (model-written code) in a throw-away child process and say whether it finished.

Used by the HumanEval suite (and meant for ProFuser's code reward): every program runs in its own
fresh interpreter (``sys.executable -I -S -B -c <child main>``, spawned with fork+exec, never a fork
of the harness), inside a temporary working directory that is deleted afterwards.

A program *passes* when it runs to its last line without raising. Exit status and output are not
trusted for that: the child main gets a random nonce over stdin and, only after the program's code
returns normally, writes ``ok <nonce>`` to a private report pipe. ``sys.exit(0)``, ``os._exit(0)``,
``raise SystemExit``, a patched ``print`` or a guessed marker on stdout therefore all count as
failures.

Defences, outermost first (each one is there because the ones inside it can be bypassed):

* **Wall-clock timeout** in the parent; on expiry, or when the output cap is hit, the whole process
  group (the child is a session leader) gets SIGKILL. The group is killed again after every run to
  take down stragglers.
* **Privilege drop**: when the harness runs as root, the child switches to ``nobody`` (uid 65534, no
  supplementary groups) before the program runs, so it cannot touch the harness's files or signal
  its processes and ``RLIMIT_NPROC`` is enforced. The interpreter's import path is kept reachable
  through directory descriptors opened beforehand (the interpreter may live under ``/root``).
* **Network namespace** (root only): the child unshares a fresh, empty network namespace, so even a
  raw socket has no interface to use, not even loopback.
* **Resource limits**, hard and soft alike: address space (``RLIMIT_AS``), CPU seconds, file size,
  open files, no core dumps, and ``RLIMIT_NPROC = 1`` (no fork, no threads, once uid != 0).
* **Python-level guards** installed just before the program runs: process creation and signalling
  (``fork``, ``exec*``, ``spawn*``, ``system``, ``kill``, ``killpg``, ``setuid`` ...) raise
  ``PermissionError``; file mutations (``remove``, ``rename``, ``rmdir``, ``chmod``, writable
  ``open`` ...) are only allowed inside the working directory; imports of ``socket``, ``ctypes``,
  ``subprocess``, ``multiprocessing`` and ``resource`` are refused.
* **Scrubbed environment**: only ``PATH``/``LANG``, with ``HOME`` and ``TMPDIR`` set to the working
  directory; ``-I -S`` ignores ``PYTHON*`` variables, user site and site-packages; stdin is /dev/null.
* **Output cap**: stdout and stderr are read by the parent up to ``max_output_bytes``; a program
  that prints more is killed, so a gigabyte print fills neither memory nor disk.

Known limits, stated plainly: the guards are Python-level and a program that digs through the
interpreter (frames, ``gc``, ``/proc/self/fd``) can bypass them or find the nonce and fake a pass;
they stop accidents and naive escapes, not a determined attacker. The privilege drop, rlimits and the
network namespace are the real barriers, and they need root: run as an ordinary user, the program
keeps that user's rights (rlimits, guards and timeouts still apply, NPROC does limit forks) and has
network access unless the guards hold. The world-writable ``/tmp`` and ``/dev/shm`` are writable by
``nobody`` (the guards block it, the file-size limit and timeout bound it). There is no seccomp
filter and no private mount namespace. Programs see the standard library only (``-S``: no numpy), and
no threads once ``RLIMIT_NPROC`` applies.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

#: The unprivileged user a root harness drops to (``nobody`` on Debian/Ubuntu/Fedora).
SANDBOX_UID = 65534
SANDBOX_GID = 65534

_REPORT_CAP = 64 << 10  # the report pipe carries a few short lines; more is the program scribbling on it
_DRAIN_S = 1.0  # after the kill, how long to wait for the pipes to close


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not the program's fault); never a silent 'failed'."""


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``cpu_s`` defaults to the wall timeout rounded up, plus one second."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    cpu_s: int | None = None
    file_size_mb: int = 16
    max_output_bytes: int = 1 << 20
    max_open_files: int = 64
    #: As root: switch to uid/gid 65534 before the program runs (off only to test the guards alone).
    drop_privileges: bool = True
    #: As root: give the child an empty network namespace.
    network_namespace: bool = True


@dataclass(frozen=True)
class Outcome:
    """How one program ended.

    ``result`` is ``"passed"``, ``"timed out"`` or ``"failed: <reason>"`` (the exception and the
    program's line number, an early exit, a limit that killed it, ...). ``output`` is the program's
    stdout and stderr, interleaved, cut at the output cap. ``isolation`` names the defences that
    were in force beyond the guards (``rlimits``, ``uid=65534``, ``netns``).
    """

    passed: bool
    result: str
    output: str
    returncode: int | None
    seconds: float
    isolation: tuple[str, ...] = ()


def run_programs(sources: Sequence[str], limits: Limits | None = None, workers: int = 2) -> list[Outcome]:
    """Run each source as its own sandboxed process, ``workers`` at a time; results in input order."""
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda src: run_program(src, limits), sources))


def run_program(source: str, limits: Limits | None = None) -> Outcome:
    """Run ``source`` as ``__main__`` in a fresh sandboxed interpreter and report how it ended."""
    limits = limits or Limits()
    workdir = Path(tempfile.mkdtemp(prefix="fusebench-sandbox-"))
    try:
        return _run_in(workdir, source, limits)
    finally:
        _remove_tree(workdir)


# --- parent side --------------------------------------------------------------------------------


def _run_in(workdir: Path, source: str, limits: Limits) -> Outcome:
    drop = limits.drop_privileges and os.geteuid() == 0
    program = workdir / "program.py"
    program.write_text(source, encoding="utf-8")
    if drop:
        os.chown(workdir, SANDBOX_UID, SANDBOX_GID)
        os.chmod(program, 0o644)
    nonce = secrets.token_hex(16)
    cpu_s = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
    header = {
        "nonce": nonce,
        "workdir": str(workdir),
        "program": str(program),
        "uid": SANDBOX_UID if drop else None,
        "gid": SANDBOX_GID,
        "netns": limits.network_namespace and os.geteuid() == 0,
        "memory_bytes": limits.memory_mb << 20,
        "cpu_s": cpu_s,
        "file_size_bytes": limits.file_size_mb << 20,
        "open_files": limits.max_open_files,
    }
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
    report_r, report_w = os.pipe()
    start = time.monotonic()
    try:
        try:
            header["report_fd"] = report_w
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _CHILD_MAIN],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(report_w,), cwd=workdir, env=env, start_new_session=True,
            )
        finally:
            os.close(report_w)
        assert proc.stdin is not None and proc.stdout is not None
        with proc:
            try:
                # The header is far below a pipe buffer, so this cannot block even if the child stalls.
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(json.dumps(header).encode())
                    proc.stdin.close()
                verdict, output, report = _watch(proc, proc.stdout.fileno(), report_r,
                                                 start + limits.timeout_s, limits.max_output_bytes)
            except BaseException:  # e.g. Ctrl-C: never leave the group running, nor wait on it forever
                _kill_group(proc.pid)
                raise
            returncode = proc.wait()
    finally:
        os.close(report_r)
    seconds = time.monotonic() - start
    return _judge(verdict, output, report, returncode, nonce, limits, seconds)


def _watch(proc: subprocess.Popen[bytes], out_fd: int, report_fd: int, deadline: float,
           cap: int) -> tuple[str | None, bytes, bytes]:
    """Collect output until the child exits, the deadline passes or the cap is hit; then kill the group.

    Returns (verdict, output, report): verdict is ``"timeout"``, ``"output"`` or None (it exited).
    The leader is not reaped here, so its pid, which is also the group id, cannot be reused by an
    unrelated process before ``killpg`` runs.
    """
    buffers = {out_fd: bytearray(), report_fd: bytearray()}
    caps = {out_fd: cap, report_fd: _REPORT_CAP}
    verdict: str | None = None
    pidfd = _pidfd_open(proc.pid)
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            sel.register(fd, selectors.EVENT_READ)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        try:
            while verdict is None and not _has_exited(proc.pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    verdict = "timeout"
                    break
                events = sel.select(remaining if pidfd is not None else min(remaining, 0.01))
                for key, _ in events:
                    if key.fd == pidfd:
                        continue  # the loop condition sees the exit
                    if not _read_into(sel, key.fd, buffers[key.fd], caps[key.fd]):
                        verdict = "output"
            _kill_group(proc.pid)
            if pidfd is not None:
                sel.unregister(pidfd)
            # The writers are gone (or killed); take what is still in the pipes, within bounds.
            drain_until = time.monotonic() + _DRAIN_S
            while sel.get_map() and time.monotonic() < drain_until:
                for key, _ in sel.select(max(0.0, drain_until - time.monotonic())):
                    if not _read_into(sel, key.fd, buffers[key.fd], caps[key.fd]) and verdict is None:
                        verdict = "output"
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return verdict, bytes(buffers[out_fd]), bytes(buffers[report_fd])


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


def _has_exited(pid: int) -> bool:
    """True once the child has exited; leaves it a zombie (WNOWAIT) so its pid stays ours."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _judge(verdict: str | None, output: bytes, report: bytes, returncode: int, nonce: str, limits: Limits,
           seconds: float) -> Outcome:
    """Turn what was observed into an Outcome; only the child main's nonce line means 'passed'.

    The first report line is the child main's own (``iso`` or ``setup``): the program starts only
    after it is written, so a program cannot fake it to abort the whole evaluation. Later lines may
    be the program's scribbles, which is why 'passed' needs the nonce.
    """
    lines = report.decode("utf-8", "replace").splitlines()
    first = lines[0] if lines else ""
    isolation = tuple(x for x in first[4:].split(",") if x) if first.startswith("iso ") else None
    text = output.decode("utf-8", "replace")

    def outcome(passed: bool, result: str) -> Outcome:
        return Outcome(passed, result, text, returncode, round(seconds, 4), isolation or ())

    if first.startswith("setup "):
        raise SandboxError(f"the sandbox could not start the program: {first[6:]}")
    if verdict == "timeout":
        return outcome(False, "timed out")
    if verdict == "output":
        return outcome(False, f"failed: output limit exceeded (more than {limits.max_output_bytes} bytes)")
    if isolation is None:
        raise SandboxError(f"the sandboxed interpreter died before running the program "
                           f"(exit {returncode}): {text.strip()[-500:]}")
    if lines and lines[-1] == f"ok {nonce}" and returncode == 0:
        return outcome(True, "passed")
    failure = next((line[5:] for line in reversed(lines[1:]) if line.startswith("fail ")), None)
    if failure:
        return outcome(False, f"failed: {failure}")
    if returncode < 0:
        return outcome(False, f"failed: {_signal_reason(-returncode)}")
    return outcome(False, f"failed: exited with code {returncode} before the program finished")


def _signal_reason(signum: int) -> str:
    reasons = {signal.SIGXCPU: "cpu time limit exceeded (SIGXCPU)", signal.SIGKILL: "killed (SIGKILL)",
               signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGABRT: "aborted (SIGABRT)"}
    if signum in reasons:
        return reasons[signum]
    try:
        return f"killed by {signal.Signals(signum).name}"
    except ValueError:
        return f"killed by signal {signum}"


def _remove_tree(path: Path) -> None:
    """Delete the working directory even if the program made parts of it unreadable."""

    def make_writable_and_retry(func, failed_path, _exc_info):  # noqa: ANN001 - shutil's onerror protocol
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            func(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)
    shutil.rmtree(path, ignore_errors=True)


# --- child side ---------------------------------------------------------------------------------
# The child's main module, passed with -c. It runs in the fresh interpreter and is trusted; the
# program it runs is not. Order matters: read the header, confine the process (network namespace,
# rlimits, privilege drop), install the guards, report what was applied, compile and run, report.
# A ``setup`` line on the report pipe means the sandbox failed, ``fail`` that the program did.

_CHILD_MAIN = r'''
import os
import sys

DENIED_IMPORTS = frozenset({"socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "subprocess",
                            "_posixsubprocess", "multiprocessing", "_multiprocessing", "pty", "resource"})
REFUSED = ("fork", "forkpty", "kill", "killpg", "system", "popen", "execv", "execve", "execl", "execle",
           "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp",
           "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setuid", "seteuid",
           "setgid", "setegid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
           "initgroups", "setsid", "setpgid", "setpgrp", "tcsetpgrp", "chroot", "pidfd_open",
           "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "plock",
           "unshare", "setns")
# name -> (position, keyword) of each path argument that must lie inside the working directory
PATH_CHECKED = {"remove": ((0, "path"),), "unlink": ((0, "path"),), "rmdir": ((0, "path"),),
                "mkdir": ((0, "path"),), "chmod": ((0, "path"),), "chown": ((0, "path"),),
                "lchown": ((0, "path"),), "truncate": ((0, "path"),), "utime": ((0, "path"),),
                "mkfifo": ((0, "path"),), "mknod": ((0, "path"),), "setxattr": ((0, "path"),),
                "removexattr": ((0, "path"),), "rename": ((0, "src"), (1, "dst")),
                "replace": ((0, "src"), (1, "dst")), "link": ((0, "src"), (1, "dst")),
                "symlink": ((1, "dst"),)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def main():
    header = read_header()
    report_fd, nonce = header["report_fd"], header["nonce"]
    write, exit_now = os.write, os._exit  # the program may replace the os functions; keep these

    def report(kind, text=""):
        line = (kind + " " + " ".join(str(text).split())[:400] + "\n").encode("utf-8", "replace")
        try:
            write(report_fd, line)
        except OSError:
            pass

    try:  # everything up to the "iso" line is the sandbox's job; a failure here is not the program's
        with open(header["program"], encoding="utf-8") as f:
            source = f.read()
        applied = confine(header)
        install_guards(header["workdir"])
    except BaseException as e:
        report("setup", describe(e))
        exit_now(70)
    del header
    report("iso", ",".join(applied))
    try:
        code = compile(source, "program.py", "exec")
        del source
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as e:  # SystemExit too: leaving before the end is not a pass
        report("fail", describe(e))
        exit_now(1)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    report("ok", nonce)
    exit_now(0)


def read_header():
    chunks = []
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    import json
    return json.loads(b"".join(chunks))


def confine(h):
    applied = []
    if h["netns"] and unshare_network():
        applied.append("netns")
    import resource
    for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_AS", h["memory_bytes"]),
                        ("RLIMIT_FSIZE", h["file_size_bytes"]), ("RLIMIT_NOFILE", h["open_files"]),
                        ("RLIMIT_NPROC", 1)):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (h["cpu_s"], h["cpu_s"] + 1))
    applied.append("rlimits")
    if h["uid"] is not None:
        pin_import_path()
        os.setgroups([])
        os.setgid(h["gid"])
        os.setuid(h["uid"])
        if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()):
            raise RuntimeError("privilege drop did not take")
        applied.append("uid=%d" % h["uid"])
    os.umask(0o077)
    return applied


def unshare_network():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(0x40000000) == 0  # CLONE_NEWNET: a namespace with only a downed loopback
    except Exception:
        return False


def pin_import_path():
    # After the drop, the interpreter's own directories may be unreachable (/root is 0700). Paths
    # through descriptors opened now stay usable: /proc/self/fd/N skips the ancestors' permissions.
    # Packages imported already (collections, encodings, json ...) keep their own __path__, which
    # needs the same rewriting or their submodules (collections.abc) stop importing.
    pinned = {}
    for entry in sys.path:
        try:
            pinned[entry] = "/proc/self/fd/%d" % os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            pass

    def rewrite(path):
        for original, via_fd in pinned.items():
            if path == original or path.startswith(original + os.sep):
                return via_fd + path[len(original):]
        return path

    sys.path[:] = [rewrite(p) for p in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [rewrite(p) for p in search]
    sys.path_importer_cache.clear()


def install_guards(workdir):
    import _io
    import builtins
    import io
    import posix
    import signal

    root = os.path.realpath(workdir)
    realpath, fspath = os.path.realpath, os.fspath

    def refuse(name):
        def refused(*args, **kwargs):
            raise PermissionError(name + " is disabled in the sandbox")
        return refused

    def check_inside(path, what):
        if isinstance(path, int) or path is None:
            raise PermissionError(what + " on a file descriptor is disabled in the sandbox")
        p = realpath(fspath(path))
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        if p != root and not p.startswith(root + os.sep):
            raise PermissionError(what + " outside the sandbox directory: " + repr(p))

    def path_checked(func, name, arguments):
        def checked(*args, **kwargs):
            if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                raise PermissionError(name + " with dir_fd is disabled in the sandbox")
            for position, keyword in arguments:
                check_inside(args[position] if position < len(args) else kwargs.get(keyword), name)
            return func(*args, **kwargs)
        return checked

    for module in (os, posix):
        for name in REFUSED:
            if hasattr(module, name):
                setattr(module, name, refuse("os." + name))
        for name, arguments in PATH_CHECKED.items():
            if hasattr(module, name):
                setattr(module, name, path_checked(getattr(module, name), "os." + name, arguments))
    os.removedirs = refuse("os.removedirs")
    os.renames = refuse("os.renames")
    signal.pidfd_send_signal = refuse("signal.pidfd_send_signal")

    real_os_open, real_open = posix.open, builtins.open

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS:
            if kwargs.get("dir_fd") is not None:
                raise PermissionError("os.open with dir_fd is disabled in the sandbox")
            check_inside(path, "writing")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+"):
            check_inside(file, "writing")
        return real_open(file, mode, *args, **kwargs)

    os.open = posix.open = guarded_os_open
    builtins.open = io.open = _io.open = guarded_open

    class DenyImports:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] in DENIED_IMPORTS:
                raise ImportError("import of " + name + " is disabled in the sandbox")
            return None

    for name in list(sys.modules):
        if name.partition(".")[0] in DENIED_IMPORTS:
            del sys.modules[name]
    sys.meta_path.insert(0, DenyImports)


def describe(e):
    try:
        message = e.msg if isinstance(e, SyntaxError) else str(e)
    except BaseException:
        message = "?"
    text = type(e).__name__ + (": " + message if message else "")
    line = e.lineno if isinstance(e, SyntaxError) else None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "program.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    return text + (" (line %d)" % line if line else "")


main()
'''
