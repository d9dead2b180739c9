"""Several FuseBench processes at once, as real processes: one new results DB."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import sqlite_utils

from harness.store import Store, migrations

REPO = Path(__file__).parents[2]

# Each writer opens the (new) DB only once every writer has started (the barrier: ready files, then a go file), so
# that their opens and writes overlap.
WRITER = """
import sys, time
from pathlib import Path
db, barrier, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
from harness.store import Store, migrations
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
    assert sqlite_utils.Database(db)["samples"].count == n * 5 * 20


def test_opening_a_db_again_finds_its_migrations_done(tmp_path):
    db = tmp_path / "bench.db"
    Store(db)
    applied = [m.name for m in migrations.applied(sqlite_utils.Database(db))]
    Store(db)
    assert [m.name for m in migrations.applied(sqlite_utils.Database(db))] == applied
    assert applied == [m.name for m in migrations.pending(sqlite_utils.Database(memory=True))]  # every one, once
