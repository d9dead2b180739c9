"""harness.session: one owner of a run row, from opening (or resuming) it to closing it with the attempt's timings."""

from __future__ import annotations

import json
import sqlite3

import pytest

from harness.config import build_eval_config
from harness.errors import BenchError
from harness.session import NewRun, Resume, run_session
from harness.store import Store
from tests.conftest import bench


def _eval_run(build=lambda: build_eval_config(suites=["fakesuite"], sets=None, limit=None, name="s")):
    return NewRun("eval", "s", {"models": ["m"]}, build, {"sources": ["m"]})


def test_a_session_records_the_spec_and_closes_the_row_with_its_timings(fake_plugins_registered):
    store = Store(fake_plugins_registered["db"])
    opened = []
    with run_session(store, _eval_run(), opened.append) as run:
        assert opened == [run.id] and store.get_run(run.id)["status"] == "running" and not run.resumed
        with run.timings.stage("work"):
            pass
    row = store.get_run(run.id)
    assert row["status"] == "ok" and row["error"] is None and list(json.loads(row["timings"])) == ["work"]
    assert json.loads(row["config"])["suites"] == ["fakesuite"] and json.loads(row["sources"]) == ["m"]


def test_a_config_that_fails_validation_closes_the_row_as_error_without_timings(fake_plugins_registered):
    store = Store(fake_plugins_registered["db"])
    bad = _eval_run(lambda: build_eval_config(suites=["fakesuite"], sets=["fakesuite.items=x"], limit=None, name="s"))
    with pytest.raises(BenchError), run_session(store, bad):
        raise AssertionError("the body runs only on a valid spec")
    (row,) = store.runs()
    assert row["status"] == "error" and "fakesuite" in row["error"] and row["timings"] is None
    assert json.loads(row["config"]) == {"models": ["m"]}  # the flags as given


def test_a_failed_attempt_is_resumed_in_a_session_of_its_own(fake_plugins_registered):
    store = Store(fake_plugins_registered["db"])
    with pytest.raises(KeyboardInterrupt), run_session(store, _eval_run()) as run, run.timings.stage("work"):
        raise KeyboardInterrupt
    assert store.get_run(run.id)["status"] == "interrupted"
    with pytest.raises(BenchError, match="is a `bench eval` run, not `bench run`"), run_session(store, Resume("run", run.id)):
        pass
    assert store.get_run(run.id)["attempts"] == 1  # refused before it was claimed
    with run_session(store, Resume("eval", run.id)) as again:
        assert again.resumed and again.spec.suites == ["fakesuite"] and again.id == run.id
        with again.timings.stage("work"):
            pass
    row = store.get_run(run.id)
    assert row["status"] == "ok" and row["attempts"] == 2 and list(json.loads(row["timings"])) == ["work"]


def test_the_fusers_own_stages_end_in_the_runs_timings(fake_plugins_registered):
    env = fake_plugins_registered
    for _ in range(2):  # the second run finds the artifact in the cache: nothing fused, no fuser stage
        assert bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                     "--db", env["db"]) == 0
    # in the order they were inserted: two runs may start within the same second of started_at
    with sqlite3.connect(env["db"]) as db:
        first, second = ({"timings": t} for (t,) in db.execute("select timings from runs order by rowid"))
    timings = json.loads(first["timings"])
    assert {"validate", "resolve", "fuse", "fuse:average"} <= set(timings) and timings["fuse:average"] <= timings["fuse"]
    assert "fuse" in json.loads(second["timings"]) and "fuse:average" not in json.loads(second["timings"])
