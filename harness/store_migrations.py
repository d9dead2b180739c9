"""The schema of the results DB (:mod:`harness.store`): its migrations, in order, and the views for reading.

Each migration is a function ``mNNN_what(db)``, applied once per DB, in the order written here; sqlite-utils records
the applied ones by function name in the DB (``_sqlite_migrations``), so a migration is never renamed or changed once
released: a change of schema is a new migration at the end, and it only adds (tables, columns, views).
:class:`harness.store.Store` applies the pending ones when it opens a DB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

migrations = Migrations("fusebench")

#: Roles of models a fuser made for the run; every other member (source, target, model) was named by the user.
MADE_ROLES = ("fused", "control", "stage")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.table("runs").create(
        {
            "id": str, "name": str, "kind": str, "fuser": str, "sources": str, "target": str,
            "config": str, "run_hash": str, "status": str, "error": str, "command": str,
            "git_sha": str, "git_dirty": int, "versions": str, "host": str,
            "started_at": str, "finished_at": str, "timings": str,
        },
        pk="id",
    )
    db.table("models").create(
        {
            "id": str, "name": str, "kind": str, "ref": str, "path": str, "content_hash": str,
            "fuser": str, "fuse_hash": str, "details": str, "created_at": str, "created_by_run": str,
        },
        pk="id",
    )
    db.table("run_models").create({"run_id": str, "model_id": str, "role": str, "position": int}, pk=("run_id", "model_id"))
    db.table("scores").create(
        {
            "run_id": str, "model_id": str, "suite": str, "suite_version": str, "eval_key": str,
            "task": str, "metric": str, "value": float, "stderr": float, "n": int,
            "higher_is_better": int, "created_at": str,
        },
        pk=("run_id", "model_id", "suite", "task", "metric"),
    )
    db.table("samples").create(
        {
            "run_id": str, "model_id": str, "suite": str, "task": str, "doc_id": int,
            "prompt": str, "output": str, "extracted": str, "target": str, "metrics": str,
        },
        pk=("run_id", "model_id", "suite", "task", "doc_id"),
    )
    for table, fk_col, other in (
        ("run_models", "run_id", "runs"), ("run_models", "model_id", "models"),
        ("scores", "run_id", "runs"), ("scores", "model_id", "models"),
        ("samples", "run_id", "runs"), ("samples", "model_id", "models"),
    ):
        db.table(table).add_foreign_key(fk_col, other, "id")
    db.table("scores").create_index(["suite", "task", "metric"])
    db.table("runs").create_index(["name"])


@migrations()
def m002_train_log(db: sqlite_utils.Database) -> None:
    """Per-step training curves of fusers that train (FuseLLM, FuseChat, ...): one row per (step, curve)."""
    db.table("train_log").create({"run_id": str, "model_id": str, "step": int, "name": str, "value": float},
                           pk=("run_id", "model_id", "name", "step"))
    db.table("train_log").add_foreign_key("run_id", "runs", "id")
    db.table("train_log").add_foreign_key("model_id", "models", "id")


@migrations()
def m003_score_precision(db: sqlite_utils.Database) -> None:
    """What each score was computed in: ``dtype`` (float32, bfloat16 ...) and ``backend`` (hf-cpu, hf-cuda).
    Earlier rows keep NULL (they were float32 on the CPU: FuseBench had no other placement then)."""
    db.table("scores").add_column("dtype", str)
    db.table("scores").add_column("backend", str)


@migrations()
def m004_run_liveness(db: sqlite_utils.Database) -> None:
    """Whether a ``running`` run still runs: the ``pid`` and ``hostname`` of the process working on it and its
    ``heartbeat_at`` (stamped every :data:`harness.store.HEARTBEAT_S` seconds); ``attempts``: how many times the run was started
    (1, plus one per ``--resume``), over which ``timings`` are summed. Earlier rows keep NULL."""
    db.table("runs").add_column("pid", int)
    db.table("runs").add_column("hostname", str)
    db.table("runs").add_column("heartbeat_at", str)
    db.table("runs").add_column("attempts", int)


@migrations()
def m005_run_groups(db: sqlite_utils.Database) -> None:
    """``group_id``: the runs of one ``bench run --seeds A,B,C`` share it (the id of the group's first run); NULL
    for a run on its own."""
    db.table("runs").add_column("group_id", str)


@migrations()
def m006_member_display_names(db: sqlite_utils.Database) -> None:
    """``run_models.display_name``: the model's name as the run shows it (see :meth:`Store.add_model`). Rows of
    earlier runs get what FuseBench showed for them: the model's first recorded name, except for a source or target
    first recorded as a fused model (a merge that degenerated to one expert, say), which is named after the run's
    source / target spec that no other member accounts for (in spec order)."""
    db.table("run_models").add_column("display_name", str)
    members: dict[str, list[dict[str, Any]]] = {}
    for m in db.query("select rm.run_id, rm.model_id, rm.role, m.name, m.kind from run_models rm "
                      "join models m on m.id = rm.model_id order by rm.run_id, rm.position"):
        members.setdefault(m["run_id"], []).append(m)
    updates = []
    for run in db.query("select id, target, sources from runs"):
        names = _names_shown_before_m006(run, members.get(run["id"], []))
        updates += [(name, run["id"], model_id) for model_id, name in names.items()]
    db.conn.executemany("update run_models set display_name = ? where run_id = ? and model_id = ?", updates)


def _names_shown_before_m006(run: dict[str, Any], members: list[dict[str, Any]]) -> dict[str, str]:
    """model_id -> the name FuseBench showed for each member of ``run`` before names were stored per run."""
    names = {m["model_id"]: m["name"] for m in members}
    misnamed = [m["model_id"] for m in members if m["role"] not in MADE_ROLES and m["kind"] in ("fused", "runtime")]
    if misnamed:
        specs = ([run["target"]] if run.get("target") else []) + json.loads(run.get("sources") or "[]")
        taken = {names[m["model_id"]] for m in members if m["model_id"] not in misnamed}
        free = [n for n in (_spec_name(s) for s in specs) if n not in taken]
        if len(free) == len(misnamed):
            names.update(zip(misnamed, free, strict=True))
    return names


def _spec_name(spec: str) -> str:
    """What :attr:`harness.model.ModelRef.name` calls a spec: a local folder by its name, others as written."""
    path = Path(spec).expanduser()
    return path.name if not spec.startswith("zoo:") and path.exists() else spec


@migrations()
def m007_read_views(db: sqlite_utils.Database) -> None:
    """Views for reading (the Store's read methods, and anyone with SQL: ``datasette``, ``sqlite3``):

    ``run_members``     run_models with the member's shown name (``model``), its model's kind and path, and its run's
                        name, kind, fuser, status, start and group
    ``score_rows``      scores with the member's shown name, role and position and the same run columns
    ``latest_ok_runs``  the newest ``ok`` run of each run name; unnamed runs are told apart by their run hash (fusion
                        runs) or kind + sources + config (eval and score runs)
    """
    db.execute("""
        create view run_members as
        select rm.run_id, rm.model_id, rm.role, rm.position, coalesce(rm.display_name, m.name) as model,
               m.kind as model_kind, m.path as model_path, r.name as run_name, r.kind as run_kind, r.fuser,
               r.status, r.started_at, r.group_id
        from run_models rm join runs r on r.id = rm.run_id join models m on m.id = rm.model_id""")
    db.execute("""
        create view score_rows as
        select s.run_id, s.model_id, s.suite, s.suite_version, s.eval_key, s.task, s.metric, s.value, s.stderr, s.n,
               s.higher_is_better, s.dtype, s.backend, s.created_at, rm.model, rm.model_kind, rm.role, rm.position,
               rm.run_name, rm.run_kind, rm.fuser, rm.status, rm.started_at, rm.group_id
        from scores s join run_members rm on rm.run_id = s.run_id and rm.model_id = s.model_id""")
    db.execute("""
        create view latest_ok_runs as
        select * from runs where rowid in (
            select rowid from (
                select rowid, row_number() over (
                    partition by coalesce(nullif(name, ''), nullif(run_hash, ''),
                                          coalesce(kind, 'None') || '|' || coalesce(sources, 'None') || '|'
                                          || coalesce(config, 'None'))
                    order by started_at desc, rowid desc) as newest
                from runs where status = 'ok')
            where newest = 1)""")


@migrations()
def m008_judge_usage(db: sqlite_utils.Database) -> None:
    """``judge_usage``: the tokens LLM judges were sent (``prompt_tokens``) and wrote (``completion_tokens``) for a run,
    per member and ``stage`` (``eval:<suite>``: a suite's judging; ``fuse`` / ``control``: a fuser's judge reward),
    per ``judge`` (who judged: a model at an endpoint, or a local model); ``requests``: replies; ``unmetered``: those
    that reported no token counts; ``cached``: 1 when the run took the result from the cache (those tokens were spent
    by the run that computed it, not by this one)."""
    db.table("judge_usage").create(
        {"run_id": str, "model_id": str, "stage": str, "judge": str, "requests": int, "prompt_tokens": int,
         "completion_tokens": int, "unmetered": int, "cached": int, "created_at": str},
        pk=("run_id", "model_id", "stage", "judge"))
    db.table("judge_usage").add_foreign_key("run_id", "runs", "id")
    db.table("judge_usage").add_foreign_key("model_id", "models", "id")
