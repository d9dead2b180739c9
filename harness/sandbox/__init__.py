"""Run untrusted Python (model-written code) in throw-away child processes, and judge it with tests it cannot reach.

Used by the HumanEval suite and ProFuser's ``code`` reward, through :func:`run_code_tests`:

* The untrusted **solution** and the trusted **tests** run in two separate sandboxed processes. The
  tests' process (the *judge*) sees each of the solution's top-level functions as a proxy; a call
  sends its arguments over a pipe as plain data, the solution's process calls the real function and
  sends the result back the same way, and the judge's own interpreter rebuilds it. Plain data is JSON
  with tags (:func:`harness.sandbox.child.to_plain`): None, bools, ints, floats (nan and infinities
  included), strings, bytes, complex numbers, and lists, tuples, dicts, sets and frozensets of these;
  subclasses of these types arrive as the base type (a namedtuple as a tuple, a Counter as a dict).
* The verdict is the judge's: it passes when the tests run to their end and the solution broke no
  rule. An object whose ``__eq__`` always says yes, patched builtins, or a walk up the frames to the
  secret the verdict is reported with all stay in the solution's process, where nothing is judged:
  the solution never holds the secret, the tests' source, or a way into the judge's process (when
  the harness runs as root; see the limits for an ordinary user).
* An exception the solution raises comes back as the nearest builtin exception class (so a test may
  expect a ``ValueError``). A result that is not plain data, an exit in the middle of a call, or a
  dead process fails the run, even if the tests catch everything.

:func:`run_program` runs one whole program in one process; it *passes* when it runs to its last line.
That is the unit the confinement tests use; as a verdict on untrusted code it can be faked (below).

Every process is a fresh interpreter (``sys.executable -I -S -B harness/sandbox/child.py``, fork+exec,
never a fork of the harness). It reads its instructions from stdin, confines itself, writes an ``iso``
line naming the defences in force to a private report pipe, and only then runs the code it was given.
A pass is ``ok <nonce>`` on the report pipe of the judge (or of the program) with exit status 0; exit
status and output alone are never trusted, so ``sys.exit(0)``, ``os._exit(0)`` or a printed marker fail.
The child's side is :mod:`harness.sandbox.child`; watching a run's pipes and exits is
:mod:`harness.sandbox.watch`.

Defences, outermost first (each one is there because the ones inside it can be bypassed):

* **Wall-clock timeout** in the parent; on expiry, or when the output cap is hit, every process group
  of the run (each child is a session leader) gets SIGKILL. The groups are killed again after every run.
* **A uid of its own** (root only): each sandboxed process (the solution, its judge, and every other
  program running at the same time) switches to its own uid and gid from :data:`SANDBOX_UIDS`, with
  no supplementary groups, so it can neither signal nor ptrace another one, nor read its files, and
  ``RLIMIT_NPROC`` applies per program. A uid is leased with a lock file
  (``/run/fusebench-sandbox/<uid>``, empty, kept for reuse; the lowest free uid is taken), so harness
  processes running side by side never share one. When the pool is not mapped in this user namespace, every process runs as
  ``nobody`` (65534) instead. The interpreter's import path stays reachable through directory
  descriptors opened beforehand (the interpreter may live under ``/root``).
* **Namespaces** (root only), made by the trusted bootstrap with ``unshare(2)`` before the privilege
  drop: each process is the first process of a new PID namespace (it sees and can signal no process
  outside it, and anything it starts dies with it), with new IPC and network namespaces (no shared
  SysV/POSIX IPC; no network, not even loopback), and a new mount namespace in which every mount is
  read-only (Linux 5.12+, tag ``rofs``) except a private ``/tmp`` and ``/dev/shm`` (tmpfs,
  ``tmpfs_mb`` each, gone with the process; the working directory is ``/tmp/work``) and a ``/proc``
  that shows the namespace alone. Where the kernel refuses (a container without ``CAP_SYS_ADMIN``),
  the process runs with a network namespace if that alone is allowed, and a working directory under
  the harness's temp dir, removed afterwards; the tags say which.
* **System call filter** (seccomp, x86-64 and arm64 Linux, root or not): ``socket`` and ``socketpair``
  (so no unix socket either, whose filesystem path reaches past any network namespace), io_uring,
  ``ptrace``, ``process_vm_*``, ``pidfd_getfd``, ``setsid``/``setpgid``, and the mount and namespace
  calls fail with EPERM, as do system calls of another ABI (x32, i386).
* **Not dumpable**: ``/proc/PID/mem``, ``fd`` and ``environ`` of a sandboxed process are closed to
  other processes of the same uid (which matters when there is no privilege drop).
* **Resource limits**, hard and soft alike: address space (``RLIMIT_AS``), CPU seconds, file size,
  open files, no core dumps, and ``RLIMIT_NPROC = 1`` (no fork, no threads, once uid != 0).
* **Python-level guards** installed just before the given code runs: process creation and signalling
  (``fork``, ``exec*``, ``spawn*``, ``system``, ``kill``, ``killpg``, ``setuid`` ...) raise
  ``PermissionError``; file mutations (``remove``, ``rename``, ``rmdir``, ``chmod``, writable
  ``open`` ...) are only allowed inside the working directory; imports of ``socket``, ``ctypes``,
  ``subprocess``, ``multiprocessing`` and ``resource`` are refused.
* **Scrubbed environment**: only ``PATH``/``LANG``, with ``HOME`` and ``TMPDIR`` set to the working
  directory; ``-I -S`` ignores ``PYTHON*`` variables, user site and site-packages; stdin is /dev/null.
* **Output cap**: stdout and stderr of all the run's processes share one pipe, read by the parent up to
  ``max_output_bytes``; past that the run is killed, so a gigabyte print fills neither memory nor disk.
* **Message cap**: one call or result is at most 16 MiB of JSON, nested at most 200 levels deep.

``Outcome.isolation`` names the defences in force beyond the guards (for code tests, in the
solution's process): ``rlimits``, ``uid``, ``netns``, ``pidns``, ``mountns``, ``ipcns``, ``rofs``, ``seccomp``.

Known limits, stated plainly:

* Reading is not confined: the solution may read whatever its uid may read (world-readable files,
  installed packages, and so possibly the benchmark's own data files with the answers in them).
* Only plain data crosses: the tests cannot hand the solution a callable or any other object, and
  see the solution's callables, not its other globals. Arguments are copies, so a test that looks
  for the solution mutating its argument sees no mutation. A class of the solution's can be called,
  but its instances cannot come back. Any of these fail the run rather than pass it.
* Inside its own process a program can dig through the interpreter (frames, ``gc``, ``/proc/self/fd``)
  and undo the Python-level guards. For :func:`run_program` that includes finding the nonce and
  faking a pass, so its verdict stops accidents and naive exits, not a determined program; code tests
  are not affected, since the solution's process holds no secret.
* Run as an ordinary user there is no privilege drop and there are no namespaces (an unprivileged user
  namespace could provide them; that is not implemented): every program runs as that user, may write
  where the user may and may signal the user's processes, the harness and the other programs
  included, once it gets past the guards (ctypes). The harness's own /proc files (and, where ptrace
  is allowed, its memory, which holds the nonce) are then within reach too, so verdicts hold against
  a determined solution only when the harness runs as root. The filter (so no sockets), rlimits,
  guards and timeouts still apply.
* Programs see the standard library only (``-S``: no numpy) and no threads once ``RLIMIT_NPROC`` applies.
* As the first process of its PID namespace, a program is immune to signals from inside it that it
  has no handler for: the soft CPU limit's SIGXCPU is ignored (the hard limit, one second later,
  kills), and ``abort()`` ends in SIGSEGV rather than SIGABRT.
* The judge runs the tests under the same confinement: tests are trusted to be tests, not to be safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.sandbox.watch import Child, kill_group, watch

#: The uids (and gids, same numbers) a root harness hands out, one per running sandboxed process.
SANDBOX_UIDS = range(0x7F00_0000, 0x7F00_0000 + 4096)
#: The shared fallback when :data:`SANDBOX_UIDS` is not mapped in this user namespace.
NOBODY = 65534

_CHILD_SCRIPT = Path(__file__).with_name("child.py")


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not the program's fault); never a silent 'failed'."""


