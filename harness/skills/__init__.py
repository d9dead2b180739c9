"""Skills the embedded zoo's experts learn, in the suites' own formats, from items no suite ever scores.

Every generated item -- a ``bbh-mini`` question (:mod:`harness.skills.bbh_items`) or a ``humaneval-mini``
problem (:mod:`harness.skills.functions`) -- falls on one side of a fixed split decided by a hash of its task
and text (:func:`split_of`): the suites draw their test items and few-shot exemplars from the ``eval`` side
only, the zoo trains on the ``train`` side only. The split is a property of the item, not of a seed, so no choice of ``data_seed`` and no number of
training items can make the two meet (``tests/test_skills.py`` checks it over every task).
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "eval"]
SPLITS: tuple[Split, ...] = ("train", "eval")


def split_of(task: str, text: str) -> Split:
    """The side of the train/eval split that the item of ``task`` whose text is ``text`` lies on (half each)."""
    digest = hashlib.sha256(f"{task}\0{text}".encode()).digest()
    return "train" if digest[0] & 1 else "eval"
