"""The sandbox contains hostile programs: each one fails, the run finishes, and nothing outside changes.

Adversarial cases run twice when the tests run as root: with every defence (the normal mode) and with
the Python-level guards alone (no privilege drop, no PID/mount/IPC namespaces, no syscall filter; the
network namespace stays), so each layer is shown to hold. Attacks on other programs running at the
same time, and on the world outside the run, are further down; the verdicts of code tests are in
``test_sandbox_code_tests.py``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.sandbox import (
    SANDBOX_UIDS,
    CodeTest,
    Limits,
    Outcome,
    SandboxError,
    run_code_test,
    run_program,
    run_programs,
)

IS_ROOT = os.geteuid() == 0
MODES = [True, False] if IS_ROOT else [True]


GUARDS_ONLY = {"drop_privileges": False, "namespaces": False, "syscall_filter": False}


@pytest.fixture(params=MODES, ids=lambda full: "dropped" if full else "guards-only")
def limits(request: pytest.FixtureRequest) -> Limits:
    return Limits(timeout_s=1.0, memory_mb=256, **({} if request.param else GUARDS_ONLY))


def run(source: str, limits: Limits) -> Outcome:
    return run_program(textwrap.dedent(source), limits)


def assert_failed(outcome: Outcome, *fragments: str) -> None:
    assert not outcome.passed, outcome
    assert outcome.result.startswith(("failed: ", "timed out")), outcome.result
    for fragment in fragments:
        assert fragment in outcome.result, outcome.result


# --- ordinary programs ---------------------------------------------------------------------------


def test_a_legit_program_passes(limits: Limits) -> None:
    outcome = run("""
        import collections, hashlib, math, re
        def f(x):
            return sorted(collections.Counter(x).items())
        open("scratch.txt", "w").write("temporary files in the working dir are fine")
        assert f("aab") == [("a", 2), ("b", 1)]
        assert hashlib.md5(b"x").hexdigest().startswith("9dd4")
        print("done", math.sqrt(16))
    """, limits)
    assert outcome.passed and outcome.result == "passed", outcome
    assert outcome.output == "done 4.0\n"
    assert outcome.returncode == 0


def test_failure_reason_names_the_exception_and_line(limits: Limits) -> None:
    outcome = run("x = 1\nassert x == 2, 'x is wrong'\n", limits)
    assert outcome.result == "failed: AssertionError: x is wrong (line 2)"
    assert run("def f(:\n    pass\n", limits).result.startswith("failed: SyntaxError")
    assert run("input()\n", limits).result.startswith("failed: EOFError")  # stdin is /dev/null


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit",
                                       "raise SystemExit(0)", "exit(0)", "raise KeyboardInterrupt"])
def test_leaving_before_the_end_is_not_a_pass(limits: Limits, exit_call: str) -> None:
    outcome = run(f"""
        def check():
            {exit_call}
            assert False, "the tests would fail"
        check()
    """, limits)
    assert_failed(outcome)


def test_a_faked_success_marker_does_not_pass(limits: Limits) -> None:
    outcome = run("""
        import builtins, os, sys
        for guess in ("passed", "ok", "PASS", "ok " + "0" * 32, "ok 0123456789abcdef0123456789abcdef"):
            print(guess)
            sys.stderr.write(guess + "\\n")
            for fd in range(3, 40):  # every fd the program can see, the report pipe included
                try:
                    os.write(fd, (guess + "\\n").encode())
                except OSError:
                    pass
        builtins.print = lambda *a, **k: None
        sys.stdout.flush()
        os._exit(0)
    """, limits)
    assert_failed(outcome, "exited with code 0 before the program finished")


# --- resource exhaustion ---------------------------------------------------------------------------


def test_an_infinite_loop_times_out(limits: Limits) -> None:
    start = time.monotonic()
    outcome = run("while True:\n    pass\n", limits)
    assert outcome.result == "timed out"
    assert time.monotonic() - start < limits.timeout_s + 2


def test_ignoring_sigxcpu_still_hits_the_hard_cpu_limit() -> None:
    outcome = run("""
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass
    """, Limits(timeout_s=10, cpu_s=1))
    assert_failed(outcome, "killed")
    assert outcome.seconds < 5


def test_a_fork_bomb_is_refused(limits: Limits) -> None:
    outcome = run("""
        import os
        while True:
            os.fork()
    """, limits)
    assert_failed(outcome, "PermissionError", "os.fork is disabled")
    assert_failed(run("import subprocess\nsubprocess.run(['true'])\n", limits), "ImportError")
    assert_failed(run("import os\nos.system('true')\n", limits), "PermissionError")


def test_processes_that_bypass_the_guards_die_with_the_group(limits: Limits) -> None:
    """ctypes' fork dodges the Python guards; with a uid of its own RLIMIT_NPROC stops it, as root the
    group kill does. The processes are found by a name they give themselves (inside a PID namespace
    their pids mean nothing out here)."""
    marker = f"fbstray{secrets.token_hex(4)}"
    outcome = run(f"""
        import os, sys, time
        sys.meta_path.pop(0)  # remove the import guard
        import ctypes
        libc = ctypes.CDLL(None)
        libc.prctl(15, b"{marker}", 0, 0, 0)  # PR_SET_NAME, inherited by the forks
        results = [libc.fork() for _ in range(3)]  # at most 8 processes, even if every fork works
        print("forks", results, flush=True)
        time.sleep(60)
    """, limits)
    assert outcome.result == "timed out"
    assert "forks" in outcome.output, outcome.output
    if limits.drop_privileges and IS_ROOT:
        assert outcome.output.count("forks") == 1 and "[-1, -1, -1]" in outcome.output  # RLIMIT_NPROC
    else:
        assert outcome.output.count("forks") == 8  # the forks did run: the kill below has work to do
    deadline = time.monotonic() + 3
    while named(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert named(marker) == []


def named(comm: str) -> list[int]:
    """Host pids of live processes (running or sleeping, not zombies) whose name is ``comm``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if name == comm and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_a_memory_hog_fails_without_hurting_the_parent(limits: Limits) -> None:
    assert_failed(run("x = bytearray(8 << 30)\n", limits), "MemoryError")
    assert_failed(run("""
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    """, limits), "MemoryError")


