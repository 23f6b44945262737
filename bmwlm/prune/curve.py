"""The removal curve: perplexity of the model with k blocks removed, k = 0 … K, for each selection method.

Every method's set for every k is scored on the calibration windows (where the choices were made) and on
the validation windows (the reporting split, scored only after every set is fixed), from one trace of the
intact model per batch (`scoring.set_losses`): the sets share the prefix before their first block. Sets
that two methods share are scored once. No choice here reads a validation number: `best_method` compares
methods by calibration perplexity. `validation_comparisons` then puts an interval on each method's
validation perplexity relative to the best method's (paired over the same windows).
"""
from __future__ import annotations

import math
from typing import Sequence

from bmwlm import stats
from bmwlm.prune.methods import METHODS, Selection
from bmwlm.prune.runner import BlockRunner
from bmwlm.prune.scoring import mean_loss, set_losses, set_window_nll
from bmwlm.records.prune import CurveComparison, CurvePoint


def point(k: int, blocks: Sequence[int], calibration_loss: float, validation_loss: float | None,
          validation_window_nll: Sequence[float] | None = None) -> CurvePoint:
    return CurvePoint(k=k, blocks=list(blocks), calibration_loss=calibration_loss,
                      calibration_perplexity=math.exp(calibration_loss), validation_loss=validation_loss,
                      validation_perplexity=math.exp(validation_loss) if validation_loss is not None else None,
                      validation_window_nll=list(validation_window_nll) if validation_window_nll is not None else None)


def removal_curve(runner: BlockRunner, selection: Selection, calibration: Sequence[Sequence[int]],
                  validation: Sequence[Sequence[int]] | None, batch_size: int = 8, methods: Sequence[str] = METHODS,
                  progress: bool = False) -> dict[str, list[CurvePoint]]:
    """method -> a CurvePoint for k = 0 … selection.max_removed."""
    sets = selection.sets(methods)
    flat = [s for m in methods for s in sets[m]]
    cal = dict(zip(map(tuple, flat), set_losses(runner, calibration, flat, batch_size, progress, "curve: calibration")))
    val = (dict(zip(map(tuple, flat), set_window_nll(runner, validation, flat, batch_size, progress,
                                                     "curve: validation"))) if validation else {})

    def at(k, s):
        nll = val.get(tuple(s))
        return point(k, s, cal[tuple(s)], mean_loss(nll, validation) if nll is not None else None, nll)

    return {m: [at(k, s) for k, s in enumerate(sets[m])] for m in methods}


def best_method(curves: dict[str, list[CurvePoint]], k: int) -> str:
    """The method whose k-block set has the lowest calibration loss (ties: the order of METHODS)."""
    order = {m: i for i, m in enumerate(METHODS)}
    return min(curves, key=lambda m: (curves[m][k].calibration_loss, order.get(m, len(order))))


def validation_comparisons(curves: dict[str, list[CurvePoint]], reference: str, window_tokens: Sequence[int],
                           n_resamples: int = stats.N_RESAMPLES, seed: int = 0) -> list[CurveComparison]:
    """For k >= 1, every other method's validation perplexity relative to `reference`'s at the same k, with a
    paired bootstrap interval resampling validation windows (empty when the windows' losses are not kept)."""
    out = []
    for k in range(1, len(curves[reference])):
        ref = curves[reference][k]
        for method, points in curves.items():
            p = points[k]
            if method == reference or p.validation_window_nll is None or ref.validation_window_nll is None:
                continue
            r = stats.paired_bootstrap_perplexity(p.validation_window_nll, ref.validation_window_nll, window_tokens,
                                                  n_resamples, seed)  # the same set: ratio 1 in every resample
            out.append(CurveComparison(
                k=k, method=method, reference=reference, same_set=p.blocks == ref.blocks, perplexity=r["a"],
                reference_perplexity=r["b"], ratio=r["ratio"], ratio_ci95=r["ratio_ci95"], windows=len(window_tokens),
                resamples=n_resamples))
    return out