@dataclass(frozen=True)
class Limits:
    """What one process may use. ``cpu_s`` defaults to the wall timeout rounded up, plus one second."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    cpu_s: int | None = None
    file_size_mb: int = 16
    max_output_bytes: int = 1 << 20
    max_open_files: int = 64
    #: Size of each private /tmp and /dev/shm (tmpfs, so it is memory) when namespaces apply.
    tmpfs_mb: int = 64
    #: As root: switch to a uid/gid of the process's own before it runs (off only to test the guards alone).
    drop_privileges: bool = True
    #: As root: give the process an empty network namespace.
    network_namespace: bool = True
    #: As root: own PID, IPC and mount namespaces (read-only mounts, private /tmp, /dev/shm, /proc).
    namespaces: bool = True
    #: The seccomp filter (no sockets, io_uring, ptrace, mount or namespace calls).
    syscall_filter: bool = True


@dataclass(frozen=True)
class Outcome:
    """How one program (or one code test) ended.

    ``result`` is ``"passed"``, ``"timed out"`` or ``"failed: <reason>"`` (the exception and where it
    was raised, an early exit, a broken rule, a limit that killed it, ...). ``output`` is the stdout and
    stderr of the run's processes, interleaved, cut at the output cap. ``returncode`` is that of the
    program or the judge. ``isolation`` names the defences that were in force beyond the guards.
    """

    passed: bool
    result: str
    output: str
    returncode: int | None
    seconds: float
    isolation: tuple[str, ...] = ()


@dataclass(frozen=True)
class CodeTest:
    """Untrusted ``solution`` code, judged by trusted ``tests`` that run in another process.

    ``preamble`` is trusted code the judge runs before the tests (for HumanEval, the prompt: its
    imports and the helpers the tests call). The tests then see each top-level callable of the
    solution as a proxy under its own name, except where a builtin or the preamble already has that
    name; names in ``required`` always come from the solution, which fails if it lacks one.
    """

    solution: str
    tests: str
    preamble: str = ""
    required: tuple[str, ...] = ()


_Item = TypeVar("_Item")


def run_programs(sources: Sequence[str], limits: Limits | None = None, workers: int = 2) -> list[Outcome]:
    """Run each source as its own sandboxed process, ``workers`` at a time; results in input order."""
    return _in_parallel(run_program, sources, limits, workers)


def run_program(source: str, limits: Limits | None = None) -> Outcome:
    """Run ``source`` as ``__main__`` in a fresh sandboxed interpreter; it passes if it runs to its end."""
    with _Pipes() as pipes:
        return _execute([_Role("program", {"source": source}, decides=True)], limits or Limits(), pipes)


def run_code_tests(tests: Sequence[CodeTest], limits: Limits | None = None, workers: int = 2) -> list[Outcome]:
    """Run each code test (two processes each), ``workers`` tests at a time; results in input order."""
    return _in_parallel(run_code_test, tests, limits, workers)


def run_code_test(test: CodeTest, limits: Limits | None = None) -> Outcome:
    """Run ``test.solution`` in one sandboxed process and judge it by ``test.tests`` run in another."""
    with _Pipes() as pipes:
        calls_read, calls_write = pipes.open()
        replies_read, replies_write = pipes.open()
        roles = [
            _Role("candidate", {"solution": test.solution, "calls_fd": calls_read, "replies_fd": replies_write}),
            _Role("judge", {"preamble": test.preamble, "tests": test.tests, "required": list(test.required),
                            "calls_fd": calls_write, "replies_fd": replies_read}, decides=True),
        ]
        return _execute(roles, limits or Limits(), pipes)


def _in_parallel(run: Any, items: Sequence[_Item], limits: Limits | None, workers: int) -> list[Outcome]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda item: run(item, limits), items))


# --- parent side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Role:
    """One process of a run: its role name, the header fields it alone gets, whether its report decides.

    Header fields ending in ``_fd`` are pipe ends passed to that process (and closed in the parent).
    The first role is the untrusted one, whose ``iso`` line the Outcome reports.
    """

    name: str
    fields: dict[str, Any]
    decides: bool = False

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(v for k, v in self.fields.items() if k.endswith("_fd"))


class _Pipes:
    """The pipe ends of one run; every end still open is closed on exit."""

    def __init__(self) -> None:
        self._open: set[int] = set()

    def open(self) -> tuple[int, int]:
        read, write = os.pipe()
        self._open |= {read, write}
        return read, write

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    def __enter__(self) -> _Pipes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(*list(self._open))


def _execute(roles: list[_Role], limits: Limits, pipes: _Pipes) -> Outcome:
    root = os.geteuid() == 0
    nonce = secrets.token_hex(16)
    common = {
        "netns": limits.network_namespace and root,
        "namespaces": limits.namespaces and root,
        "syscall_filter": limits.syscall_filter,
        "memory_bytes": limits.memory_mb << 20,
        "cpu_s": limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1,
        "file_size_bytes": limits.file_size_mb << 20,
        "open_files": limits.max_open_files,
        "tmpfs_bytes": limits.tmpfs_mb << 20,
    }
    output_read, output_write = pipes.open()
    children: list[Child] = []
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        for role in roles:
            uid = stack.enter_context(_lease_uid()) if limits.drop_privileges and root else None
            workdir = stack.enter_context(_workdir(uid))
            report_read, report_write = pipes.open()
            header = {**common, **role.fields, "role": role.name, "report_fd": report_write,
                      "workdir": str(workdir), "uid": uid, "gid": uid}
            if role.decides:
                header["nonce"] = nonce  # the untrusted process never gets it
            process = _spawn(header, (report_write, *role.fds), workdir, output_write)
            stack.callback(_reap, process)
            pipes.close(report_write, *role.fds)
            children.append(Child(role.name, process, report_read, role.decides))
        pipes.close(output_write)
        try:
            verdict, output = watch(children, output_read, start + limits.timeout_s, limits.max_output_bytes)
        except BaseException:  # e.g. Ctrl-C: never leave a group running (the stack then reaps them)
            for child in children:
                kill_group(child.process.pid)
            raise
        for child in children:
            child.process.wait()
    return _conclude(children, verdict, output, nonce, limits, time.monotonic() - start)


def _spawn(header: dict[str, Any], pass_fds: tuple[int, ...], workdir: Path, output_fd: int) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", str(_CHILD_SCRIPT)],
        stdin=subprocess.PIPE, stdout=output_fd, stderr=output_fd,
        pass_fds=pass_fds, cwd=workdir, env=env, start_new_session=True,
    )
    assert process.stdin is not None
    # The child reads its header before anything else, so this write ends once its interpreter is up.
    try:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(json.dumps(header).encode())
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    except BaseException:
        _reap(process)
        raise
    return process


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Kill the group of a child not reaped yet (its pid, the group id, is still ours), then reap it."""
    if process.returncode is None:
        kill_group(process.pid)
        process.wait()


