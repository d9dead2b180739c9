"""Benchmark fusers/align/ms_*.py: memory of the sparse co-alignment counts, and the MS vocabulary map.

Run: ``.venv/bin/python benchmarks/bench_ms_counts.py`` (about a minute on 2 idle cores; ``--quick``: a few
seconds, smaller corpora).

FuseChat's reference keeps the stage-1 co-alignment counts (spec ``fusion-algorithms.md`` §2.3) as a dense
float64 ``|V_pivot| × |V_source|`` matrix. For a 32,000-token pivot and a 150,000-token source that is
38.4 GB, before any text is read. :class:`fusers.align.CoAlignmentCounts` stores only the observed pairs.

(a) **Counts.** Synthetic aligned pairs for a 32,000 (pivot) × 150,000 (source) vocabulary pair, fed in
    batches of 1M (about 500 chunks of 2,048 tokens each): source ids Zipf-distributed (exponent 1.1, ranks
    shuffled over the ids), the pivot id of a pair the source id's fixed "home" pivot token with probability
    0.7, else a Zipf-distributed pivot token (spaces, punctuation and other frequent co-alignments). Printed
    per corpus size: distinct pairs, the store's bytes, what the dense float64 matrix would take and the
    ratio, bytes per distinct pair (constant: 16, an int64 key and an int64 count), time, and the process's
    peak RSS (``resource.getrusage``, cumulative over the run). The baseline measured in the same run is a
    plain ``dict`` keyed by ``(pivot, source)`` tuples (the obvious sparse structure in Python), timed and
    sized with ``tracemalloc`` on a sample; the dense matrix cannot be allocated here, so its size is
    computed.
(b) **Vocabulary map** (:func:`fusers.align.ms_vocab_map`) over the largest store, both weightings, with
    synthetic pieces (a fifth of the source pieces are exact twins of a pivot piece after swapping 'Ġ' for
    '▁'). The baseline is the reference's per-source loop (its ``dist_fn`` and argmin over the candidates)
    timed on a sample of source ids and extrapolated; the sampled ids must map identically.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusers.align import CoAlignmentCounts, TokenizerSpec, ms_vocab_map

N_PIVOT, N_SOURCE = 32_000, 150_000
BATCH = 1_000_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def zipf_sampler(n: int, a: float, rng: np.random.Generator):
    """Draws ids whose frequency rank follows ``1/r^a`` (ranks shuffled over ids), by inverse CDF."""
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -a)
    cdf /= cdf[-1]
    ids = rng.permutation(n)
    return lambda size: ids[np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)]


def pair_batches(n_pairs: int, seed: int):
    rng = np.random.default_rng(seed)
    source = zipf_sampler(N_SOURCE, 1.1, rng)
    pivot = zipf_sampler(N_PIVOT, 1.1, rng)
    home = rng.integers(0, N_PIVOT, size=N_SOURCE)
    done = 0
    while done < n_pairs:
        size = min(BATCH, n_pairs - done)
        s = source(size)
        p = np.where(rng.random(size) < 0.7, home[s], pivot(size))
        done += size
        yield p, s


def count(n_pairs: int, seed: int) -> tuple[CoAlignmentCounts, float]:
    """The store of ``n_pairs`` synthetic pairs and the seconds spent in it (generating the pairs excluded)."""
    seconds = 0.0
    counts = CoAlignmentCounts(N_PIVOT, N_SOURCE)
    for p, s in pair_batches(n_pairs, seed):
        start = time.perf_counter()
        counts.add_pairs(p, s)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    counts.compact()
    return counts, seconds + time.perf_counter() - start


def dict_baseline(n_pairs: int, seed: int) -> tuple[float, float, int]:
    """(seconds per pair, bytes per distinct pair, distinct pairs) of a dict of tuple keys: timed without
    tracemalloc (it slows allocation several-fold), then built again under it for the bytes."""
    batches = list(pair_batches(n_pairs, seed))

    def build() -> dict[tuple[int, int], int]:
        table: dict[tuple[int, int], int] = {}
        get = table.get
        for p, s in batches:
            for key in zip(p.tolist(), s.tolist(), strict=True):
                table[key] = get(key, 0) + 1
        return table

    start = time.perf_counter()
    n_distinct = len(build())
    seconds = time.perf_counter() - start
    tracemalloc.start()
    table = build()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del table
    return seconds / n_pairs, held / n_distinct, n_distinct


# ---------------------------------------------------------------------------------------------- the map


class Vocab:
    """The tokenizer surface ms_vocab_map reads."""

    def __init__(self, pieces: list[str], unk: int | None = None):
        self._vocab = {p: i for i, p in enumerate(pieces)}
        self.unk_token_id, self.eos_token_id, self.bos_token_id = unk, None, None

    def get_vocab(self) -> dict[str, int]:
        return self._vocab


def synthetic_pieces(rnd: random.Random, n: int, marker: str, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        body = "".join(rnd.choice("etaoinshrdlcumwfgypb") for _ in range(rnd.randint(1, 8)))
        piece = marker + body if rnd.random() < 0.6 else body
        if piece not in taken:
            taken.add(piece)
            out.append(piece)
    return out


def reference_loop(counts: CoAlignmentCounts, sources: list[int], src: list[str], piv: list[str],
                   weighting: str) -> list[int]:
    """The reference's per-source loop over candidates: its dist_fn, then argmin (or, for 'frequency', the
    highest count first)."""
    sm, pm = "Ġ", "▁"

    def dist_fn(a: str, b: str) -> float:
        aa, bb = a.replace(sm, ""), b.replace(pm, "")
        if len(aa) == 0 or len(bb) == 0:
            aa, bb = a.replace(sm, pm), b
        w = 0.1 if (aa in bb or bb in aa) else 1
        return Levenshtein.distance(aa, bb) * w

    out = []
    for s in sources:
        cand, cnt = counts.candidates(s)
        if not len(cand):
            out.append(0)
        elif weighting == "reference":
            scores = [dist_fn(src[s], piv[p]) * (1.0 / (1.0 + np.exp(-c))) for p, c in zip(cand.tolist(), cnt.tolist(), strict=True)]
            out.append(int(cand[int(np.argmin(scores))]))
        else:
            best = max(zip(cand.tolist(), cnt.tolist(), strict=True),
                       key=lambda pc: (pc[1], -dist_fn(src[s], piv[pc[0]]), -pc[0]))
            out.append(best[0])
    return out


def bench_map(counts: CoAlignmentCounts, quick: bool) -> None:
    rnd = random.Random(0)
    taken: set[str] = set()
    piv = ["<unk>", *synthetic_pieces(rnd, N_PIVOT - 1, "▁", taken)]
    twins = {piv[p].replace("▁", "Ġ") for p in rnd.sample(range(1, N_PIVOT), N_SOURCE // 5)}
    src = [*twins, *synthetic_pieces(rnd, N_SOURCE - len(twins), "Ġ", {t.replace("▁", "Ġ") for t in taken} | twins)]
    rnd.shuffle(src)
    source_tok, pivot_tok = Vocab(src), Vocab(piv, unk=0)
    bl, sp = TokenizerSpec.of_kind("byte_level"), TokenizerSpec.of_kind("metaspace")
    print(f"\n(b) MS vocabulary map, {N_SOURCE:,} source × {N_PIVOT:,} pivot pieces, {counts.nnz:,} co-aligned pairs")
    for weighting in ("frequency", "reference"):
        start = time.perf_counter()
        vm = ms_vocab_map(counts, source_tok, pivot_tok, weighting=weighting, source_spec=bl, pivot_spec=sp)
        t_fast = time.perf_counter() - start
        stat_ids = np.flatnonzero(~vm.exact)
        sample = sorted(random.Random(1).sample(stat_ids.tolist(), 100 if quick else 400))
        start = time.perf_counter()
        ref = reference_loop(counts, sample, src, piv, weighting)
        t_loop = (time.perf_counter() - start) / len(sample) * len(stat_ids)
        agree = ref == vm.ids[sample].tolist()
        print(f"    {weighting:9s}: ms_vocab_map {t_fast:6.2f} s (exact {int(vm.exact.sum()):,}, statistical "
              f"{len(stat_ids):,}); reference loop ≈ {t_loop:7.1f} s (from {len(sample)} sampled ids); "
              f"ratio {t_loop / t_fast:5.1f}×; sampled ids agree: {agree}")
        if not agree:
            raise SystemExit("the fast map disagrees with the reference loop")


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpora (a few seconds)")
    args = parser.parse_args()
    sizes = [1_000_000, 4_000_000] if args.quick else [5_000_000, 20_000_000]
    dense = N_PIVOT * N_SOURCE * 8
    print(f"(a) co-alignment counts, pivot {N_PIVOT:,} × source {N_SOURCE:,}; "
          f"dense float64 matrix (reference): {dense / 1e9:.1f} GB")
    print(f"    peak RSS before counting: {peak_rss_mb():.0f} MB")
    rows = []
    counts = None
    for n_pairs in sizes:  # the counts first, so that the peak RSS printed is theirs, not the baseline's
        counts, seconds = count(n_pairs, seed=0)
        nnz, nbytes = counts.nnz, counts.nbytes
        rows.append((n_pairs, seconds, nnz, nbytes))
        print(f"    {n_pairs / 1e6:4.0f}M aligned pairs: {nnz:>10,} distinct pairs, store {nbytes / 1e6:6.1f} MB "
              f"= {nbytes / nnz:.1f} bytes/pair; dense float64 / store = {dense / nbytes:,.0f}×; "
              f"{seconds:5.2f} s ({seconds / n_pairs * 1e9:.0f} ns/pair); peak RSS so far {peak_rss_mb():.0f} MB")
    n_base = 200_000 if args.quick else 1_000_000
    per_pair, dict_bytes, dict_nnz = dict_baseline(n_base, seed=99)
    print(f"    baseline, same run: dict[(pivot, source)] += 1 over {n_base:,} pairs ({dict_nnz:,} distinct): "
          f"{per_pair * 1e9:.0f} ns/pair, {dict_bytes:.0f} bytes per distinct pair")
    for n_pairs, seconds, nnz, nbytes in rows:
        print(f"    {n_pairs / 1e6:4.0f}M: CoAlignmentCounts is {per_pair / (seconds / n_pairs):.1f}× faster per pair "
              f"and takes {dict_bytes / (nbytes / nnz):.1f}× fewer bytes per distinct pair than the dict")
    assert counts is not None
    bench_map(counts, args.quick)


if __name__ == "__main__":
    main()
