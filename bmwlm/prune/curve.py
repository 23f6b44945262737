"""The removal curve: perplexity of the model with k blocks removed, k = 0 … K, for each selection method.

Every method's set for every k is scored on the calibration windows (where the choices were made) and on
the validation windows (the reporting split, scored only after every set is fixed), from one trace of the
intact model per batch (`scoring.set_losses`): the sets share the prefix before their first block. Sets
that two methods share are scored once. No choice here reads a validation number: `best_method` compares
methods by calibration perplexity.
"""
from __future__ import annotations

import math
from typing import Sequence

from bmwlm.prune.methods import METHODS, Selection
from bmwlm.prune.runner import BlockRunner
from bmwlm.prune.scoring import set_losses
from bmwlm.records.prune import CurvePoint


def point(k: int, blocks: Sequence[int], calibration_loss: float, validation_loss: float | None) -> CurvePoint:
    return CurvePoint(k=k, blocks=list(blocks), calibration_loss=calibration_loss,
                      calibration_perplexity=math.exp(calibration_loss), validation_loss=validation_loss,
                      validation_perplexity=math.exp(validation_loss) if validation_loss is not None else None)


def removal_curve(runner: BlockRunner, selection: Selection, calibration: Sequence[Sequence[int]],
                  validation: Sequence[Sequence[int]] | None, batch_size: int = 8, methods: Sequence[str] = METHODS,
                  progress: bool = False) -> dict[str, list[CurvePoint]]:
    """method -> a CurvePoint for k = 0 … selection.max_removed."""
    sets = selection.sets(methods)
    flat = [s for m in methods for s in sets[m]]
    cal = dict(zip(map(tuple, flat), set_losses(runner, calibration, flat, batch_size, progress, "curve: calibration")))
    val = (dict(zip(map(tuple, flat), set_losses(runner, validation, flat, batch_size, progress, "curve: validation")))
           if validation else {})
    return {m: [point(k, s, cal[tuple(s)], val.get(tuple(s))) for k, s in enumerate(sets[m])] for m in methods}


def best_method(curves: dict[str, list[CurvePoint]], k: int) -> str:
    """The method whose k-block set has the lowest calibration loss (ties: the order of METHODS)."""
    order = {m: i for i, m in enumerate(METHODS)}
    return min(curves, key=lambda m: (curves[m][k].calibration_loss, order.get(m, len(order))))