@contextlib.contextmanager
def _workdir(uid: int | None) -> Iterator[Path]:
    """The harness-side working directory (used where the child gets no private /tmp); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="fusebench-sandbox-"))
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        _remove_tree(path)


@contextlib.contextmanager
def _lease_uid() -> Iterator[int]:
    """A uid from SANDBOX_UIDS that no other sandboxed process (of any harness) holds; NOBODY if unmapped."""
    pool = _uid_pool()
    if pool is None:
        yield NOBODY
        return
    directory = _uid_lock_dir()
    for uid in pool:  # the lowest free one: as many lock files as processes ever ran at once
        fd = os.open(directory / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)  # releases the lock
        return
    raise SandboxError(f"all {len(pool)} sandbox uids are in use")


@functools.cache
def _uid_pool() -> range | None:
    """SANDBOX_UIDS when this process's user namespace maps all of them, as uids and as gids."""

    def mapped(map_file: str) -> bool:
        try:
            rows = Path(map_file).read_text().splitlines()
        except OSError:
            return True  # a kernel without user namespaces: every id exists
        for row in rows:
            inside, _, count = (int(x) for x in row.split())
            if inside <= SANDBOX_UIDS.start and SANDBOX_UIDS.stop <= inside + count:
                return True
        return False

    return SANDBOX_UIDS if mapped("/proc/self/uid_map") and mapped("/proc/self/gid_map") else None


