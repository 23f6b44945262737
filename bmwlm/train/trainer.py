"""The `transformers.Trainer` pieces of stage 03: the Trainer subclass, the log callback, the stopwatch.

`Trainer` runs the loop (cosine schedule with warm-up, clipping, checkpoints, an exact resume); a
hand-written loop measured no faster (tests/benchmark_training.py), so it would only add code. Two
methods are overridden:
- `compute_loss`: `bmwlm.train.loss.causal_lm_loss` (the chunked output layer), under accelerate's
  autocast, with a hard stop on a NaN/inf loss;
- `evaluate`: `bmwlm.modeling.evaluate_nll`, the token-weighted loss that stages 04 and 05 use too, so
  the training curves and the evaluation tables agree.
`JsonlLogCallback` writes log.jsonl (`bmwlm.records.training.LogLine`) and the same points as TensorBoard
scalars (train/loss, train/learning_rate, train/tokens_per_s, eval/loss, against the optimizer step),
and prints tokens/s and the share of the device's bf16 matmul ceiling (nanoGPT's MFU habit, FLOPs =
6 x parameters x tokens).

More than one process (torchrun, through Trainer's DistributedDataParallel): only rank 0 writes (log,
events, the stopwatch in checkpoints); the chunked loss runs as the DDP module's forward
(`ddp_forward`), so the gradients are averaged across processes; a NaN/inf loss on any process stops
every process; each process scores every N-th validation window and the sums are added up.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments

from bmwlm.config import TrainConfig
from bmwlm.hardware import launched_processes, resolve_device
from bmwlm.io import jsonl_text, read_json, write_json
from bmwlm.modeling import evaluate_nll
from bmwlm.records.training import LogLine
from bmwlm.train.loss import causal_lm_loss

STOPWATCH_FILE = "stopwatch.json"  # inside each checkpoint: run seconds so far, for --resume
# TensorBoard tags (Trainer's own names where it has one)
TB_LOSS, TB_LR, TB_TOKENS_PER_S, TB_EVAL_LOSS = "train/loss", "train/learning_rate", "train/tokens_per_s", "eval/loss"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops."""


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

    def train_seconds(self) -> float:
        return self.elapsed() - self.eval_seconds

    def save(self, checkpoint: Path) -> None:
        write_json(Path(checkpoint) / STOPWATCH_FILE, {"seconds": self.elapsed(), "eval_seconds": self.eval_seconds})

    @classmethod
    def resumed(cls, checkpoint: Path, fallback_seconds: float) -> Stopwatch:
        """The clock of the run a checkpoint belongs to (or `fallback_seconds` if it saved none)."""
        path = Path(checkpoint) / STOPWATCH_FILE
        if not path.exists():
            return cls(offset=fallback_seconds)
        clock = read_json(path)
        return cls(offset=clock["seconds"], eval_seconds=clock["eval_seconds"])


def training_arguments(cfg: TrainConfig, output_dir: Path, bf16: bool, resuming: bool, *,
                       device: torch.device | str | None = None, fp16: bool = False,
                       per_device_batch: int | None = None, accumulation: int | None = None) -> TrainingArguments:
    """TrainingArguments from the shared TrainConfig (same names as run_clm.py).

    `device`: a `bmwlm.hardware.resolve_device` result (default: `auto`); Trainer puts each process on
    that kind of device (cuda:LOCAL_RANK under torchrun). `bf16` / `fp16`: the autocast dtype (fp16 with
    Trainer's gradient scaler). `per_device_batch` / `accumulation`: each process's share of the
    recipe's batch (default: the recipe's own). More than one process: gloo on the CPU, NCCL on CUDA.
    """
    device = resolve_device("auto") if device is None else torch.device(device)
    on_cpu = device.type == "cpu"
    return TrainingArguments(
        use_cpu=on_cpu,
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device_batch or cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation or cfg.gradient_accumulation_steps,
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
        fp16=fp16,
        ddp_backend="gloo" if on_cpu and launched_processes() > 1 else None,  # (NCCL on CUDA: accelerate's default)
        ddp_find_unused_parameters=False,  # the loss uses every parameter; saves a graph walk per step
        dataloader_drop_last=True,  # equal-sized steps; the dropped blocks come back in the next epoch's order
        include_num_input_tokens_seen=True,
        logging_nan_inf_filter=False,
        report_to="none",
        disable_tqdm=True,
    )


