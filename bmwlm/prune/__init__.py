"""Stage 04's measurements: how much each transformer block matters, which to remove, and the depth study.

- `data`: the calibration sample (evenly spaced windows of the **training** split; the validation split
  is never used to choose) and the validation windows (reporting only, after the choice).
- `runner`: the model block by block, so that the blocks before a skipped one run once per batch
  (`BlockRunner`, prefix caching).
- `scoring`: every block's loss increase when skipped, the input/output cosine and the angular distances
  of block spans, per window (`score_windows`); the old one-pass-per-block scorer as the reference.
- `methods`: five selection methods for k blocks; `curve`: perplexity against blocks removed;
  `budget`: how many calibration tokens the ranking needs.

Importance = calibration-loss increase when a block is skipped (its output replaced by its input), which
is exactly the loss of the model without it, so the block it picks is the one whose removal hurts the loss
least on these tokens. The cosine proxy (ShortGPT's Block Influence = 1 − cosine) is recorded beside it.
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

from bmwlm.io import BadRecordError, MissingInputError
from bmwlm.modeling import ModelUnavailableError, remove_block
from bmwlm.prune.budget import spearman
from bmwlm.prune.data import PruneInputError, calibration_sample, check_disjoint, validation_windows
from bmwlm.prune.runner import BlockRunner, RunnerError
from bmwlm.prune.scoring import (
    WindowScores, mean_loss, score_windows, set_window_nll, skip_block, uncached_skip_losses,
)
from bmwlm.records.prune import BlockScore, ProxyComparison

METHOD = "loss_increase"

# 04's default calibration budget in predicted tokens: 16 windows of 256 tokens, evenly spaced over the
# training split. Measured on SmolLM2-135M (tests/benchmark_training.py --prune-budget; README): against a
# 128-window (32,640-token) float32 reference, every one of the 8 disjoint evenly spaced 16-window grids chose
# the reference's block (rank correlation of the scores >= 0.98); at 8 windows 3 of 16 grids chose another.
DEFAULT_CALIBRATION_TOKENS = 4080
BUDGET_REASON = ("smallest budget at which every disjoint evenly spaced grid of the training split chose the "
                 "same block as a 128-window (32,640-token) reference on SmolLM2-135M; rank correlation >= 0.98 "
                 "(tests/benchmark_training.py --prune-budget)")

# The errors 04_prune_layer.py reports in one line, without a traceback.
STAGE_ERRORS = (MissingInputError, BadRecordError, ModelUnavailableError, PruneInputError, RunnerError)

__all__ = [
    "BlockRunner", "DEFAULT_CALIBRATION_TOKENS", "METHOD", "PruneInputError", "STAGE_ERRORS", "WindowScores",
    "block_scores", "calibration_sample", "check_block", "check_disjoint", "choose_block", "cosine_choice",
    "mean_loss", "naive_blocks", "proxy_comparison", "score_windows", "set_window_nll", "skip_block", "spearman",
    "uncached_skip_losses",
    "validation_windows", "without_blocks",
]


def check_block(block: int | str, n_blocks: int) -> None:
    """Refuse a --block index the model does not have."""
    if block != "auto" and not -n_blocks <= block < n_blocks:
        raise PruneInputError(f"--block {block}: the model has {n_blocks} blocks (0..{n_blocks - 1})")


def block_scores(scores: WindowScores) -> tuple[float, list[BlockScore]]:
    """The intact model's mean loss and one BlockScore per block (importance = delta_loss)."""
    baseline = scores.baseline_loss()
    out = []
    for k, (loss, cos) in enumerate(zip(scores.losses_without(), scores.cosines())):
        out.append(BlockScore(block=k, loss_without=float(loss), delta_loss=float(loss - baseline),
                              cosine_similarity=float(cos), importance=float(loss - baseline)))
    return baseline, out


def choose_block(scores: Sequence[BlockScore]) -> int:
    """The block with the smallest importance (ties: the lower index)."""
    return min(scores, key=lambda s: (s.importance, s.block)).block


def cosine_choice(scores: Sequence[BlockScore]) -> int:
    """The block the cosine proxy would remove: the one that changes its input least."""
    return max(scores, key=lambda s: (s.cosine_similarity, -s.block)).block


def naive_blocks(n_blocks: int) -> dict[str, int]:
    """The choices one would make without measuring: the last block and the middle one."""
    return {"last": n_blocks - 1, "middle": n_blocks // 2}


def proxy_comparison(scores: Sequence[BlockScore], losses: dict[int, float]) -> ProxyComparison:
    """What the cosine proxy would have chosen, that block's loss, and how the two rankings agree."""
    block = cosine_choice(scores)
    return ProxyComparison(method="cosine_similarity", block=block, loss=losses[block],
                           rank_correlation_with_importance=spearman([s.importance for s in scores],
                                                                     [-s.cosine_similarity for s in scores]))


def without_blocks(model, indices: Iterable[int]):
    """A copy of `model` with the blocks `indices` deleted (config and layer_idx fixed by remove_block)."""
    out = copy.deepcopy(model)
    for index in sorted(set(indices), reverse=True):
        remove_block(out, index)
    return out
