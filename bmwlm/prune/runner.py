"""Running a causal LM block by block, so that the blocks before a skipped one run only once.

`BlockRunner.trace(ids)` runs the intact model once and keeps, for every transformer block, the hidden
states entering it and the other arguments the model passed it (attention mask, rotary position
embeddings, position ids: whatever the architecture uses, captured by a forward pre-hook, so nothing
model-specific is re-implemented). Skipping a set of blocks S then needs only blocks min(S)+1 … N-1,
the final norm and the output layer: `continue_from(trace, S)`. The loss comes from `nll`, which runs the
output layer and the cross-entropy a chunk of positions at a time, so the (positions x vocabulary) logits
never exist in full.

Skipping a block (its output = its input) is exactly removing it: the residual stream passes through and
every later block sees what it would see without the block (a test checks logits and losses against
the model with the block deleted). `check_runner` compares the runner's intact loss with the model's
own forward pass once, so an architecture whose head is not `output_embeddings(final_norm(h))` is refused
rather than mis-scored.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from bmwlm.hardware import autocast
from bmwlm.modeling import get_blocks

FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
LOSS_CHUNK = 1024  # positions whose logits exist at once in `nll`


class RunnerError(RuntimeError):
    """The model cannot be run block by block (unknown layout, or the runner disagrees with the model)."""


@dataclass
class Trace:
    """One batch through the intact model: the input of every block and the last block's output."""

    ids: torch.Tensor  # (batch, positions)
    inputs: list[torch.Tensor]  # inputs[j]: hidden states entering block j
    output: torch.Tensor  # hidden states leaving the last block (before the final norm)
    calls: list[tuple[tuple, dict]]  # calls[j]: the arguments after the hidden states that block j got

    def hidden(self, j: int) -> torch.Tensor:
        """The residual stream between blocks: j = 0 … N (N: the last block's output)."""
        return self.output if j == len(self.inputs) else self.inputs[j]


def final_norm(model) -> torch.nn.Module:
    """The normalisation between the last block and the output layer (Llama `norm`, GPT-2 `ln_f`)."""
    base = model.base_model
    for name in FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise RunnerError(f"do not know the final norm of {type(model).__name__}")


