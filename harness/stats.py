"""Statistics for comparisons you can trust: paired differences with bootstrap intervals and permutation
p-values, and the confidence intervals and ties of the leaderboard.

Paired comparison of two models A and B on the same examples
--------------------------------------------------------------

**Data.** For one task, unit i (an example: a document, a BBH item, a HumanEval problem, an MT-Bench
question) carries a numerator and a denominator on each side, ``(a_num_i, a_den_i)`` and
``(b_num_i, b_den_i)``, and a side's metric is the ratio of sums ``Σ num / Σ den``. A mean metric (exact
match, pass@1, a judge's rating) has ``den = 1``; bits per byte has ``num = −log₂ p(document)`` and
``den = bytes``; a unit that groups several answers (an MT-Bench question's two turns) sums them, so its
answers are resampled together.

**Estimand.** ``Δ = Σ b_num / Σ b_den − Σ a_num / Σ a_den`` (B − A, in the metric's units) for the
population of examples the task's examples stand for. Several tasks (strata) combine with fixed weights,
``Δ = Σ_s w_s Δ_s``: equal weights give a macro average (perplexity's ``avg``, BBH's ``macro``), weights
``n_s / N`` with ``den = 1`` the pooled mean over all examples (BBH's ``weighted``).

**Interval.** Paired bootstrap: a replicate draws n units with replacement, the same draw on both sides
(that is what makes it paired: what both models find hard cancels), within each stratum independently,
and recomputes Δ. The interval is the percentile interval of ``resamples`` replicates (95%: the 2.5% and
97.5% quantiles); ``se`` is the replicates' standard deviation. Percentile intervals of a mean are close
to nominal from a few dozen units on (the coverage tests check 95% ± 3 points at n = 100); for a
handful of units they are too narrow, which the output's ``n`` lets a reader see.

**p-value.** Paired sign-flip (permutation) test of H0 "A and B are exchangeable on every unit": a
replicate swaps the two sides of each unit with probability 1/2 and recomputes Δ;
``p = (1 + #{|Δ*| ≥ |Δ|}) / (1 + permutations)`` (two-sided; the observed labelling counts once, so p is
never 0 and identical models get p = 1). For a mean metric this is the classic paired permutation test;
for a ratio it swaps numerator and denominator together.

**Several seeds** (a run group: the same comparison repeated with seeds 1..S, e.g. of a fusion).
Estimand: the mean over seeds of Δ, ``Δ̄ = (1/S) Σ_k Δ_k``. The bootstrap resamples at both levels: S seeds
with replacement, then units. When the seeds evaluated the *same* examples (``shared_examples=True``,
unit i is one example in every seed) the examples are a factor crossed with seeds, and one draw of units
is applied to every drawn seed; resampling them independently per seed would treat one example's
difficulty as S independent draws and make the interval too narrow. When each seed drew its own
examples (``shared_examples=False``) units are resampled within each drawn seed (nested). The
permutation test flips each unit in every seed alike (shared examples) or independently (nested). With
few seeds the seed level of the interval is rough: three seeds have only ten distinct resamples.

**Judge repeats** (MT-Bench). A unit's rating is the mean of the judge's repeats, so its judge noise is
part of the unit-to-unit spread the bootstrap resamples: the interval includes it. Resampling the
repeats again inside each unit would count that variance twice; :func:`judge_variance_share` reports how
much of the spread it is instead.

Leaderboard intervals and ties
------------------------------

An :class:`Estimate` is a value with a standard error and the degrees of freedom of that error (infinite
for a stored large-sample stderr). Its interval is ``value ± t_df · se``. Scores of several seeds average
to ``mean ± t · se`` with ``se² = s²/S + mean(se_k²)`` (seed-to-seed spread, plus the example-sampling
error the seeds share) and Welch–Satterthwaite degrees of freedom. A value is *not significantly worse*
than the best when the two-sided Welch test of their difference does not reject at the level:
``|best − value| ≤ t_df · √(se_best² + se²)`` (this is not whether the two intervals overlap, which is
a stricter test at about the 99.4% level). A missing stderr counts as 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
#: Elements of the index (or sign) matrix drawn at once: a few MB, so a chunk stays in cache.
_CHUNK_ELEMENTS = 1 << 19


# --- paired data ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Paired:
    """One task's paired units: unit i has ``num/den`` on side A and on side B; each side's metric is
    ``Σ num / Σ den``. Build it with :meth:`means` or :meth:`ratios`."""

    a_num: np.ndarray
    b_num: np.ndarray
    a_den: np.ndarray
    b_den: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.asarray(x, dtype=np.float64) for x in (self.a_num, self.b_num, self.a_den, self.b_den)]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or len(arrays[0]) == 0:
            raise ValueError("paired data needs four 1-d arrays of one non-zero length")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("paired data must be finite")
        if (arrays[2] <= 0).any() or (arrays[3] <= 0).any():
            raise ValueError("denominators must be positive")
        for name, value in zip(("a_num", "b_num", "a_den", "b_den"), arrays, strict=True):
            object.__setattr__(self, name, value)

    @classmethod
    def means(cls, a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Paired:
        """Per-unit values of a mean metric (0/1 exact match, pass@1 of a problem, a rating)."""
        ones = np.ones(len(a))
        return cls(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), ones, ones)

    @classmethod
    def ratios(cls, a_num: Sequence[float] | np.ndarray, b_num: Sequence[float] | np.ndarray,
               den: Sequence[float] | np.ndarray, b_den: Sequence[float] | np.ndarray | None = None) -> Paired:
        """A ratio-of-sums metric; ``den`` is shared by both sides unless ``b_den`` is given."""
        den = np.asarray(den, dtype=np.float64)
        return cls(np.asarray(a_num, dtype=np.float64), np.asarray(b_num, dtype=np.float64), den,
                   den if b_den is None else np.asarray(b_den, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.a_num)

    def difference(self) -> float:
        """Δ = B − A of the two ratio-of-sums metrics."""
        return float(self.b_num.sum() / self.b_den.sum() - self.a_num.sum() / self.a_den.sum())

    # The resampling code works on the fewest column sums that determine Δ:
    #   "mean"   one shared constant denominator: Δ = Σ d / (n·c), d = b_num − a_num
    #   "shared" one shared denominator:          Δ = Σ d / Σ den
    #   "own"    a denominator per side:          Δ = Σ b_num / Σ b_den − Σ a_num / Σ a_den
    def _form(self) -> str:
        if not np.array_equal(self.a_den, self.b_den):
            return "own"
        return "mean" if (self.a_den == self.a_den[0]).all() else "shared"

    def _columns(self) -> list[np.ndarray]:
        """The columns whose (resampled) sums give Δ via :meth:`_from_sums` (contiguous, for fast gathers)."""
        d = self.b_num - self.a_num
        form = self._form()
        if form == "mean":
            return [d]
        if form == "shared":
            return [d, self.a_den]
        return [self.a_num, self.b_num, self.a_den, self.b_den]

    def _from_sums(self, sums: np.ndarray) -> np.ndarray:
        """Δ of each row of column sums (resampled: every row sums n draws)."""
        form = self._form()
        if form == "mean":
            return sums[:, 0] / (len(self) * self.a_den[0])
        if form == "shared":
            return sums[:, 0] / sums[:, 1]
        return sums[:, 1] / sums[:, 3] - sums[:, 0] / sums[:, 2]

    def _flipped(self, flipped_sums: np.ndarray) -> np.ndarray:
        """Δ of each row of sign-flip draws; ``flipped_sums`` holds Σ over the swapped units of
        (b − a) for each column that changes: d (mean, shared) or num and den (own)."""
        form = self._form()
        if form == "mean":
            return (self.b_num.sum() - self.a_num.sum() - 2 * flipped_sums[:, 0]) / (len(self) * self.a_den[0])
        if form == "shared":
            return (self.b_num.sum() - self.a_num.sum() - 2 * flipped_sums[:, 0]) / self.a_den.sum()
        num, den = flipped_sums[:, 0], flipped_sums[:, 1]
        return ((self.b_num.sum() - num) / (self.b_den.sum() - den)
                - (self.a_num.sum() + num) / (self.a_den.sum() + den))

    def _flip_columns(self) -> list[np.ndarray]:
        """What a swap changes: d = b_num − a_num, and b_den − a_den when the sides have their own."""
        if self._form() == "own":
            return [self.b_num - self.a_num, self.b_den - self.a_den]
        return [self.b_num - self.a_num]


# --- the result -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """A paired B − A difference: the estimate, its bootstrap interval and standard error, and the
    permutation p-value."""

    estimate: float
    low: float
    high: float
    se: float
    p_value: float
    n: int               # units (summed over strata; per seed when there are several)
    seeds: int
    level: float
    resamples: int
    permutations: int

    @property
    def significant(self) -> bool:
        """Whether the permutation test rejects "no difference" at 1 − level."""
        return self.p_value < 1 - self.level

    @property
    def p_floor(self) -> float:
        """The smallest p-value this many permutations can give."""
        return 1 / (1 + self.permutations)


# --- the paired comparison ------------------------------------------------------------------------


def paired_difference(strata: Paired | Sequence[Paired], weights: Sequence[float] | None = None, *,
                      resamples: int = DEFAULT_RESAMPLES, permutations: int | None = None, seed: int = 0,
                      level: float = DEFAULT_LEVEL) -> Difference:
    """B − A on one run per side: a task (:class:`Paired`) or tasks combined with ``weights`` (default:
    equal, a macro average). Paired bootstrap interval, sign-flip p-value; see the module docstring."""
    strata = [strata] if isinstance(strata, Paired) else list(strata)
    return paired_difference_over_seeds([strata], weights, resamples=resamples, permutations=permutations,
                                        seed=seed, level=level)


def paired_difference_over_seeds(seeds: Sequence[Sequence[Paired]], weights: Sequence[float] | None = None, *,
                                 shared_examples: bool = True, resamples: int = DEFAULT_RESAMPLES,
                                 permutations: int | None = None, seed: int = 0,
                                 level: float = DEFAULT_LEVEL) -> Difference:
    """B − A averaged over seeds: ``seeds[k]`` holds seed k's strata (the same tasks, in the same order, in
    every seed). Hierarchical bootstrap (seeds, then units; crossed when ``shared_examples``, nested
    otherwise) and sign-flip p-value; see the module docstring. One seed is the plain paired comparison."""
    if not 0 < level < 1:
        raise ValueError("level must be between 0 and 1")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    permutations = resamples if permutations is None else permutations
    seeds = [list(strata) for strata in seeds]
    if not seeds or not seeds[0]:
        raise ValueError("nothing to compare: no seeds or no strata")
    n_strata = len(seeds[0])
    if any(len(strata) != n_strata for strata in seeds):
        raise ValueError("every seed needs the same strata")
    if shared_examples and any(len(strata[s]) != len(seeds[0][s]) for strata in seeds for s in range(n_strata)):
        raise ValueError("shared examples: a stratum must have the same units in every seed")
    w = np.full(n_strata, 1 / n_strata) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_strata,):
        raise ValueError(f"{n_strata} strata need {n_strata} weights")

    boot_rng, flip_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    estimate = float(np.mean([_weighted(strata, w) for strata in seeds]))
    replicates = _bootstrap(seeds, w, resamples, shared_examples, boot_rng)
    alpha = 1 - level
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    flips = _sign_flips(seeds, w, permutations, shared_examples, flip_rng)
    # |Δ*| >= |Δ| up to rounding: a flip that reproduces the observed labelling must count.
    tolerance = 1e-9 * max(1.0, abs(estimate))
    p_value = (1 + int(np.count_nonzero(np.abs(flips) >= abs(estimate) - tolerance))) / (1 + permutations)
    return Difference(estimate=estimate, low=float(low), high=float(high),
                      se=float(replicates.std(ddof=1)) if resamples > 1 else 0.0, p_value=p_value,
                      n=sum(len(p) for p in seeds[0]), seeds=len(seeds), level=level, resamples=resamples,
                      permutations=permutations)


def _weighted(strata: Sequence[Paired], w: np.ndarray) -> float:
    return float(sum(wi * p.difference() for wi, p in zip(w, strata, strict=True)))


def _chunks(total: int, n_units: int) -> list[tuple[int, int]]:
    """(start, size) of the replicate chunks: about ``_CHUNK_ELEMENTS`` draws each."""
    size = max(1, _CHUNK_ELEMENTS // max(n_units, 1))
    return [(start, min(size, total - start)) for start in range(0, total, size)]


def _bootstrap(seeds: Sequence[Sequence[Paired]], w: np.ndarray, count: int, shared: bool,
               rng: np.random.Generator) -> np.ndarray:
    """``count`` bootstrap replicates of the seed-averaged weighted Δ."""
    n_seeds = len(seeds)
    if n_seeds == 1:
        return sum(wi * _resampled(p, count, rng) for wi, p in zip(w, seeds[0], strict=True))
    if shared:
        # One draw of units per replicate, applied to every seed; per-seed Δ* (count, S), then averaged over
        # a multinomial draw of seeds (a seed drawn twice counts twice: same units, same Δ*).
        per_seed = np.zeros((count, n_seeds))
        for s, wi in enumerate(w):
            per_seed += wi * _resampled_together([strata[s] for strata in seeds], count, rng)
        picks = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=count)
        return (picks * per_seed).sum(axis=1) / n_seeds
    # Nested: each of the count × S seed slots gets a seed and its own independent resample of units.
    slots = rng.integers(0, n_seeds, size=count * n_seeds)
    values = np.empty(count * n_seeds)
    for k in range(n_seeds):
        where = np.flatnonzero(slots == k)
        if len(where):
            values[where] = sum(wi * _resampled(p, len(where), rng) for wi, p in zip(w, seeds[k], strict=True))
    return values.reshape(count, n_seeds).mean(axis=1)


def _resampled(p: Paired, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` bootstrap replicates of ``p``'s Δ: n units drawn with replacement per replicate."""
    return _resampled_together([p], count, rng)[:, 0]


