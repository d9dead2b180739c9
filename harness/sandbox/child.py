"""The child side of :mod:`harness.sandbox`: a trusted bootstrap that confines a fresh interpreter, then plays a role.

The harness starts ``python -I -S -B <this file>`` and writes a JSON header to its stdin. Everything up
to the ``iso`` report line is the sandbox's own work (confining the process); only then does code it
was given run. Roles (``header["role"]``):

* ``program``: run a whole program; report ``ok <nonce>`` if it runs to its last line.
* ``candidate``: run the untrusted solution, then serve calls to its functions over two pipes, one
  JSON line per message, arguments and results as plain data (:func:`to_plain`). It holds no secret.
* ``judge``: run the trusted preamble and tests, with :class:`Proxy` objects standing for the
  solution's functions; report ``ok <nonce>`` if the tests run to their end and the solution broke
  no rule of the call protocol.

Report pipe lines: ``iso <defences>`` (always the first line, written before any given code runs),
``setup <why>`` (confining failed: the sandbox's fault), ``fail <why>`` or ``gone <why>`` (the
program or the tests failed; ``gone``: because the solution's process ended), ``ok <nonce>``.

The harness imports this module too, for :func:`to_plain` / :func:`decode`; nothing runs on import.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import sys

# --- the call protocol between the judge and the candidate ------------------------------------------

#: The largest message (one JSON line) either side accepts.
MESSAGE_CAP = 16 << 20
#: The deepest nesting of a plain value.
MAX_DEPTH = 200
#: Ints longer than this travel as hex: Python caps int <-> decimal conversion at 4,300 digits.
_LONG_INT_BITS = 12_000
#: Subclasses of these travel as the base type: a namedtuple as a tuple, a Counter as a dict, an IntEnum as an int.
_PLAIN_BASES: tuple[type, ...] = (int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset)


class NotPlainData(TypeError):
    """A value that cannot cross between the judge and the solution."""


def to_plain(value, depth=0):
    """``value`` as JSON-able data; only builtin data types (and their subclasses, as the base type) pass.

    None, bools, ints, floats (nan and infinities too) and strings are JSON values; lists are JSON
    arrays; everything else is a one-key object: ``{"tuple": [...]}``, ``{"set": [...]}``,
    ``{"frozenset": [...]}``, ``{"dict": [[key, value], ...]}``, ``{"bytes": hex}``, ``{"bytearray": hex}``,
    ``{"complex": [real, imag]}``, ``{"int": hex}`` (very long ints). Raises :class:`NotPlainData`.
    """
    if depth > MAX_DEPTH:
        raise NotPlainData(f"data nested more than {MAX_DEPTH} levels deep")
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if value.bit_length() <= _LONG_INT_BITS else {"int": hex(value)}
    if kind is list:
        return [to_plain(item, depth + 1) for item in value]
    if kind is tuple or kind is set or kind is frozenset:
        return {kind.__name__: [to_plain(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[to_plain(k, depth + 1), to_plain(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes or kind is bytearray:
        return {kind.__name__: value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    for base in _PLAIN_BASES:
        if isinstance(value, base):
            return to_plain(base(value), depth + 1)
    raise NotPlainData(f"{kind.__name__} is not plain data")


def encode(message):
    """One protocol line: ``message`` (a list whose items are already plain) as ASCII JSON plus a newline."""
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")


def decode(line):
    """The message of one protocol line, tagged values rebuilt; ValueError / TypeError when malformed."""
    return json.loads(line, object_hook=_from_tagged)


def _from_tagged(obj):
    if len(obj) != 1:
        raise ValueError("a JSON object must be one tagged value")
    ((tag, body),) = obj.items()
    if tag in ("tuple", "set", "frozenset", "dict", "complex") and not isinstance(body, list):
        raise ValueError(f"{tag} needs a list")
    if tag == "tuple":
        return tuple(body)
    if tag == "set":
        return set(body)
    if tag == "frozenset":
        return frozenset(body)
    if tag == "dict":
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in body):
            raise ValueError("dict needs [key, value] pairs")
        return {key: value for key, value in body}
    if tag == "complex":
        if len(body) != 2 or not all(type(part) in (int, float) for part in body):
            raise ValueError("complex needs [real, imag]")
        return complex(*body)
    if tag in ("bytes", "bytearray", "int") and not isinstance(body, str):
        raise ValueError(f"{tag} needs a string")
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "bytearray":
        return bytearray.fromhex(body)
    if tag == "int":
        return int(body, 16)
    raise ValueError(f"unknown tag {tag!r}")


def send(fd, message):
    flush_output()  # what the sender printed so far comes out before the other side can act on the message
    data = memoryview(encode(message))
    while data:
        data = data[os.write(fd, data):]


def receive(reader):
    """The next message from a binary reader; None at end of file. ValueError when over the cap or cut off."""
    line = reader.readline(MESSAGE_CAP + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ValueError(f"more than {MESSAGE_CAP} bytes in one message" if len(line) > MESSAGE_CAP
                         else "a message cut off by the end of the stream")
    return decode(line)


# --- bootstrap -------------------------------------------------------------------------------------

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
#: In its own mount namespace the program's working directory lives in its private /tmp.
PRIVATE_WORKDIR = "/tmp/work"


def main():
    header = read_header()
    write, exit_now = os.write, os._exit  # the program may replace the os functions; keep these
    report_fd = header["report_fd"]

    def report(kind, text=""):
        line = (kind + " " + " ".join(str(text).split())[:400] + "\n").encode("utf-8", "replace")
        with contextlib.suppress(OSError):
            write(report_fd, line)

    try:  # everything up to the "iso" line is the sandbox's job; a failure here is not the program's
        applied, workdir = confine(header)
        install_guards(workdir)
    except BaseException as e:
        report("setup", describe(e, {}))
        exit_now(70)
    report("iso", ",".join(applied))
    ROLES[header["role"]](header, report, exit_now)


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
    return json.loads(b"".join(chunks))


def flush_output():
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


# --- roles -----------------------------------------------------------------------------------------


def run_program(header, report, exit_now):
    nonce, source = header["nonce"], header["source"]
    header.clear()
    try:
        code = compile(source, "program.py", "exec")
        del source
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as e:  # SystemExit too: leaving before the end is not a pass
        report("fail", describe(e, {"program.py": ""}))
        exit_now(1)
    flush_output()
    report("ok", nonce)
    exit_now(0)


def serve_candidate(header, report, exit_now):
    """Run the solution, say which callables it defines, then answer calls until the judge hangs up."""
    calls = os.fdopen(header["calls_fd"], "rb")
    replies_fd = header["replies_fd"]
    solution = header["solution"]
    header.clear()
    labels = {"solution.py": "solution"}
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
    except BaseException as e:
        send(replies_fd, ["load failed", describe(e, labels)])
        exit_now(1)
    functions = {name: value for name, value in namespace.items()
                 if isinstance(name, str) and name.isidentifier() and not name.startswith("__") and callable(value)}
    send(replies_fd, ["loaded", sorted(functions)])
    while True:
        request = receive(calls)
        if request is None:  # the judge is done
            flush_output()
            exit_now(0)
        _, name, args, kwargs = request
        try:
            result = functions[name](*args, **kwargs)
        except Exception as e:
            send(replies_fd, ["raised", builtin_ancestor(type(e)), type(e).__name__, safe_str(e),
                              describe_location(e, labels)])
            continue
        except BaseException as e:  # SystemExit, KeyboardInterrupt ...: the solution left in the middle of a call
            send(replies_fd, ["left", describe(e, labels)])
            exit_now(1)
        try:
            message = ["returned", to_plain(result)]
        except Exception as e:
            message = ["not plain", safe_str(e)]
        send(replies_fd, message)


def builtin_ancestor(kind):
    """The name of the nearest builtin exception class ``kind`` derives from (``Exception`` at worst)."""
    for ancestor in kind.__mro__:
        name = ancestor.__name__
        if getattr(builtins, name, None) is ancestor:
            return name
    return "Exception"


def safe_str(error):
    try:
        return str(error)[:1000]
    except BaseException:
        return "?"


class SolutionFault(BaseException):
    """The solution broke the call protocol or its process ended. Not an ``Exception``, so tests written
    with ``except Exception`` cannot swallow it; the judge fails the run even if something does."""


class SolutionError(Exception):
    """An exception the solution raised whose nearest builtin ancestor could not be rebuilt."""


class Connection:
    """The judge's end of the call protocol. ``fault`` is the first rule the solution broke, if any."""

    def __init__(self, calls_fd, replies_fd):
        self.calls_fd = calls_fd
        self.replies = os.fdopen(replies_fd, "rb")
        self.fault = None
        self.solution_gone = False

    def broke(self, reason, gone=False):
        if self.fault is None:
            self.fault, self.solution_gone = reason, gone
        raise SolutionFault(self.fault)

    def receive(self, doing):
        try:
            message = receive(self.replies)
        except (ValueError, TypeError, RecursionError) as e:
            self.broke(f"the solution sent malformed data {doing}: {e}")
        if message is None:
            self.broke(f"the solution's process ended {doing}", gone=True)
        if not isinstance(message, list) or not message or not isinstance(message[0], str):
            self.broke(f"the solution sent malformed data {doing}")
        return message

    def load(self):
        """The names of the solution's top-level callables, once it has run."""
        message = self.receive("while loading")
        if message[0] == "load failed" and len(message) == 2:
            self.broke(f"the solution failed to load: {message[1]}")
        names = message[1] if message[0] == "loaded" and len(message) == 2 else None
        if not isinstance(names, list) or not all(isinstance(n, str) and n.isidentifier() for n in names):
            self.broke("the solution sent malformed data while loading")
        return names

    def call(self, name, args, kwargs):
        if self.fault is not None:
            raise SolutionFault(self.fault)
        try:
            request = ["call", name, to_plain(args), to_plain(kwargs)]
        except NotPlainData as e:
            raise TypeError(f"the sandbox passes only plain data to the solution's {name}: {e}") from None
        doing = f"during a call to {name}"
        try:
            send(self.calls_fd, request)
        except BrokenPipeError:
            self.broke(f"the solution's process ended {doing}", gone=True)
        message = self.receive(doing)
        kind, body = message[0], message[1:]
        if kind == "returned" and len(body) == 1:
            return body[0]
        if kind == "raised" and len(body) == 4 and all(isinstance(x, str) for x in body):
            raise rebuild_exception(*body)
        if kind == "not plain" and len(body) == 1:
            self.broke(f"the solution's {name} returned a value the tests cannot receive: {body[0]}")
        if kind == "left" and len(body) == 1:
            self.broke(f"the solution left {doing}: {body[0]}")
        self.broke(f"the solution sent malformed data {doing}")


