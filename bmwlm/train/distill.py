"""Healing a pruned model by knowledge distillation from a teacher (issue 8, Minitron-style).

`03_train.py --distill-from DIR [--distill-alpha A] [--distill-temperature T]` trains the student under
the same `TrainConfig` as plain fine-tuning, with the loss per predicted position

    A * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - A) * CE(student, next token)

(Hinton et al. 2015: T^2 keeps the soft-target gradients on the scale of the hard ones). The teacher, by
default the fine-tuned full model, runs under `torch.no_grad()` in eval mode inside the same autocast as
the student. A = 1 (the default) is pure logit distillation, Minitron's choice (Muralidharan et al. 2024);
the run's settings go to run.json (`overrides`) and to the resume check.

Memory: `ChunkedDistillLoss` computes the student's and the teacher's logits `chunk` positions at a time,
with the gradients of each chunk at once (like `bmwlm.train.loss.ChunkedLinearCrossEntropy`), so neither
model's full (positions x vocabulary) float32 logits exist: for 8 x 256 positions and a 49k vocabulary that
is 2 x 400 MB avoided per step.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bmwlm.config import TRAIN_FULL
from bmwlm.io import MissingInputError
from bmwlm.modeling import load_model, load_tokenizer
from bmwlm.train.loss import cross_entropy_chunk
from bmwlm.train.options import DISTILL_KEYS
from bmwlm.train.trainer import NonFiniteLossError, PackedLMTrainer

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 512


class DistillSetupError(RuntimeError):
    """A teacher that cannot teach this student (other vocabulary, no plain output layer, bad settings)."""


@dataclass
class DistillSettings:
    teacher: str  # the --distill-from directory
    alpha: float = 1.0  # weight of the KL term; 1 - alpha weighs the language-model loss
    temperature: float = 1.0

    @classmethod
    def from_overrides(cls, overrides: dict | None) -> DistillSettings | None:
        """The settings 03's options put in `overrides` (bmwlm.train.options), or None without --distill-from."""
        overrides = overrides or {}
        if "distill_from" not in overrides:
            if any(k in overrides for k in DISTILL_KEYS):
                raise DistillSetupError("--distill-alpha and --distill-temperature need --distill-from DIR")
            return None
        out = cls(teacher=str(overrides["distill_from"]), alpha=float(overrides.get("distill_alpha", cls.alpha)),
                  temperature=float(overrides.get("distill_temperature", cls.temperature)))
        if not 0.0 <= out.alpha <= 1.0 or out.temperature <= 0:
            raise DistillSetupError(f"--distill-alpha must be in [0, 1] and --distill-temperature > 0 (got "
                                    f"{out.alpha}, {out.temperature})")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


