#!/usr/bin/env python
"""Stage 03: fine-tune a causal language model on the processed PressClub articles.

Reads
  data/processed/train.jsonl, data/processed/validation.jsonl (02_preprocess.py); the base model:
    --variant full    the --model value: the packaged SmolLM2-135M by default, `gpt2`, any model-hub
                      id or a local save_pretrained directory;
    --variant pruned  the directory named by `output_dir` in outputs/prune/block_importance.json
                      (04_prune_layer.py), or --pruned-model DIR.
Writes outputs/runs/<variant>/ (layout in docs/records.md)
  model/        save_pretrained model + tokenizer, saved to a temporary directory and renamed, so it is
                never half-written;
  log.jsonl     a train line every `logging_steps` (and at the last step); an eval line at step 0,
                every `eval_steps` and at the end;
  run.json      every setting, seed, library versions, parameters, timings, tokens, first/last eval loss;
  checkpoints/  Trainer checkpoints every `save_steps` (the last two are kept) for --resume.
A fresh run (without --resume) first deletes the variant's old model, log, run.json and checkpoints.

Why it is built this way
- One recipe: both variants take every setting from bmwlm.config.TrainConfig. Command-line overrides
  (--max-steps, --learning-rate, ...) apply to whichever variant is run and are recorded in run.json.
- Packing (run_clm's group_texts, here bmwlm.modeling.pack_documents): articles joined by EOS and cut
  into `block_size` blocks, so no compute is spent on padding. Validation uses the same packing and
  bmwlm.modeling.evaluate_nll (token-weighted, the same definition 04 and 05 use), on a fixed evenly
  spaced subset of at most `eval_max_blocks` blocks so each evaluation stays cheap (0 = all blocks).
- transformers.Trainer runs the loop: cosine schedule with warm-up, gradient clipping, checkpoints and
  an exact --resume (model, optimizer, scheduler, RNG states, data order) come with it. A hand-written
  loop measured no faster (tests/benchmark_training.py, same recipe and batches: 365 tokens/s for the
  bare loop vs 395 through this Trainer, i.e. within noise), so it would only add code. Two methods are
  overridden: `compute_loss` (the chunked loss below, under accelerate's autocast, and a hard stop on
  a NaN/inf loss) and `evaluate` (evaluate_nll). A TrainerCallback writes log.jsonl and prints tokens/s
  and the share of the CPU's bf16 matmul ceiling (nanoGPT's MFU habit, FLOPs = 6 x parameters x
  tokens; the ceiling is the best of ten 2048^2 bf16 matmuls at start-up).
- CPU (measured on the 2-core Sapphire Rapids, see tests/benchmark_training.py): bfloat16 autocast
  where the CPU has native bf16 (AMX/AVX512-BF16, as oneDNN reports), float32 otherwise; weights and
  AdamW state stay float32. bf16 autocast is 2.3x float32 and reaches the same loss. Each transformer
  block is torch.compile'd in place (+10..40%; ~15 s of compiling, parameter names unchanged;
  evaluation stays eager). torch threads = physical cores. Fused AdamW and the chunked loss below
  are about as fast as their alternatives; the chunked loss is kept because it lowers peak memory
  by ~1 GB (the float32 logits of 8 x 256 x 49k never exist). Per token, 8 x 256 blocks beat 4 x 512
  and 16 x 128; 16 x 256 was 15% slower on 2 threads (9% faster on 1). The whole default recipe is 3.3x
  a naive loop (one padded article per row, float32).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from bmwlm.config import (
    BLOCK_IMPORTANCE_FILE, DEFAULT_MODEL, ROOT, RUNS_DIR, TRAIN_FILE, VALIDATION_FILE, WORK_DIR, TrainConfig,
)
from bmwlm.io import MissingInputError, display_path, read_json, read_jsonl, require, setup_logging, write_json, write_jsonl
from bmwlm.modeling import (
    ModelUnavailableError, count_parameters, evaluate_nll, get_blocks, load_model, load_tokenizer,
    pack_documents, resolve_model, save_pretrained_atomically, tokenize_texts,
)

log = logging.getLogger("train")

VARIANTS = ("full", "pruned")
PREPROCESS_STAGE = "02_preprocess.py (make preprocess)"
PRUNE_STAGE = "04_prune_layer.py (make prune)"
SETTINGS_FILE = "run_settings.json"  # inside checkpoints/: what --resume must match
STOPWATCH_FILE = "stopwatch.json"  # inside each checkpoint: run seconds so far, for --resume


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops."""


