"""The result of a sequence alignment: for every base position, the source positions aligned to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Alignment:
    """For every base position ``i``, the sorted source positions aligned to it (CSR layout).

    ``indices[indptr[i]:indptr[i+1]]`` are the source positions of base position ``i``; every base
    position has at least one. ``len(self)`` is the number of base positions.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_source: int
    mode: str = "manual"

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    @property
    def base_to_src(self) -> list[np.ndarray]:
        return [self[i] for i in range(len(self))]

    def to_lists(self) -> list[list[int]]:
        """The reference's ``base_to_blending`` structure (list of sorted lists)."""
        return [self[i].tolist() for i in range(len(self))]

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(base_positions, source_positions)`` of all aligned pairs, base-major."""
        return np.repeat(np.arange(len(self)), self.counts()), self.indices

    @classmethod
    def from_pairs(cls, base: np.ndarray, source: np.ndarray, n_base: int, n_source: int,
                   mode: str = "manual") -> Alignment:
        """Build from aligned pairs (duplicates are merged); every base position must appear."""
        base = np.asarray(base, dtype=np.int64)
        source = np.asarray(source, dtype=np.int64)
        keys = base * max(n_source, 1) + source
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():  # already sorted and distinct: a path, in order
            keys = np.unique(keys)
        b, s = np.divmod(keys, max(n_source, 1))
        counts = np.bincount(b, minlength=n_base)
        if n_base and counts.min() == 0:
            raise ValueError(f"base position {int(np.argmin(counts))} has no aligned source position")
        indptr = np.zeros(n_base + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, s.astype(np.int64), n_source, mode)

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]], n_source: int, mode: str = "manual") -> Alignment:
        base = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
        source = np.fromiter((j for x in lists for j in x), dtype=np.int64, count=int(sum(len(x) for x in lists)))
        return cls.from_pairs(base, source, len(lists), n_source, mode)

    def is_monotone(self) -> bool:
        """No crossing: every source position of base ``i`` is ≤ every source position of base ``i+1``."""
        if len(self) < 2:
            return True
        first = self.indices[self.indptr[:-1]]
        last = self.indices[self.indptr[1:] - 1]
        return bool(np.all(last[:-1] <= first[1:]))

    def covers_source(self) -> bool:
        return bool(np.all(np.bincount(self.indices, minlength=self.n_source) > 0))

    def cases(self) -> np.ndarray:
        """Per base position: 0 = one-to-one, 1 = many-to-one (shares its single source token with another
        base position), 2 = one-to-many (several source tokens)."""
        counts = self.counts()
        first = self.indices[self.indptr[:-1]]
        single = counts == 1
        shared = np.bincount(first[single], minlength=self.n_source)[first] > 1
        return np.where(counts > 1, 2, np.where(single & shared, 1, 0)).astype(np.int8)