def rebuild_exception(base_name, type_name, message, where):
    """The solution's exception, as its nearest builtin class (so ``except ValueError`` in tests works)."""
    base = getattr(builtins, base_name, None)
    error = None
    if isinstance(base, type) and issubclass(base, Exception):
        try:
            error = base(message)
        except Exception:
            error = None
    if error is None:
        error = SolutionError(message)
    error.solution_type = type_name  # type: ignore[attr-defined]  # read by describe()
    error.solution_where = where  # type: ignore[attr-defined]
    return error


class Proxy:
    """Stands for one of the solution's functions in the judge: calls cross the pipe as plain data."""

    def __init__(self, connection, name):
        self._connection = connection
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        return self._connection.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<the solution's {self.__name__}>"


def judge_candidate(header, report, exit_now):
    """Run the preamble, bind proxies for the solution's functions, run the tests; the verdict is ours."""
    nonce, preamble, tests = header["nonce"], header["preamble"], header["tests"]
    required = header["required"]
    connection = Connection(header["calls_fd"], header["replies_fd"])
    header.clear()
    labels = {"preamble.py": "preamble", "tests.py": "tests"}
    try:
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(preamble, "preamble.py", "exec"), namespace)  # while the solution loads
        names = connection.load()
        # The tests see the solution's functions, except where a builtin or the trusted preamble has the name.
        kept = (set(namespace) | set(dir(builtins))) - set(required)
        for name in names:
            if name not in kept:
                namespace[name] = Proxy(connection, name)
        missing = [name for name in required if name not in names]
        if missing:
            raise SolutionFault(f"the solution defines no function {missing[0]}")
        exec(compile(tests, "tests.py", "exec"), namespace)
    except BaseException as e:
        flush_output()
        if connection.fault is not None:
            report("gone" if connection.solution_gone else "fail", connection.fault)
        else:
            report("fail", describe(e, labels))
        exit_now(1)
    flush_output()
    if connection.fault is not None:  # the tests swallowed the fault with a bare except
        report("gone" if connection.solution_gone else "fail", connection.fault)
        exit_now(1)
    report("ok", nonce)
    exit_now(0)


