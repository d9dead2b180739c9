"""harness.stats: known answers, exact small cases, and the coverage and error rates of the paired tests
on synthetic data (hundreds of datasets, fewer resamples each, so the whole file takes seconds)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness import stats
from harness.stats import Estimate, Paired, paired_difference, paired_difference_over_seeds


def test_identical_models_have_a_zero_interval_and_p_one():
    values = np.random.default_rng(0).random(300).round()
    d = paired_difference(Paired.means(values, values))
    assert d.estimate == 0 and d.low <= 0 <= d.high and d.p_value == 1.0 and not d.significant
    docs = np.random.default_rng(1).uniform(500, 2000, 40)
    same = paired_difference(Paired.ratios(docs * 1.3, docs * 1.3, docs))
    assert same.estimate == 0 and same.low <= 0 <= same.high and same.p_value == 1.0


def test_bootstrap_se_of_a_mean_is_the_plug_in_standard_error():
    """The bootstrap variance of a mean is σ̂²/n (σ̂ with ddof=0): the replicates must reproduce it."""
    d = np.random.default_rng(2).normal(0.1, 1.0, 400)
    result = paired_difference(Paired.means(np.zeros(400), d), resamples=20_000)
    assert result.estimate == pytest.approx(d.mean())
    assert result.se == pytest.approx(d.std() / math.sqrt(len(d)), rel=0.03)


def test_bootstrap_se_of_a_ratio_matches_the_delta_method():
    """Bits/byte differences are ratios of sums over documents: the bootstrap's standard error must match the
    delta-method one the perplexity suite reports (evals.perplexity.ratio_stderr) on the per-document
    differences."""
    from evals.perplexity import ratio_stderr

    rng = np.random.default_rng(3)
    n_bytes = rng.integers(200, 4000, 300).astype(float)
    a_bits = n_bytes * rng.normal(1.2, 0.2, 300)
    b_bits = a_bits - n_bytes * rng.normal(0.05, 0.1, 300)
    result = paired_difference(Paired.ratios(a_bits, b_bits, n_bytes), resamples=20_000)
    assert result.estimate == pytest.approx(b_bits.sum() / n_bytes.sum() - a_bits.sum() / n_bytes.sum())
    assert result.se == pytest.approx(ratio_stderr(list(b_bits - a_bits), list(n_bytes)), rel=0.05)


@pytest.mark.parametrize("form", ["mean", "shared", "own"])
def test_sign_flip_p_value_matches_full_enumeration(form):
    """With 10 units all 1024 swaps can be enumerated: the sampled p-value must agree with the exact one."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(1.0, 1.0, 10), rng.normal(1.6, 1.0, 10)
    den_a = np.ones(10) if form == "mean" else rng.uniform(1, 3, 10)
    den_b = den_a if form != "own" else rng.uniform(1, 3, 10)
    data = Paired(a * den_a, b * den_b, den_a, den_b)
    observed = abs(data.difference())
    extreme = 0
    for swaps in itertools.product([False, True], repeat=10):
        s = np.array(swaps)
        flipped = Paired(np.where(s, data.b_num, data.a_num), np.where(s, data.a_num, data.b_num),
                         np.where(s, data.b_den, data.a_den), np.where(s, data.a_den, data.b_den))
        extreme += abs(flipped.difference()) >= observed - 1e-12
    exact = extreme / 1024
    sampled = paired_difference(data, resamples=40_000, seed=5).p_value
    assert 0.01 < exact < 0.5  # a case where the p-value is neither 0 nor 1
    assert sampled == pytest.approx(exact, abs=0.01)