def _resampled_together(blocks: list[Paired], count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, len(blocks)) replicates of each block's Δ, every block resampled with the *same* unit draw
    (blocks of equal length: one task in several seeds)."""
    n = len(blocks[0])
    columns = [b._columns() for b in blocks]
    out = np.empty((count, len(blocks)))
    index_type = np.int32 if n < 2**31 else np.int64
    for start, size in _chunks(count, n):
        index = rng.integers(0, n, size=(size, n), dtype=index_type)
        for j, (block, cols) in enumerate(zip(blocks, columns, strict=True)):
            sums = np.stack([column[index].sum(axis=1) for column in cols], axis=1)
            out[start:start + size, j] = block._from_sums(sums)
    return out


def _random_bits(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """(rows, n) fair coin flips as 0/1 bytes, eight per random byte."""
    raw = np.frombuffer(rng.bytes((rows * n + 7) // 8), dtype=np.uint8)
    return np.unpackbits(raw, count=rows * n).reshape(rows, n)


def _sign_flips(seeds: Sequence[Sequence[Paired]], w: np.ndarray, count: int, shared: bool,
                rng: np.random.Generator) -> np.ndarray:
    """``count`` values of the seed-averaged weighted Δ with A and B swapped on a random half of the units."""
    total = np.zeros(count)
    for s, wi in enumerate(w):
        blocks = [strata[s] for strata in seeds]
        groups = [blocks] if shared else [[b] for b in blocks]
        for group in groups:  # one coin per unit, shared by the blocks of a group
            n = len(group[0])
            columns = [b._flip_columns() for b in group]
            for start, size in _chunks(count, n):
                bits = _random_bits(rng, size, n)
                for block, cols in zip(group, columns, strict=True):
                    # Σ over the swapped units, as a product and a row sum: no BLAS call, whose threads
                    # spin and crawl on a machine whose cores are busy.
                    swapped = np.stack([(bits * column).sum(axis=1) for column in cols], axis=1)
                    total[start:start + size] += wi * block._flipped(swapped)
    return total / len(seeds)


def judge_variance_share(a_repeats: Sequence[Sequence[float]], b_repeats: Sequence[Sequence[float]]) -> float | None:
    """The share of the variance of the per-unit differences B − A that the judge's own noise explains.

    ``a_repeats[i]``: the judge's ratings of A's answer i over its repeats (same for B). A unit's judge
    variance is ``var(repeats, ddof=1) / m`` per side (the variance of the mean of m repeats); the share is
    their mean over units over the sample variance of the differences of the unit means. None when no unit
    has two repeats on both sides or the differences do not vary."""
    judge, diffs = [], []
    for ra, rb in zip(a_repeats, b_repeats, strict=True):
        if len(ra) < 1 or len(rb) < 1:
            continue
        diffs.append(statistics.fmean(rb) - statistics.fmean(ra))
        if len(ra) >= 2 and len(rb) >= 2:
            judge.append(statistics.variance(ra) / len(ra) + statistics.variance(rb) / len(rb))
    if not judge or len(diffs) < 2:
        return None
    spread = statistics.variance(diffs)
    return None if spread == 0 else min(1.0, statistics.fmean(judge) / spread)


# --- estimates with a standard error (the leaderboard) --------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A value, its standard error (None: unknown) and the degrees of freedom of that error."""

    value: float
    se: float | None = None
    df: float = math.inf

    def half_width(self, level: float = DEFAULT_LEVEL) -> float | None:
        """Half the width of the two-sided ``level`` interval, ``t_df · se``; None without a stderr."""
        return None if self.se is None else t_quantile(self.df, level) * self.se


