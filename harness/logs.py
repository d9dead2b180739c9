"""Third-party chatter kept out of FuseBench's output: :func:`quiet` silences the INFO logging of lm-eval,
datasets, fsspec and filelock, and datasets' progress bars, inside a block.

Used around lm-eval calls (:mod:`harness.lmeval`) and around wrapping a model as lm-eval's ``HFLM``
(:func:`harness.model.as_lm`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# Loggers whose INFO chatter (task building, request counts, dataset generation) hides our own output.
_NOISY_LOGGERS = ("lm_eval", "lm-eval", "datasets", "fsspec", "filelock")


@contextlib.contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Silence lm-eval's and datasets' INFO logging (and datasets' progress bars) inside the block."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    bars_were_on = _datasets_progress_bars(enable=False)
    try:
        yield
    finally:
        for lg, old in zip(loggers, before, strict=True):
            lg.setLevel(old)
        if bars_were_on:
            _datasets_progress_bars(enable=True)


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
