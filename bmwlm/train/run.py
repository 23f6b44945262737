"""One fine-tuning run of stage 03: what to fine-tune, the data, start or resume, the Trainer, run.json.

`train_variant` is the whole run; the rest are its steps:
- `resolve_base_model`: `--model` for the full variant; for the pruned one, the directory 04's record
  names (`bmwlm.records.prune.pruned_model_dir`, the one rule for finding it) or `--pruned-model`;
- the data: both splits packed into `block_size` windows (`bmwlm.windows`), training without the
  tail window, validation with it, then a fixed evenly spaced subset of at most `eval_max_blocks`;
- `start_or_resume` (`find_checkpoint`, then `prepare_folder`): a fresh run clears the variant's old
  files; `--resume` continues from the last complete checkpoint if it was made with the same settings,
  keeps the log lines and TensorBoard points up to it and the run's seconds so far;
- the device (`--device`, `bmwlm.hardware.resolve_device`) and its autocast dtype; with several
  processes (torchrun) each one's share of the batch (`split_batch`);
- the Trainer (`bmwlm.train.trainer`), then the model (saved atomically) and `RunSummary`; with several
  processes only rank 0 writes, after checking that every process holds the same weights.
"""
from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from datasets import Dataset
from transformers import PrinterCallback, ProgressCallback, default_data_collator

from bmwlm.cards import finetuned_facts, write_model_card
from bmwlm.config import BLOCK_IMPORTANCE_FILE, PREPROCESS, PRUNE, RUNS_DIR, TRAIN_FILE, VALIDATION_FILE, TrainConfig
from bmwlm.hardware import (
    DeviceUnavailableError, autocast_dtype, choose_threads, compute_dtype_name, cpu_model, data_parallel_size,
    device_matmul_gflops, device_model, launched_processes, local_processes, resolve_device, set_threads, versions,
)
from bmwlm.io import BadRecordError, MissingInputError, display_path, read_json, read_jsonl, require, write_json, write_jsonl
from bmwlm.modeling import (
    ModelUnavailableError, compile_blocks, count_parameters, get_blocks, load_model, load_tokenizer, resolve_model,
    save_pretrained_atomically, removed_blocks,
)
from bmwlm.records.prune import pruned_model_dir
from bmwlm.records.training import LogLine, RunFiles, RunSummary, load_log
from bmwlm.train.distill import DistillSettings, DistillSetupError, trainer_setup
from bmwlm.train.loss import chunked_loss_matches
from bmwlm.train.options import WORLD_BATCH_CHOICES
from bmwlm.train.trainer import JsonlLogCallback, NonFiniteLossError, Stopwatch, training_arguments
from bmwlm.windows import evenly_spaced, text_windows

log = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"  # inside checkpoints/: what --resume must match


class TrainSetupError(RuntimeError):
    """Inconsistent inputs or settings (too little data, block too long, resume mismatch)."""


# The errors 03_train.py reports in one line, without a traceback.
STAGE_ERRORS = (MissingInputError, BadRecordError, ModelUnavailableError, NonFiniteLossError, TrainSetupError,
                DistillSetupError, DeviceUnavailableError)


def resolve_base_model(variant: str, model: str, pruned_model: Path | None = None,
                       prune_file: Path = BLOCK_IMPORTANCE_FILE) -> str:
    """What to fine-tune: `model` for the full variant, 04_prune_layer.py's output for the pruned one."""
    if variant == "full":
        return str(model)
    if pruned_model is None:
        return str(pruned_model_dir(prune_file))
    if not (Path(pruned_model) / "config.json").exists():
        raise MissingInputError(f"--pruned-model {pruned_model} is not a model directory; run {PRUNE} first")
    return str(pruned_model)


def load_texts(path: Path) -> list[str]:
    """The `text` of every record of a processed split."""
    return [r["text"] for r in read_jsonl(require(path, str(PREPROCESS)))]


# ---------------------------------------------------------------- run directory


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json (written last by Trainer) exists."""
    if not checkpoints.is_dir():
        return None
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=checkpoint_step, default=None)


def clear_run(files: RunFiles) -> None:
    """Delete a variant's previous model, log, run.json, TensorBoard events and checkpoints (a fresh run)."""
    for path in (files.log_file, files.run_file):
        path.unlink(missing_ok=True)
    for path in [files.checkpoints, files.model_dir, files.tensorboard_dir,
                 *files.folder.glob(f".{files.model_dir.name}.*")]:
        if path.exists():
            shutil.rmtree(path)


def truncate_log(path: Path, step: int) -> list[LogLine]:
    """Keep the log lines up to `step` (the checkpoint a resumed run continues from)."""
    lines = [line for line in load_log(path) if line.step <= step] if path.exists() else []
    write_jsonl(path, [line.to_dict() for line in lines])
    return lines


