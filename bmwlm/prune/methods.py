"""Five ways to choose which k blocks to remove (issue 8), each returning k distinct block indices.

| method | scores from | choice for k |
|---|---|---|
| `loss_increase` | loss with each block skipped, once (04's default for k = 1) | the k smallest increases |
| `iterative_loss` | SLEB (Song et al. 2024): re-score the remaining blocks after each removal | greedy, one at a time |
| `block_influence` | ShortGPT (Men et al. 2024): BI = 1 − cos(block input, block output), every token | the k smallest BI |
| `angular_span` | Gromov et al. (ICLR 2025), eq. 7: arccos(cos)/π of the inputs of blocks ℓ and ℓ+k, last token | the span ℓ*…ℓ*+k−1 with the smallest distance |
| `last_blocks` | position only (the "prune the deepest layers, but never the final one" heuristic) | blocks N−1−k … N−2 |

All but `iterative_loss` are read from one `WindowScores` (one prefix-cached pass); `iterative_loss` runs
k further passes, each scoring the remaining blocks of the model without the blocks already chosen.
Ties go to the lower block index. None of them looks at the validation split.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from bmwlm.prune.runner import BlockRunner, batches
from bmwlm.prune.scoring import WindowScores

log = logging.getLogger(__name__)

METHODS = ("loss_increase", "iterative_loss", "block_influence", "angular_span", "last_blocks")
METHOD_LABELS = {
    "loss_increase": "loss increase, one pass",
    "iterative_loss": "loss increase, iterative (SLEB)",
    "block_influence": "Block Influence (ShortGPT)",
    "angular_span": "angular distance span (Gromov et al.)",
    "last_blocks": "last blocks before the final one",
}


def _ascending(values: Sequence[float]) -> list[int]:
    """Block indices by ascending value, ties to the lower index."""
    return sorted(range(len(values)), key=lambda i: (values[i], i))


def one_pass_order(delta_losses: Sequence[float]) -> list[int]:
    return _ascending(delta_losses)


def block_influence(cosines: Sequence[float]) -> list[float]:
    return [1.0 - c for c in cosines]


def last_blocks(n_blocks: int, k: int) -> list[int]:
    """The k blocks just before the final one."""
    _check_k(n_blocks, k)
    return list(range(n_blocks - 1 - k, n_blocks - 1))


def angular_span(distances: Sequence[float], k: int) -> list[int]:
    """The k-block span starting at argmin of `distances` (distances[l]: inputs of l and l + k)."""
    start = _ascending(distances)[0]
    return list(range(start, start + k))


def _check_k(n_blocks: int, k: int) -> None:
    if not 0 <= k <= n_blocks - 1:
        raise ValueError(f"cannot remove {k} of {n_blocks} blocks (at most {n_blocks - 1}, never the final one)")


@dataclass
class IterativeStep:
    removed_before: list[int]  # blocks already removed when this step scored the rest
    losses: dict[int, float]  # candidate block -> mean loss of the model without removed_before + it
    chosen: int


@dataclass
class Selection:
    """Every method's scores and its chosen set for k = 1 … max_removed."""

    n_blocks: int
    max_removed: int
    delta_losses: list[float]
    cosines: list[float]
    angular: dict[int, list[float]]  # span k -> distance per start block (the paper's last-token definition)
    angular_all_tokens: dict[int, list[float]]  # the same, averaged over every token (diagnostic)
    iterative: list[IterativeStep] = field(default_factory=list)

    def chosen(self, method: str, k: int) -> list[int]:
        """The k blocks `method` removes (sorted)."""
        _check_k(self.n_blocks, k)
        if k == 0:
            return []
        if method == "loss_increase":
            out = one_pass_order(self.delta_losses)[:k]
        elif method == "block_influence":
            out = _ascending(block_influence(self.cosines))[:k]
        elif method == "angular_span":
            out = angular_span(self.angular[k], k)
        elif method == "last_blocks":
            out = last_blocks(self.n_blocks, k)
        elif method == "iterative_loss":
            if k > len(self.iterative):
                raise ValueError(f"iterative selection ran {len(self.iterative)} steps, not {k}")
            out = [step.chosen for step in self.iterative[:k]]
        else:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        return sorted(out)

    def sets(self, methods: Sequence[str] = METHODS) -> dict[str, list[list[int]]]:
        """method -> [set for k = 0, 1, …, max_removed]."""
        return {m: [self.chosen(m, k) for k in range(self.max_removed + 1)] for m in methods}


def iterative_selection(runner: BlockRunner, windows: Sequence[Sequence[int]], steps: int, batch_size: int = 8,
                        progress: bool = False, first_losses: Sequence[float] | None = None) -> list[IterativeStep]:
    """SLEB: remove the block whose removal raises the calibration loss least, re-score the rest, repeat.

    Each step runs the intact model once per batch, the model without the blocks removed so far from the
    first of them (keeping every block's input), then each candidate from its own input onwards.
    `first_losses`: the one-pass losses on the same windows, which are step 1's scores (not recomputed).
    """
    n = runner.n_blocks
    _check_k(n, steps)
    removed: list[int] = []
    out = []
    windows_batches = list(batches(windows, batch_size))
    for step in range(steps):
        candidates = [c for c in range(n) if c not in removed]
        if step == 0 and first_losses is not None:
            losses = {c: float(first_losses[c]) for c in candidates}
            chosen = min(candidates, key=lambda c: (losses[c], c))
            out.append(IterativeStep(removed_before=[], losses=losses, chosen=chosen))
            removed.append(chosen)
            continue
        sums = dict.fromkeys(candidates, 0.0)
        tokens = 0
        for ids in tqdm(windows_batches, desc=f"iterative step {step + 1}/{steps}", unit="batch",
                        disable=not progress, leave=False):
            trace = runner.trace(ids)
            _, inputs = runner.continue_from(trace, removed, keep=range(n))
            for c in candidates:
                hidden = runner.run_from(trace, c + 1, inputs[c], skip=removed)
                sums[c] += runner.nll(hidden, ids).sum().item()
            tokens += ids.numel() - ids.shape[0]
            del trace, inputs
        losses = {c: s / tokens for c, s in sums.items()}
        chosen = min(candidates, key=lambda c: (losses[c], c))
        out.append(IterativeStep(removed_before=sorted(removed), losses=losses, chosen=chosen))
        log.info("iterative step %d: remove block %d (calibration loss %.4f)", step + 1, chosen, losses[chosen])
        removed.append(chosen)
    return out


def selection_from(scores: WindowScores, max_removed: int, iterative: Sequence[IterativeStep] = ()) -> Selection:
    n = scores.n_blocks
    _check_k(n, max_removed)
    return Selection(
        n_blocks=n, max_removed=max_removed, delta_losses=[float(x) for x in scores.delta_losses()],
        cosines=[float(x) for x in scores.cosines()],
        angular={k: [float(x) for x in scores.angular_distance(k)] for k in range(1, max_removed + 1)},
        angular_all_tokens={k: [float(x) for x in scores.angular_distance(k, last_token=False)]
                            for k in range(1, max_removed + 1)},
        iterative=list(iterative))


def quarter_depth(n_blocks: int) -> int:
    """About a quarter of the blocks (30 -> 8), at least 1 and never the final block."""
    return max(1, min(n_blocks - 1, int(n_blocks / 4 + 0.5)))
