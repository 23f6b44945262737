"""Scores of every block from one pass per calibration batch, and the old one-pass-per-block reference.

`score_windows` is 04's measurement. Per batch of windows it runs the intact model once (`BlockRunner.trace`)
and then, for each block k, only blocks k+1 … N-1 and the output layer, from the cached input of block k.
From the same cached hidden states, at no extra model cost, it collects
- the input/output cosine of every block, averaged over every token (ShortGPT's Block Influence is 1 − it);
- the angular distance arccos(cos)/π between the input of block ℓ and of block ℓ+n (Gromov et al. 2025,
  eq. 7: on the **last token** of each sequence, here of each window; the all-token average is kept
  beside it as a lower-noise diagnostic), for spans that end before the final block.
Everything is kept **per window** (`WindowScores`), so a token budget's ranking can be read off any subset
of windows without scoring again (the calibration-budget measurement does exactly that).

`uncached_skip_losses` is how 04 scored before (one full forward pass per skipped block, `skip_block` +
`evaluate_nll`): kept as the reference the tests and the benchmark compare against.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from bmwlm.modeling import evaluate_nll, get_blocks
from bmwlm.prune.runner import BlockRunner, batches, indexed_batches

log = logging.getLogger(__name__)


@dataclass
class WindowScores:
    """Per-window sums: everything a block ranking needs, for any subset of the windows."""

    tokens: np.ndarray  # (W,) predicted tokens per window
    baseline: np.ndarray  # (W,) summed NLL of the intact model
    skipped: np.ndarray  # (W, N) summed NLL with block k skipped
    cosine: np.ndarray  # (W, N) summed input/output cosine of block k over the window's tokens
    positions: np.ndarray  # (W,) tokens (positions) per window, the cosine sums' counts
    angular_last: np.ndarray  # (W, N, N) [w, l, m]: angular distance of the inputs of blocks l < m (last token)
    angular_mean: np.ndarray  # (W, N, N) the same summed over the window's tokens

    @property
    def n_blocks(self) -> int:
        return self.skipped.shape[1]

    def subset(self, rows: Sequence[int]) -> "WindowScores":
        rows = np.asarray(rows, dtype=int)
        return WindowScores(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})

    # ---- aggregates over the windows held
    def baseline_loss(self) -> float:
        return float(self.baseline.sum() / self.tokens.sum())

    def losses_without(self) -> np.ndarray:
        """(N,) mean loss with each block skipped."""
        return self.skipped.sum(axis=0) / self.tokens.sum()

    def delta_losses(self) -> np.ndarray:
        return self.losses_without() - self.baseline_loss()

    def cosines(self) -> np.ndarray:
        return self.cosine.sum(axis=0) / self.positions.sum()

    def angular_distance(self, span: int, last_token: bool = True) -> np.ndarray:
        """Distance between the input of block l and of block l + span, for l = 0 … N-1-span (the span
        l … l+span-1 never includes the final block)."""
        n = self.n_blocks
        if not 1 <= span <= n - 1:
            raise ValueError(f"span {span} outside 1..{n - 1}")
        if last_token:
            mat = self.angular_last.sum(axis=0) / len(self.tokens)
        else:
            mat = self.angular_mean.sum(axis=0) / self.positions.sum()
        return np.array([mat[l, l + span] for l in range(n - span)])

    @staticmethod
    def concat(parts: Sequence["WindowScores"]) -> "WindowScores":
        return WindowScores(**{k: np.concatenate([getattr(p, k) for p in parts])
                               for k in WindowScores.__dataclass_fields__})


def _angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(cosine)/π over the last dimension, in float32 (clamped against rounding above 1)."""
    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


