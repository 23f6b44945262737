"""How many calibration tokens the block ranking needs: read off one large prefix-cached scoring.

`score_windows` keeps every window's losses, so the scores of any subset of a large pool of windows cost
nothing more. For a pool of P evenly spaced training windows (the reference) and a budget of n windows
(n dividing P), the P/n disjoint grids {o, o + P/n, o + 2P/n, …} are each an evenly spaced sample of the
split; grid o = 0 is exactly what 04 draws with that budget. For each budget `budget_table` reports the
rank correlation of each grid's loss increases with the reference's, and how often the grid picks the
reference's block; `smallest_budget` is the least budget whose grids all pick it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bmwlm.prune.scoring import WindowScores


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties: Pearson correlation of the ranks)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties share their mean rank
            tied = v == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    if len(xs) != len(ys):
        raise ValueError("spearman needs two sequences of the same length")
    if len(xs) < 2:
        return float("nan")
    a, b = ranks(xs), ranks(ys)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def argmin_block(delta: Sequence[float]) -> int:
    return min(range(len(delta)), key=lambda i: (delta[i], i))


@dataclass
class BudgetRow:
    windows: int
    tokens: int  # predicted tokens of one grid
    grids: int  # disjoint evenly spaced samples of this size in the pool
    chosen_first_grid: int  # the block 04 would remove with this budget (grid 0)
    rho_first_grid: float  # Spearman of grid 0's loss increases with the reference's
    share_same_block: float  # share of the grids that pick the reference's block
    rho_min: float
    rho_median: float
    chosen_blocks: dict[int, int]  # block -> how many grids pick it

    def to_dict(self) -> dict:
        return {**self.__dict__, "chosen_blocks": {str(k): v for k, v in self.chosen_blocks.items()}}


def budget_table(pool: WindowScores, sizes: Sequence[int]) -> tuple[int, list[BudgetRow]]:
    """The reference block (whole pool) and a BudgetRow per budget size (in windows; each must divide
    the pool size)."""
    total = len(pool.tokens)
    ref = pool.delta_losses()
    ref_block = argmin_block(ref)
    rows = []
    for n in sizes:
        if total % n:
            raise ValueError(f"{n} windows do not divide the pool of {total}")
        stride = total // n
        picks, rhos = [], []
        for o in range(stride):
            sub = pool.subset(range(o, total, stride)).delta_losses()
            picks.append(argmin_block(sub))
            rhos.append(spearman(sub, ref))
        counts: dict[int, int] = {}
        for p in picks:
            counts[p] = counts.get(p, 0) + 1
        rows.append(BudgetRow(windows=n, tokens=int(pool.subset(range(0, total, stride)).tokens.sum()), grids=stride,
                              chosen_first_grid=picks[0], rho_first_grid=rhos[0],
                              share_same_block=sum(p == ref_block for p in picks) / stride,
                              rho_min=float(min(rhos)), rho_median=float(np.median(rhos)),
                              chosen_blocks=dict(sorted(counts.items(), key=lambda kv: -kv[1]))))
    return ref_block, rows


def smallest_budget(rows: Sequence[BudgetRow]) -> BudgetRow | None:
    """The smallest budget whose every grid picks the reference's block (and every larger one too)."""
    ok = None
    for row in sorted(rows, key=lambda r: -r.windows):
        if row.share_same_block < 1.0:
            break
        ok = row
    return ok
