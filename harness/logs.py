"""Third-party chatter kept out of FuseBench's output.

Two layers:

* :func:`quiet` silences the INFO logging of lm-eval, datasets, fsspec and filelock, and datasets' progress bars,
  inside a block (used around lm-eval calls, :mod:`harness.lmeval`, and around wrapping a model as lm-eval's
  ``HFLM``, :func:`harness.model.as_lm`).
* :func:`run_log` sends, for a whole run, what the libraries write (their loggers' warnings, Python warnings, and,
  inside :func:`library_output` (and so :func:`quiet`), whatever they print to stderr: lm-eval's progress bars,
  ``Running generate_until requests``) to the run's log file instead of the console, so that the console holds FuseBench's own lines and
  progress displays only. `bench run` / `eval` / `score` / `teachers` open it (``$BENCH_HOME/logs/<run>.log``, its
  path printed once) unless ``--verbose``; processes started by ``accelerate launch`` append to the same file
  (``BENCH_RUN_LOG`` in their environment).

FuseBench's own console (:data:`console`) writes to the stderr that was in place before any redirection, so its
lines and progress displays stay on the terminal while a library's output goes to the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

# Loggers whose INFO chatter (task building, request counts, dataset generation) hides our own output.
_NOISY_LOGGERS = ("lm_eval", "lm-eval", "datasets", "fsspec", "filelock")
# Libraries whose every log record goes to the run's log file during a run (not to the console).
_LIBRARY_LOGGERS = (*_NOISY_LOGGERS, "transformers", "accelerate", "torch", "mergekit", "huggingface_hub", "urllib3",
                    "numba", "py.warnings", "sqlite_utils")
#: The environment variable that hands a run's log file to the processes ``accelerate launch`` starts.
RUN_LOG_ENV = "BENCH_RUN_LOG"

_run_log: Any = None  # the log file (a _LogFile) of the current run, when there is one
_our_stderr: list[TextIO] = []  # the stderr FuseBench writes to while quiet() sends sys.stderr to the log


class _OurStderr:
    """A stream for FuseBench's own console: the stderr in place before :func:`quiet` redirected it, else the
    current ``sys.stderr`` (which a test's capture may have replaced)."""

    def _target(self) -> TextIO:
        return _our_stderr[-1] if _our_stderr else sys.stderr

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._target(), "encoding", "utf-8")


class _Console(Console):
    """rich's console with ``log`` as one line per message, ``[HH:MM:SS] message``, never cut into a table's cells:
    the terminal (or whoever reads the log) wraps it."""

    def log(self, *objects: Any, **kwargs: Any) -> None:
        self.print(time.strftime("[%H:%M:%S]"), *objects, soft_wrap=True, highlight=False)


#: FuseBench's own console: status lines and progress displays, on stderr (stdout holds the leaderboard).
console = _Console(file=_OurStderr(), soft_wrap=True)  # type: ignore[arg-type]


@contextlib.contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Silence lm-eval's and datasets' INFO logging (and datasets' progress bars) inside the block; during a run with
    a log file, everything the libraries print to stderr in the block goes to that file."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    bars_were_on = _datasets_progress_bars(enable=False)
    try:
        with library_output():
            yield
    finally:
        for lg, old in zip(loggers, before, strict=True):
            lg.setLevel(old)
        if bars_were_on:
            _datasets_progress_bars(enable=True)


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """During a run with a log file, what is printed to stderr inside the block (the libraries' progress bars and
    messages) goes to that file; FuseBench's :data:`console` keeps writing to the terminal."""
    if _run_log is None:
        yield
        return
    log = _run_log
    _our_stderr.append(_our_stderr[-1] if _our_stderr else sys.stderr)  # nested: still the terminal's, not the log
    try:
        with contextlib.redirect_stderr(log):
            yield
    finally:
        _our_stderr.pop()
        log.flush()


class _LogFile:
    """The run's log file, opened at its first write, which also calls ``on_first_write`` (to say where it is): a
    run whose libraries print nothing leaves no file, and an error before they do stays one line."""

    def __init__(self, path: Path, on_first_write: Callable[[Path], None] | None) -> None:
        self.path, self.on_first_write = path, on_first_write
        self._file: TextIO | None = None

    def write(self, text: str) -> int:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
            if self.on_first_write is not None:
                self.on_first_write(self.path)
        return self._file.write(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@contextlib.contextmanager
def run_log(path: Path | str | None, on_first_write: Callable[[Path], None] | None = None) -> Iterator[Path | None]:
    """Send the libraries' logging, Python warnings and (inside :func:`library_output`) their stderr to the file
    ``path`` (appended to, created at the first write, when ``on_first_write(path)`` is called) for the block;
    ``None``: leave everything on the console (``--verbose``)."""
    global _run_log
    if path is None or _run_log is not None:  # verbose, or already inside a run's log (a nested call)
        yield None if path is None else Path(path)
        return
    path = Path(path)
    stream = _LogFile(path, on_first_write)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    bars = _hf_progress_bars(enable=False)  # first: it sets up transformers' own handler, which is then swapped
    saved = []
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    logging.captureWarnings(True)
    previous_env = os.environ.get(RUN_LOG_ENV)
    os.environ[RUN_LOG_ENV] = str(path)
    _run_log = stream
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each distinct warning once, into the log
            yield path
    finally:
        _run_log = None
        if previous_env is None:
            os.environ.pop(RUN_LOG_ENV, None)
        else:
            os.environ[RUN_LOG_ENV] = previous_env
        _hf_progress_bars(enable=bars)
        logging.captureWarnings(False)
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        stream.close()


def inherited_run_log() -> contextlib.AbstractContextManager[Path | None]:
    """:func:`run_log` on the file the launching run named (``BENCH_RUN_LOG``), in a process ``accelerate launch``
    started; nothing to do when it named none."""
    return run_log(os.environ.get(RUN_LOG_ENV) or None)


def _datasets_progress_bars(enable: bool) -> bool:
    """Switch datasets' progress bars; return whether they were on before."""
    try:
        from datasets.utils import logging as ds_logging
    except ImportError:  # pragma: no cover - datasets comes with lm-eval
        return False
    was_on = ds_logging.is_progress_bar_enabled()
    if enable:
        ds_logging.enable_progress_bar()
    else:
        ds_logging.disable_progress_bar()
    return was_on


def _hf_progress_bars(enable: bool) -> bool:
    """Switch transformers' progress bars (loading checkpoint shards); return whether they were on before."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:  # pragma: no cover - a dependency
        return False
    tf_logging.get_logger("transformers")  # its handler exists from here on
    was_on: Any = tf_logging.is_progress_bar_enabled()
    if enable:
        tf_logging.enable_progress_bar()
    else:
        tf_logging.disable_progress_bar()
    return bool(was_on)
