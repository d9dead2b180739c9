"""The store's read side: a DB of an older FuseBench upgrades in place (the names it showed kept per run member, the
read views created), all or nothing per migration; read-only, it is read from a migrated copy."""

from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

from harness.errors import BenchError
from harness.store import Store
from harness.store_migrations import migrations

VIEWS = ["run_members", "score_rows", "latest_ok_runs"]


@pytest.fixture
def old_db(tmp_path):
    """A DB as FuseBench wrote it before names were stored per run member: run r1 fused a model that run r2 then
    used as its source ``zoo:a`` (the same bytes), so the models table knows that source as the fused model."""
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="m006_member_display_names")
    db["runs"].insert_all([
        {"id": "r1", "name": "degenerate", "kind": "run", "status": "ok", "started_at": "2026-01-01T00:00:00+00:00",
         "sources": '["zoo:a", "zoo:b"]'},
        {"id": "r2", "name": "nightly", "kind": "run", "status": "ok", "started_at": "2026-01-02T00:00:00+00:00",
         "sources": '["zoo:a", "zoo:b"]'},
    ])
    db["models"].insert_all([{"id": "m-x", "name": "degenerate", "kind": "fused"},
                             {"id": "m-b", "name": "zoo:b", "kind": "source"},
                             {"id": "m-y", "name": "nightly", "kind": "fused"}])
    db["run_models"].insert_all([
        {"run_id": "r1", "model_id": "m-x", "role": "fused", "position": 0},
        {"run_id": "r1", "model_id": "m-b", "role": "source", "position": 1},
        {"run_id": "r2", "model_id": "m-y", "role": "fused", "position": 0},
        {"run_id": "r2", "model_id": "m-x", "role": "source", "position": 1},
        {"run_id": "r2", "model_id": "m-b", "role": "source", "position": 2},
    ])
    db["scores"].insert({"run_id": "r2", "model_id": "m-x", "suite": "bbh", "suite_version": "1", "task": "macro",
                         "metric": "exact_match", "value": 0.5, "higher_is_better": 1})
    db.close()
    return path


def names(store: Store, run_id: str) -> list[str]:
    return [m["model"] for m in store.run_members(run_id)]


def test_an_older_db_upgrades_in_place_keeping_the_names_it_showed(old_db):
    store = Store(old_db)
    assert names(store, "r1") == ["degenerate", "zoo:b"]
    assert names(store, "r2") == ["nightly", "zoo:a", "zoo:b"]  # the source under its spec, not the fused model's name
    assert [r["model"] for r in store.score_rows("r2")] == ["zoo:a"]
    assert sorted(v.name for v in store.db.views) == sorted(VIEWS)
    assert {r["name"] for r in store.db["models"].rows} == {"degenerate", "zoo:b", "nightly"}  # models unchanged


def test_a_run_member_is_stored_under_the_name_the_run_shows(tmp_path):
    """A model keeps its first name in every run; a source first recorded as a fused model gets the run's name for it."""
    store = Store(tmp_path / "bench.db")
    first = store.start_run(kind="run", name="degenerate", command="test", provenance={})
    store.add_model({"id": "m-x", "name": "degenerate", "kind": "fused"}, first, "fused", 0)
    store.add_model({"id": "m-b", "name": "zoo:b", "kind": "source"}, first, "source", 1)
    later = store.start_run(kind="run", name="nightly", command="test", provenance={})
    store.add_model({"id": "m-y", "name": "nightly", "kind": "fused"}, later, "fused", 0)
    store.add_model({"id": "m-x", "name": "zoo:a", "kind": "source"}, later, "source", 1)
    store.add_model({"id": "m-b", "name": "copy-of-b", "kind": "source"}, later, "source", 2)
    again = store.start_run(kind="run", name="again", command="test", provenance={})
    store.add_model({"id": "m-x", "name": "again", "kind": "fused"}, again, "fused", 0)
    assert names(store, first) == ["degenerate", "zoo:b"]
    assert names(store, later) == ["nightly", "zoo:a", "zoo:b"]
    assert names(store, again) == ["degenerate"]  # the same bytes fused again: the model's first name


def test_a_failing_migration_leaves_nothing_behind(old_db):
    db = sqlite_utils.Database(old_db)
    db["score_rows"].insert({"x": 1})  # a table in the way of the view m007 creates
    db.close()
    with pytest.raises(BenchError, match="score_rows"):
        Store(old_db)
    db = sqlite_utils.Database(old_db)
    assert [m.name for m in migrations.pending(db)][0] == "m007_read_views"  # m006 done, m007 not recorded
    assert db.view_names() == []  # and its first view rolled back with it
    assert "display_name" in db["run_models"].columns_dict


def test_a_read_only_older_db_is_read_from_a_migrated_copy(old_db):
    store = Store.read_only(old_db)
    assert names(store, "r2") == ["nightly", "zoo:a", "zoo:b"]
    assert [r["id"] for r in store.latest_ok_runs()] == ["r1", "r2"]
    with sqlite3.connect(old_db) as conn:  # the file itself is as it was
        assert conn.execute("select count(*) from sqlite_master where type = 'view'").fetchone() == (0,)
