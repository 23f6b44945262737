"""What a model costs to train and to run, measured so that two models can be compared.

Timings taken in two runs at different times compare the machine's load as much as the models (the
CPU is shared). Here both models are loaded in one process and measured in rounds on the same
inputs, alternating which goes first (A B, B A, ...); a comparison is then paired by round, and its
interval comes from resampling rounds. One warm-up round is discarded.

- Training step: one forward and backward pass (the model's own loss, bf16 autocast as in training,
  eager: no `torch.compile`, no chunked loss) on the same batch of validation windows; gradients are
  dropped after each step, no optimizer update.
- Generation: one sequence at a time, greedy, float32, exactly `new_tokens` new positions for every
  model (EOS suppressed until then), so every generated position counts the same way; the latency
  per sequence, and tokens/s = new_tokens / latency.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from bmwlm import stats
from bmwlm.evaluate.choice import interval, precision_name
from bmwlm.hardware import synchronize
from bmwlm.modeling import autocast_context, model_device
from bmwlm.records.evaluation import CostMeasurement, CostOfModel


def train_step_seconds(model, batch: torch.Tensor, bf16: bool = True) -> float:
    """Seconds of one forward + backward pass on `batch` (gradients dropped afterwards)."""
    model.train()
    device = model_device(model)
    batch = batch.to(device)
    synchronize(device)
    start = time.perf_counter()
    with autocast_context(bf16, device):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds


def generation_seconds(model, tokenizer, prompt: str, new_tokens: int) -> float:
    """Seconds to generate exactly `new_tokens` positions greedily after `prompt` (one sequence)."""
    device = model_device(model)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**ids, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=pad_id)
    synchronize(device)
    seconds = time.perf_counter() - start
    made = out.shape[1] - ids["input_ids"].shape[1]
    if made != new_tokens:
        raise AssertionError(f"generated {made} positions, not {new_tokens}")
    return seconds


def measure_cost(models: dict[str, object], tokenizer, windows: Sequence[Sequence[int]], prompts: Sequence[str], *,
                 rounds: int = 6, batch_size: int = 4, new_tokens: int = 32, bf16_train: bool = True,
                 n_resamples: int = stats.N_RESAMPLES, seed: int = 0, warmup: int = 1) -> CostMeasurement:
    """Interleaved timings of the models in `models` ({key: loaded model}, all of one tokenizer)."""
    start = time.perf_counter()
    full = [list(w) for w in windows if len(w) == len(windows[0])][:batch_size]
    batch = torch.tensor(full, dtype=torch.long)
    keys = list(models)
    train = {k: [] for k in keys}
    gen = {k: [] for k in keys}
    for r in range(warmup + rounds):
        order = keys if r % 2 == 0 else keys[::-1]
        for k in order:
            t = train_step_seconds(models[k], batch, bf16_train)
            if r >= warmup:
                train[k].append(t)
        prompt = prompts[r % len(prompts)]
        for k in order:
            t = generation_seconds(models[k], tokenizer, prompt, new_tokens)
            if r >= warmup:
                gen[k].append(t)
    per_model = {}
    for k in keys:
        g = interval(stats.bootstrap_mean(gen[k], None, n_resamples, seed))
        per_model[k] = CostOfModel(
            train_step_seconds=_rounds(interval(stats.bootstrap_mean(train[k], None, n_resamples, seed))),
            generation_seconds_per_sequence=_rounds(g), generation_tokens_per_s=round(new_tokens / g.value, 2),
            train_step_rounds=[round(t, 4) for t in train[k]], generation_rounds=[round(t, 4) for t in gen[k]])
    device = model_device(next(iter(models.values())))
    return CostMeasurement(models=keys, rounds=rounds, train_batch=list(batch.shape),
                           train_precision=precision_name(bf16_train, device),
                           generation_new_tokens=new_tokens, generation_precision="float32", per_model=per_model,
                           threads=torch.get_num_threads(), seconds=round(time.perf_counter() - start, 1))


def _rounds(i):
    i.unit = "round"
    return i