class PackedLMTrainer(Trainer):
    """Trainer with the project's loss (chunked output layer, NaN/inf stop) and validation loss."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean; Trainer divides by accumulation

    def __init__(self, *args, loss_chunk_size: int = 0, stopwatch: Stopwatch | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size
        self.stopwatch = stopwatch or Stopwatch()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # accelerate wraps only model.forward in autocast; the chunked loss calls the body directly
        with self.accelerator.autocast():
            if self.loss_chunk_size > 0 and isinstance(model, DistributedDataParallel):
                loss = ddp_forward(model, inputs["input_ids"], self.loss_chunk_size)
            else:
                loss = causal_lm_loss(model, inputs["input_ids"], self.loss_chunk_size)
        checked = loss.detach()
        if self.args.world_size > 1:  # a NaN on any process stops them all (none waits for the others)
            checked = self.accelerator.reduce(checked.clone(), reduction="sum")
        if not torch.isfinite(checked).all():
            raise NonFiniteLossError(
                f"training loss became {checked.sum().item()} at step {self.state.global_step + 1} "
                f"(learning rate {self._get_learning_rate():.3g}); run stopped. Lower --learning-rate "
                "or check the data; nothing was saved as the final model.")
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        self.stopwatch.eval_started_at = self.stopwatch.elapsed()
        t0 = time.perf_counter()
        blocks, world = dataset["input_ids"], self.args.world_size
        if world > 1:  # each process scores every world-th window; the sums are added below
            blocks = list(blocks)[self.args.process_index::world]
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        # Compiled blocks would compile again for inference and each new block length: evaluate eagerly.
        with torch.compiler.set_stance("force_eager"):
            nll, n = evaluate_nll(self.model, blocks, batch_size=self.args.per_device_eval_batch_size,
                                  bf16=dtype is not None, device=self.args.device, dtype=dtype)
        if world > 1:
            total = torch.tensor([nll, n], dtype=torch.float64, device=self.args.device)
            nll, n = self.accelerator.reduce(total, reduction="sum").tolist()
            n = int(n)
        self.stopwatch.eval_seconds += time.perf_counter() - t0
        metrics = {f"{metric_key_prefix}_loss": nll / n, f"{metric_key_prefix}_tokens": n}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def ddp_forward(ddp: DistributedDataParallel, input_ids, chunk_size: int):
    """`causal_lm_loss` (the chunked output layer) run as the forward pass of a DDP-wrapped model.

    The chunked loss calls the transformer body and the output layer directly; called on the wrapped
    module, DDP would not prepare its gradient all-reduce and every process would train its own copy.
    So for this one call the wrapped module's forward is the chunked loss, and the call goes through
    DDP (which also moves the inputs and honours accumulation's `no_sync`).
    """
    inner = ddp.module
    own = inner.__dict__.get("forward")  # accelerate's autocast wrapper, if it set one
    inner.forward = lambda ids: causal_lm_loss(inner, ids, chunk_size)
    try:
        return ddp(input_ids)
    finally:
        if own is None:
            del inner.forward
        else:
            inner.forward = own


def open_events(log_dir: Path, step: int) -> SummaryWriter:
    """A TensorBoard writer for a run that starts (or resumes) at `step`.

    The summaries of earlier event files up to `step` (the checkpoint a resumed run continues from) are
    copied into the new writer's file, then the old files are removed: a resumed run neither repeats nor
    loses a point, whatever reads the files, and the points stay in one file in step order.
    """
    old = sorted(Path(log_dir).glob("events.out.tfevents.*"))
    # the events as written (EventFileLoader would convert the scalars to tensors)
    events = (Event.FromString(record) for path in old for record in RawEventFileLoader(str(path)).Load())
    kept = [e for e in events if e.HasField("summary") and e.step <= step]
    writer = SummaryWriter(str(log_dir))
    for event in kept:
        writer.file_writer.add_event(event, walltime=event.wall_time)
    writer.flush()
    for path in old:
        path.unlink()
    return writer


class JsonlLogCallback(TrainerCallback):
    """Appends log.jsonl lines (and, given `tensorboard_dir`, the same points as TensorBoard scalars) and
    prints one readable line per log with tokens/s and the share of the matmul ceiling (measured in
    `peak_dtype`, the dtype the run's matmuls run in); owns the tqdm progress bar; saves the stopwatch into each checkpoint. With several processes only rank 0
    writes or prints; every rank still asks for the log at the last step (Trainer gathers the loss there).
    `peak_flops`: the ceiling of all processes together."""

    def __init__(self, path: Path, stopwatch: Stopwatch, flops_per_token: float, peak_flops: float,
                 progress: bool = True, tensorboard_dir: Path | None = None, peak_dtype: str = "bfloat16"):
        self.path, self.stopwatch, self.peak_dtype = Path(path), stopwatch, peak_dtype
        self.flops_per_token, self.peak_flops, self.progress = flops_per_token, peak_flops, progress
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.bar = None
        self.writer = None  # SummaryWriter on rank 0 while training
        self.last = None  # (tokens, training seconds) at the previous train line

    def on_train_begin(self, args, state, control, **kwargs):
        self.stopwatch.start()
        self.last = (state.num_input_tokens_seen, self.stopwatch.train_seconds())
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                        disable=not (self.progress and state.is_world_process_zero), dynamic_ncols=True)
        if self.tensorboard_dir is not None and state.is_world_process_zero:
            self.writer = open_events(self.tensorboard_dir, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        if state.global_step >= state.max_steps:
            control.should_log = True  # always a train line at the last step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        logs = logs or {}
        tokens = int(state.num_input_tokens_seen)
        epoch = round(state.epoch or 0.0, 4)
        if "eval_loss" in logs:
            line = LogLine(step=state.global_step, epoch=epoch, tokens=tokens, eval_loss=round(logs["eval_loss"], 5),
                           seconds=round(self.stopwatch.eval_started_at, 1))
            text = (f"step {state.global_step:>5} | eval loss {logs['eval_loss']:.4f} "
                    f"(ppl {math.exp(logs['eval_loss']):.2f}) on {logs.get('eval_tokens', 0)} tokens")
            scalars = {TB_EVAL_LOSS: line.eval_loss}
        elif "loss" in logs:
            seconds = self.stopwatch.train_seconds()
            d_tokens, d_seconds = tokens - self.last[0], seconds - self.last[1]
            self.last = (tokens, seconds)
            rate = d_tokens / d_seconds if d_seconds > 0 else 0.0
            lr = logs.get("learning_rate", 0.0)
            line = LogLine(step=state.global_step, epoch=epoch, tokens=tokens, loss=round(logs["loss"], 5),
                           lr=float(f"{lr:.4g}"), seconds=round(self.stopwatch.elapsed(), 1))
            text = (f"step {state.global_step:>5} | loss {logs['loss']:.4f} | lr {lr:.2e} | {rate:,.0f} tokens/s | "
                    f"{100 * rate * self.flops_per_token / self.peak_flops:.0f}% of {self.peak_dtype} matmul peak | "
                    f"{line.seconds:.0f} s")
            scalars = {TB_LOSS: line.loss, TB_LR: line.lr, TB_TOKENS_PER_S: rate}
        else:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(jsonl_text([line.to_dict()]))
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, global_step=state.global_step, walltime=time.time())
            self.writer.flush()  # as current as log.jsonl, even if the run is killed
        (self.bar.write if self.bar is not None else print)(text)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            self.stopwatch.save(checkpoint)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
        self.close()

    def close(self) -> None:
        """Close the TensorBoard writer (also after a run that stopped with an error)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