ROLES = {"program": run_program, "candidate": serve_candidate, "judge": judge_candidate}


def describe(error, labels):
    """``Type: message (label line N)``: the innermost traceback line in one of the labelled files."""
    if isinstance(error, SolutionFault):
        return safe_str(error)
    try:
        message = error.msg if isinstance(error, SyntaxError) else str(error)
    except BaseException:
        message = "?"
    kind = getattr(error, "solution_type", None) or type(error).__name__
    text = kind + (": " + message if message else "")
    where = describe_location(error, labels)
    solution_where = getattr(error, "solution_where", "")
    if solution_where and where:
        return f"{text} ({solution_where}, called at {where})"
    return text + (f" ({solution_where or where})" if solution_where or where else "")


def describe_location(error, labels):
    """``label line N`` (``line N`` for an empty label) of the innermost frame in a labelled file, or ''."""
    found = None
    if isinstance(error, SyntaxError) and error.filename in labels and error.lineno:
        found = (labels[error.filename], error.lineno)
    tb = error.__traceback__
    while tb is not None:
        label = labels.get(tb.tb_frame.f_code.co_filename)
        if label is not None:
            found = (label, tb.tb_lineno)
        tb = tb.tb_next
    if found is None:
        return ""
    label, line = found
    return f"{label} line {line}" if label else f"line {line}"


