"""The ``reference_compat`` switches: which of the reference implementations' quirks (spec §11) to reproduce.

Every quirk has an id ``q1`` .. ``q13``; FuseBench's default is the corrected behaviour, and a fuser's
``reference_compat`` (an id, a set of them, or ``"all"``) restores the reference's. The alignment
functions take that value as it is and normalise it with :func:`compat_set`.
"""

from __future__ import annotations

from collections.abc import Iterable

QUIRKS: frozenset[str] = frozenset(f"q{i}" for i in range(1, 14))


def compat_set(reference_compat: str | Iterable[str] | None) -> frozenset[str]:
    """Normalise a ``reference_compat`` value (``None``, ``"q1"``, ``{"q1", "q5"}``, ``"all"``) to a set.

    Unknown ids fail loudly: a typo such as ``"Q1 "`` silently running the corrected behaviour would
    make a reproduction run quietly wrong.
    """
    if reference_compat is None:
        return frozenset()
    items = {reference_compat} if isinstance(reference_compat, str) else set(reference_compat)
    if "all" in items:
        return QUIRKS
    unknown = items - QUIRKS
    if unknown:
        raise ValueError(f"unknown reference_compat quirk(s) {sorted(unknown)}; expected ids q1..q13 or 'all'")
    return frozenset(items)