def find_checkpoint(files: RunFiles, settings: dict, resume: bool) -> Path | None:
    """The checkpoint a --resume run continues from, None for a fresh run; it must have been made with
    the same `settings`. Only reads, so every process of a multi-process run may call it."""
    checkpoint = last_complete_checkpoint(files.checkpoints) if resume else None
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting afresh", files.checkpoints)
    if checkpoint is None:
        return None
    saved_file = files.checkpoints / SETTINGS_FILE
    saved = read_json(saved_file) if saved_file.exists() else None
    if saved != settings:
        raise TrainSetupError(f"{checkpoint} was made with other settings ({saved}); now {settings}. "
                              "Run without --resume to start afresh.")
    return checkpoint


def prepare_folder(files: RunFiles, settings: dict, checkpoint: Path | None, write: bool = True) -> Stopwatch:
    """The variant's folder for a fresh run (`checkpoint` None) or a resumed one, and the run's clock.

    A fresh run deletes the old model, log, run.json, events and checkpoints and records `settings`; a
    resumed run keeps the log lines and TensorBoard points up to its checkpoint and the run's seconds so
    far (the TensorBoard points: `bmwlm.train.trainer.open_events`). `write` False (every process but
    rank 0) changes nothing on disk.
    """
    if checkpoint is None:
        if write:
            clear_run(files)
            write_json(files.checkpoints / SETTINGS_FILE, settings)
            files.log_file.touch()
        return Stopwatch()
    kept = truncate_log(files.log_file, checkpoint_step(checkpoint)) if write else []
    log.info("resuming from %s", checkpoint)
    return Stopwatch.resumed(checkpoint, fallback_seconds=max((r.seconds for r in kept), default=0.0))


def start_or_resume(files: RunFiles, settings: dict, resume: bool) -> tuple[Path | None, Stopwatch]:
    """`find_checkpoint`, then `prepare_folder`: the whole preparation of a single-process run."""
    checkpoint = find_checkpoint(files, settings, resume)
    return checkpoint, prepare_folder(files, settings, checkpoint)


# ---------------------------------------------------------------- devices and processes