def t_quantile(df: float, level: float = DEFAULT_LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (normal for inf)."""
    q = 1 - (1 - level) / 2
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(q)
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def welch_df(parts: Sequence[tuple[float, float]]) -> float:
    """Welch–Satterthwaite degrees of freedom of a sum of variances ``[(variance, df), ...]``."""
    total = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts if v > 0 and not math.isinf(df))
    return math.inf if denominator == 0 else total * total / denominator


def mean_over_seeds(values: Sequence[float], stderrs: Sequence[float | None]) -> Estimate:
    """The mean of one score over S seeds: ``se² = s²/S + mean(se_k²)`` (seed spread plus the example
    sampling the seeds share; a missing stderr counts as 0), Welch–Satterthwaite degrees of freedom."""
    k = len(values)
    if k == 0:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if k == 1:
        return Estimate(mean, stderrs[0], math.inf)
    between = statistics.variance(values) / k
    within = statistics.fmean((se or 0.0) ** 2 for se in stderrs)
    if between + within == 0:
        return Estimate(mean, 0.0, math.inf)
    return Estimate(mean, math.sqrt(between + within), welch_df([(between, k - 1), (within, math.inf)]))


def not_worse(best: Estimate, other: Estimate, higher_is_better: bool, level: float = DEFAULT_LEVEL) -> bool:
    """Whether ``other`` is not significantly worse than ``best`` (two-sided Welch test at ``level``)."""
    gap = (best.value - other.value) if higher_is_better else (other.value - best.value)
    if gap <= 0:
        return True
    variances = [((e.se or 0.0) ** 2, e.df) for e in (best, other)]
    spread = math.sqrt(sum(v for v, _ in variances))
    return spread > 0 and gap <= t_quantile(welch_df(variances), level) * spread
