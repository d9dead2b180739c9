"""The results store: one SQLite file (default ``results/bench.db``) holding every run, model, score and sample.

Tables (stable, documented columns; later migrations only add):
  runs        one row per `bench run` / `bench eval` / `bench score` / `bench import`: config, status, provenance,
              timings
  models      every model a run evaluated or built: source refs and fused artifacts, with content hashes
  run_models  which models a run evaluated, in which role (fused / target / source / model) and under which name
  scores      run, model, suite, task, metric -> value, stderr, n, higher_is_better, suite version
  samples     one row per evaluated example: prompt, raw output, extracted answer, target, metrics

and views for reading (``run_members``, ``score_rows``, ``latest_ok_runs``), all made by the migrations in
:mod:`harness.store_migrations`. Every read of the DB goes through a :class:`Store` method: the SQL of FuseBench lives
in these two modules.

Writes that belong together happen in one transaction, so a crash never leaves half of a model's
suite results behind. A run row is closed as ``ok``, ``error`` or ``interrupted`` (Ctrl-C, SIGTERM); a process
that dies without closing it (SIGKILL, power loss) leaves it ``running``, and its pid, host and heartbeat tell
that it is stale (``stale_reason``).

Any number of processes may open and write one DB at once, a new one included: each write transaction takes the
write lock up front and waits for it (``BUSY_TIMEOUT_S``), and migrations run under a file lock beside the DB
(``<db>-lock``), one process at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from harness.errors import BenchError
from harness.jsonable import to_plain
from harness.paths import file_lock
from harness.store_migrations import MADE_ROLES, migrations

if TYPE_CHECKING:
    import pandas as pd

BUSY_TIMEOUT_S = 60.0  # how long a write waits for another process's write transaction to end
HEARTBEAT_S = 30.0  # how often a working run stamps ``heartbeat_at``
STALE_AFTER_S = 4 * HEARTBEAT_S  # a running run without a heartbeat for this long is stale, wherever it ran


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def seconds_since(timestamp: str) -> float:
    return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(timestamp)).total_seconds()


def new_run_id() -> str:
    """Sortable, short and unique: ``20261124-093512-3fa9``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def plain(value: Any) -> Any:
    """numpy / torch scalars -> Python numbers (sqlite-utils stores others as BLOBs); NaN -> None."""
    value = to_plain(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    return value


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def add_timings(earlier: dict[str, float], later: dict[str, float]) -> dict[str, float]:
    """Seconds per stage over two attempts of a run: stages in the order they first ran, a repeated stage's seconds
    summed."""
    total = dict(earlier)
    for stage, seconds in later.items():
        total[stage] = total.get(stage, 0.0) + seconds
    return {stage: round(seconds, 3) for stage, seconds in total.items()}


def total_seconds(timings: dict[str, float]) -> float:
    """The wall seconds of a run's recorded ``timings``: the sum over its top-level stages. A stage that ran inside
    another is recorded beside it, so it is left out: a fuser's own stages, ``<stage>:<its stage>`` (``fuse:train``
    inside ``fuse``, ``control:train`` inside ``control``), and the loading of a model, ``load:<model>``, inside the
    evaluation that first needed it."""
    return sum(seconds for stage, seconds in timings.items() if not _nested(stage, timings))


def _nested(stage: str, timings: dict[str, float]) -> bool:
    outer, colon, _ = stage.partition(":")
    return bool(colon) and (outer == "load" or outer in timings)


def _still_running(pid: int, seen_at: str) -> bool | None:
    """Whether the process ``pid`` of this host, known alive at ``seen_at``, still runs: False when no process has that
    pid, when it is a zombie (dead, not yet reaped by its parent), or when it started after ``seen_at`` (a later
    process that reuses the pid); None when this host cannot tell the latter (no /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):  # no /proc (macOS), or it ended just now
        return None
    if fields[0] == "Z":
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of /proc/PID/stat: start, in ticks
    return started <= dt.datetime.fromisoformat(seen_at).timestamp() + 2  # seen_at has whole seconds


def stale_reason(run: dict[str, Any]) -> str | None:
    """Why the run row ``run`` is stale: it says ``running`` but no process works on it. On the host it ran on, that
    is when its process is gone; elsewhere (or where this host cannot tell), when it has had no heartbeat for
    ``STALE_AFTER_S`` seconds. None when it is not stale (or not running). Rows of FuseBench versions without
    heartbeats count from their start."""
    if run.get("status") != "running":
        return None
    pid, host = run.get("pid"), run.get("hostname")
    last = run.get("heartbeat_at") or run.get("started_at")
    if pid and last and host == socket.gethostname():
        running = _still_running(pid, last)
        if running is not None:
            return None if running else f"its process {pid} on {host} is gone"
    if last and seconds_since(last) > STALE_AFTER_S:
        where = f" (process {pid} on {host})" if pid else ""
        return f"no heartbeat for {_duration(seconds_since(last))}{where}"
    return None


def refuse_if_running(run: dict[str, Any]) -> None:
    """A BenchError when the run row ``run`` says ``running`` and is not stale: another process works on it."""
    if run["status"] == "running" and stale_reason(run) is None:
        where = f"process {run['pid']} on {run['hostname']}" if run.get("pid") else "another process"
        beat_at = run.get("heartbeat_at") or run["started_at"]
        raise BenchError(f"run {run['id']} is still running ({where}, last heartbeat {_duration(seconds_since(beat_at))} "
                         "ago)", "wait for it to finish, or stop that process and resume it then")


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m" if minutes else f"{int(seconds)}s"


def beat(db_path: Path, run_id: str) -> None:
    """Stamp the heartbeat of run ``run_id`` while it is running, on a connection of its own (a heartbeat thread
    cannot share the store's)."""
    conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("begin immediate")
        conn.execute("update runs set heartbeat_at = ? where id = ? and status = 'running'", [now(), run_id])
        conn.execute("commit")
    finally:
        conn.close()


def _make_folder_of(db_path: Path) -> None:
    """Create the DB's folder; a one-line error when a part of the path is a file or cannot be created."""
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in reversed(db_path.parents) if p.exists() and not p.is_dir()), None)
        problem = (f"--db {db_path}: {blocker} is a file, not a folder" if blocker is not None
                   else f"--db {db_path}: cannot create its folder ({e.strerror or e})")
        raise BenchError(problem, "give --db a path in a folder you can write, e.g. results/bench.db") from None


