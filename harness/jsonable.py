"""Plain Python values (None, bool, int, float, str, lists, dicts) from numpy, torch and lm-eval ones: what JSON
files and the results DB can hold. The one converter of such values, for the eval cache, lm-eval's results and the
store."""

from __future__ import annotations

import contextlib
from typing import Any


def to_plain(obj: Any) -> Any:
    """Recursively turn lm-eval / numpy / torch values into JSON-able Python values (also a ``json.dumps`` default).

    Needed because e.g. ``np.float32`` is silently stored as a BLOB by sqlite and ``torch.dtype``
    breaks ``json.dumps``.
    """
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, str):  # np.str_
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):  # np.float64 subclasses float
        return float(obj)
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (str, int)) else k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy / torch scalars
        with contextlib.suppress(TypeError, ValueError):
            return obj.item()
    if hasattr(obj, "tolist"):  # numpy arrays / tensors
        return to_plain(obj.tolist())
    return str(obj)
