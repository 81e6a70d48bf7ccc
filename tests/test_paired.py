"""ctdemo.evaluation.paired: McNemar's test, the paired bootstrap, "better than every other"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctdemo.evaluation.numbers import Interval
from ctdemo.evaluation.paired import (
    Bootstrap,
    PairedTest,
    bootstrap,
    mcnemar,
    overall_better,
    paired_bootstrap,
    pairs,
    resamples,
)


def samples(values) -> Bootstrap:
    return Bootstrap(Interval(0.0, 0.0, 0.0), np.array(values, float))


def test_mcnemar_counts_the_discordant_pairs_and_marks_only_a_significant_winner():
    right = np.ones(12, bool)
    wrong_ten = right.copy()
    wrong_ten[:10] = False  # 10 discordant pairs, all one way: p = 2 / 2**10
    test = mcnemar("a", "b", right, wrong_ten)
    assert (test.only_a, test.only_b) == (10, 0)
    assert test.p_value == pytest.approx(2 / 1024) and test.better == "a"
    wrong_two = np.arange(12) >= 2  # right where wrong_ten is, and on 8 more: p = 2 / 2**8
    other_way = mcnemar("a", "b", wrong_ten, wrong_two)
    assert (other_way.only_a, other_way.only_b) == (0, 8)
    assert other_way.p_value == pytest.approx(2 / 256) and other_way.better == "b"
    assert mcnemar("a", "b", right, right) == PairedTest("a", "b", 1.0, None, 0, 0)


def test_paired_bootstrap_by_hand():
    # differences 2, 1, -1, 3: one <= 0, four >= 0 (none equal): p = 2 * (1 + 1) / 5 = 0.8
    test = paired_bootstrap("a", "b", samples([3, 2, 0, 4]), samples([1, 1, 1, 1]))
    assert test.p_value == pytest.approx(0.8) and test.better is None
    # 99 resamples, a always ahead: p = 2 * (0 + 1) / 100 = 0.02, a better
    ahead = paired_bootstrap("a", "b", samples([1.0] * 99), samples([0.5] * 99))
    assert ahead.p_value == pytest.approx(0.02) and ahead.better == "a"
    behind = paired_bootstrap("a", "b", samples([0.5] * 99), samples([1.0] * 99))
    assert behind.p_value == pytest.approx(0.02) and behind.better == "b"
    # NaN resamples (say, one class missing) are dropped pairwise; none left: no test
    assert paired_bootstrap("a", "b", samples([math.nan]), samples([1.0])).better is None
    assert math.isnan(paired_bootstrap("a", "b", samples([math.nan]), samples([1])).p_value)


def test_bootstrap_keeps_nan_samples_but_leaves_them_out_of_the_interval():
    picks = [np.array([0, 0]), np.array([1, 1]), np.array([0, 1])]
    values = np.array([1.0, 3.0])
    result = bootstrap(lambda i: math.nan if (i == 1).all() else float(values[i].mean()), picks)
    assert result.interval.value == 2.0
    assert np.isnan(result.samples[1]) and result.samples[[0, 2]].tolist() == [1.0, 2.0]
    low, high = np.percentile([1.0, 2.0], [2.5, 97.5])
    assert (result.interval.low, result.interval.high) == (low, high)


def test_resamples_are_seeded_draws_of_the_slices():
    first, again = resamples(5, 3, seed=4), resamples(5, 3, seed=4)
    assert len(first) == 3 and all(len(p) == 5 and p.max() < 5 for p in first)
    assert all((x == y).all() for x, y in zip(first, again, strict=True))


def test_overall_better_needs_a_win_against_every_other_model():
    assert pairs("ABC") == [("A", "B"), ("A", "C"), ("B", "C")]
    wins = [PairedTest("A", "B", 0.01, "A"), PairedTest("A", "C", 0.01, "A")]
    tied = PairedTest("B", "C", 0.5, None)
    assert overall_better([*wins, tied], "ABC") == "A"
    assert overall_better([wins[0], PairedTest("A", "C", 0.3, None), tied], "ABC") is None
    assert overall_better([], ["only"]) is None