# --- confinement -----------------------------------------------------------------------------------

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, AT_FDCWD, AT_RECURSIVE = 0x1, -100, 0x8000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
SECCOMP_MODE_FILTER = 2
ENOSYS = 38

#: Refused with EPERM by the seccomp filter: name -> (x86-64 number, arm64 number).
DENIED_SYSCALLS = {
    # no sockets at all: a filesystem unix socket is reachable by path from any network namespace
    "socket": (41, 198), "socketpair": (53, 199),
    # io_uring can open sockets and files without the system calls filtered here
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    # no reaching into other processes
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    # stay in the process group the harness kills
    "setsid": (112, 157), "setpgid": (109, 154),
    # keep the namespaces and mounts as they were set up (this matters for a program left running as root)
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442),
    # kernel interfaces no test needs
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
}
#: machine -> (seccomp AUDIT_ARCH value, index into DENIED_SYSCALLS' pairs)
SECCOMP_ARCHES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}
X32_SYSCALL_BIT = 0x40000000


def confine(h):
    """Apply the OS-level defences the header asks for; returns (their names, the working directory).

    With namespaces, this forks: the parent stays outside the new PID namespace only to pass on how
    the child ended (:func:`relay_exit`), and never returns.
    """
    import resource

    applied = []
    workdir = h["workdir"]
    kernel = Kernel.load()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    forked = False
    net = CLONE_NEWNET if h["netns"] else 0
    if h["namespaces"] and kernel is not None and kernel.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | net):
        read_only = kernel.seal_mounts()
        if os.fork() != 0:
            relay_exit()
        forked = True
        workdir = kernel.private_scratch(h["uid"], h["gid"], h["tmpfs_bytes"])
        applied += ["netns"] * bool(net) + ["pidns", "mountns", "ipcns"] + ["rofs"] * read_only
    elif net and kernel is not None and kernel.unshare(net):  # a namespace with only a downed loopback
        applied.append("netns")
    os.chdir(workdir)
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    for name, value in (("RLIMIT_AS", h["memory_bytes"]), ("RLIMIT_FSIZE", h["file_size_bytes"]),
                        ("RLIMIT_NOFILE", h["open_files"]), ("RLIMIT_NPROC", 1)):
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
        applied.append("uid")
    if kernel is not None:
        if forked:  # set after the drop, which clears it: the child dies with the relay
            kernel.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        kernel.prctl(PR_SET_DUMPABLE, 0)  # no /proc/PID/mem, fd, environ for processes of the same uid
        if h["syscall_filter"] and kernel.install_syscall_filter():
            applied.append("seccomp")
    os.umask(0o077)
    return applied, workdir


def relay_exit():
    """In the parent of a new PID namespace's first process: wait for it, then end the same way."""
    os.closerange(0, os.sysconf("SC_OPEN_MAX"))  # hold no pipe open: readers see EOF when the child ends
    _, status = os.waitpid(-1, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number not in (signal.SIGKILL, signal.SIGSTOP):  # their handlers cannot be set, nor need be
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 70)