def split_batch(cfg: TrainConfig, processes: int, world_batch: str = "keep") -> tuple[int, int]:
    """Each process's (per-device batch, accumulation steps) when `processes` replicas share a step.

    keep (the default): the effective batch (per-device batch x processes x accumulation) stays the
    recipe's, so a run on N processes is comparable with a run on one: the smallest accumulation whose
    per-device batch is at most the recipe's (8 x 1 on 2 processes: 4 x 1; 8 x 4 on 2: 8 x 2); a batch
    that does not divide is refused. scale: every process runs the recipe's batch, so the effective
    batch grows N-fold (the learning rate is left as it is).
    """
    b, acc = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    if world_batch not in WORLD_BATCH_CHOICES:
        raise TrainSetupError(f"--world-batch {world_batch!r}: choose from {', '.join(WORLD_BATCH_CHOICES)}")
    if processes <= 1 or world_batch == "scale":
        return b, acc
    total = b * acc
    if total % processes:
        raise TrainSetupError(
            f"the recipe's effective batch of {total} blocks ({b} per device x {acc} accumulation steps) does not "
            f"divide among {processes} processes: choose --per-device-train-batch-size and "
            f"--gradient-accumulation-steps whose product is a multiple of {processes}, or --world-batch scale "
            "(every process runs the recipe's batch; the effective batch grows with the processes)")
    share = total // processes
    acc = next(a for a in range(1, share + 1) if share % a == 0 and share // a <= b)
    return share // acc, acc


def precision_label(dtype: torch.dtype | None) -> str:
    """How run.json names the training precision: "bf16-autocast", "fp16-autocast" or "float32"."""
    return {torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast"}.get(dtype, "float32")


def usable_loss_chunk(chunk_size: int, dtype: torch.dtype | None, data_parallel: bool) -> int:
    """`chunk_size`, or 0 (the model's own loss) where the chunked loss cannot run as it should:
    under float16 autocast it computes its gradients in the forward pass, before the gradient scaler
    scales them, so small softmax gradients would underflow; under nn.DataParallel (`data_parallel`:
    several GPUs in one process) only the model's forward is replicated."""
    if chunk_size > 0 and dtype == torch.float16:
        log.warning("float16 autocast: training with the model's own loss instead of the chunked one")
        return 0
    if chunk_size > 0 and data_parallel:
        log.warning("several GPUs in one process (nn.DataParallel): training with the model's own loss; "
                    "torchrun --nproc_per_node N runs the chunked loss on each")
        return 0
    return chunk_size


def replicas_agree(trainer) -> bool:
    """True when every process holds the same weights (always, alone): DDP's all-reduced gradients make
    the copies bit-identical, so a difference means the gradients were not synchronised."""
    if trainer.args.world_size <= 1:
        return True
    sums = torch.stack([p.detach().double().sum() for p in trainer.model.parameters()])
    rows = trainer.accelerator.gather(sums[None].to(trainer.args.device))
    return bool((rows == rows[0]).all())


# ---------------------------------------------------------------- the run


def train_variant(variant: str, base_model: str, cfg: TrainConfig, *, train_file: Path = TRAIN_FILE,
                  validation_file: Path = VALIDATION_FILE, runs_dir: Path = RUNS_DIR, resume: bool = False,
                  overrides: dict | None = None, progress: bool = True, threads: int = 0,
                  callbacks: Sequence = (), device: str = "auto", world_batch: str = "keep") -> RunSummary | None:
    """Fine-tune `base_model` with `cfg`; writes <runs_dir>/<variant>/ and returns its RunSummary.

    `threads`: torch threads, 0 = auto (`bmwlm.hardware.set_threads`; split among the processes on this
    machine). `callbacks`: extra TrainerCallbacks (tests). `device`: auto, cpu, cuda or mps
    (`bmwlm.hardware.resolve_device`). `world_batch`: see `split_batch`. Under torchrun every process
    calls this; only rank 0 writes and returns the RunSummary, the others return None.
    """
    started = time.perf_counter()
    files = RunFiles(variant, Path(runs_dir))
    distill = DistillSettings.from_overrides(overrides)  # None unless --distill-from (bmwlm.train.distill)
    train_texts, val_texts = load_texts(train_file), load_texts(validation_file)

    if not threads and local_processes() > 1:  # auto: the free cores shared among this machine's processes
        threads = max(1, choose_threads(0) // local_processes())
    threads = set_threads(threads)
    device = resolve_device(device)
    dtype = autocast_dtype(device, cfg.bf16)  # bf16 where native, fp16 on older GPUs / MPS, None: float32
    if cfg.bf16 and dtype is None:
        log.warning("this %s has no native bfloat16: training in float32", device.type.upper())
    processes = data_parallel_size(device)
    per_device_batch, accumulation = split_batch(cfg, processes, world_batch)

    tokenizer = load_tokenizer(base_model)
    model = load_model(base_model)
    max_positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_positions and cfg.block_size > max_positions:
        raise TrainSetupError(f"block_size {cfg.block_size} exceeds the model's {max_positions} positions")
    train_blocks = text_windows(tokenizer, train_texts, cfg.block_size, keep_tail=False)
    all_val_blocks = text_windows(tokenizer, val_texts, cfg.block_size, keep_tail=True)
    val_blocks = evenly_spaced(all_val_blocks, cfg.eval_max_blocks)
    if len(train_blocks) < per_device_batch * processes:
        raise TrainSetupError(f"{train_file} gives {len(train_blocks)} blocks of {cfg.block_size} tokens, fewer than "
                              f"one batch of {per_device_batch * processes}; lower --block-size or add data")
    if not val_blocks:
        raise TrainSetupError(f"{validation_file} has no text to evaluate on")

    parameters = count_parameters(model)
    loss_chunk_size = cfg.loss_chunk_size
    if loss_chunk_size > 0 and not chunked_loss_matches(model, train_blocks, loss_chunk_size, dtype is not None):
        log.warning("%s: chunked loss differs from the model's own loss; using the model's loss", base_model)
        loss_chunk_size = 0
    loss_chunk_size = usable_loss_chunk(loss_chunk_size, dtype, processes > launched_processes())
    compiled = cfg.torch_compile and compile_blocks(model)

    settings = {"variant": variant, "base_model": str(base_model), "config": cfg.to_dict(),
                "train_blocks": len(train_blocks), "validation_blocks": len(val_blocks),
                **({"distill": distill.to_dict()} if distill else {}),
                # several processes: a checkpoint resumes only with the same split of the batch
                **({"processes": processes, "per_device_batch": per_device_batch, "accumulation": accumulation}
                   if processes > 1 else {})}
    trainer_class, trainer_extra = trainer_setup(distill, model, tokenizer, loss_chunk_size)
    checkpoint = find_checkpoint(files, settings, resume)
    args = training_arguments(cfg, files.checkpoints, dtype == torch.bfloat16, resuming=checkpoint is not None,
                              device=device, fp16=dtype == torch.float16, per_device_batch=per_device_batch,
                              accumulation=accumulation)
    main = args.process_index == 0  # rank 0 of a torchrun run; a single process is rank 0
    with args.main_process_first(local=False, desc="preparing the run folder"):  # rank 0 first, the others wait
        stopwatch = prepare_folder(files, settings, checkpoint, write=main)
    # one device's ceiling in the dtype the matmuls run in (float32 without autocast); `processes` share the work
    peak_dtype = compute_dtype_name(dtype)
    peak = device_matmul_gflops(device, peak_dtype) * 1e9
    log.info("%s: %s, %d blocks, %s parameters; %d train blocks, %d/%d validation blocks of %d tokens; "
             "%d threads, %s%s", variant, base_model, len(get_blocks(model)), f"{parameters:,}", len(train_blocks),
             len(val_blocks), len(all_val_blocks), cfg.block_size, threads,
             precision_label(dtype).replace("-", " "), ", compiled blocks" if compiled else "")
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    log.info("device %s (%s); %d process(es)%s x %d blocks x %d accumulation = effective batch %d", device.type,
             device_model(device), processes, f" ({backend})" if backend else "", per_device_batch, accumulation,
             processes * per_device_batch * accumulation)

    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": train_blocks}),
        eval_dataset=Dataset.from_dict({"input_ids": val_blocks}),
        data_collator=default_data_collator,
        processing_class=tokenizer,
        loss_chunk_size=loss_chunk_size,
        stopwatch=stopwatch,
        **trainer_extra,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    logger = JsonlLogCallback(files.log_file, stopwatch, 6 * parameters, peak * processes, progress,
                              tensorboard_dir=files.tensorboard_dir, peak_dtype=peak_dtype)
    trainer.add_callback(logger)
    for cb in callbacks:
        trainer.add_callback(cb)

    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        logger.close()
    if not replicas_agree(trainer):
        raise RuntimeError("the processes' copies of the model differ after training: the gradients were not "
                           "synchronised; nothing was saved")
    if not main:
        return None  # rank 0 writes the model, run.json and the card
    save_pretrained_atomically(trainer.model, tokenizer, files.model_dir)

    lines = load_log(files.log_file)
    evals = [line for line in lines if line.is_eval]
    trains = [line for line in lines if line.loss is not None]
    tokens_seen = int(trainer.state.num_input_tokens_seen)
    train_seconds = stopwatch.train_seconds()
    tokens_per_s = tokens_seen / train_seconds if train_seconds > 0 else 0.0
    summary = RunSummary(
        variant=variant,
        base_model=str(base_model),
        base_model_path=display_path(resolve_model(base_model)),
        config=cfg.to_dict(),
        overrides=overrides or {},
        seed=cfg.seed,
        versions=versions(),
        cpu_model=cpu_model(),
        threads=threads,
        precision=precision_label(dtype),
        compiled=compiled,
        loss=(f"chunked output layer, {loss_chunk_size} positions" if loss_chunk_size else "model loss")
        + (f"; distillation from {distill.teacher} (alpha {distill.alpha}, temperature {distill.temperature})"
           if distill else ""),
        parameters=parameters,
        blocks=len(get_blocks(trainer.model)),
        train_blocks=len(train_blocks),
        validation_blocks=len(val_blocks),
        validation_blocks_total=len(all_val_blocks),
        validation_subset="all" if len(val_blocks) == len(all_val_blocks)
        else f"{len(val_blocks)} evenly spaced of {len(all_val_blocks)} blocks",
        steps=trainer.state.global_step,
        epochs=round(trainer.state.epoch or 0.0, 4),
        tokens_seen=tokens_seen,
        train_seconds=round(train_seconds, 1),
        eval_seconds=round(stopwatch.eval_seconds, 1),
        wall_seconds=round(time.perf_counter() - started, 1),
        tokens_per_s=round(tokens_per_s, 1),
        matmul_gflops=round(peak / 1e9, 1),
        share_of_peak=round(tokens_per_s * 6 * parameters / (peak * processes), 4),
        peak_dtype=peak_dtype,
        initial_eval_loss=evals[0].eval_loss if evals and evals[0].step == 0 else None,
        final_eval_loss=evals[-1].eval_loss if evals else None,
        final_train_loss=trains[-1].loss if trains else None,
        resumed_from_step=checkpoint_step(checkpoint) if checkpoint else None,
        train_file=display_path(train_file),
        validation_file=display_path(validation_file),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=device.type,
        device_model=device_model(device),
        processes=processes,
        ddp_backend=backend,
        per_device_batch=per_device_batch,
        accumulation=accumulation,
        effective_batch=per_device_batch * processes * accumulation,
        world_batch=world_batch,
    )
    summary.save(files.run_file)
    # rank 0 only: the model directory and run.json are final; the card is made from them (05 adds its results)
    write_model_card(files.model_dir, finetuned_facts(summary, removed_blocks(trainer.model.config)))
    return summary
