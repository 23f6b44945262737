"""The statistics behind the report's comparisons: intervals, paired tests, seed summaries."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bmwlm import stats


def test_mcnemar_matches_the_textbook_example():
    # 2x2 table: both right 59, a only 6, b only 16, both wrong 80 (the standard worked example):
    # exact two-sided p = 0.0525, chi-square with continuity correction 3.68 (p = 0.055).
    a = [True] * 59 + [True] * 6 + [False] * 16 + [False] * 80
    b = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    result = stats.mcnemar(a, b)
    assert (result["a_only"], result["b_only"]) == (6, 16)
    assert result["p_exact"] == pytest.approx(0.0525, abs=5e-4)
    assert result["chi2_cc"] == pytest.approx(81 / 22)
    assert result["p_chi2_cc"] == pytest.approx(0.0550, abs=5e-4)


def test_mcnemar_of_identical_answers_is_one():
    assert stats.mcnemar([True, False, True], [True, False, True])["p_exact"] == 1.0


def test_paired_bootstrap_of_identical_models_contains_zero():
    rng = np.random.default_rng(1)
    nll = rng.uniform(100, 300, size=40)
    tokens = rng.integers(80, 200, size=40)
    result = stats.paired_bootstrap_perplexity(nll, nll, tokens)
    assert result["difference"] == 0
    assert result["ci95"][0] <= 0 <= result["ci95"][1]
    assert not stats.excludes_zero(result["ci95"]) or result["ci95"] == [0.0, 0.0]


def test_paired_bootstrap_of_a_clearly_better_model_excludes_zero():
    rng = np.random.default_rng(2)
    tokens = rng.integers(80, 200, size=40)
    worse = tokens * rng.uniform(3.0, 3.4, size=40)  # ~3.2 nats per token
    better = worse - tokens * 0.2  # every article 0.2 nats per token better
    result = stats.paired_bootstrap_perplexity(better, worse, tokens)
    assert result["difference"] < 0
    assert result["ci95"][1] < 0
    assert result["ratio_ci95"][1] < 1


def test_paired_bootstrap_accuracy_difference_is_paired():
    # Model b is right exactly where a is, plus 10 more items: a paired interval excludes 0 even
    # though two unpaired intervals of ~0.5 +- 0.1 would overlap.
    a = [1] * 40 + [0] * 60
    b = [1] * 50 + [0] * 50
    d = stats.paired_bootstrap_mean_difference(b, a)
    assert d.value == pytest.approx(0.10)
    assert d.ci95[0] > 0


def test_cluster_bootstrap_is_wider_than_item_bootstrap_for_correlated_items():
    # 20 articles, 5 items each, items within an article all right or all wrong.
    clusters = [i // 5 for i in range(100)]
    correct = [1.0 if (i // 5) % 2 else 0.0 for i in range(100)]
    by_item = stats.bootstrap_mean(correct)
    by_article = stats.bootstrap_mean(correct, clusters=clusters)
    assert by_article.units == 20 and by_item.units == 100
    assert (by_article.ci95[1] - by_article.ci95[0]) > 1.5 * (by_item.ci95[1] - by_item.ci95[0])


def test_mean_sd_uses_the_sample_standard_deviation():
    summary = stats.mean_sd([14.6, 14.8, 15.0])
    assert summary["mean"] == pytest.approx(14.8)
    assert summary["sd"] == pytest.approx(0.2)
    assert stats.mean_sd([3.0])["sd"] is None


def test_compare_states_a_direction_only_when_the_interval_excludes_zero():
    assert stats.compare("perplexity", "pruned", "full", 0.3, [0.1, 0.5]).startswith("pruned has higher perplexity")
    assert stats.compare("accuracy", "full", "base", -0.2, [-0.3, -0.1]).startswith("full has lower accuracy")
    text = stats.compare("perplexity", "pruned", "full", 0.1, [-0.1, 0.3])
    assert text.startswith("no detectable difference in perplexity between pruned and full")


def test_loss_gap_difference_is_zero_for_identical_models_and_positive_when_a_memorises():
    rng = np.random.default_rng(3)
    vt, tt = rng.integers(80, 200, size=30), rng.integers(80, 200, size=12)
    val, train = vt * rng.uniform(3.0, 3.4, size=30), tt * rng.uniform(2.8, 3.2, size=12)
    same = stats.loss_gap_difference(val, val, vt, train, train, tt)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
    memorised = train - tt * 1.0  # model a: 1 nat/token better on the train slice only
    wider = stats.loss_gap_difference(val, val, vt, memorised, train, tt)
    assert wider["difference"] == pytest.approx(1.0) and wider["ci95"][0] > 0
    assert wider["a"] == pytest.approx(wider["b"] + 1.0)


def test_paired_bootstrap_ratio_of_interleaved_timings():
    b = np.array([1.00, 1.30, 0.90, 1.10, 1.05, 0.95])  # the machine's load moves both models together
    a = b * 0.9
    r = stats.paired_bootstrap_ratio(a, b)
    assert r["ratio"] == pytest.approx(0.9) and r["ratio_ci95"] == pytest.approx([0.9, 0.9])
    assert r["ci95"][1] < 0 and r["pairs"] == 6
    assert stats.excludes_zero(stats.paired_bootstrap_ratio(b, b)["ci95"]) is False


def test_paired_t_interval_of_seed_differences_has_the_textbook_width():
    r = stats.paired_t_interval([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])  # differences 1, 2, 3: mean 2, sd 1
    assert (r["n"], r["mean"], r["sd"]) == (3, 2.0, 1.0)
    half = 4.303 / math.sqrt(3)
    assert r["ci95"] == pytest.approx([2 - half, 2 + half])
    assert stats.paired_t_interval([1.0], [0.5])["ci95"] is None
    assert stats.t_quantile(12) == 2.228 and stats.t_quantile(100) == 1.96
