"""Write to a scratch path, then rename into place: how every cache entry, artifact, zoo member and download reaches
its final path.

A reader finds either nothing or the whole thing at the final path, never a half-written one: the body works in a
scratch path next to it (the same filesystem, so the rename is atomic), which takes the final path when the body
succeeds and is removed when it fails (an exception, Ctrl-C). A process killed outright leaves its scratch behind,
under a name that starts with a dot (the runner removes its abandoned builds by that name).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(final: Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """An empty scratch folder ``.tmp-<final.name>-<pid>`` next to ``final`` for the body to fill; on success it takes
    the place of ``final`` (a folder already there is moved aside first, then removed), on failure it is removed.
    ``keep_existing``: a folder that is at ``final`` by then (another process finished the same one first, as good
    as this one) is kept, and the scratch removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
        if keep_existing:
            with contextlib.suppress(OSError):  # a folder with files at ``final``: theirs stays
                scratch.rename(final)
            return
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        if final.exists():
            final.rename(old)
        scratch.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """The path the body writes the file ``final`` to, of the same name in a fresh folder ``.<final.name>.<random>``
    next to it; on success the file replaces ``final``. The folder is removed either way."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.") as scratch:
        partial = Path(scratch) / final.name
        yield partial
        os.replace(partial, final)
