"""Several FuseBench processes at once, as real processes: one new results DB, one evaluation, one fusion."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import sqlite_utils

from harness import paths
from harness.store import Store
from harness.store_migrations import migrations
from tests.conftest import bench

REPO = Path(__file__).parents[2]

# Each writer opens the (new) DB only once every writer has started (the barrier: ready files, then a go file), so
# that their opens and writes overlap.
WRITER = """
import sys, time
from pathlib import Path
db, barrier, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
from harness.store import Store
(barrier / f"ready-{me}").touch()
while not (barrier / "go").exists():
    time.sleep(0.01)
store = Store(db)
run_id = store.start_run(kind="eval", name=f"writer-{me}", command="test", provenance={})
model = {"id": f"m-{me}", "name": f"model-{me}", "kind": "source", "content_hash": me}
store.add_model(model, run_id, "model", 0)
for suite in range(5):
    store.add_eval(run_id, model["id"], f"suite{suite}", "1", f"key{suite}",
                   [{"task": "t", "metric": "acc", "value": 0.5}],
                   [{"task": "t", "doc_id": d, "prompt": "p", "output": "o"} for d in range(20)])
store.finish_run(run_id, "ok", timings={"eval": 1.0})
"""


def test_processes_creating_and_writing_one_new_db_at_once_all_succeed(tmp_path):
    db, barrier, n = tmp_path / "new" / "bench.db", tmp_path / "barrier", 6
    barrier.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(barrier), str(i)], cwd=REPO,
                                stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    (barrier / "go").touch()
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0] * n, errors
    runs = list(sqlite_utils.Database(db)["runs"].rows)
    assert sorted(r["name"] for r in runs) == [f"writer-{i}" for i in range(n)]
    assert {r["status"] for r in runs} == {"ok"}
    assert sqlite_utils.Database(db)["scores"].count == n * 5
    assert (db.parent / "bench.db-lock").is_file()  # the migration lock, named like SQLite's -wal and -shm files
    assert sqlite_utils.Database(db)["samples"].count == n * 5 * 20


def test_opening_a_db_again_finds_its_migrations_done(tmp_path):
    db = tmp_path / "bench.db"
    Store(db)
    applied = [m.name for m in migrations.applied(sqlite_utils.Database(db))]
    Store(db)
    assert [m.name for m in migrations.applied(sqlite_utils.Database(db))] == applied
    assert applied == [m.name for m in migrations.pending(sqlite_utils.Database(memory=True))]  # every one, once


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.harness.fake_bench", *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _calls(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.is_file() else []


def test_identical_evaluations_at_once_compute_once_and_all_succeed(fake_plugins_registered):
    env = fake_plugins_registered
    log = env["tmp"] / "calls.log"
    evals = [_start(["eval", "--model", env["a"], "--suite", "fakesuite", "--db", env["db"]],
                    {"FAKE_CALLS_LOG": str(log), "FAKE_EVAL_DELAY": "1.5"}) for _ in range(4)]
    outputs = [e.communicate(timeout=120) for e in evals]
    assert [e.returncode for e in evals] == [0] * 4, [err for _, err in outputs]
    assert _calls(log) == ["evaluate"]  # one builder; the other three waited and read its cache entry
    runs = list(sqlite_utils.Database(env["db"])["runs"].rows)
    assert len(runs) == 4 and {r["status"] for r in runs} == {"ok"}
    assert sqlite_utils.Database(env["db"])["scores"].count == 4 * 2
    assert list((paths.cache_dir() / "work").iterdir()) == []


def test_identical_fusions_at_once_build_the_artifact_once(fake_plugins_registered):
    env = fake_plugins_registered
    log = env["tmp"] / "calls.log"
    fusions = [_start(["run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                       "--db", env["db"]], {"FAKE_CALLS_LOG": str(log), "FAKE_FUSE_DELAY": "1.5"}) for _ in range(3)]
    outputs = [f.communicate(timeout=120) for f in fusions]
    assert [f.returncode for f in fusions] == [0] * 3, [err for _, err in outputs]
    assert _calls(log).count("fuse") == 1
    fused = [r for r in sqlite_utils.Database(env["db"])["models"].rows if r["kind"] == "fused"]
    assert len(fused) == 1  # the three runs evaluated one artifact, byte for byte
    assert [p.name for p in paths.artifacts_dir().iterdir()] == [fused[0]["fuse_hash"]]  # no scratch, no lock files


def test_scratch_of_dead_builders_is_removed_and_a_live_builders_kept(fake_plugins_registered):
    """Scratch space whose owner's lock nobody holds was left by a killed process; a held lock means it still works."""
    env = fake_plugins_registered
    artifacts, work = paths.artifacts_dir(), paths.cache_dir() / "work"
    dead_build, live_build = artifacts / ".tmp-00aa-4242", artifacts / ".tmp-00bb-4343"
    dead_spec = artifacts / ".spec-.tmp-00aa-4242.json"
    dead_eval, live_eval = work / "00cc", work / "00dd"
    for folder in (dead_build, live_build, dead_eval, live_eval):
        folder.mkdir(parents=True)
    dead_spec.write_text("{}")
    with paths.file_lock(paths.locks_dir() / "artifact-00bb.lock"), paths.file_lock(paths.locks_dir() / "eval-00dd.lock"):
        assert bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                     "--db", env["db"]) == 0
    assert not dead_build.exists() and not dead_spec.exists() and not dead_eval.exists()
    assert live_build.is_dir() and live_eval.is_dir()