def test_huge_output_is_cut_and_the_program_killed(limits: Limits) -> None:
    start = time.monotonic()
    outcome = run("""
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(10 * 1024):  # 10 GB
            sys.stdout.write(chunk)
    """, limits)
    assert_failed(outcome, "output limit exceeded")
    assert len(outcome.output) <= Limits().max_output_bytes
    assert time.monotonic() - start < limits.timeout_s


def test_a_huge_file_hits_the_file_size_limit(limits: Limits) -> None:
    outcome = run("""
        with open("big.bin", "wb") as f:
            for _ in range(1024):
                f.write(b"x" * (1 << 20))
    """, limits)
    assert_failed(outcome, "File too large")


# --- the outside world -------------------------------------------------------------------------------


ATTACKS = {
    "remove": "os.remove(CANARY)",
    "unlink": "os.unlink(CANARY)",
    "overwrite": "open(CANARY, 'w').write('pwned')",
    "append": "open(CANARY, 'a').write('pwned')",
    "os.open": "os.write(os.open(CANARY, os.O_WRONLY | os.O_TRUNC), b'pwned')",
    "pathlib": "pathlib.Path(CANARY).write_text('pwned')",
    "rename": "os.rename(CANARY, CANARY + '.moved')",
    "replace-into": "open('evil', 'w').write('pwned'); os.replace('evil', CANARY)",
    "chmod": "os.chmod(CANARY, 0)",
    "rmtree": "shutil.rmtree(os.path.dirname(CANARY))",
    "new-file-beside": "open(os.path.join(os.path.dirname(CANARY), 'new.txt'), 'w').write('x')",
    "symlink-then-write": "os.symlink(CANARY, 'link'); open('link', 'w').write('pwned')",
    "hardlink-then-write": "os.link(CANARY, 'hard'); open('hard', 'w').write('pwned')",
    "chdir-then-remove": "os.chdir(os.path.dirname(CANARY)); os.remove('canary.txt')",
    "truncate": "os.truncate(CANARY, 0)",
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_files_outside_the_working_dir_are_untouched(limits: Limits, tmp_path: Path, attack: str) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("precious")
    before = sorted(p.name for p in tmp_path.iterdir())
    outcome = run(f"import os, pathlib, shutil\nCANARY = {str(canary)!r}\n{ATTACKS[attack]}\n", limits)
    assert_failed(outcome)
    assert canary.read_text() == "precious"
    assert oct(canary.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_working_dir_is_private_scrubbed_and_removed(limits: Limits) -> None:
    os.environ["FUSEBENCH_SECRET_FOR_TEST"] = "s3cret"
    try:
        outcome = run("""
            import os, sys
            print(os.getcwd())
            print(sorted(os.environ))
            assert os.environ["HOME"] == os.environ["TMPDIR"] == os.getcwd()
            assert "FUSEBENCH_SECRET_FOR_TEST" not in os.environ
            assert "s3cret" not in open("/proc/self/cmdline").read()
            assert not any("site-packages" in p for p in sys.path)
            open("left-behind.txt", "w").write("x")
        """, limits)
    finally:
        del os.environ["FUSEBENCH_SECRET_FOR_TEST"]
    assert outcome.passed, outcome
    workdir, env_keys = outcome.output.splitlines()[:2]
    assert set(eval(env_keys)) <= {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}
    assert not Path(workdir).exists()


def test_a_socket_to_localhost_goes_nowhere(limits: Limits) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept_loop(stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # accept() times out every 0.2 s to look at `stop`
                accepted.append(server.accept())

    stop = threading.Event()
    thread = threading.Thread(target=accept_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        plain = run(f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hello")
        """, limits)
        assert_failed(plain, "ImportError")
        if IS_ROOT:  # the network namespace holds even when the import guard is removed
            bypass = run(f"""
                import sys
                sys.meta_path.pop(0)
                import socket
                socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hello")
            """, limits)
            assert "netns" in bypass.isolation
            # the syscall filter refuses the socket itself; without it, the empty namespace has no route
            assert_failed(bypass, "PermissionError" if "seccomp" in bypass.isolation else "OSError")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert accepted == []


@pytest.mark.parametrize("attack", [
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
    "os.killpg(0, signal.SIGKILL)",
    "signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)",
    "os.setuid(0); os.kill(1, signal.SIGTERM)",
])
def test_the_parent_cannot_be_signalled(limits: Limits, attack: str) -> None:
    outcome = run(f"import os, signal\n{attack}\n", limits)
    assert_failed(outcome)
    assert os.getpid() > 0  # still here


# --- other programs running at the same time, and what outlives a run ---------------------------------

needs_root = pytest.mark.skipif(not IS_ROOT, reason="uids of their own and namespaces need root")

# Signals every process it may (kill(-1)) for a while, then says how that went. It refuses to try as
# root, so a sandbox that failed to drop privileges cannot take the machine down with it.
KILL_EVERY_PROCESS = """
import os, sys, time
sys.meta_path.pop(0)  # remove the import guard
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
assert os.getuid() != 0, "refusing to kill(-1) as root"
signalled, errnos = 0, set()
end = time.monotonic() + 1.5
while time.monotonic() < end:
    if libc.kill(-1, 9) == 0:
        signalled += 1
    else:
        errnos.add(ctypes.get_errno())
print("signalled", signalled, "errnos", sorted(errnos), flush=True)
"""


@needs_root
def test_a_program_cannot_kill_the_programs_running_beside_it() -> None:
    """With one uid for all (as before), kill(-1) took down every sandboxed process on the machine."""
    slow_add = CodeTest(solution="import time\ndef add(a, b):\n    time.sleep(1.0)\n    return a + b\n",
                        tests="assert add(2, 3) == 5\n")
    slow_program = "import time\ntime.sleep(1.0)\nassert sum([2, 3]) == 5\n"
    spans: dict[str, tuple[float, float]] = {}

    def timed(name: str, delay: float, call: Callable[[], Outcome]) -> Outcome:
        time.sleep(delay)
        start = time.monotonic()
        try:
            return call()
        finally:
            spans[name] = (start, time.monotonic())

    with ThreadPoolExecutor(max_workers=3) as pool:
        attacker = pool.submit(timed, "attacker", 0.0, lambda: run_program(KILL_EVERY_PROCESS))
        victim_test = pool.submit(timed, "test", 0.3, lambda: run_code_test(slow_add))
        victim_program = pool.submit(timed, "program", 0.3, lambda: run_program(slow_program))
        outcomes = {"attacker": attacker.result(), "test": victim_test.result(), "program": victim_program.result()}
    assert outcomes["test"].passed, outcomes["test"]
    assert outcomes["program"].passed, outcomes["program"]
    assert outcomes["attacker"].passed, outcomes["attacker"]
    assert "signalled 0 errnos [3]" in outcomes["attacker"].output  # ESRCH: nobody it may signal
    attack_start, attack_end = spans["attacker"]
    assert all(attack_start < start and end - 1.0 < attack_end for start, end in (spans["test"], spans["program"]))


@needs_root
def test_a_solution_cannot_kill_its_own_judge() -> None:
    solution = KILL_EVERY_PROCESS.replace("1.5", "0.3") + "def add(a, b):\n    return a + b\n"
    outcome = run_code_test(CodeTest(solution=solution, tests="assert add(2, 3) == 5\n"))
    assert outcome.passed, outcome  # the judge lived to give its verdict
    assert "signalled 0 errnos [3]" in outcome.output


@needs_root
def test_programs_running_together_each_have_a_uid_of_their_own() -> None:
    report_uid = "import os, time\nprint(os.getuid(), flush=True)\ntime.sleep(0.5)\n"
    outcomes = run_programs([report_uid] * 4, Limits(timeout_s=5), workers=4)
    uids = [int(o.output) for o in outcomes]
    assert all(o.passed for o in outcomes) and len(set(uids)) == 4 and set(uids) <= set(SANDBOX_UIDS)
    both = run_code_test(CodeTest(solution="import os\nprint('solution', os.getuid())\ndef f():\n    return 1\n",
                                  tests="import os\nprint('judge', os.getuid())\nassert f() == 1\n"))
    assert both.passed, both
    said = dict(line.split() for line in both.output.splitlines())
    assert said["solution"] != said["judge"]


@contextlib.contextmanager
def unix_socket_server(directory: Path) -> Iterator[tuple[str, list[object]]]:
    """A unix socket anyone may connect to, at a path under ``directory``; yields (path, accepted)."""
    path = str(directory / "door.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(5)
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield path, accepted
    finally:
        stop.set()
        thread.join()
        server.close()


@needs_root
@pytest.mark.skipif(not Path("/var/tmp").is_dir(), reason="needs /var/tmp, which the sandbox does not hide")
def test_a_filesystem_unix_socket_is_out_of_reach() -> None:
    """A network namespace does not cover unix sockets: a path reaches them. The syscall filter does."""
    directory = Path(tempfile.mkdtemp(prefix="fusebench-test-", dir="/var/tmp"))
    try:
        directory.chmod(0o755)
        with unix_socket_server(directory) as (path, accepted):
            attack = f"""
                import sys
                sys.meta_path.pop(0)  # remove the import guard
                import socket
                client = socket.socket(socket.AF_UNIX)
                client.connect({path!r})
                client.sendall(b"hello")
            """
            outcome = run(attack, Limits(timeout_s=2))
            assert_failed(outcome, "PermissionError")
            assert "seccomp" in outcome.isolation and "netns" in outcome.isolation
            time.sleep(0.3)
            assert accepted == []
            unfiltered = run(attack, Limits(timeout_s=2, syscall_filter=False))
            assert unfiltered.passed, unfiltered  # the attack is real: only the filter stops it
            time.sleep(0.3)
            assert len(accepted) == 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@needs_root
def test_files_written_to_tmp_and_dev_shm_vanish_with_the_program() -> None:
    name = f"fusebench-leftover-{secrets.token_hex(6)}"
    places = [Path("/tmp", name), Path("/dev/shm", name)]
    attack = f"""
        import io
        for path in ({str(places[0])!r}, {str(places[1])!r}):
            with io.FileIO(path, "w") as f:  # FileIO is not guarded
                f.write(b"still here?")
            print("wrote", path)
        try:
            io.FileIO("/var/tmp/{name}", "w")
        except OSError as e:
            print("var/tmp:", e.strerror)
    """
    try:
        outcome = run(attack, Limits(timeout_s=2))
        assert outcome.passed, outcome
        assert outcome.output.count("wrote") == 2 and "var/tmp: Read-only file system" in outcome.output
        assert not any(p.exists() for p in places)
        assert not Path("/var/tmp", name).exists()
        unconfined = run(attack, Limits(timeout_s=2, namespaces=False))
        assert unconfined.passed, unconfined
        assert all(p.exists() for p in places)  # the attack is real: only the private mounts stop it
    finally:
        for path in [*places, Path("/var/tmp", name)]:
            path.unlink(missing_ok=True)


# --- plumbing --------------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="the privilege drop and the namespaces need root")
def test_as_root_the_program_runs_under_a_pool_uid_in_namespaces_of_its_own() -> None:
    outcome = run_program("""
import os
print(os.getuid(), os.getpid(), os.getcwd(), sorted(p for p in os.listdir("/proc") if p.isdigit()))
assert os.getuid() == os.geteuid() == os.getgid() == os.getegid() and os.getgroups() == []
""")
    assert outcome.passed, outcome
    uid, pid, cwd, pids = outcome.output.split(" ", 3)
    assert int(uid) in SANDBOX_UIDS
    assert (pid, cwd, pids.strip()) == ("1", "/tmp/work", "['1']")  # it is alone in its PID namespace
    assert set(outcome.isolation) == {"rlimits", "uid", "netns", "pidns", "mountns", "ipcns", "rofs", "seccomp"}


def test_run_programs_keeps_the_input_order() -> None:
    sources = ["pass", "assert False", "import time; time.sleep(0.3)", "raise ValueError('v')"]
    start = time.monotonic()
    outcomes = run_programs(sources, Limits(timeout_s=5), workers=2)
    assert [o.passed for o in outcomes] == [True, False, True, False]
    assert outcomes[3].result == "failed: ValueError: v (line 1)"
    assert time.monotonic() - start < 5
    assert run_programs([]) == []


def test_the_child_is_a_fresh_interpreter_not_a_fork() -> None:
    outcome = run_program("import sys\nprint(sys.flags.isolated, sys.flags.no_site, 'pytest' in sys.modules)\n")
    assert outcome.passed and outcome.output == "1 1 False\n"
    assert sys.executable  # the same interpreter binary, started afresh


def test_a_sandbox_that_cannot_start_raises_instead_of_scoring_a_failure() -> None:
    # No kernel lets RLIMIT_NOFILE go past fs.nr_open (below 2**31), root or not, so confining fails
    # before the program runs, the same way everywhere (a tiny RLIMIT_AS only fails where the setup
    # happens to allocate afterwards, which depends on the user and the allocator).
    with pytest.raises(SandboxError, match="could not start"):
        run_program("pass", Limits(max_open_files=1 << 40))


def test_a_program_cannot_fake_a_sandbox_error_to_abort_the_run() -> None:
    outcome = run_program("""
import os
for fd in range(3, 40):
    try:
        os.write(fd, b"setup fake trouble\\n")
    except OSError:
        pass
raise SystemExit(0)
""")
    assert outcome.result.startswith("failed: SystemExit: 0")