class TrainSetupError(RuntimeError):
    """Inconsistent inputs or settings (too little data, block too long, resume mismatch)."""


# ---------------------------------------------------------------- settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, required=True,
                   help="full: fine-tune --model; pruned: fine-tune the model written by 04_prune_layer.py")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"base model for --variant full: {DEFAULT_MODEL} (packaged, offline), gpt2, a hub id or a directory")
    p.add_argument("--pruned-model", type=Path, default=None,
                   help="base model directory for --variant pruned (default: output_dir in --prune-file)")
    p.add_argument("--prune-file", type=Path, default=BLOCK_IMPORTANCE_FILE, help="written by 04_prune_layer.py")
    p.add_argument("--train-file", type=Path, default=TRAIN_FILE)
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE)
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="writes <runs-dir>/<variant>/")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: physical cores; 1 is faster for tiny models on a busy machine)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in <runs-dir>/<variant>/checkpoints/")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    defaults = TrainConfig()
    group = p.add_argument_group("TrainConfig overrides (default: bmwlm/config.py; recorded in run.json)")
    for f in dataclasses.fields(TrainConfig):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default {value}")
        else:
            group.add_argument(flag, type=type(value), default=None, metavar=type(value).__name__.upper(),
                               help=f"default {value}")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The shared TrainConfig with the command-line overrides applied, and the overrides alone."""
    overrides = {name: getattr(args, name) for name in TrainConfig.field_names() if getattr(args, name, None) is not None}
    return dataclasses.replace(TrainConfig(), **overrides), overrides


def resolve_base_model(variant: str, model: str, pruned_model: Path | None = None,
                       prune_file: Path = BLOCK_IMPORTANCE_FILE) -> str:
    """What to fine-tune: `model` for the full variant, 04_prune_layer.py's output for the pruned one."""
    if variant == "full":
        return str(model)
    if pruned_model is not None:
        if not (Path(pruned_model) / "config.json").exists():
            raise MissingInputError(f"--pruned-model {pruned_model} is not a model directory; run {PRUNE_STAGE} first")
        return str(pruned_model)
    prune_file = Path(prune_file)
    record = read_json(require(prune_file, PRUNE_STAGE))
    out = record.get("output_dir")
    if not out:
        raise MissingInputError(f"{prune_file} names no output_dir; run {PRUNE_STAGE} again")
    for candidate in (Path(out), WORK_DIR / out, ROOT / out, prune_file.parent / out):
        if (candidate / "config.json").exists():
            return str(candidate)
    raise MissingInputError(f"pruned model {out} (named in {prune_file}) is missing; run {PRUNE_STAGE} first")


# ---------------------------------------------------------------- data


def load_texts(path: Path) -> list[str]:
    """The `text` of every record of a processed split."""
    return [r["text"] for r in read_jsonl(require(path, PREPROCESS_STAGE))]


def make_blocks(tokenizer, texts: Sequence[str], block_size: int, keep_tail: bool = False) -> list[list[int]]:
    """Tokenise and pack the documents (EOS-separated) into `block_size` blocks, no padding."""
    return pack_documents(tokenize_texts(tokenizer, texts), block_size, tokenizer.eos_token_id, keep_tail=keep_tail)


