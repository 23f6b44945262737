"""The statistics behind every comparison the pipeline reports.

- Intervals resample the unit that is independent: validation **articles** for perplexity and for
  the automatic cloze items (several items come from one article), **items** for the hand-written Q&A
  set (one question per fact). `clusters` says which unit each value belongs to.
- Two models scored on the same items are compared **paired**: the bootstrap resamples the same
  units for both, and accuracy differences also get McNemar's exact test on the discordant pairs.
- Seeds: mean and sample standard deviation across training seeds, and the paired per-seed
  difference between variants.
- `compare` turns a difference and its interval into the sentence a report may print: a direction
  only when the 95% interval excludes zero, otherwise "no detectable difference".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95


def _cluster_index(n: int, clusters: Sequence | None) -> list[np.ndarray]:
    """Row indices grouped by cluster (each row its own cluster when `clusters` is None)."""
    if clusters is None:
        return [np.array([i]) for i in range(n)]
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster labels for {n} values")
    groups: dict = {}
    for i, c in enumerate(clusters):
        groups.setdefault(c, []).append(i)
    return [np.array(rows) for rows in groups.values()]


def _resampled_rows(groups: list[np.ndarray], n_resamples: int, seed: int):
    """Yield the row indices of each cluster-bootstrap resample (clusters drawn with replacement)."""
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        picks = rng.integers(0, len(groups), size=len(groups))
        yield np.concatenate([groups[p] for p in picks])


def _interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> list[float]:
    lo, hi = np.quantile(np.asarray(samples, dtype=float), [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(lo), float(hi)]


@dataclass
class Estimate:
    """A statistic with its percentile-bootstrap 95% interval and what was resampled."""

    value: float
    ci95: list[float]
    n: int  # values (items or tokens' articles)
    units: int  # independent units resampled
    unit: str  # "item" or "article"

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_mean(values: Sequence[float], clusters: Sequence | None = None,
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> Estimate:
    """Mean of `values` (e.g. 0/1 correctness) with a bootstrap interval over `clusters`."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    groups = _cluster_index(len(x), clusters)
    samples = [x[rows].mean() for rows in _resampled_rows(groups, n_resamples, seed)]
    return Estimate(float(x.mean()), _interval(samples), len(x), len(groups),
                    "item" if clusters is None else "article")


def paired_bootstrap_mean_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence | None = None,
                                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> Estimate:
    """mean(a) - mean(b) for two models scored on the same items, resampling items (or clusters)
    jointly for both models."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values must have the same non-zero length ({a.size} vs {b.size})")
    d = a - b
    groups = _cluster_index(len(d), clusters)
    samples = [d[rows].mean() for rows in _resampled_rows(groups, n_resamples, seed)]
    return Estimate(float(d.mean()), _interval(samples), len(d), len(groups),
                    "item" if clusters is None else "article")


def perplexity(nll: Sequence[float], tokens: Sequence[int]) -> float:
    """Token-weighted perplexity of per-article summed NLLs."""
    return math.exp(float(np.sum(nll)) / float(np.sum(tokens)))


def bootstrap_perplexity(nll: Sequence[float], tokens: Sequence[int], n_resamples: int = N_RESAMPLES,
                         seed: int = 0) -> Estimate:
    """Perplexity with a 95% interval from resampling articles (`nll[i]`, `tokens[i]`: article i)."""
    nll, tokens = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    groups = _cluster_index(len(nll), None)
    samples = [math.exp(nll[r].sum() / tokens[r].sum()) for r in _resampled_rows(groups, n_resamples, seed)]
    return Estimate(perplexity(nll, tokens), _interval(samples), int(tokens.sum()), len(nll), "article")


def paired_bootstrap_perplexity(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int],
                                n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """Perplexity of model a minus that of model b on the same articles, resampling articles.

    Returns the difference and the ratio (a / b), each with its 95% interval.
    """
    a, b, t = (np.asarray(v, dtype=float) for v in (nll_a, nll_b, tokens))
    if not (a.shape == b.shape == t.shape) or a.size == 0:
        raise ValueError("per-article NLLs and token counts must have the same non-zero length")
    diffs, ratios = [], []
    for rows in _resampled_rows(_cluster_index(len(a), None), n_resamples, seed):
        pa, pb = math.exp(a[rows].sum() / t[rows].sum()), math.exp(b[rows].sum() / t[rows].sum())
        diffs.append(pa - pb)
        ratios.append(pa / pb)
    pa, pb = perplexity(a, t), perplexity(b, t)
    return {"a": pa, "b": pb, "difference": pa - pb, "ci95": _interval(diffs),
            "ratio": pa / pb, "ratio_ci95": _interval(ratios), "articles": int(a.size),
            "tokens": int(t.sum()), "resamples": n_resamples}


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """McNemar's test of two models' accuracy on the same items.

    Only discordant items count: `b01` (a wrong, b right) and `b10` (a right, b wrong). The exact
    two-sided p-value is 2 * P(X <= min(b01, b10)) for X ~ Binomial(b01 + b10, 1/2), capped at 1;
    the chi-square statistic with continuity correction is reported beside it.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError("McNemar needs the same items for both models")
    b10 = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    b01 = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    n = b01 + b10
    if n == 0:
        return {"a_only": 0, "b_only": 0, "p_exact": 1.0, "chi2_cc": 0.0, "p_chi2_cc": 1.0}
    k = min(b01, b10)
    p_exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    chi2 = (abs(b01 - b10) - 1) ** 2 / n
    return {"a_only": b10, "b_only": b01, "p_exact": p_exact, "chi2_cc": chi2,
            "p_chi2_cc": math.erfc(math.sqrt(chi2 / 2))}


