"""Compact storage of per-chunk rows: memory-mapped ``.npy`` shards under a content key.

A shard appears by an atomic rename once complete, so an interrupted run resumes at the missing ones and
readers never see half a shard (:class:`ShardedStore`); :class:`RowView` reads one field across shards as a
single row axis. The teacher stores (:mod:`fusers.distill.teachers`) and the aligned stores
(:mod:`fusers.distill.aligned`) are both kept this way.

Several processes (``accelerate launch``) and several independent jobs (`bench teachers --shard I/N` on
machines sharing ``$BENCH_HOME``) split a store's shards between them by shard number (:class:`ShardSplit`);
the store itself, ``meta.json`` plus its shard folders, is the merged index, and a reader checks that every
shard is there and holds the items it should.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.atomic import atomic_dir, atomic_file

if TYPE_CHECKING:
    from harness.api import PreparedStore

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
        self.written: list[int] = []

    @classmethod
    def existing(cls, root: Path, n_items: int, shard_size: int, layout: dict[str, Any]) -> ShardedStore | None:
        """The store at ``root`` if one with this layout is there (any of its shards may still be missing), else
        None; unlike the constructor, it neither creates a store nor starts one of another layout over (a reader
        that can also do without the store, e.g. the fused store's builder, leaves it as it found it)."""
        meta_file = Path(root) / "meta.json"
        if not meta_file.is_file():
            return None
        wanted = {**layout, "n_items": int(n_items), "shard_size": int(shard_size), "version": STORE_VERSION}
        if json.loads(meta_file.read_text()).get("layout") != json.loads(json.dumps(wanted)):
            return None
        return cls(root, n_items, shard_size, layout)

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_size)

    def shard_items(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_items))

    def _dir(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}"

    def missing(self) -> list[int]:
        return [s for s in range(self.n_shards) if not self.has(s)]

    def has(self, shard: int) -> bool:
        """Whether shard ``shard`` is on disk (a shard folder only ever appears complete)."""
        return self._dir(shard).is_dir()

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
        self.written.append(shard)

    def _load(self, shard: int, name: str) -> np.ndarray:
        key = f"{shard}/{name}"
        if key not in self._cache:
            self._cache[key] = np.load(self._dir(shard) / f"{name}.npy", mmap_mode="r")
        return self._cache[key]

    def shard_rows(self, shard: int, name: str) -> np.ndarray:
        """Row field ``name`` of one shard (memory-mapped): its items' rows, checked to be as many as its
        ``_counts`` say."""
        counts = self.shard_sums(shard, "_counts")
        return self._checked(shard, name, int(counts.sum()), "rows")

    def shard_sums(self, shard: int, name: str) -> np.ndarray:
        """Sum field ``name`` of one shard (memory-mapped): one value per item, checked to be as many as the
        shard has items."""
        return self._checked(shard, name, len(self.shard_items(shard)), "items")

    def _checked(self, shard: int, name: str, expected: int, unit: str) -> np.ndarray:
        """Field ``name`` of a shard that is there and holds ``expected`` entries; else a RuntimeError that names
        the fix (a shard written for another corpus, or copied in by hand, is not silently read)."""
        if not self.has(shard):
            raise RuntimeError(f"store {self.root} is incomplete: shard {shard} of {self.n_shards} is missing; "
                               f"run the stage again (it computes only the missing shards)")
        field = self._load(shard, name)
        if len(field) != expected:
            raise RuntimeError(f"store {self.root}: shard {shard} holds {len(field)} entries of {name}, expected "
                               f"{expected} ({unit}); delete {self._dir(shard)} and run again")
        return field

    def rows(self, name: str) -> RowView:
        """Row field ``name`` over all items, one row axis across shards (memory-mapped, sliced lazily)."""
        self._check_complete()
        return RowView([self.shard_rows(s, name) for s in range(self.n_shards)])

    def sums(self, name: str) -> np.ndarray:
        """Sum field ``name``: one value per item, across shards."""
        self._check_complete()
        return np.concatenate([np.asarray(self.shard_sums(s, name)) for s in range(self.n_shards)])

    def _check_complete(self) -> None:
        missing = self.missing()
        if missing:
            raise RuntimeError(f"store {self.root} is incomplete: {len(missing)} of {self.n_shards} shards are "
                               f"missing (first {missing[:5]}); run the stage again (it computes only those)")

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