def _simulate(shift: float, datasets: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, p) of the paired comparison on ``datasets`` synthetic datasets of n units with true
    difference ``shift`` (per-unit differences ~ N(shift, 1)), 1000 resamples each."""
    rng = np.random.default_rng(seed)
    lows, highs, ps = [], [], []
    for k in range(datasets):
        a = rng.normal(0.0, 1.0, n)
        b = a + rng.normal(shift, 1.0, n)
        d = paired_difference(Paired.means(a, b), resamples=1000, seed=k)
        lows.append(d.low)
        highs.append(d.high)
        ps.append(d.p_value)
    return np.array(lows), np.array(highs), np.array(ps)


def test_interval_covers_and_test_rejects_at_the_stated_rates():
    """800 datasets of 100 units without a difference: the 95% interval holds 0 and the test rejects in
    5% ± 3 points of them. With a shift chosen for 80% power of a two-sided 5% test, the interval holds the
    shift in 95% ± 3 points and the test detects it in 80% ± 5 points."""
    n, datasets = 100, 800
    low, high, p = _simulate(0.0, datasets, n, seed=10)
    assert abs(np.mean((low <= 0) & (high >= 0)) - 0.95) <= 0.03
    assert abs(np.mean(p < 0.05) - 0.05) <= 0.03
    shift = (1.959964 + 0.841621) / math.sqrt(n)  # z_0.975 + z_0.80, per-unit sd 1
    low, high, p = _simulate(shift, datasets, n, seed=11)
    assert abs(np.mean((low <= shift) & (shift <= high)) - 0.95) <= 0.03
    assert abs(np.mean(p < 0.05) - 0.80) <= 0.05


def test_strata_combine_with_their_weights():
    rng = np.random.default_rng(6)
    tasks = [Paired.means(rng.random(n).round(), rng.random(n).round()) for n in (20, 50, 130)]
    macro = paired_difference(tasks, resamples=2000)
    assert macro.estimate == pytest.approx(np.mean([t.difference() for t in tasks]))
    sizes = np.array([len(t) for t in tasks])
    pooled = paired_difference(tasks, sizes / sizes.sum(), resamples=2000)
    all_a = np.concatenate([t.a_num for t in tasks])
    all_b = np.concatenate([t.b_num for t in tasks])
    assert pooled.estimate == pytest.approx(all_b.mean() - all_a.mean())
    assert macro.n == pooled.n == 200
    with pytest.raises(ValueError, match="3 strata need 3 weights"):
        paired_difference(tasks, [0.5, 0.5])


def test_same_seed_same_answer():
    rng = np.random.default_rng(7)
    data = Paired.means(rng.normal(size=50), rng.normal(size=50))
    assert paired_difference(data, seed=3) == paired_difference(data, seed=3)
    assert paired_difference(data, seed=3).low != paired_difference(data, seed=4).low


def test_seeds_on_shared_examples_keep_the_example_noise():
    """S seeds that all reproduce one run exactly: the crossed bootstrap (examples shared by the seeds) gives
    the one-seed interval; resampling examples independently per seed (nested) would shrink it by about √S,
    claiming precision the repeated seeds do not add."""
    rng = np.random.default_rng(8)
    one = Paired.means(rng.normal(size=200), rng.normal(0.2, 1.0, 200) + 0.0)
    single = paired_difference(one, resamples=4000)
    crossed = paired_difference_over_seeds([[one]] * 4, resamples=4000)
    nested = paired_difference_over_seeds([[one]] * 4, shared_examples=False, resamples=4000)
    width = lambda d: d.high - d.low  # noqa: E731
    assert crossed.estimate == pytest.approx(single.estimate)
    assert width(crossed) == pytest.approx(width(single), rel=0.1)
    assert width(nested) == pytest.approx(width(single) / 2, rel=0.15)


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(9)
    a = rng.normal(size=300)
    b = a + rng.normal(0.3, 1.0, 300)
    steady = [[Paired.means(a, b + rng.normal(0, 0.01))] for _ in range(6)]
    shaky = [[Paired.means(a, b + rng.normal(0, 0.5))] for _ in range(6)]
    w_steady, w_shaky = (paired_difference_over_seeds(s, resamples=4000) for s in (steady, shaky))
    assert w_shaky.high - w_shaky.low > 2 * (w_steady.high - w_steady.low)
    assert w_shaky.seeds == 6 and w_shaky.n == 300
    zero = [[Paired.means(a, a)] for _ in range(3)]
    assert paired_difference_over_seeds(zero, resamples=2000).p_value == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one non-zero length"):
        Paired.means([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        Paired.ratios([1.0], [1.0], [0.0])
    with pytest.raises(ValueError, match="finite"):
        Paired.means([math.nan], [1.0])
    with pytest.raises(ValueError, match="same units in every seed"):
        paired_difference_over_seeds([[Paired.means([1.0, 2.0], [1.0, 2.0])], [Paired.means([1.0], [1.0])]])


def test_judge_variance_share():
    rng = np.random.default_rng(12)
    truth = rng.integers(3, 9, 200).astype(float)
    # Both sides rate the same answers' quality; only the judge's repeats differ: all spread is the judge's.
    noisy_a = [list(t + rng.normal(0, 1, 3)) for t in truth]
    noisy_b = [list(t + rng.normal(0, 1, 3)) for t in truth]
    assert stats.judge_variance_share(noisy_a, noisy_b) == pytest.approx(1.0, abs=0.15)
    # A steady judge on answers that really differ: almost none of it.
    steady_a = [[t, t, t] for t in truth]
    steady_b = [[t + d] * 3 for t, d in zip(truth, rng.normal(0, 2, 200), strict=True)]
    assert stats.judge_variance_share(steady_a, steady_b) == 0.0
    assert stats.judge_variance_share([[5.0]] * 3, [[6.0]] * 3) is None  # one repeat: nothing to measure


def test_t_quantiles_and_welch():
    assert stats.t_quantile(math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert stats.t_quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert stats.t_quantile(10, 0.99) == pytest.approx(3.169273, abs=1e-6)
    assert stats.welch_df([(1.0, 4), (0.0, math.inf)]) == pytest.approx(4)
    assert stats.welch_df([(1.0, 4), (1.0, 4)]) == pytest.approx(8)
    assert math.isinf(stats.welch_df([(1.0, math.inf)]))


def test_mean_over_seeds_adds_seed_spread_to_the_shared_stderr():
    est = stats.mean_over_seeds([0.50, 0.56, 0.53], [0.01, 0.01, 0.01])
    between = np.var([0.50, 0.56, 0.53], ddof=1) / 3
    assert est.value == pytest.approx(0.53) and est.se == pytest.approx(math.sqrt(between + 1e-4))
    assert 2 < est.df < 1e6
    assert stats.mean_over_seeds([0.4], [0.02]) == Estimate(0.4, 0.02)
    no_stderr = stats.mean_over_seeds([1.0, 2.0, 3.0], [None, None, None])
    assert no_stderr.df == pytest.approx(2) and no_stderr.half_width() == pytest.approx(4.302653 * math.sqrt(1 / 3))


def test_not_worse_is_a_test_of_the_difference_not_an_overlap_of_intervals():
    best = Estimate(0.60, 0.02)
    assert stats.not_worse(best, Estimate(0.60, 0.02), True)
    assert stats.not_worse(best, Estimate(0.55, 0.02), True)      # 0.05 <= 1.96·√2·0.02 = 0.0554
    assert not stats.not_worse(best, Estimate(0.54, 0.02), True)  # intervals overlap, yet significantly worse
    assert not stats.not_worse(Estimate(0.0, None), Estimate(0.01, None), False)  # no stderr: only equal ties
    assert stats.not_worse(Estimate(0.0, None), Estimate(0.0, None), True)
