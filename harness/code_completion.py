"""Where a model's completion of a Python function ends: the Codex paper's stop sequences, and the cut there.

Shared by the HumanEval suites (generation stops at these sequences, and each output is cut at the
first one in case the ``LM`` did not stop) and ProFuser's ``code`` reward (a HumanEval-style completion
is cut the same way before it runs in :mod:`harness.sandbox`).
"""

from __future__ import annotations

from collections.abc import Sequence

#: Where a completion stops: the next top-level statement (Codex paper, and lm-eval's humaneval task).
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """Cut at the first stop sequence. HFLM already does; a custom ``LM`` may not."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]