class BlockRunner:
    """Block-by-block execution of a causal LM (`eval` mode, no gradients, optional autocast)."""

    def __init__(self, model, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.blocks = get_blocks(model)
        self.norm = final_norm(model)
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise RunnerError(f"{type(model).__name__} has no output layer")
        self.device, self.dtype = torch.device(device), dtype

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.dtype))
        return stack

    def trace(self, ids: torch.Tensor) -> Trace:
        """Run the intact model body once, keeping every block's input and call arguments."""
        inputs: list = [None] * self.n_blocks
        calls: list = [None] * self.n_blocks
        out: list = []

        def pre_hook(j):
            def hook(module, args, kwargs):
                if args:
                    inputs[j], calls[j] = args[0], (tuple(args[1:]), dict(kwargs))
                else:
                    rest = dict(kwargs)
                    inputs[j], calls[j] = rest.pop("hidden_states"), ((), rest)
            return hook

        def last_hook(module, args, kwargs, output):
            out.append(output[0] if isinstance(output, tuple) else output)

        handles = [b.register_forward_pre_hook(pre_hook(j), with_kwargs=True) for j, b in enumerate(self.blocks)]
        handles.append(self.blocks[-1].register_forward_hook(last_hook, with_kwargs=True))
        try:
            with self.context():
                self.model.base_model(input_ids=ids.to(self.device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        if any(x is None for x in inputs) or not out:
            raise RunnerError("not every block was called once per forward pass")
        return Trace(ids=ids, inputs=inputs, output=out[-1], calls=calls)

    def run_block(self, trace: Trace, j: int, hidden: torch.Tensor) -> torch.Tensor:
        args, kwargs = trace.calls[j]
        out = self.blocks[j](hidden, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def continue_from(self, trace: Trace, skip: Iterable[int], keep: Iterable[int] = ()) -> tuple[torch.Tensor, dict]:
        """The last block's output with the blocks in `skip` left out, computed from the cached input of
        the first skipped block (nothing before it runs again).

        `keep`: block indices j whose input in the model without `skip` is also returned (a dict j ->
        hidden states; for a skipped j, the stream where it was), for iterative selection.
        """
        skip, keep = set(skip), set(keep)
        if not skip:
            return trace.output, {j: trace.inputs[j] for j in keep}
        start = min(skip)
        kept = {j: trace.inputs[j] for j in keep if j <= start}
        hidden = self.run_from(trace, start, trace.inputs[start], skip, kept, keep)
        return hidden, kept

    def run_from(self, trace: Trace, start: int, hidden: torch.Tensor, skip: Iterable[int] = (),
                 kept: dict | None = None, keep: Iterable[int] = ()) -> torch.Tensor:
        """Run blocks start … N-1 except those in `skip` on `hidden` (block j gets trace.calls[j]);
        the input of each block in `keep` is stored in `kept`."""
        skip, keep = set(skip), set(keep)
        with self.context():
            for j in range(start, self.n_blocks):
                if kept is not None and j in keep:
                    kept[j] = hidden
                if j not in skip:
                    hidden = self.run_block(trace, j, hidden)
        return hidden

    def nll(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Summed next-token NLL of each row (float32), from the last block's output: final norm, output
        layer and cross-entropy `LOSS_CHUNK` positions at a time."""
        ids = ids.to(hidden.device)
        rows, positions = ids.shape[0], ids.shape[1] - 1
        with self.context():
            h = self.norm(hidden)[:, :-1].reshape(rows * positions, -1)
            targets = ids[:, 1:].reshape(-1)
            per_token = torch.empty(rows * positions, dtype=torch.float32, device=h.device)
            for s in range(0, h.shape[0], LOSS_CHUNK):
                logits = self.head(h[s:s + LOSS_CHUNK]).float()
                per_token[s:s + LOSS_CHUNK] = torch.nn.functional.cross_entropy(
                    logits, targets[s:s + LOSS_CHUNK], reduction="none")
        return per_token.view(rows, positions).sum(dim=1)


def indexed_batches(windows: Sequence[Sequence[int]], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Windows of equal length stacked `batch_size` at a time (in order of first appearance), each batch
    with the positions in `windows` of its rows."""
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_len.setdefault(len(w), []).append(i)
    for group in by_len.values():
        for start in range(0, len(group), batch_size):
            rows = group[start:start + batch_size]
            yield rows, torch.tensor([list(windows[i]) for i in rows], dtype=torch.long)


def batches(windows: Sequence[Sequence[int]], batch_size: int) -> Iterator[torch.Tensor]:
    """Windows of equal length stacked `batch_size` at a time (in order of first appearance)."""
    for _, ids in indexed_batches(windows, batch_size):
        yield ids


def check_runner(runner: BlockRunner, ids: torch.Tensor, tolerance: float = 1e-3) -> None:
    """Refuse a model whose loss the runner does not reproduce (a head with a bias, logit scaling, ...)."""
    trace = runner.trace(ids)
    ours = runner.nll(trace.output, ids).sum().item() / (ids.numel() - ids.shape[0])
    with runner.context():
        logits = runner.model(input_ids=ids.to(runner.device), use_cache=False).logits[:, :-1].float()
        theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                   ids[:, 1:].reshape(-1).to(logits.device)).item()
    if not math.isclose(ours, theirs, rel_tol=tolerance, abs_tol=tolerance):
        raise RunnerError(f"block-by-block loss {ours:.5f} differs from the model's own {theirs:.5f}; "
                          f"{type(runner.model).__name__} is not supported by the prefix-cached scorer")