def hidden_statistics(trace, n_blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row block cosines (rows, N) summed over positions, and the angular-distance matrices
    (rows, N, N) between block inputs: last position, and summed over positions."""
    rows = trace.ids.shape[0]
    cos = np.zeros((rows, n_blocks))
    ang_last = np.zeros((rows, n_blocks, n_blocks))
    ang_sum = np.zeros((rows, n_blocks, n_blocks))
    with torch.inference_mode():
        for j in range(n_blocks):
            c = torch.nn.functional.cosine_similarity(trace.hidden(j).float(), trace.hidden(j + 1).float(), dim=-1)
            cos[:, j] = c.sum(dim=1).double().numpy()
            for m in range(j + 1, n_blocks):
                a = _angles(trace.inputs[j], trace.inputs[m])
                ang_last[:, j, m] = a[:, -1].double().numpy()
                ang_sum[:, j, m] = a.sum(dim=1).double().numpy()
    return cos, ang_last, ang_sum


def score_windows(runner: BlockRunner, windows: Sequence[Sequence[int]], batch_size: int = 8,
                  progress: bool = False, blocks: Sequence[int] | None = None,
                  on_batch: Callable[[int, int], None] | None = None) -> WindowScores:
    """Prefix-cached per-window scores of skipping each block in `blocks` (default: all).

    Blocks not in `blocks` get NaN in `skipped` (the benchmark's "new 04" scores all of them).
    """
    n = runner.n_blocks
    wanted = list(range(n)) if blocks is None else sorted(set(blocks))
    parts = []
    all_batches = list(batches(windows, batch_size))
    bar = tqdm(all_batches, desc="score blocks", unit="batch", disable=not progress)
    for b, ids in enumerate(bar):
        trace = runner.trace(ids)
        base = runner.nll(trace.output, ids)
        skipped = np.full((ids.shape[0], n), np.nan)
        for k in wanted:
            hidden, _ = runner.continue_from(trace, {k})
            skipped[:, k] = runner.nll(hidden, ids).double().numpy()
        cos, ang_last, ang_sum = hidden_statistics(trace, n)
        parts.append(WindowScores(
            tokens=np.full(ids.shape[0], ids.shape[1] - 1, dtype=float), baseline=base.double().numpy(),
            skipped=skipped, cosine=cos, positions=np.full(ids.shape[0], ids.shape[1], dtype=float),
            angular_last=ang_last, angular_mean=ang_sum))
        del trace
        if on_batch:
            on_batch(b + 1, len(all_batches))
    return WindowScores.concat(parts)


def set_window_nll(runner: BlockRunner, windows: Sequence[Sequence[int]], removal_sets: Sequence[Sequence[int]],
                   batch_size: int = 8, progress: bool = False, desc: str = "removal sets") -> list[list[float]]:
    """Per removal set, the summed next-token NLL of each window (in the order of `windows`) with the set's
    blocks skipped; every set from one trace of the intact model per batch."""
    keys = [tuple(sorted(set(s))) for s in removal_sets]
    unique = list(dict.fromkeys(keys))
    per_window = {key: [0.0] * len(windows) for key in unique}
    for rows, ids in tqdm(list(indexed_batches(windows, batch_size)), desc=desc, unit="batch", disable=not progress):
        trace = runner.trace(ids)
        for key in unique:
            hidden, _ = runner.continue_from(trace, key)
            for row, nll in zip(rows, runner.nll(hidden, ids).tolist()):
                per_window[key][row] = nll
        del trace
    return [list(per_window[k]) for k in keys]


def mean_loss(window_nll: Sequence[float], windows: Sequence[Sequence[int]]) -> float:
    """Token-weighted mean loss of per-window summed NLLs (a window of n tokens predicts n - 1)."""
    return math.fsum(window_nll) / sum(len(w) - 1 for w in windows)


def set_losses(runner: BlockRunner, windows: Sequence[Sequence[int]], removal_sets: Sequence[Sequence[int]],
               batch_size: int = 8, progress: bool = False, desc: str = "removal sets") -> list[float]:
    """Mean loss of the model with each set of blocks removed (skipped), all sets from one trace per batch."""
    return [mean_loss(nll, windows) for nll in set_window_nll(runner, windows, removal_sets, batch_size, progress, desc)]


# ---------------------------------------------------------------- the old way: one full pass per block


def _identity_forward(hidden_states, *args, **kwargs):
    return hidden_states


@contextlib.contextmanager
def skip_block(model, index: int):
    """Temporarily make block `index` the identity (output = input), without copying the model.

    Patches the block instance's `forward`; the original is restored on exit even after an error.
    """
    block = get_blocks(model)[index]
    patched_before = "forward" in vars(block)
    original = vars(block).get("forward")
    block.forward = _identity_forward
    try:
        yield model
    finally:
        if patched_before:
            block.forward = original
        else:
            del block.forward


def uncached_skip_losses(model, windows: Sequence[Sequence[int]], bf16: bool = False, batch_size: int = 8,
                         progress: bool = False) -> tuple[float, list[float]]:
    """The intact model's mean loss and the mean loss with each block skipped, one full forward pass
    per block (how 04 scored before the prefix cache; the reference for tests and the benchmark)."""
    nll, n = evaluate_nll(model, windows, batch_size=batch_size, bf16=bf16)
    losses = []
    for k in tqdm(range(len(get_blocks(model))), desc="skip block (uncached)", disable=not progress):
        with skip_block(model, k):
            s, _ = evaluate_nll(model, windows, batch_size=batch_size, bf16=bf16)
        losses.append(s / n)
    return nll / n, losses