@functools.cache
def _uid_lock_dir() -> Path:
    """Where the uid leases' lock files live: a root-only directory under /run (or the temp dir)."""
    directory = Path("/run/fusebench-sandbox") if Path("/run").is_dir() else \
        Path(tempfile.gettempdir()) / "fusebench-sandbox-uids"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = directory.lstat()
    if not directory.is_dir() or directory.is_symlink() or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise SandboxError(f"{directory} is not a directory private to uid {os.geteuid()}; "
                           "the sandbox keeps its uid leases there")
    return directory


def _conclude(children: list[Child], verdict: str | None, output: bytes, nonce: str, limits: Limits,
              seconds: float) -> Outcome:
    """Turn what was observed into an Outcome; only the deciding child's nonce line means 'passed'.

    Each child's first report line is its bootstrap's own (``iso`` or ``setup``): given code runs only
    after it is written, so no program can fake it to abort the whole evaluation. Later lines of a
    program's report may be its scribbles, which is why 'passed' needs the nonce.
    """
    text = output.decode("utf-8", "replace")
    lines = {c.role: c.report.decode("utf-8", "replace").splitlines() for c in children}
    first = {role: (found[0] if found else "") for role, found in lines.items()}
    for child in children:
        if first[child.role].startswith("setup "):
            raise SandboxError(f"the sandbox could not start the {child.role}: {first[child.role][6:]}")
    untrusted = first[children[0].role]
    isolation = tuple(x for x in untrusted[4:].split(",") if x) if untrusted.startswith("iso ") else ()
    deciding = next(c for c in children if c.decides)
    returncode = deciding.process.returncode

    def outcome(passed: bool, result: str) -> Outcome:
        return Outcome(passed, result, text, returncode, round(seconds, 4), isolation)

    if verdict == "timeout":
        return outcome(False, "timed out")
    if verdict == "output":
        return outcome(False, f"failed: output limit exceeded (more than {limits.max_output_bytes} bytes)")
    for child in children:
        if not first[child.role].startswith("iso "):
            raise SandboxError(f"the sandboxed interpreter ({child.role}) died before running its code "
                               f"(exit {child.process.returncode}): {text.strip()[-500:]}")
    report = lines[deciding.role]
    if report[-1] == f"ok {nonce}" and returncode == 0:
        return outcome(True, "passed")
    for line in reversed(report[1:]):
        kind, _, reason = line.partition(" ")
        if kind == "fail":
            return outcome(False, f"failed: {reason}")
        if kind == "gone":  # the judge lost the solution's process; say how it ended, where known
            ended = next((c.early_exit for c in children if not c.decides and c.early_exit is not None), None)
            return outcome(False, f"failed: {reason}" + (f": {_exit_reason(ended)}" if ended is not None else ""))
    if returncode < 0:
        return outcome(False, f"failed: {_signal_reason(-returncode)}")
    return outcome(False, f"failed: exited with code {returncode} before the program finished")


def _exit_reason(status: int) -> str:
    return _signal_reason(-status) if status < 0 else f"it exited with code {status}"


def _signal_reason(signum: int) -> str:
    reasons: dict[int, str] = {signal.SIGXCPU: "cpu time limit exceeded (SIGXCPU)", signal.SIGKILL: "killed (SIGKILL)",
               signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGABRT: "aborted (SIGABRT)"}
    if signum in reasons:
        return reasons[signum]
    try:
        return f"killed by {signal.Signals(signum).name}"
    except ValueError:
        return f"killed by signal {signum}"


def _remove_tree(path: Path) -> None:
    """Delete the working directory even if the program made parts of it unreadable."""

    def make_writable_and_retry(func, failed_path, _exc_info):  # shutil's onerror protocol
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            func(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)
    shutil.rmtree(path, ignore_errors=True)