def mean_sd(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof=1; None for a single value) across seeds."""
    x = np.asarray(values, dtype=float)
    sd = float(x.std(ddof=1)) if x.size > 1 else None
    return {"n": int(x.size), "mean": float(x.mean()), "sd": sd, "values": [float(v) for v in x]}


# Two-sided 95% quantiles of Student's t by degrees of freedom (a handful of seeds needs the small ones).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (the next smaller tabulated df above
    10, so the interval errs wide; 1.96 beyond 30)."""
    if df < 1:
        raise ValueError("a t interval needs at least two paired values")
    if df > 30:
        return 1.96
    return T_975[max(k for k in T_975 if k <= df)]


def paired_t_interval(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of the paired differences a - b (e.g. full vs pruned trained with the same seed), their sample
    standard deviation and the 95% t interval of the mean (None with fewer than two pairs)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size != len(b) or d.ndim != 1:
        raise ValueError("paired values must be two sequences of the same length")
    mean = float(d.mean())
    if d.size < 2:
        return {"n": int(d.size), "mean": mean, "sd": None, "ci95": None, "values": d.tolist()}
    sd = float(d.std(ddof=1))
    half = t_quantile(d.size - 1) * sd / math.sqrt(d.size)
    return {"n": int(d.size), "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "values": d.tolist()}


def compare(what: str, a_name: str, b_name: str, difference: float, ci95: Sequence[float], *,
            unit: str = "", test: str = "paired bootstrap", digits: int = 2) -> str:
    """One sentence for a report: the direction only when the 95% interval excludes 0.

    >>> compare("perplexity", "pruned", "full", 0.3, [0.1, 0.5])
    'pruned has higher perplexity than full: +0.30 (95% CI [+0.10, +0.50], paired bootstrap).'
    """
    lo, hi = ci95
    f = f"{{:+.{digits}f}}"
    interval = f"95% CI [{f.format(lo)}, {f.format(hi)}]{(' ' + unit) if unit else ''}, {test}"
    if lo > 0 or hi < 0:
        word = "higher" if difference > 0 else "lower"
        return f"{a_name} has {word} {what} than {b_name}: {f.format(difference)} ({interval})."
    return f"no detectable difference in {what} between {a_name} and {b_name}: {f.format(difference)} ({interval})."


def excludes_zero(ci95: Sequence[float]) -> bool:
    return ci95[0] > 0 or ci95[1] < 0


# ---------------------------------------------------------------- additions for stage 05


def loss_gap_difference(val_a: Sequence[float], val_b: Sequence[float], val_tokens: Sequence[int],
                        train_a: Sequence[float], train_b: Sequence[float], train_tokens: Sequence[int],
                        n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """How much wider model a's generalisation gap is than model b's, in nats per token.

    gap(m) = validation loss(m) - train-slice loss(m), each token-weighted over per-article NLL sums.
    The validation articles and the train-slice articles are resampled independently of each other,
    and each resample is used for both models (paired across models). Returns the gap of each
    model, the difference a - b and its 95% interval.
    """
    va, vb, vt, ta, tb, tt = (np.asarray(v, dtype=float) for v in (val_a, val_b, val_tokens,
                                                                   train_a, train_b, train_tokens))
    if not (va.shape == vb.shape == vt.shape and ta.shape == tb.shape == tt.shape) or not va.size or not ta.size:
        raise ValueError("per-article NLLs and token counts must have matching non-zero lengths")

    def gaps(v_rows, t_rows):
        vt_sum, tt_sum = vt[v_rows].sum(), tt[t_rows].sum()
        return (va[v_rows].sum() / vt_sum - ta[t_rows].sum() / tt_sum,
                vb[v_rows].sum() / vt_sum - tb[t_rows].sum() / tt_sum)

    rng_v = _resampled_rows(_cluster_index(va.size, None), n_resamples, seed)
    rng_t = _resampled_rows(_cluster_index(ta.size, None), n_resamples, seed + 1)
    diffs = [ga - gb for ga, gb in (gaps(v, t) for v, t in zip(rng_v, rng_t))]
    ga, gb = gaps(np.arange(va.size), np.arange(ta.size))
    return {"a": float(ga), "b": float(gb), "difference": float(ga - gb), "ci95": _interval(diffs),
            "validation_articles": int(va.size), "train_articles": int(ta.size), "resamples": n_resamples}


def paired_bootstrap_ratio(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES,
                           seed: int = 0) -> dict:
    """mean(a) / mean(b) for paired measurements (e.g. timings of two models taken in the same round),
    resampling the pairs; with the difference of the means and both 95% intervals."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values must have the same non-zero length ({a.size} vs {b.size})")
    ratios, diffs = [], []
    for rows in _resampled_rows(_cluster_index(a.size, None), n_resamples, seed):
        ratios.append(a[rows].mean() / b[rows].mean())
        diffs.append(a[rows].mean() - b[rows].mean())
    return {"a": float(a.mean()), "b": float(b.mean()), "difference": float(a.mean() - b.mean()),
            "ci95": _interval(diffs), "ratio": float(a.mean() / b.mean()), "ratio_ci95": _interval(ratios),
            "pairs": int(a.size), "resamples": n_resamples}
