"""The lifecycle of a run row, in one place: opened (a new run) or claimed again (``--resume``), worked on in one
attempt with a heartbeat, and closed as ``ok``, ``error`` or ``interrupted`` with the attempt's timings.

``bench run``, ``eval`` and ``score`` do their work inside :func:`run_session`; the runner works on the
:class:`RunSession` it yields::

    with run_session(store, NewRun("eval", name, flags, build=lambda: build_eval_config(...))) as run:
        runner.run_eval(run, refs)

A new run's row is written first, with the flags as given, so that every later failure is recorded against it; a
configuration that fails validation closes it as ``error``. A resumed run is checked before it is claimed (kind,
not running elsewhere, a configuration that passed validation), so a refused ``--resume`` leaves the row as it
was. While the body works, a heartbeat thread stamps the row every ``HEARTBEAT_S`` seconds, so that a run whose
process was killed is told from a live one (:func:`harness.store.stale_reason`). Ctrl-C and SIGTERM (raised as
:class:`Terminated`) close it as ``interrupted``: resumable as it was.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import provenance
from harness.api import Timings
from harness.config import RunConfig, RunSpec, resolve
from harness.errors import BenchError
from harness.store import HEARTBEAT_S, Store, beat, refuse_if_running


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers, CI and `kill` send), raised where the process is, so that it stops like Ctrl-C: the
    run row is closed as interrupted and scratch space is cleaned up."""


@dataclass(frozen=True)
class NewRun:
    """A run to open: `bench KIND` with the flags as given (``raw``, recorded before anything is checked), and how
    to make its spec from them. ``columns``: more of the row to record with the spec (a seed group's ``group_id``,
    the models a `bench eval` run evaluates)."""

    kind: str
    name: str | None
    raw: dict[str, Any]
    build: Callable[[], RunSpec]
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resume:
    """A run to continue (``--resume``): run ``run_id``, which must be a `bench KIND` run."""

    kind: str
    run_id: str


@dataclass
class RunSession:
    """The run this process works on: its row, its spec, and this attempt's timings (per stage)."""

    store: Store
    id: str
    spec: RunSpec
    timings: Timings
    resumed: bool = False

    def record(self, spec: RunSpec, **columns: Any) -> None:
        """Make ``spec`` what this run executes, in its row too (name and config, and ``columns``)."""
        self.spec = spec
        self.store.update_run(self.id, name=spec.name, config=spec.model_dump(mode="json"), **columns)


@contextlib.contextmanager
def run_session(store: Store, opening: NewRun | Resume,
                on_open: Callable[[str], None] = lambda run_id: None) -> Iterator[RunSession]:
    """The run that ``opening`` opens or resumes, for the body to work on; its row is closed when the body ends.
    ``on_open(run_id)`` is called as soon as the row is this process's (for messages about it)."""
    if isinstance(opening, Resume):
        config = _claim(store, opening)
        on_open(opening.run_id)
        timings = Timings()
        with _attempt(store, opening.run_id, timings):
            yield RunSession(store, opening.run_id, resolve(config), timings, resumed=True)
        return
    run_id = store.start_run(kind=opening.kind, name=opening.name, command=command_line(),
                             provenance=provenance.collect(), config=opening.raw)
    on_open(run_id)
    try:
        spec = opening.build()
    except BaseException as e:
        store.finish_run(run_id, closing_status(e), error=e.one_line() if isinstance(e, BenchError) else repr(e))
        raise
    run = RunSession(store, run_id, spec, Timings())
    run.record(spec, **opening.columns)
    with _attempt(store, run_id, run.timings):
        yield run


def command_line() -> str:
    return " ".join(["bench", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("bench") else " ".join(sys.argv)


def closing_status(e: BaseException) -> str:
    """How a run that stopped on ``e`` is closed: ``interrupted`` (Ctrl-C, SIGTERM: resumable as it was) or
    ``error``."""
    return "interrupted" if isinstance(e, KeyboardInterrupt) else "error"


@contextlib.contextmanager
def _attempt(store: Store, run_id: str, timings: Timings) -> Iterator[None]:
    """The body is one attempt at run ``run_id``: with a heartbeat while it works, then the row closed as ok, error
    or interrupted, with this attempt's timings (added to earlier attempts' when the run was resumed)."""
    try:
        with Heartbeat(store.path, run_id, every=HEARTBEAT_S):
            yield
    except BaseException as e:
        store.finish_run(run_id, closing_status(e), error=_error_text(e), timings=timings)
        raise
    store.finish_run(run_id, "ok", timings=timings)


def _error_text(e: BaseException) -> str:
    if isinstance(e, BenchError):
        return e.one_line()
    if isinstance(e, Terminated):
        return "interrupted (SIGTERM)"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return "".join(traceback.format_exception(e))[-4000:]


def _claim(store: Store, resume: Resume) -> RunConfig:
    """The config of run ``resume.run_id``, claimed for another attempt in this process once everything that could
    refuse it has been checked."""
    row = store.get_run(resume.run_id)
    if row["kind"] != resume.kind:
        fix = (f"resume it with `bench {row['kind']} --resume {resume.run_id}`" if row["kind"] in ("run", "eval")
               else "only `bench run` and `bench eval` runs resume; score the file again")
        raise BenchError(f"run {resume.run_id} is a `bench {row['kind']}` run, not `bench {resume.kind}`", fix)
    refuse_if_running(row)
    config = _resumable_config(row)
    if resume.kind == "eval" and not json.loads(row["sources"] or "[]"):
        raise BenchError(f"run {resume.run_id} recorded no models to evaluate", f"start it again: {row['command']}")
    store.resume_run(resume.run_id)
    return config


def _resumable_config(row: dict[str, Any]) -> RunConfig:
    """The validated config of run ``row``. A run whose flags never passed validation recorded only those raw
    flags: there is nothing to continue, only a command line to correct."""
    from pydantic import ValidationError

    try:
        return RunConfig(**json.loads(row["config"] or "{}"))
    except (ValidationError, ValueError, TypeError):
        if row["status"] != "error":  # interrupted or killed while its flags were being checked
            raise BenchError(f"run {row['id']} cannot be resumed: it stopped before its configuration was checked",
                             f"start it again: {row['command']}") from None
        why = f" ({row['error'].split(' (fix: ')[0]})" if row.get("error") else ""
        raise BenchError(f"run {row['id']} cannot be resumed: its configuration never passed validation{why}",
                         f"correct the flags and start a new `bench {row['kind']}`") from None


class Heartbeat:
    """A daemon thread that stamps the run row's ``heartbeat_at`` every ``every`` seconds while the run works (on a
    connection of its own). A beat that cannot be written (the DB busy for minutes) is skipped; the next one follows."""

    def __init__(self, db_path: Path, run_id: str, every: float):
        self.db_path, self.run_id, self.every = db_path, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(sqlite3.Error):
                beat(self.db_path, self.run_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