def eval_subset(blocks: Sequence[Sequence[int]], max_blocks: int) -> list[Sequence[int]]:
    """All blocks if `max_blocks` <= 0 or there are no more, else `max_blocks` evenly spaced ones (fixed)."""
    if max_blocks <= 0 or len(blocks) <= max_blocks:
        return list(blocks)
    return [blocks[(i * len(blocks)) // max_blocks] for i in range(max_blocks)]


# ---------------------------------------------------------------- CPU


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share one core's matmul units)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu = set(), None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu, package = int(value), "0"
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu in allowed:
                    cores.add((package, value))
    except OSError:
        pass
    return max(1, len(cores) or len(allowed))


def bf16_supported() -> bool:
    """True where bfloat16 matmuls run natively: a CUDA GPU with bf16, or a CPU oneDNN reports bf16 for."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def matmul_gflops(dtype_name: str = "bfloat16", n: int = 2048, repeats: int = 10) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n matmul: the machine's practical ceiling for that dtype.

    The best of several (~0.1 s in all) so that a busy machine lowers it less.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (oneDNN picks its kernel)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def compile_blocks(model) -> bool:
    """torch.compile each transformer block in place (regional compilation); False if it cannot.

    All blocks share one compiled graph, so compiling takes seconds, not minutes, and parameter names
    (save_pretrained, checkpoints) do not change. Inductor needs a C++ compiler; without one, or if
    compiling fails, the blocks run eagerly (dynamo's suppress_errors).
    """
    import torch
    import torch._dynamo

    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        log.warning("no C++ compiler found: training without torch.compile")
        return False
    torch._dynamo.config.suppress_errors = True
    for block in get_blocks(model):
        block.compile()
    return True


def versions() -> dict:
    import accelerate
    import datasets
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__, "tokenizers": tokenizers.__version__}


# ---------------------------------------------------------------- loss


def _chunked_ce_function():
    import torch

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
                    lse = torch.logsumexp(logits, dim=-1)
                    total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
                    if need_grad:
                        g = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place
                        g[torch.arange(len(tc), device=g.device), tc] -= 1.0
                        g = g.div_(n).to(dtype)
                        grad_h[s:s + chunk] = g @ w
                        grad_w += g.T @ hc
            ctx.save_for_backward(grad_h, grad_w)
            return total / n

        @staticmethod
        def backward(ctx, grad_out):
            grad_h, grad_w = ctx.saved_tensors
            return grad_h * grad_out, (grad_w * grad_out).to(grad_w.dtype), None, None, None

    return ChunkedLinearCrossEntropy


_CHUNKED_CE = None


def causal_lm_loss(model, input_ids, chunk_size: int = 0):
    """Mean next-token cross-entropy over every position of packed blocks (no padding, no ignored labels).

    `chunk_size` > 0: run the transformer body, then the output layer + loss `chunk_size` positions at a
    time (ChunkedLinearCrossEntropy); 0: the model's own `labels=` loss.
    """
    import torch

    global _CHUNKED_CE
    if chunk_size <= 0:
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    if _CHUNKED_CE is None:
        _CHUNKED_CE = _chunked_ce_function()
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = input_ids[:, 1:].reshape(-1)
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    weight = model.get_output_embeddings().weight
    return _CHUNKED_CE.apply(hidden, weight, targets, chunk_size, dtype)


def chunked_loss_matches(model, blocks: Sequence[Sequence[int]], chunk_size: int, bf16: bool) -> bool:
    """True when the chunked loss equals the model's own loss on a couple of blocks.

    Models whose logits are not just `output_embeddings(last_hidden_state)` (a bias, soft-capping,
    scaling) fail this and train with their own loss instead.
    """
    import torch

    from bmwlm.modeling import autocast_context

    ids = torch.tensor([list(b) for b in blocks[:2]], dtype=torch.long)
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return False
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_context(bf16):
        ours = causal_lm_loss(model, ids, chunk_size).item()
        theirs = causal_lm_loss(model, ids, 0).item()
    model.train(was_training)
    return abs(ours - theirs) <= 0.02 * max(1.0, abs(theirs))


# ---------------------------------------------------------------- Trainer pieces


@dataclass
class Stopwatch:
    """Wall time of a run; `offset` carries the seconds of the run before a --resume."""

    offset: float = 0.0
    started: float | None = None
    eval_seconds: float = 0.0
    eval_started_at: float = 0.0  # run seconds when the last evaluation began

    def start(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + (time.perf_counter() - self.started if self.started is not None else 0.0)


def _trainer_classes():
    """The Trainer subclass and the log callback (imported lazily: transformers is slow to import)."""
    import torch
    from transformers import Trainer, TrainerCallback

    class PackedLMTrainer(Trainer):
        """Trainer with the project's loss and validation loss.

        compute_loss: causal_lm_loss (chunked output layer) and a hard stop on a NaN/inf loss.
        evaluate: token-weighted validation loss via bmwlm.modeling.evaluate_nll on the eval blocks.
        """

        loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean; Trainer divides by accumulation

        def __init__(self, *args, loss_chunk_size: int = 0, stopwatch: Stopwatch | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_chunk_size = loss_chunk_size
            self.stopwatch = stopwatch or Stopwatch()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # accelerate wraps only model.forward in autocast; the chunked loss calls the body directly
            with self.accelerator.autocast():
                loss = causal_lm_loss(model, inputs["input_ids"], self.loss_chunk_size)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became {loss.item()} at step {self.state.global_step + 1} "
                    f"(learning rate {self._get_learning_rate():.3g}); run stopped. Lower --learning-rate "
                    "or check the data; nothing was saved as the final model.")
            return loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            self.stopwatch.eval_started_at = self.stopwatch.elapsed()
            t0 = time.perf_counter()
            # Compiled blocks would compile again for inference and each new block length: evaluate eagerly.
            with torch.compiler.set_stance("force_eager"):
                nll, n = evaluate_nll(self.model, dataset["input_ids"],
                                      batch_size=self.args.per_device_eval_batch_size, bf16=self.args.bf16)
            self.stopwatch.eval_seconds += time.perf_counter() - t0
            metrics = {f"{metric_key_prefix}_loss": nll / n, f"{metric_key_prefix}_tokens": n}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    class JsonlLogCallback(TrainerCallback):
        """Appends log.jsonl lines (docs/records.md) and prints one readable line per log with
        tokens/s and the share of the bf16 matmul ceiling; owns the tqdm progress bar."""

        def __init__(self, path: Path, stopwatch: Stopwatch, flops_per_token: float, peak_flops: float,
                     progress: bool = True):
            self.path, self.stopwatch = Path(path), stopwatch
            self.flops_per_token, self.peak_flops, self.progress = flops_per_token, peak_flops, progress
            self.bar = None
            self.last = None  # (tokens, training seconds) at the previous train line

        def _train_seconds(self) -> float:
            return self.stopwatch.elapsed() - self.stopwatch.eval_seconds

        def on_train_begin(self, args, state, control, **kwargs):
            from tqdm.auto import tqdm

            self.stopwatch.start()
            self.last = (state.num_input_tokens_seen, self._train_seconds())
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            disable=not self.progress, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
            if state.global_step >= state.max_steps:
                control.should_log = True  # always a train line at the last step

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            tokens = int(state.num_input_tokens_seen)
            epoch = round(state.epoch or 0.0, 4)
            if "eval_loss" in logs:
                record = {"step": state.global_step, "epoch": epoch, "tokens": tokens,
                          "eval_loss": round(logs["eval_loss"], 5),
                          "seconds": round(self.stopwatch.eval_started_at, 1)}
                line = (f"step {state.global_step:>5} | eval loss {logs['eval_loss']:.4f} "
                        f"(ppl {math.exp(logs['eval_loss']):.2f}) on {logs.get('eval_tokens', 0)} tokens")
            elif "loss" in logs:
                seconds = self._train_seconds()
                d_tokens, d_seconds = tokens - self.last[0], seconds - self.last[1]
                self.last = (tokens, seconds)
                rate = d_tokens / d_seconds if d_seconds > 0 else 0.0
                record = {"step": state.global_step, "epoch": epoch, "tokens": tokens,
                          "loss": round(logs["loss"], 5), "lr": float(f"{logs.get('learning_rate', 0.0):.4g}"),
                          "seconds": round(self.stopwatch.elapsed(), 1)}
                line = (f"step {state.global_step:>5} | loss {logs['loss']:.4f} | lr {logs.get('learning_rate', 0):.2e} | "
                        f"{rate:,.0f} tokens/s | {100 * rate * self.flops_per_token / self.peak_flops:.0f}% "
                        f"of bf16 matmul peak | {record['seconds']:.0f} s")
            else:
                return
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json_line(record))
            (self.bar.write if self.bar is not None else print)(line)

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json(folder / STOPWATCH_FILE, {"seconds": self.stopwatch.elapsed(),
                                                     "eval_seconds": self.stopwatch.eval_seconds})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return PackedLMTrainer, JsonlLogCallback


def json_line(record: dict) -> str:
    import json

    return json.dumps(record, ensure_ascii=False) + "\n"


def training_arguments(cfg: TrainConfig, output_dir: Path, bf16: bool, resuming: bool):
    """TrainingArguments from the shared TrainConfig (same names as run_clm.py)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        use_cpu=not torch.cuda.is_available(),
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a share of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        eval_on_start=not resuming,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        dataloader_drop_last=True,  # equal-sized steps; the dropped blocks come back in the next epoch's order
        include_num_input_tokens_seen=True,
        logging_nan_inf_filter=False,
        report_to="none",
        disable_tqdm=True,
    )


# ---------------------------------------------------------------- run directory


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json (written last by Trainer) exists."""
    if not checkpoints.is_dir():
        return None
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def clear_run(run_dir: Path) -> None:
    """Delete a variant's previous model, log, run.json and checkpoints (a fresh run)."""
    for name in ("log.jsonl", "run.json"):
        (run_dir / name).unlink(missing_ok=True)
    for path in [run_dir / "checkpoints", run_dir / "model", *run_dir.glob(".model.*")]:
        if path.exists():
            shutil.rmtree(path)


def truncate_log(path: Path, step: int) -> list[dict]:
    """Keep the log lines up to `step` (the checkpoint a resumed run continues from)."""
    lines = [r for r in read_jsonl(path) if r["step"] <= step] if path.exists() else []
    write_jsonl(path, lines)
    return lines


def start_or_resume(run_dir: Path, settings: dict, resume: bool) -> tuple[Path | None, Stopwatch]:
    """Prepare <run_dir> for a fresh run, or find the checkpoint a resumed run continues from.

    A fresh run deletes the old model, log, run.json and checkpoints and records `settings`; a resumed
    run must have the same settings, keeps the log lines up to its checkpoint and the run's seconds so far.
    """
    checkpoints, log_file = run_dir / "checkpoints", run_dir / "log.jsonl"
    stopwatch = Stopwatch()
    checkpoint = last_complete_checkpoint(checkpoints) if resume else None
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting afresh", checkpoints)
    if checkpoint is None:
        clear_run(run_dir)
        write_json(checkpoints / SETTINGS_FILE, settings)
        log_file.touch()
        return None, stopwatch
    saved = read_json(checkpoints / SETTINGS_FILE) if (checkpoints / SETTINGS_FILE).exists() else None
    if saved != settings:
        raise TrainSetupError(f"{checkpoint} was made with other settings ({saved}); now {settings}. "
                              "Run without --resume to start afresh.")
    kept = truncate_log(log_file, int(checkpoint.name.rsplit("-", 1)[1]))
    if (checkpoint / STOPWATCH_FILE).exists():
        clock = read_json(checkpoint / STOPWATCH_FILE)
        stopwatch.offset, stopwatch.eval_seconds = clock["seconds"], clock["eval_seconds"]
    else:
        stopwatch.offset = max((r["seconds"] for r in kept), default=0.0)
    log.info("resuming from %s", checkpoint)
    return checkpoint, stopwatch


# ---------------------------------------------------------------- the stage


def train_variant(variant: str, base_model: str, cfg: TrainConfig, *, train_file: Path = TRAIN_FILE,
                  validation_file: Path = VALIDATION_FILE, runs_dir: Path = RUNS_DIR, resume: bool = False,
                  overrides: dict | None = None, progress: bool = True, threads: int | None = None,
                  callbacks: Sequence = ()) -> dict:
    """Fine-tune `base_model` with `cfg`; writes <runs_dir>/<variant>/ and returns the run.json record.

    `threads`: torch threads (default: physical cores). `callbacks`: extra TrainerCallbacks (tests).
    """
    import torch

    started = time.perf_counter()
    run_dir = Path(runs_dir) / variant
    checkpoints, log_file = run_dir / "checkpoints", run_dir / "log.jsonl"
    train_texts, val_texts = load_texts(train_file), load_texts(validation_file)

    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    use_bf16 = cfg.bf16 and bf16_supported()
    if cfg.bf16 and not use_bf16:
        log.warning("this CPU has no native bfloat16: training in float32")

    tokenizer = load_tokenizer(base_model)
    model = load_model(base_model)
    max_positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_positions and cfg.block_size > max_positions:
        raise TrainSetupError(f"block_size {cfg.block_size} exceeds the model's {max_positions} positions")
    train_blocks = make_blocks(tokenizer, train_texts, cfg.block_size)
    all_val_blocks = make_blocks(tokenizer, val_texts, cfg.block_size, keep_tail=True)
    val_blocks = eval_subset(all_val_blocks, cfg.eval_max_blocks)
    if len(train_blocks) < cfg.per_device_train_batch_size:
        raise TrainSetupError(f"{train_file} gives {len(train_blocks)} blocks of {cfg.block_size} tokens, fewer than "
                              f"one batch of {cfg.per_device_train_batch_size}; lower --block-size or add data")
    if not val_blocks:
        raise TrainSetupError(f"{validation_file} has no text to evaluate on")

    parameters = count_parameters(model)
    loss_chunk_size = cfg.loss_chunk_size
    if loss_chunk_size > 0 and not chunked_loss_matches(model, train_blocks, loss_chunk_size, use_bf16):
        log.warning("%s: chunked loss differs from the model's own loss; using the model's loss", base_model)
        loss_chunk_size = 0
    compiled = cfg.torch_compile and compile_blocks(model)

    settings = {"variant": variant, "base_model": str(base_model), "config": cfg.to_dict(),
                "train_blocks": len(train_blocks), "validation_blocks": len(val_blocks)}
    checkpoint, stopwatch = start_or_resume(run_dir, settings, resume)
    bf16_peak = matmul_gflops("bfloat16") * 1e9
    log.info("%s: %s, %d blocks, %s parameters; %d train blocks, %d/%d validation blocks of %d tokens; "
             "%d threads, %s%s", variant, base_model, len(get_blocks(model)), f"{parameters:,}", len(train_blocks),
             len(val_blocks), len(all_val_blocks), cfg.block_size, threads,
             "bf16 autocast" if use_bf16 else "float32", ", compiled blocks" if compiled else "")

    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback, default_data_collator

    Trainer, LogCallback = _trainer_classes()
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, checkpoints, use_bf16, resuming=checkpoint is not None),
        train_dataset=Dataset.from_dict({"input_ids": train_blocks}),
        eval_dataset=Dataset.from_dict({"input_ids": val_blocks}),
        data_collator=default_data_collator,
        processing_class=tokenizer,
        loss_chunk_size=loss_chunk_size,
        stopwatch=stopwatch,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LogCallback(log_file, stopwatch, 6 * parameters, bf16_peak, progress))
    for cb in callbacks:
        trainer.add_callback(cb)

    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    save_pretrained_atomically(trainer.model, tokenizer, run_dir / "model")

    lines = read_jsonl(log_file)
    evals = [r for r in lines if "eval_loss" in r]
    trains = [r for r in lines if "loss" in r]
    state = trainer.state
    tokens_seen = int(state.num_input_tokens_seen)
    train_seconds = stopwatch.elapsed() - stopwatch.eval_seconds
    tokens_per_s = tokens_seen / train_seconds if train_seconds > 0 else 0.0
    record = {
        "variant": variant,
        "base_model": str(base_model),
        "base_model_path": display_path(resolve_model(base_model)),
        "config": cfg.to_dict(),
        "overrides": overrides or {},
        "seed": cfg.seed,
        "versions": versions(),
        "threads": threads,
        "precision": "bf16-autocast" if use_bf16 else "float32",
        "compiled": compiled,
        "loss": f"chunked output layer, {loss_chunk_size} positions" if loss_chunk_size else "model loss",
        "parameters": parameters,
        "blocks": len(get_blocks(trainer.model)),
        "train_blocks": len(train_blocks),
        "validation_blocks": len(val_blocks),
        "validation_blocks_total": len(all_val_blocks),
        "validation_subset": "all" if len(val_blocks) == len(all_val_blocks)
        else f"{len(val_blocks)} evenly spaced of {len(all_val_blocks)} blocks",
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(stopwatch.eval_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "tokens_per_s": round(tokens_per_s, 1),
        "bf16_matmul_gflops": round(bf16_peak / 1e9, 1),
        "share_of_bf16_peak": round(tokens_per_s * 6 * parameters / bf16_peak, 4),
        "initial_eval_loss": evals[0]["eval_loss"] if evals and evals[0]["step"] == 0 else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "final_train_loss": trains[-1]["loss"] if trains else None,
        "resumed_from_step": int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None,
        "train_file": display_path(train_file),
        "validation_file": display_path(validation_file),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(run_dir / "run.json", record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg, overrides = make_config(args)
        base_model = resolve_base_model(args.variant, args.model, args.pruned_model, args.prune_file)
        record = train_variant(args.variant, base_model, cfg, train_file=args.train_file,
                               validation_file=args.validation_file, runs_dir=args.runs_dir, resume=args.resume,
                               overrides=overrides, progress=args.progress, threads=args.threads)
    except (MissingInputError, ModelUnavailableError, NonFiniteLossError, TrainSetupError) as exc:
        print(f"03_train.py: error: {exc}", file=sys.stderr)
        return 1
    first, last = record["initial_eval_loss"], record["final_eval_loss"]
    log.info("%s: validation loss %s -> %.4f (perplexity %s -> %.2f); %d tokens in %.0f s (%.0f tokens/s); wrote %s",
             args.variant, f"{first:.4f}" if first is not None else "?", last,
             f"{math.exp(first):.2f}" if first is not None else "?", math.exp(last), record["tokens_seen"],
             record["train_seconds"], record["tokens_per_s"], Path(args.runs_dir) / args.variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