class Kernel:
    """The few Linux calls the standard library lacks in Python 3.11, through ctypes."""

    def __init__(self, ctypes, libc):
        self.ctypes, self.libc = ctypes, libc

    @classmethod
    def load(cls):
        try:
            import ctypes

            return cls(ctypes, ctypes.CDLL(None, use_errno=True))
        except Exception:
            return None  # no ctypes or no libc: the Python-level guards, rlimits and uid still apply

    def check(self, result, what):
        if result != 0:
            errno = self.ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def unshare(self, flags):
        return self.libc.unshare(flags) == 0

    def prctl(self, option, value):
        c_ulong = self.ctypes.c_ulong
        self.check(self.libc.prctl(option, c_ulong(value), c_ulong(0), c_ulong(0), c_ulong(0)), "prctl")

    def mount(self, source, target, fstype, flags, data=None):
        encoded = [None if x is None else x.encode() for x in (source, target, fstype, data)]
        self.check(self.libc.mount(encoded[0], encoded[1], encoded[2], self.ctypes.c_ulong(flags), encoded[3]),
                   f"mount {target}")

    def seal_mounts(self):
        """In a fresh mount namespace: stop mount propagation to the host, and make every mount read-only.

        Returns whether the read-only part took (``mount_setattr`` needs Linux 5.12).
        """
        ctypes = self.ctypes

        class MountAttr(ctypes.Structure):  # type: ignore[name-defined]  # ctypes is loaded at run time
            _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                        ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

        attr = MountAttr(MOUNT_ATTR_RDONLY, 0, MS_PRIVATE, 0)
        number = DENIED_SYSCALLS["mount_setattr"][0]  # 442 on every architecture
        if self.libc.syscall(ctypes.c_long(number), ctypes.c_int(AT_FDCWD), b"/", ctypes.c_uint(AT_RECURSIVE),
                             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
            return True
        if ctypes.get_errno() != ENOSYS:
            self.check(-1, "mount_setattr /")
        self.mount(None, "/", None, MS_REC | MS_PRIVATE)
        return False

    def private_scratch(self, uid, gid, size_bytes):
        """Fresh tmpfs on /tmp and /dev/shm and a /proc of the new PID namespace; returns the working dir."""
        options = f"mode=1777,size={size_bytes},nr_inodes=4096"
        for target in ("/tmp", "/dev/shm"):
            if os.path.isdir(target):
                self.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
        self.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.mkdir(PRIVATE_WORKDIR, 0o700)
        if uid is not None:
            os.chown(PRIVATE_WORKDIR, uid, gid)
        return PRIVATE_WORKDIR

    def install_syscall_filter(self):
        """A seccomp filter refusing DENIED_SYSCALLS (and any other architecture's calls); False if unsupported."""
        import struct

        arch = SECCOMP_ARCHES.get(os.uname().machine)
        if arch is None:
            return False
        audit_arch, column = arch
        load_word, jump_if_equal, jump_if_above_or_equal, ret = 0x20, 0x15, 0x35, 0x06
        allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
        numbers = sorted({pair[column] for pair in DENIED_SYSCALLS.values()})
        checks = [(jump_if_equal, number) for number in numbers]
        if audit_arch == SECCOMP_ARCHES["x86_64"][0]:
            checks.insert(0, (jump_if_above_or_equal, X32_SYSCALL_BIT))  # x32 calls: same numbers plus the bit
        # [arch check] [load nr] [checks...] [allow] [deny]; jumps are relative to the next instruction
        program = [(load_word, 0, 0, 4), (jump_if_equal, 0, len(checks) + 2, audit_arch), (load_word, 0, 0, 0)]
        for i, (op, k) in enumerate(checks):
            program.append((op, len(checks) - i, 0, k))
        program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
        ctypes = self.ctypes
        buffer = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in program))

        class SockFprog(ctypes.Structure):  # type: ignore[name-defined]
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = SockFprog(len(program), ctypes.cast(buffer, ctypes.c_void_p))
        self.prctl(PR_SET_NO_NEW_PRIVS, 1)
        c_ulong = ctypes.c_ulong
        self.check(self.libc.prctl(PR_SET_SECCOMP, c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                                   c_ulong(0), c_ulong(0)), "seccomp")
        return True


def pin_import_path():
    # After the drop, the interpreter's own directories may be unreachable (/root is 0700). Paths
    # through descriptors opened now stay usable: /proc/self/fd/N skips the ancestors' permissions.
    # Packages imported already (collections, encodings, json ...) keep their own __path__, which
    # needs the same rewriting or their submodules (collections.abc) stop importing.
    pinned = {}
    for entry in sys.path:
        with contextlib.suppress(OSError):
            pinned[entry] = f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"

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
    import io
    import posix

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


if __name__ == "__main__":
    main()
