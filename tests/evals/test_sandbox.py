"""The sandbox contains hostile programs: each one fails, the run finishes, and nothing outside changes.

Adversarial cases run twice when the tests run as root: with the privilege drop (the normal mode) and
with the Python-level guards alone (``drop_privileges=False``), so each layer is shown to hold.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from evals._sandbox import SANDBOX_UID, Limits, Outcome, SandboxError, run_program, run_programs

IS_ROOT = os.geteuid() == 0
MODES = [True, False] if IS_ROOT else [True]


@pytest.fixture(params=MODES, ids=lambda drop: "dropped" if drop else "guards-only")
def limits(request: pytest.FixtureRequest) -> Limits:
    return Limits(timeout_s=1.0, memory_mb=256, drop_privileges=request.param)


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
    """ctypes' fork dodges the Python guards; as nobody RLIMIT_NPROC stops it, as root the group kill does."""
    outcome = run("""
        import os, sys, time
        sys.meta_path.pop(0)  # remove the import guard
        import ctypes
        libc = ctypes.CDLL(None)
        results = [libc.fork() for _ in range(3)]  # at most 8 processes, even if every fork works
        print("pid", os.getpid(), results, flush=True)
        time.sleep(60)
    """, limits)
    assert outcome.result == "timed out"
    pids = [int(line.split()[1]) for line in outcome.output.splitlines() if line.startswith("pid ")]
    assert pids, outcome.output
    if limits.drop_privileges and IS_ROOT:
        assert len(pids) == 1 and "[-1, -1, -1]" in outcome.output  # RLIMIT_NPROC: every fork failed
    deadline = time.monotonic() + 3
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, waiting for init to reap it) counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


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
            assert_failed(bypass, "OSError")
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


# --- plumbing --------------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="the privilege drop and network namespace need root")
def test_as_root_the_program_runs_as_nobody_in_its_own_network_namespace() -> None:
    outcome = run_program(f"import os\nassert os.getuid() == os.geteuid() == {SANDBOX_UID}\nassert os.getgroups() == []\n")
    assert outcome.passed, outcome
    assert set(outcome.isolation) == {"netns", "rlimits", f"uid={SANDBOX_UID}"}


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