@dataclass(frozen=True)
class ShardSplit:
    """Which shards of a store this process computes when several share the work.

    ``jobs`` independent jobs (`bench teachers --shard I/N` on N machines or a SLURM array sharing
    ``$BENCH_HOME``, with no process group between them) each take the shards ``s % jobs == job``; inside a
    job, its ``processes`` (``accelerate launch``, one process group) take every ``processes``-th of those,
    ``s // jobs % processes == process``. Both follow from the shard number alone, so each process finds its
    own shards whatever is on disk already, and together they cover every shard exactly once.
    """

    job: int = 0
    jobs: int = 1
    process: int = 0
    processes: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.job < self.jobs and 0 <= self.process < self.processes):
            raise ValueError(f"no such share of the shards: job {self.job} of {self.jobs}, "
                             f"process {self.process} of {self.processes}")

    @classmethod
    def of_processes(cls, job: int = 0, jobs: int = 1) -> ShardSplit:
        """This process's share among the processes of its launch (accelerate's ``PartialState``), in job ``job`` of
        ``jobs``. A process that was not launched as one of several (no accelerate state yet, no world size in
        its environment) is the only one, and no accelerate state is made for it."""
        from accelerate import PartialState
        from accelerate.utils import get_int_from_env

        from harness.model import current_placement

        world = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
        if not PartialState._shared_state and world <= 1:
            return cls(job, jobs)
        # the same cpu flag as the Accelerator a fuser makes later (accelerate refuses to change it once set)
        state = PartialState(cpu=current_placement().kind != "cuda")
        return cls(job, jobs, state.process_index, state.num_processes)

    def owns(self, shard: int) -> bool:
        """Whether this process computes shard ``shard``."""
        return self.in_job(shard) and shard // self.jobs % self.processes == self.process

    def in_job(self, shard: int) -> bool:
        """Whether shard ``shard`` is this job's (one of its processes computes it)."""
        return shard % self.jobs == self.job

    def wait(self) -> None:
        """Wait until every process of this job has got here (nothing to wait for with one process)."""
        if self.processes > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def total(self, count: int) -> int:
        """``count`` summed over this job's processes (each passes its own)."""
        if self.processes == 1:
            return count
        from accelerate.utils import gather_object

        return int(sum(gather_object([count])))


def fill_shards(store: ShardedStore, split: ShardSplit, compute: Callable[[list[int]], None]) -> None:
    """Write the missing shards of ``store`` that are this process's (``compute(shards)`` writes them), wait for
    the job's other processes, then write any shard of the job's that is still missing (so every process leaves
    with the job's part complete, even when a caller ran the processes one after another). With one job the
    store is then complete; with several it holds at least this job's shards."""
    mine = [s for s in store.missing() if split.owns(s)]
    if mine:
        compute(mine)
    split.wait()
    left = [s for s in store.missing() if split.in_job(s)]
    if left:
        compute(left)


def prepared_store(kind: str, model: str, store: ShardedStore, seconds: float, split: ShardSplit) -> PreparedStore:
    """What `bench teachers` reports of one store (:class:`harness.api.PreparedStore`); the shards written are
    summed over the job's processes, so every process of a launch must call this for the same stores."""
    from harness.api import PreparedStore

    return PreparedStore(kind=kind, model=model, key=store.root.name, path=store.root, shards=store.n_shards,
                         shards_present=store.n_shards - len(store.missing()),
                         shards_written=split.total(len(store.written)), bytes=store.nbytes(),
                         seconds=round(seconds, 2))


def shard_progress(items: Sequence[int], label: str, show: bool = True) -> Iterable[int]:
    """``items`` with a rich progress bar on stderr (shards of a store being computed); ``show=False``: none
    (the other processes of a launch, whose bars would interleave with the first one's)."""
    import sys

    from rich.console import Console
    from rich.progress import track

    if not show:
        return items
    return track(items, description=label, console=Console(file=sys.stderr), transient=False)
