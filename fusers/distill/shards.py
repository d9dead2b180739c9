"""Compact storage of per-chunk rows: memory-mapped ``.npy`` shards under a content key.

A shard appears by an atomic rename once complete, so an interrupted run resumes at the first missing one
and readers never see half a shard (:class:`ShardedStore`); :class:`RowView` reads one field across shards
as a single row axis. The teacher stores (:mod:`fusers.distill.teachers`) and the aligned stores
(:mod:`fusers.distill.aligned`) are both kept this way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import atomic_dir, atomic_file

STORE_VERSION = "1"  # bump when what a store holds changes


def store_key(*parts: Any) -> str:
    """A content key from JSON-able parts (model hashes, corpus fingerprint, options)."""
    blob = json.dumps([STORE_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class ShardedStore:
    """Per-item rows of several arrays, written shard by shard and read back memory-mapped.

    Layout: ``root/meta.json`` and ``root/shard-NNNNN/{field}.npy``. Shard s holds items
    ``[s·shard_size, (s+1)·shard_size)``: its *row* arrays are those items' rows concatenated along the first
    axis (``_counts.npy`` says how many rows each item has), its *sum* arrays one value per item. A shard is
    written to a temporary directory and renamed into place only when complete, so an interrupted run
    resumes at the first missing shard and readers never see half a shard.

    The directory name is the content key (:func:`store_key`); ``layout`` (what the arrays hold) is checked
    against ``meta.json`` and a mismatch starts the store over; ``about`` is description only (which model
    spec produced it), so another spelling of the same model reuses the store.
    """

    def __init__(self, root: Path, n_items: int, shard_size: int, layout: dict[str, Any],
                 about: dict[str, Any] | None = None):
        self.root = Path(root)
        self.n_items = int(n_items)
        self.shard_size = int(shard_size)
        self.layout = json.loads(json.dumps({**layout, "n_items": self.n_items, "shard_size": self.shard_size,
                                             "version": STORE_VERSION}))
        meta_file = self.root / "meta.json"
        if meta_file.is_file() and json.loads(meta_file.read_text()).get("layout") != self.layout:
            shutil.rmtree(self.root)  # same key, other layout: start over
        self.root.mkdir(parents=True, exist_ok=True)
        if not meta_file.is_file():
            with atomic_file(meta_file) as partial:
                partial.write_text(json.dumps({"layout": self.layout, "about": about or {}}, indent=1, sort_keys=True))
        self._cache: dict[str, Any] = {}

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_size)

    def shard_items(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_items))

    def _dir(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}"

    def missing(self) -> list[int]:
        return [s for s in range(self.n_shards) if not self._dir(s).is_dir()]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def write(self, shard: int, items: Sequence[Any], row_fields: Sequence[str], sum_fields: Sequence[str]) -> None:
        """Write shard ``shard`` from one dataclass instance per item (rows concatenated, sums collected)."""
        if len(items) != len(self.shard_items(shard)):
            raise ValueError(f"shard {shard} needs {len(self.shard_items(shard))} items, got {len(items)}")
        # another process may finish the same shard first: theirs is as good
        with atomic_dir(self._dir(shard), keep_existing=True) as tmp:
            counts = np.array([len(getattr(it, row_fields[0])) for it in items], dtype=np.int64)
            np.save(tmp / "_counts.npy", counts)
            for name in row_fields:
                np.save(tmp / f"{name}.npy", np.concatenate([getattr(it, name) for it in items]))
            for name in sum_fields:
                np.save(tmp / f"{name}.npy", np.array([getattr(it, name) for it in items]))
        self._cache.clear()

    def _load(self, shard: int, name: str) -> np.ndarray:
        key = f"{shard}/{name}"
        if key not in self._cache:
            self._cache[key] = np.load(self._dir(shard) / f"{name}.npy", mmap_mode="r")
        return self._cache[key]

    def rows(self, name: str) -> RowView:
        """Field ``name`` over all items, one row axis across shards (memory-mapped, sliced lazily)."""
        if not self.complete:
            raise RuntimeError(f"store {self.root} is incomplete: shards {self.missing()[:5]} are missing")
        return RowView([self._load(s, name) for s in range(self.n_shards)])

    def sums(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(self._load(s, name)) for s in range(self.n_shards)])

    def item_offsets(self) -> np.ndarray:
        """int64 [n_items+1]: item i's rows are ``[off[i], off[i+1])`` of :meth:`rows`."""
        counts = self.sums("_counts")
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        """Bytes on disk of the given fields (default: all files)."""
        wanted = None if names is None else {f"{n}.npy" for n in names}
        return sum(p.stat().st_size for p in self.root.glob("shard-*/*.npy") if wanted is None or p.name in wanted)


class RowView:
    """Rows of one field across shards; ``view[a:b]`` reads only the shards it touches."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, step = sl.indices(len(self))
        if step != 1:
            raise ValueError("RowView supports contiguous slices only")
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        s = first
        while s < len(self.parts) and self.starts[s] < stop:
            a = max(start, self.starts[s]) - self.starts[s]
            b = min(stop, self.starts[s + 1]) - self.starts[s]
            pieces.append(np.asarray(self.parts[s][a:b]))
            s += 1
        if not pieces:
            return np.asarray(self.parts[0][0:0]) if self.parts else np.zeros(0)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def shard_progress(items: Sequence[int], label: str) -> Iterable[int]:
    """``items`` with a rich progress bar on stderr (shards of a store being computed)."""
    import sys

    from rich.console import Console
    from rich.progress import track

    return track(items, description=label, console=Console(file=sys.stderr), transient=False)
