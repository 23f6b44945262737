"""The training loss: mean next-token cross-entropy over packed blocks, with the output layer chunked.

`causal_lm_loss(model, input_ids, chunk_size)` runs the transformer body once, then the output layer and
the cross-entropy `chunk_size` positions at a time (`ChunkedLinearCrossEntropy`), so the full
(positions x vocabulary) float32 logits never exist; `chunk_size` 0 uses the model's own `labels=` loss.
Both give the same value and gradients (a test checks this); the chunked one needs far less peak memory.
"""
from __future__ import annotations

from typing import Sequence

import torch

from bmwlm.modeling import autocast_context


def cross_entropy_chunk(logits: torch.Tensor, targets: torch.Tensor, need_grad: bool):
    """Summed cross-entropy of one chunk of float32 `logits` and, with `need_grad`, its gradient with
    respect to the logits (softmax - one-hot), computed in place of `logits` (which are then spent)."""
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    if not need_grad:
        return loss, None
    g = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place
    g[torch.arange(len(targets), device=g.device), targets] -= 1.0
    return loss, g


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, `chunk` rows at a time.

    The forward pass computes each chunk's logits (in `dtype`), its loss and at once its gradients
    (softmax - one-hot), so the (rows x vocabulary) logits never exist in full and nothing is
    recomputed; backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, dtype):
        n = targets.numel()
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_grad else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
            for s in range(0, n, chunk):
                hc, tc = h[s:s + chunk], targets[s:s + chunk]
                logits = (hc @ w.T).float()
                loss, g = cross_entropy_chunk(logits, tc, need_grad)
                total += loss
                if need_grad:
                    g = g.div_(n).to(dtype)
                    grad_h[s:s + chunk] = g @ w
                    grad_w += g.T @ hc
        ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, (grad_w * grad_out).to(grad_w.dtype), None, None, None


def causal_lm_loss(model, input_ids, chunk_size: int = 0):
    """Mean next-token cross-entropy over every position of packed blocks (no padding, no ignored labels).

    `chunk_size` > 0: the transformer body, then the output layer + loss `chunk_size` positions at a
    time; 0: the model's own `labels=` loss. Under autocast the chunks run in the autocast dtype.
    """
    if chunk_size <= 0:
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = input_ids[:, 1:].reshape(-1)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    weight = model.get_output_embeddings().weight
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, dtype)


def chunked_loss_matches(model, blocks: Sequence[Sequence[int]], chunk_size: int, bf16: bool) -> bool:
    """True when the chunked loss equals the model's own loss on a couple of blocks.

    Models whose logits are not just `output_embeddings(last_hidden_state)` (a bias, soft-capping,
    scaling) fail this and train with their own loss instead.
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return False
    ids = torch.tensor([list(b) for b in blocks[:2]], dtype=torch.long)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_context(bf16):
        ours = causal_lm_loss(model, ids, chunk_size).item()
        theirs = causal_lm_loss(model, ids, 0).item()
    model.train(was_training)
    return abs(ours - theirs) <= 0.02 * max(1.0, abs(theirs))
