"""Runs that stop before they finish, with real processes and real signals: SIGTERM and SIGINT close the run row as
interrupted and print how to continue it; SIGKILL leaves a row that `bench runs` shows as stale (interrupted, with
the command that continues it); `--resume` finishes it and keeps the timings of every attempt."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlite_utils

from harness import paths, session
from harness.store import Store, stale_reason
from harness.store_migrations import migrations
from tests.conftest import bench

REPO = Path(__file__).parents[2]
HOST = socket.gethostname()


def _start(args: list[str], env: dict[str, str], module: str = "tests.harness.fake_bench") -> subprocess.Popen:
    # a child inherits ignored and blocked signals: in a long session the test process was once seen passing on an
    # ignored SIGINT (the child then ran its 60 s evaluation to the end, rc 0), so the child starts as a shell's would
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)


def _default_signals() -> None:
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _called(log: Path, what: str) -> Callable[[], bool]:
    return lambda: log.is_file() and what in log.read_text()


def _runs(db: str) -> list[dict]:
    return list(sqlite_utils.Database(db)["runs"].rows)


def _ago(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def _eval_stage(timings: dict[str, float]) -> str:
    (stage,) = [name for name in timings if name.startswith("eval:")]
    return stage


@pytest.mark.parametrize(("sig", "code", "why"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "KeyboardInterrupt")],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_closes_the_run_as_interrupted_and_prints_the_resume_command(sig, code, why, fake_plugins_registered,
                                                                              capsys):
    env = fake_plugins_registered
    log, db = env["tmp"] / "calls.log", env["db"]
    proc = _start(["eval", "--model", env["a"], "--suite", "fakesuite", "--db", db],
                  {"FAKE_CALLS_LOG": str(log), "FAKE_EVAL_DELAY": "60"})
    _wait_for(_called(log, "evaluate"), "the evaluation started", proc)
    time.sleep(0.5)  # the interrupted stage's seconds must show in the timings
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    (run,) = _runs(db)
    assert err.strip().splitlines()[-1] == (f"interrupted: run {run['id']} is recorded as interrupted; "
                                            f"continue it with `bench eval --resume {run['id']} --db {db}`")
    assert "Traceback" not in err and "RUN_ID" not in err
    assert run["status"] == "interrupted" and run["error"] == f"interrupted ({why})" and run["finished_at"]
    first = json.loads(run["timings"])
    assert first[_eval_stage(first)] >= 0.5
    assert list((paths.cache_dir() / "work").iterdir()) == []  # its scratch folder went with it
    capsys.readouterr()
    assert bench("runs", "--db", db) == 0
    listed = capsys.readouterr().out
    assert f"{run['id']}  interrupted" in listed and f"`bench eval --resume {run['id']} --db {db}`" in listed

    assert bench("eval", "--resume", run["id"], "--db", db) == 0
    (run,) = _runs(db)
    assert run["status"] == "ok" and run["error"] is None and run["attempts"] == 2
    assert sqlite_utils.Database(db)["scores"].count == 2
    total = json.loads(run["timings"])  # both attempts: the interrupted stage's seconds are kept, and added to
    assert set(total) == set(first)
    assert total[_eval_stage(total)] >= first[_eval_stage(first)]
    assert all(total[stage] >= first[stage] for stage in first)


def test_a_killed_run_is_listed_as_stale_with_its_resume_command_and_resumes(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    log, db = env["tmp"] / "calls.log", env["db"]
    proc = _start(["eval", "--model", env["a"], "--suite", "fakesuite", "--db", db],
                  {"FAKE_CALLS_LOG": str(log), "FAKE_EVAL_DELAY": "60"})
    _wait_for(_called(log, "evaluate"), "the evaluation started", proc)
    proc.kill()
    proc.communicate(timeout=60)
    (run,) = _runs(db)
    assert run["status"] == "running" and run["pid"] == proc.pid and run["hostname"] == HOST
    assert list((paths.cache_dir() / "work").iterdir())  # the killed evaluation's scratch folder is left behind

    capsys.readouterr()
    assert bench("runs", "--stale", "--db", db) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{run['id']}  interrupted eval ")
    assert line.endswith(f"its process {proc.pid} on {HOST} is gone; "
                         f"continue it with `bench eval --resume {run['id']} --db {db}`")
    assert bench("runs", "--json", "--db", db) == 0
    assert [r["stale"] for r in json.loads(capsys.readouterr().out)] == [True]

    assert bench("eval", "--resume", run["id"], "--db", db) == 0
    (run,) = _runs(db)
    assert run["status"] == "ok" and run["attempts"] == 2 and run["pid"] == os.getpid()
    assert sqlite_utils.Database(db)["scores"].count == 2
    assert list((paths.cache_dir() / "work").iterdir()) == []
    capsys.readouterr()
    assert bench("runs", "--stale", "--db", db) == 0
    assert capsys.readouterr().out.strip() == "no stale runs"


def test_a_fusion_killed_mid_build_leaves_scratch_that_the_resumed_run_removes(fake_plugins_registered):
    env = fake_plugins_registered
    log, db = env["tmp"] / "calls.log", env["db"]
    proc = _start(["run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite", "--db", db],
                  {"FAKE_CALLS_LOG": str(log), "FAKE_FUSE_DELAY": "60"})
    _wait_for(_called(log, "fuse"), "the fusion started", proc)
    proc.kill()
    proc.communicate(timeout=60)
    (scratch,) = paths.artifacts_dir().glob(".tmp-*")
    assert scratch.name.endswith(f"-{proc.pid}")
    (run,) = _runs(db)
    assert stale_reason(run) == f"its process {proc.pid} on {HOST} is gone"

    assert bench("run", "--resume", run["id"], "--db", db) == 0
    assert not scratch.exists()
    (run,) = _runs(db)
    assert run["status"] == "ok" and sqlite_utils.Database(db)["scores"].count == 6


def test_resume_refuses_a_run_that_is_still_running(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    db = env["db"]
    assert bench("eval", "--model", env["a"], "--suite", "fakesuite", "--db", db) == 0
    (run,) = _runs(db)
    store = Store(db)
    for host, pid, beat, refused in [(HOST, os.getpid(), _ago(0), True),  # this very process: alive
                                     ("elsewhere", 7, _ago(10), True),  # another machine, heartbeat 10 s ago
                                     ("elsewhere", 7, _ago(600), False)]:  # another machine, silent for 10 min
        store.update_run(run["id"], status="running", hostname=host, pid=pid, heartbeat_at=beat)
        capsys.readouterr()
        code = bench("eval", "--resume", run["id"], "--db", db)
        err = capsys.readouterr().err.strip()
        if refused:
            assert code == 2 and err.startswith(f"error: run {run['id']} is still running (process {pid} on {host}, "
                                                "last heartbeat ") and "(fix: wait for it" in err, err
            assert _runs(db)[0]["hostname"] == host  # not claimed
        else:
            assert code == 0, err
            assert _runs(db)[0]["status"] == "ok"


def test_resume_of_a_run_of_another_kind_names_the_right_command(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    assert bench("eval", "--model", env["a"], "--suite", "fakesuite", "--db", env["db"]) == 0
    (run,) = _runs(env["db"])
    capsys.readouterr()
    assert bench("run", "--resume", run["id"], "--db", env["db"]) == 2
    assert f"resume it with `bench eval --resume {run['id']}`" in capsys.readouterr().err


def _reaped_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(("row", "reason"), [  # heartbeat_at / started_at: seconds ago, made timestamps in the test
    ({"status": "ok", "pid": 1, "hostname": HOST, "heartbeat_at": 9999}, None),
    ({"status": "running", "pid": "me", "hostname": HOST, "heartbeat_at": 0}, None),
    ({"status": "running", "pid": "dead", "hostname": HOST, "heartbeat_at": 5}, "its process {pid} on {host} is gone"),
    ({"status": "running", "pid": 1, "hostname": HOST, "heartbeat_at": 600}, None),  # busy, no beat: still it
    ({"status": "running", "pid": "me", "hostname": HOST, "heartbeat_at": 30 * 86400},  # this process started later:
     "its process {pid} on {host} is gone"),                                         # it reuses the pid
    ({"status": "running", "pid": 7, "hostname": "elsewhere", "heartbeat_at": 60}, None),
    ({"status": "running", "pid": 7, "hostname": "elsewhere", "heartbeat_at": 200},
     "no heartbeat for 3m (process 7 on elsewhere)"),
    ({"status": "running", "started_at": 3 * 3600}, "no heartbeat for 3h00m"),  # a row of an older FuseBench
], ids=["closed", "alive here", "dead here", "alive here but silent", "pid reused here", "elsewhere, beating",
        "elsewhere, silent", "no heartbeat columns"])
def test_stale_reason(row, reason):
    pid = os.getpid() if row.get("pid") == "me" else _reaped_pid() if row.get("pid") == "dead" else row.get("pid")
    row = row | {"pid": pid} | {k: _ago(row[k]) for k in ("heartbeat_at", "started_at") if k in row}
    expected = reason.format(pid=pid, host=row.get("hostname")) if reason else None
    assert stale_reason(row) == expected


def test_the_heartbeat_stamps_a_running_row_and_leaves_a_closed_one(tmp_path):
    store = Store(tmp_path / "bench.db")
    running = store.start_run(kind="eval", name=None, command="test", provenance={})
    closed = store.start_run(kind="eval", name=None, command="test", provenance={})
    store.finish_run(closed, "ok")
    long_ago = _ago(600)
    for run_id in (running, closed):
        store.update_run(run_id, heartbeat_at=long_ago)
    with session.Heartbeat(store.path, running, every=0.05), session.Heartbeat(store.path, closed, every=0.05):
        time.sleep(0.5)
    assert store.get_run(running)["heartbeat_at"] >= _ago(60)
    assert store.get_run(closed)["heartbeat_at"] == long_ago


def test_the_liveness_migration_only_adds_columns(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrations.apply(old, stop_before="m004_run_liveness")
    old["runs"].insert({"id": "r1", "kind": "run", "status": "ok", "started_at": _ago(60), "timings": '{"fuse": 1.5}'})
    before = set(old["runs"].columns_dict)
    old.close()
    store = Store(path)
    after = set(store.db["runs"].columns_dict)
    assert after - before == {"pid", "hostname", "heartbeat_at", "attempts", "group_id"} and before <= after  # m004, m005
    row = store.get_run("r1")
    assert row["status"] == "ok" and row["timings"] == '{"fuse": 1.5}' and row["pid"] is None


def test_a_real_eval_killed_on_the_micro_zoo_is_stale_and_resumes(private_home, tmp_path, capsys):
    db = str(tmp_path / "bench.db")
    proc = _start(["eval", "--model", "zoo:llama-base", "--suite", "perplexity", "--limit", "2", "--db", db], {},
                  module="harness.cli")

    def recorded() -> bool:  # the row exists, with its validated config and its models
        try:
            with sqlite3.connect(db, timeout=1) as conn:
                return bool(conn.execute("select count(*) from runs where sources is not null").fetchone()[0])
        except sqlite3.Error:  # not created yet
            return False

    _wait_for(recorded, "the run row", proc)
    proc.kill()
    proc.communicate(timeout=60)
    (run,) = _runs(db)
    assert run["status"] == "running" and stale_reason(run) == f"its process {proc.pid} on {HOST} is gone"
    capsys.readouterr()
    assert bench("runs", "--stale", "--db", db) == 0
    assert f"continue it with `bench eval --resume {run['id']} --db {db}`" in capsys.readouterr().out
    assert bench("eval", "--resume", run["id"], "--db", db) == 0
    (run,) = _runs(db)
    assert run["status"] == "ok" and run["attempts"] == 2
    suites = {r["suite"] for r in sqlite_utils.Database(db)["scores"].rows}
    assert suites == {"perplexity"}