class ChunkedDistillLoss(torch.autograd.Function):
    """Mean over rows of alpha*T^2*KL(p_teacher^T || p_student^T) + (1-alpha)*CE(student, targets), with
    student logits `hidden @ weight.T` and teacher logits `t_hidden @ t_weight.T`, `chunk` rows at a time.

    The forward pass computes each chunk's loss and at once its gradient with respect to the student
    logits, alpha*T*(softmax(s/T) - softmax(t/T)) + (1-alpha)*(softmax(s) - onehot), so no chunk's logits
    are kept for backward; backward only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, targets, chunk, dtype, alpha, temperature):
        n = targets.numel()
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        T = float(temperature)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            th, tw = t_hidden.to(dtype), t_weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_grad else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
            for s in range(0, n, chunk):
                hc, tc = h[s:s + chunk], targets[s:s + chunk]
                logits = (hc @ w.T).float()
                with torch.no_grad():
                    t_logp = torch.log_softmax((th[s:s + chunk] @ tw.T).float() / T, dim=-1)
                s_logp = torch.log_softmax(logits / T, dim=-1)
                t_p = t_logp.exp()
                g = None
                if alpha > 0:
                    kl = (t_p * (t_logp - s_logp)).sum()
                    total += alpha * T * T * kl
                    if need_grad:
                        g = (s_logp.exp() - t_p).mul_(alpha * T)
                del t_logp, s_logp
                if alpha < 1:
                    ce_loss, ce = cross_entropy_chunk(logits, tc, need_grad)
                    total += (1 - alpha) * ce_loss
                    if need_grad:
                        ce.mul_(1 - alpha)
                        g = ce if g is None else g.add_(ce)
                if need_grad:
                    g = g.div_(n).to(dtype)
                    grad_h[s:s + chunk] = g @ w
                    grad_w += g.T @ hc
        ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, (grad_w * grad_out).to(grad_w.dtype), None, None, None, None, None, None, None


def distillation_loss(student, teacher, input_ids, alpha: float = 1.0, temperature: float = 1.0,
                      chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The mixed distillation loss over every position of packed blocks; the teacher runs without
    gradients. Under autocast the chunks run in the autocast dtype."""
    hidden = student.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    with torch.no_grad():
        t_hidden = teacher.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.size(-1))
    t_hidden = t_hidden.reshape(-1, t_hidden.size(-1))
    targets = input_ids[:, 1:].reshape(-1)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return ChunkedDistillLoss.apply(hidden, student.get_output_embeddings().weight, t_hidden,
                                    teacher.get_output_embeddings().weight.detach(), targets,
                                    chunk_size or DEFAULT_CHUNK, dtype, float(alpha), float(temperature))


class DistillTrainer(PackedLMTrainer):
    """PackedLMTrainer whose training loss is `distillation_loss` against a frozen teacher; evaluation
    (the validation loss, `evaluate_nll`) is unchanged, so curves compare with plain fine-tuning."""

    def __init__(self, *args, teacher=None, distill: DistillSettings, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise DistillSetupError("distillation runs in one process (no DDP): launch 03_train.py without torchrun")
        self.teacher = teacher.to(self.args.device).eval()
        self.teacher.requires_grad_(False)
        self.distill = distill

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.accelerator.autocast():
            loss = distillation_loss(model, self.teacher, inputs["input_ids"], self.distill.alpha,
                                     self.distill.temperature, self.loss_chunk_size)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"distillation loss became {loss.item()} at step {self.state.global_step + 1}; "
                                     "run stopped. Lower --learning-rate or check the teacher.")
        return loss


def load_teacher(settings: DistillSettings, student, tokenizer):
    """The teacher model, checked to share the student's vocabulary and to have a plain output layer."""
    path = Path(settings.teacher)
    if not (path / "config.json").exists():
        raise MissingInputError(f"--distill-from {settings.teacher} is not a model directory; run {TRAIN_FULL} first")
    teacher = load_model(path).eval()
    if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        raise DistillSetupError(f"teacher {settings.teacher} has another tokenizer than the student")
    for name, m in (("teacher", teacher), ("student", student)):
        head = m.get_output_embeddings()
        if head is None or getattr(head, "bias", None) is not None:
            raise DistillSetupError(f"the {name} has no plain output layer; distillation needs logits = head(hidden)")
    if teacher.get_output_embeddings().weight.shape[0] != student.get_output_embeddings().weight.shape[0]:
        raise DistillSetupError("teacher and student vocabularies differ in size")
    return teacher


def trainer_setup(settings: DistillSettings | None, student, tokenizer, loss_chunk_size: int):
    """(Trainer class, extra keyword arguments) for train_variant: PackedLMTrainer without distillation."""
    if settings is None:
        return PackedLMTrainer, {}
    if loss_chunk_size <= 0:
        raise DistillSetupError("distillation runs the chunked loss: the model's own loss was chosen "
                                "(--loss-chunk-size 0, or a head the chunked loss cannot reproduce)")
    teacher = load_teacher(settings, student, tokenizer)
    log.info("distilling from %s (alpha %.2f, temperature %.2f)", settings.teacher, settings.alpha,
             settings.temperature)
    return DistillTrainer, {"teacher": teacher, "distill": settings}