class Store:
    """The SQLite results store. Migrates itself on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise BenchError(f"--db {path} is a directory", "give a file path such as results/bench.db")
        _make_folder_of(self.path)
        try:
            self.db = sqlite_utils.Database(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S))
            self._migrate()
        except Exception as e:  # a text file, a DB of another tool, a locked file ...
            if isinstance(e, BenchError):
                raise
            raise BenchError(f"cannot open results DB {path}: {e}", "give a FuseBench DB path or a new file") from e

    def _migrate(self, attempts: int = 6) -> None:
        """WAL mode and the pending migrations, one process at a time (the lock file ``<db>-lock``): the others wait,
        then find nothing left to do. A lock held by a process that does not take that file lock (another tool, an
        older FuseBench) is retried with backoff."""
        lock = self.path.with_name(self.path.name + "-lock")  # beside -wal and -shm, ignored with them
        for attempt in range(attempts):
            try:
                with file_lock(lock):
                    self.db.enable_wal()
                    migrations.apply(self.db)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == attempts - 1:
                    raise
                time.sleep(0.1 * 2**attempt)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction that takes the write lock at its start (waiting up to ``BUSY_TIMEOUT_S`` while
        another process writes), so what it reads cannot change under it before it writes; all or nothing."""
        self.db.conn.execute("begin immediate")
        try:
            yield
        except BaseException:
            self.db.conn.rollback()
            raise
        self.db.conn.commit()

    # --- runs -----------------------------------------------------------------------------------

    def start_run(self, *, kind: str, name: str | None, command: str, provenance: dict[str, Any],
                  config: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        run_id = run_id or new_run_id()
        started = now()
        with self._writing():
            self.db.table("runs").insert(
                {
                    "id": run_id, "name": name, "kind": kind, "status": "running", "command": command,
                    "config": _json(config or {}), "started_at": started,
                    "git_sha": provenance.get("git_sha"), "git_dirty": int(bool(provenance.get("git_dirty"))),
                    "versions": _json(provenance.get("versions", {})), "host": _json(provenance.get("host", {})),
                    "pid": os.getpid(), "hostname": socket.gethostname(), "heartbeat_at": started, "attempts": 1,
                }
            )
        return run_id

    def resume_run(self, run_id: str) -> dict[str, Any]:
        """Claim run ``run_id`` for another attempt in this process, and return its row as it was. A run that is still
        running elsewhere (not stale) is refused, so two processes never work on one run."""
        with self._writing():
            row = self.get_run(run_id)
            refuse_if_running(row)  # in the write transaction: no other process can claim it between check and claim
            self.db.table("runs").update(run_id, {
                "status": "running", "error": None, "finished_at": None, "pid": os.getpid(),
                "hostname": socket.gethostname(), "heartbeat_at": now(), "attempts": (row.get("attempts") or 1) + 1,
            })
        return row

    def update_run(self, run_id: str, **fields: Any) -> None:
        row = {k: (_json(v) if isinstance(v, (dict, list)) else plain(v)) for k, v in fields.items()}
        with self._writing():
            self.db.table("runs").update(run_id, row)

    def finish_run(self, run_id: str, status: str, *, error: str | None = None,
                   timings: dict[str, float] | None = None) -> None:
        """Close the run as ``ok``, ``error`` or ``interrupted``. ``timings`` (seconds per stage of this attempt) are
        added to those of the run's earlier attempts, if it was resumed."""
        assert status in ("ok", "error", "interrupted")
        with self._writing():
            fields: dict[str, Any] = {"status": status, "error": error, "finished_at": now()}
            if timings is not None:
                earlier = self.get_run(run_id).get("timings")
                fields["timings"] = _json(add_timings(json.loads(earlier) if earlier else {}, timings))
            self.db.table("runs").update(run_id, fields)

    def get_run(self, run_id: str) -> dict[str, Any]:
        try:
            return self.db.table("runs").get(run_id)
        except sqlite_utils.db.NotFoundError:
            raise BenchError(f"no run {run_id!r} in {self.path}", "see `bench runs` for run ids") from None

    def runs(self, limit: int = 50, *, stale: bool = False) -> list[dict[str, Any]]:
        """The newest runs; ``stale``: only the runs that say ``running`` but whose process is gone."""
        if not stale:
            return list(self.db.table("runs").rows_where(order_by="started_at desc, id desc", limit=limit))
        running = self.db.table("runs").rows_where("status = 'running'", order_by="started_at desc, id desc")
        return [r for r in running if stale_reason(r) is not None][:limit]

    # --- models ---------------------------------------------------------------------------------

    def add_model(self, model: dict[str, Any], run_id: str, role: str, position: int) -> None:
        """Record a model (idempotent by id) and its role in a run, under the name the run shows it by.

        The models table is keyed by content and keeps a model's first name, and so does the run's member, except a
        source or target whose content was first recorded as a fused model (a merge that degenerated to one expert,
        say): that one is shown under the run's own name for it (``model["name"]``)."""
        with self._writing():
            self._insert_member(model, run_id, role, position)

    def _insert_member(self, model: dict[str, Any], run_id: str, role: str, position: int,
                       display_name: str | None = None) -> None:
        """:meth:`add_model`'s writes, inside the caller's transaction; ``display_name``: the name the run shows the
        member by, when the caller decides it."""
        row = {k: (_json(v) if isinstance(v, (dict, list)) else v) for k, v in model.items()}
        row.setdefault("created_at", now())
        row.setdefault("created_by_run", run_id)
        self.db.table("models").insert(row, pk="id", ignore=True)
        first = self.db.table("models").get(model["id"])
        fused_output_as_input = first["kind"] in ("fused", "runtime") and role not in MADE_ROLES
        if display_name is None:
            display_name = model["name"] if fused_output_as_input else first["name"]
        self.db.table("run_models").insert(
            {"run_id": run_id, "model_id": model["id"], "role": role, "position": position,
             "display_name": display_name},
            pk=("run_id", "model_id"), replace=True,
        )

    def add_train_log(self, run_id: str, model_id: str, curves: dict[str, list[float]]) -> None:
        """Store a fuser's per-step curves (``{"total": [...], "clm": [...], ...}``) in one transaction."""
        rows = [{"run_id": run_id, "model_id": model_id, "step": step, "name": name, "value": plain(value)}
                for name, values in curves.items() for step, value in enumerate(values)]
        if rows:
            with self._writing():
                self.db.table("train_log").insert_all(rows, pk=("run_id", "model_id", "name", "step"), replace=True,
                                                batch_size=500)

    # --- judge tokens ----------------------------------------------------------------------------

    def add_judge_usage(self, run_id: str, model_id: str, stage: str, usage: Iterable[dict[str, Any]],
                        cached: bool) -> None:
        """Record what LLM judges were sent and wrote for member ``model_id`` of run ``run_id`` in ``stage``
        (``eval:<suite>``, ``fuse``, ``control``), one row per judge (:meth:`harness.judge.JudgeUsage.record`);
        ``cached``: the result came from the cache. A row recorded already stays (a resumed run does not turn the
        tokens its first attempt spent into cached ones)."""
        rows = [{"run_id": run_id, "model_id": model_id, "stage": stage, "judge": str(u["judge"]),
                 **{k: int(u.get(k) or 0) for k in ("requests", "prompt_tokens", "completion_tokens", "unmetered")},
                 "cached": int(cached), "created_at": now()} for u in usage]
        if rows:
            with self._writing():
                self.db.table("judge_usage").insert_all(rows, pk=("run_id", "model_id", "stage", "judge"), ignore=True)

    def judge_usage(self, run_ids: list[str]) -> dict[str, dict[str, int]]:
        """Per run of ``run_ids`` that judged anything: the sums of ``requests``, ``prompt_tokens``,
        ``completion_tokens`` and ``unmetered`` over what the run computed itself, and ``cached_prompt_tokens`` /
        ``cached_completion_tokens`` over the results it took from the cache."""
        if not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        rows = self._rows(
            "select run_id, sum(case when cached then 0 else requests end) as requests, "
            "sum(case when cached then 0 else prompt_tokens end) as prompt_tokens, "
            "sum(case when cached then 0 else completion_tokens end) as completion_tokens, "
            "sum(case when cached then 0 else unmetered end) as unmetered, "
            "sum(case when cached then prompt_tokens else 0 end) as cached_prompt_tokens, "
            "sum(case when cached then completion_tokens else 0 end) as cached_completion_tokens "
            f"from judge_usage where run_id in ({marks}) group by run_id", run_ids)
        return {r.pop("run_id"): {k: int(v or 0) for k, v in r.items()} for r in rows}

    # --- scores and samples ---------------------------------------------------------------------

    def has_scores(self, run_id: str, model_id: str, suite: str) -> bool:
        return bool(self.db.table("scores").count_where("run_id = ? and model_id = ? and suite = ?", [run_id, model_id, suite]))

    def add_eval(self, run_id: str, model_id: str, suite: str, suite_version: str, eval_key: str,
                 scores: Iterable[dict[str, Any]], samples: Iterable[dict[str, Any]],
                 precision: dict[str, str] | None = None) -> None:
        """All scores and samples of one (model, suite) evaluation, in one transaction. ``precision``:
        ``{"dtype", "backend"}`` the scores were computed in."""
        with self._writing():
            self._insert_eval(run_id, model_id, suite, suite_version, eval_key, scores, samples, precision)

    def _insert_eval(self, run_id: str, model_id: str, suite: str, suite_version: str, eval_key: str,
                     scores: Iterable[dict[str, Any]], samples: Iterable[dict[str, Any]],
                     precision: dict[str, str] | None = None) -> None:
        """:meth:`add_eval`'s writes, inside the caller's transaction."""
        created = now()
        precision = precision or {}
        score_rows = [
            {
                "run_id": run_id, "model_id": model_id, "suite": suite, "suite_version": suite_version,
                "eval_key": eval_key, "task": s["task"], "metric": s["metric"], "value": plain(s["value"]),
                "stderr": plain(s.get("stderr")), "n": plain(s.get("n")),
                "higher_is_better": int(bool(s.get("higher_is_better", True))), "created_at": created,
                "dtype": precision.get("dtype"), "backend": precision.get("backend"),
            }
            for s in scores
        ]
        sample_rows = [
            {
                "run_id": run_id, "model_id": model_id, "suite": suite, "task": s["task"], "doc_id": int(s["doc_id"]),
                "prompt": s.get("prompt"), "output": s.get("output"), "extracted": s.get("extracted"),
                "target": s.get("target"),
                "metrics": _json({k: plain(v) for k, v in (s.get("metrics") or {}).items()}),
            }
            for s in samples
        ]
        self.db.table("scores").insert_all(score_rows, pk=("run_id", "model_id", "suite", "task", "metric"), replace=True)
        if sample_rows:
            self.db.table("samples").insert_all(sample_rows, pk=("run_id", "model_id", "suite", "task", "doc_id"),
                                                replace=True, batch_size=200)

    # --- imported results -------------------------------------------------------------------------

    def record_imports(self, runs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[tuple[str, bool]]:
        """Record evaluations made elsewhere (`bench import`) as finished runs of kind ``import``, all in one
        transaction (all or nothing). Each run is its row's fields (``run_hash`` identifies what was imported) and
        its members (``{"model": <models row>, "name": <shown name>, "evals": [{"suite", "suite_version",
        "eval_key", "scores", "samples"}]}``), each recorded with role ``model``, its scores and samples. Returns
        (run id, True) per run; a run whose ``run_hash`` an earlier import run has is not written again: (that
        run's id, False)."""
        recorded = []
        with self._writing():
            for run, members in runs:
                earlier = self._rows("select id from runs where kind = 'import' and run_hash = ? "
                                     "order by started_at limit 1", [run["run_hash"]])
                if earlier:
                    recorded.append((earlier[0]["id"], False))
                    continue
                stamp, run_id = now(), new_run_id()
                row = {**{k: (_json(v) if isinstance(v, (dict, list)) else v) for k, v in run.items()},
                       "id": run_id, "kind": "import", "status": "ok", "started_at": stamp, "finished_at": stamp,
                       "pid": os.getpid(), "hostname": socket.gethostname(), "heartbeat_at": stamp, "attempts": 1}
                self.db.table("runs").insert(row)
                for position, member in enumerate(members):
                    self._insert_member(member["model"], run_id, "model", position, display_name=member["name"])
                    for ev in member["evals"]:
                        self._insert_eval(run_id, member["model"]["id"], ev["suite"], ev["suite_version"],
                                          ev["eval_key"], ev["scores"], ev["samples"], ev.get("precision"))
                recorded.append((run_id, True))
        return recorded

    # --- reading runs ---------------------------------------------------------------------------

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, list(params)))

    def has_run(self, ref: str) -> bool:
        """Whether a run has the id or the name ``ref`` (whatever its status)."""
        return bool(self._rows("select 1 from runs where id = ? or name = ? limit 1", [ref, ref]))

    def find_run(self, ref: str) -> dict[str, Any]:
        """A run row by id, else the newest ``ok`` run named ``ref``. BenchError if neither exists or the run did not
        finish ``ok`` (a failed run's scores are incomplete)."""
        rows = self._rows("select * from runs where id = ?", [ref]) or self._rows(
            "select * from runs where name = ? and status = 'ok' order by started_at desc, rowid desc limit 1", [ref])
        if not rows:
            if self._rows("select status from runs where name = ?", [ref]):
                raise BenchError(f"run name {ref!r} has no run with status ok in {self.path}",
                                 "see `bench runs`; re-run it or give another run")
            raise BenchError(f"unknown run {ref!r}: no run id or run name in {self.path}",
                             "give a run id or name from `bench runs`, or a baseline .json file")
        run = rows[0]
        if run["status"] != "ok":
            raise BenchError(f"run {run['id']} has status {run['status']}, not ok", "give a run that finished ok")
        return run

    def latest_ok_runs(self) -> list[dict[str, Any]]:
        """The newest ``ok`` run of each run name (of each run hash or config for unnamed runs), oldest first."""
        return self._rows("select * from latest_ok_runs order by coalesce(started_at, ''), id")

    def seed_group_runs(self, group_ref: str) -> list[dict[str, Any]]:
        """The ``ok`` runs of the seed group ``group_ref`` (its id, or its name: runs named ``NAME@seedN``; the newest
        group when the name was reused), in seed order; empty when there is no such group."""
        rows = self._rows("select * from runs where group_id = ? and status = 'ok' order by started_at, rowid",
                          [group_ref])
        if not rows:
            rows = self._rows("select * from runs where group_id is not null and name like ? and status = 'ok' "
                              "order by started_at, rowid", [f"{group_ref}@seed%"])
            if len({r["group_id"] for r in rows}) > 1:
                rows = [r for r in rows if r["group_id"] == rows[-1]["group_id"]]
        return rows

    def run_configs(self, run_ids: list[str]) -> dict[str, str | None]:
        """run id -> its config (JSON text)."""
        marks = ", ".join("?" * len(run_ids))
        return {r["id"]: r["config"] for r in self._rows(f"select id, config from runs where id in ({marks})", run_ids)}

    # --- reading members, scores and samples ------------------------------------------------------

    def has_model(self, ref: str) -> bool:
        """Whether a model has the name or the id ``ref``."""
        return bool(self._rows("select 1 from models where name = ? or id = ? limit 1", [ref, ref]))

    def run_members(self, run_id: str) -> list[dict[str, Any]]:
        """The members of run ``run_id`` in their order: rows of the view ``run_members``."""
        return self._rows("select * from run_members where run_id = ? order by position", [run_id])

    def members_frame(self) -> pd.DataFrame:
        """The members of every ``ok`` run (the view ``run_members``), by run start and position."""
        import pandas as pd

        return pd.DataFrame(self._rows("select * from run_members where status = 'ok' order by started_at, position"))

    def members_with_samples(self, run_id: str, suites: list[str] | None = None) -> list[dict[str, Any]]:
        """The members of run ``run_id`` (model_id, role, model: its shown name) that have per-example samples (of
        ``suites``), in their order."""
        in_suites = f" and x.suite in ({', '.join('?' * len(suites))})" if suites else ""
        return self._rows("select m.model_id, m.role, m.model from run_members m where m.run_id = ? and exists "
                          "(select 1 from samples x where x.run_id = m.run_id and x.model_id = m.model_id"
                          + in_suites + ") order by m.position", [run_id, *(suites or [])])

    def newest_sampled_member(self, model_ref: str, suites: list[str] | None = None) -> dict[str, Any] | None:
        """(run_id, model_id) of the newest ``ok`` run with per-example samples (of ``suites``) of the model named or
        with the id ``model_ref``; None when there is none."""
        in_suites = f" and s.suite in ({', '.join('?' * len(suites))})" if suites else ""
        rows = self._rows(
            "select s.run_id, s.model_id from scores s join runs r on r.id = s.run_id join models m on m.id = s.model_id "
            "where r.status = 'ok' and (m.name = ? or m.id = ?)" + in_suites +
            " and exists (select 1 from samples x where x.run_id = s.run_id and x.model_id = s.model_id "
            "and x.suite = s.suite) order by r.started_at desc, r.rowid desc limit 1", [model_ref, model_ref, *(suites or [])])
        return rows[0] if rows else None

    def score_rows(self, run_id: str) -> list[dict[str, Any]]:
        """The scores of run ``run_id`` (rows of the view ``score_rows``), by member position, suite, task and metric."""
        return self._rows("select * from score_rows where run_id = ? order by position, suite, task, metric", [run_id])

    def score_frame(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        """The scores of every ``ok`` run, or of the runs ``run_ids``: the view ``score_rows`` as a frame."""
        import pandas as pd

        if run_ids is None:
            return pd.DataFrame(self._rows("select * from score_rows where status = 'ok'"))
        marks = ", ".join("?" * len(run_ids))
        return pd.DataFrame(self._rows(f"select * from score_rows where run_id in ({marks})", run_ids))

    def first_score(self, run_id: str, model_id: str, suite: str, metric: str | None = None) -> dict[str, Any] | None:
        """suite_version and higher_is_better of a member's first score on ``suite`` (of ``metric``, when given);
        None when it has none."""
        of_metric = " and metric = ?" if metric else ""
        rows = self._rows("select suite_version, higher_is_better from scores where run_id = ? and model_id = ? "
                          f"and suite = ?{of_metric} limit 1", [run_id, model_id, suite, *([metric] if metric else [])])
        return rows[0] if rows else None

    def suites_with_samples(self, run_id: str, model_id: str) -> list[str]:
        """The suites of which a member has per-example samples, by name."""
        return [r["suite"] for r in self._rows("select distinct suite from samples where run_id = ? and model_id = ? "
                                               "order by suite", [run_id, model_id])]

    def samples(self, run_id: str, model_id: str, suite: str) -> list[dict[str, Any]]:
        """A member's samples of ``suite`` (task, doc_id, prompt, target, metrics as JSON text), by task and doc_id."""
        return self._rows("select task, doc_id, prompt, target, metrics from samples where run_id = ? and model_id = ? "
                          "and suite = ? order by task, doc_id", [run_id, model_id, suite])

    def run_samples(self, run_id: str, suite: str | None = None) -> list[dict[str, Any]]:
        """Every sample of run ``run_id`` (of ``suite``) with its member's shown name (``model``), by model, suite,
        task and doc_id."""
        return self._rows("select s.*, m.model from samples s join run_members m on m.run_id = s.run_id "
                          "and m.model_id = s.model_id where s.run_id = ?" + (" and s.suite = ?" if suite else "")
                          + " order by m.model, s.suite, s.task, s.doc_id", [run_id, *([suite] if suite else [])])

    def sample_targets(self, run_id: str) -> list[dict[str, Any]]:
        """(model_id, suite, task, doc_id, target) of every sample of run ``run_id``."""
        return self._rows("select model_id, suite, task, doc_id, target from samples where run_id = ?", [run_id])

    def train_log(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """The training curves of runs ``run_ids``: (run_id, model_id, step, name, value) by run, model, curve and
        step; empty where the DB's ``train_log`` is of another shape."""
        marks = ",".join("?" * len(run_ids))
        try:
            return self._rows(f"select run_id, model_id, step, name, value from train_log where run_id in ({marks}) "
                              "order by run_id, model_id, name, step", run_ids)
        except sqlite3.Error:
            return []

    # --- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (and its WAL files' descriptors). A CLI process exits anyway; a long-lived
        caller (the Python API in a notebook) would otherwise keep them open until garbage collection."""
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading only -----------------------------------------------------------------------------

    @classmethod
    def read_only(cls, path: str | Path) -> Store:
        """An existing DB opened for reading only: for listing commands where the DB file or its folder cannot be
        written (a read-only mount, someone else's results). SQLite cannot create the WAL index in a folder it cannot
        write, so there the file is opened as immutable. A DB of an older FuseBench is read from a migrated copy in
        memory, so that every read method finds the schema it expects."""
        store = cls.__new__(cls)
        store.path = Path(path)
        mode = "mode=ro" if os.access(store.path.parent, os.W_OK) else "immutable=1"
        wal = store.path.with_name(store.path.name + "-wal")
        if mode == "immutable=1" and wal.is_file() and wal.stat().st_size > 0:
            raise BenchError(f"results DB {path} has changes in {wal.name} that cannot be read in a read-only folder",
                             "copy the DB and its -wal file to a writable folder and read it there")
        try:
            store.db = sqlite_utils.Database(sqlite3.connect(f"{store.path.resolve().as_uri()}?{mode}", uri=True))
            store.db.execute("select 1 from runs limit 1")
            if migrations.pending(store.db):
                store.db = _migrated_copy(store.db)
        except sqlite3.Error as e:
            raise BenchError(f"cannot read results DB {path} (opened read-only): {e}",
                             "give a FuseBench DB path") from None
        return store


def _migrated_copy(db: sqlite_utils.Database) -> sqlite_utils.Database:
    """An in-memory copy of ``db`` with every migration applied."""
    copy = sqlite_utils.Database(memory=True)
    db.conn.backup(copy.conn)
    db.conn.close()
    migrations.apply(copy)
    return copy
