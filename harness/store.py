"""The results store: one SQLite file (default ``results/bench.db``) holding every run, model, score and sample.

Tables (stable, documented columns; later migrations only add):
  runs        one row per `bench run` / `bench eval` / `bench score`: config, status, provenance, timings
  models      every model a run evaluated or built: source refs and fused artifacts, with content hashes
  run_models  which models a run evaluated, and in which role (fused / target / source / model)
  scores      run, model, suite, task, metric -> value, stderr, n, higher_is_better, suite version
  samples     one row per evaluated example: prompt, raw output, extracted answer, target, metrics

Writes that belong together happen in one transaction, so a crash never leaves half of a model's
suite results behind; a run row is always closed as ``ok`` or ``error``.

Any number of processes may open and write one DB at once, a new one included: each write transaction takes the
write lock up front and waits for it (``BUSY_TIMEOUT_S``), and migrations run under a file lock beside the DB
(``<db>.lock``), one process at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from harness.errors import BenchError
from harness.paths import file_lock

migrations = Migrations("fusebench")

BUSY_TIMEOUT_S = 60.0  # how long a write waits for another process's write transaction to end


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str, "name": str, "kind": str, "fuser": str, "sources": str, "target": str,
            "config": str, "run_hash": str, "status": str, "error": str, "command": str,
            "git_sha": str, "git_dirty": int, "versions": str, "host": str,
            "started_at": str, "finished_at": str, "timings": str,
        },
        pk="id",
    )
    db["models"].create(
        {
            "id": str, "name": str, "kind": str, "ref": str, "path": str, "content_hash": str,
            "fuser": str, "fuse_hash": str, "details": str, "created_at": str, "created_by_run": str,
        },
        pk="id",
    )
    db["run_models"].create({"run_id": str, "model_id": str, "role": str, "position": int}, pk=("run_id", "model_id"))
    db["scores"].create(
        {
            "run_id": str, "model_id": str, "suite": str, "suite_version": str, "eval_key": str,
            "task": str, "metric": str, "value": float, "stderr": float, "n": int,
            "higher_is_better": int, "created_at": str,
        },
        pk=("run_id", "model_id", "suite", "task", "metric"),
    )
    db["samples"].create(
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
        db[table].add_foreign_key(fk_col, other, "id")
    db["scores"].create_index(["suite", "task", "metric"])
    db["runs"].create_index(["name"])


@migrations()
def m002_train_log(db: sqlite_utils.Database) -> None:
    """Per-step training curves of fusers that train (FuseLLM, FuseChat, ...): one row per (step, curve)."""
    db["train_log"].create({"run_id": str, "model_id": str, "step": int, "name": str, "value": float},
                           pk=("run_id", "model_id", "name", "step"))
    db["train_log"].add_foreign_key("run_id", "runs", "id")
    db["train_log"].add_foreign_key("model_id", "models", "id")


@migrations()
def m003_score_precision(db: sqlite_utils.Database) -> None:
    """What each score was computed in: ``dtype`` (float32, bfloat16 ...) and ``backend`` (hf-cpu, hf-cuda).
    Earlier rows keep NULL (they were float32 on the CPU: FuseBench had no other placement then)."""
    db["scores"].add_column("dtype", str)
    db["scores"].add_column("backend", str)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable, short and unique: ``20261124-093512-3fa9``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def plain(value: Any) -> Any:
    """numpy / torch scalars -> Python numbers (sqlite-utils stores others as BLOBs); NaN -> None."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    return value


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


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
        """WAL mode and the pending migrations, one process at a time (the lock file ``<db>.lock``): the others wait,
        then find nothing left to do. A lock held by a process that does not take that file lock (another tool, an
        older FuseBench) is retried with backoff."""
        lock = self.path.with_name(self.path.name + ".lock")
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
        with self._writing():
            self.db["runs"].insert(
                {
                    "id": run_id, "name": name, "kind": kind, "status": "running", "command": command,
                    "config": _json(config or {}), "started_at": now(),
                    "git_sha": provenance.get("git_sha"), "git_dirty": int(bool(provenance.get("git_dirty"))),
                    "versions": _json(provenance.get("versions", {})), "host": _json(provenance.get("host", {})),
                }
            )
        return run_id

    def update_run(self, run_id: str, **fields: Any) -> None:
        row = {k: (_json(v) if isinstance(v, (dict, list)) else plain(v)) for k, v in fields.items()}
        with self._writing():
            self.db["runs"].update(run_id, row)

    def finish_run(self, run_id: str, status: str, *, error: str | None = None,
                   timings: dict[str, float] | None = None) -> None:
        assert status in ("ok", "error")
        fields: dict[str, Any] = {"status": status, "error": error, "finished_at": now()}
        if timings is not None:
            fields["timings"] = {k: round(v, 3) for k, v in timings.items()}
        self.update_run(run_id, **fields)

    def get_run(self, run_id: str) -> dict[str, Any]:
        try:
            return self.db["runs"].get(run_id)
        except sqlite_utils.db.NotFoundError:
            raise BenchError(f"no run {run_id!r} in {self.path}", "see `bench runs` for run ids") from None

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.db["runs"].rows_where(order_by="started_at desc, id desc", limit=limit))

    # --- models ---------------------------------------------------------------------------------

    def add_model(self, model: dict[str, Any], run_id: str, role: str, position: int) -> None:
        """Record a model (idempotent by id) and its role in a run."""
        row = {k: (_json(v) if isinstance(v, (dict, list)) else v) for k, v in model.items()}
        row.setdefault("created_at", now())
        row.setdefault("created_by_run", run_id)
        with self._writing():
            self.db["models"].insert(row, pk="id", ignore=True)
            self.db["run_models"].insert(
                {"run_id": run_id, "model_id": model["id"], "role": role, "position": position},
                pk=("run_id", "model_id"), replace=True,
            )

    def add_train_log(self, run_id: str, model_id: str, curves: dict[str, list[float]]) -> None:
        """Store a fuser's per-step curves (``{"total": [...], "clm": [...], ...}``) in one transaction."""
        rows = [{"run_id": run_id, "model_id": model_id, "step": step, "name": name, "value": plain(value)}
                for name, values in curves.items() for step, value in enumerate(values)]
        if rows:
            with self._writing():
                self.db["train_log"].insert_all(rows, pk=("run_id", "model_id", "name", "step"), replace=True,
                                                batch_size=500)

    # --- scores and samples ---------------------------------------------------------------------

    def has_scores(self, run_id: str, model_id: str, suite: str) -> bool:
        return bool(self.db["scores"].count_where("run_id = ? and model_id = ? and suite = ?", [run_id, model_id, suite]))

    def add_eval(self, run_id: str, model_id: str, suite: str, suite_version: str, eval_key: str,
                 scores: Iterable[dict[str, Any]], samples: Iterable[dict[str, Any]],
                 precision: dict[str, str] | None = None) -> None:
        """All scores and samples of one (model, suite) evaluation, in one transaction. ``precision``:
        ``{"dtype", "backend"}`` the scores were computed in."""
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
        with self._writing():
            self.db["scores"].insert_all(score_rows, pk=("run_id", "model_id", "suite", "task", "metric"), replace=True)
            if sample_rows:
                self.db["samples"].insert_all(sample_rows, pk=("run_id", "model_id", "suite", "task", "doc_id"),
                                              replace=True, batch_size=200)

    def query(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    # --- reading only -----------------------------------------------------------------------------

    @classmethod
    def read_only(cls, path: str | Path) -> Store:
        """An existing DB opened for reading only, not migrated: for listing commands where the DB file or its
        folder cannot be written (a read-only mount, someone else's results). SQLite cannot create the WAL index
        in a folder it cannot write, so there the file is opened as immutable."""
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
        except sqlite3.Error as e:
            raise BenchError(f"cannot read results DB {path} (opened read-only): {e}",
                             "give a FuseBench DB path") from None
        return store
