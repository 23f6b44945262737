"""03's command-line overrides of the shared recipe: one option per `TrainConfig` field.

Light on purpose (no torch): 03_train.py builds its parser from this before the heavy imports, so
`--help` answers at once. An option left out keeps TrainConfig's value; the ones given are the
run's `overrides` (recorded in run.json).
"""
from __future__ import annotations

import argparse
import dataclasses

from bmwlm.config import DEVICE_CHOICES, TrainConfig

HELP = {
    "block_size": "tokens per packed training block (and per validation window)",
    "per_device_train_batch_size": "training blocks per step",
    "gradient_accumulation_steps": "steps whose gradients are summed before one optimizer update",
    "learning_rate": "peak learning rate of AdamW",
    "lr_scheduler_type": "learning-rate schedule after warm-up (a transformers SchedulerType)",
    "warmup_ratio": "share of the steps spent warming the learning rate up from 0",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm",
    "max_steps": "optimizer steps of the run",
    "eval_steps": "evaluate the validation loss every N steps (and before and after training)",
    "logging_steps": "write a train line to log.jsonl every N steps (and at the last step)",
    "save_steps": "save a checkpoint for --resume every N steps (the last two are kept)",
    "per_device_eval_batch_size": "validation windows per forward pass",
    "eval_max_blocks": "validation windows per evaluation, an evenly spaced fixed subset; 0 = all",
    "seed": "random seed (data order, dropout)",
    "bf16": "low-precision autocast where the device has it (weights stay float32): bfloat16 on CPUs with "
            "native bf16 and recent GPUs, float16 with a gradient scaler on older GPUs and MPS; else float32",
    "optim": "optimizer, as TrainingArguments.optim names it",
    "torch_compile": "torch.compile each transformer block (needs a C++ compiler; else eager)",
    "loss_chunk_size": "output layer + loss this many positions at a time; 0 = the model's own loss",
}


# Distillation (bmwlm.train.distill): not TrainConfig fields, so the budget stays the shared recipe's;
# given on the command line they travel in `overrides` (recorded in run.json) to train_variant.
DISTILL_KEYS = ("distill_from", "distill_alpha", "distill_temperature")


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distillation (bmwlm.train.distill; recorded in run.json's overrides)")
    group.add_argument("--distill-from", metavar="DIR", default=argparse.SUPPRESS,
                       help="train against this teacher model's next-token distributions (e.g. the fine-tuned "
                            "full model, outputs/runs/full/model) under the same recipe (default: off, plain fine-tuning)")
    group.add_argument("--distill-alpha", type=float, metavar="A", default=argparse.SUPPRESS,
                       help="weight of the KL term; 1 - A weighs the language-model loss (default: 1.0, pure distillation)")
    group.add_argument("--distill-temperature", type=float, metavar="T", default=argparse.SUPPRESS,
                       help="softmax temperature of teacher and student in the KL term (default: 1.0)")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, e.g. --max-steps; booleans get --x / --no-x; then distillation."""
    group = parser.add_argument_group("training recipe (bmwlm.config.TrainConfig; overrides are recorded in run.json)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        # SUPPRESS: an option not given is absent from the namespace, so it is not an override
        help = f"{HELP[f.name]} (default: {f.default})"
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help)
        else:
            group.add_argument(flag, type=type(f.default), default=argparse.SUPPRESS,
                               metavar=type(f.default).__name__.upper(), help=help)
    add_distill_arguments(parser)


# Where and on how many processes: run options, not part of the recipe (recorded in run.json).
WORLD_BATCH_CHOICES = ("keep", "scale")  # bmwlm.train.run.split_batch


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device and processes (bmwlm.hardware; recorded in run.json)")
    group.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                       help="where to train: auto picks CUDA, then MPS, then the CPU; the autocast dtype follows "
                            "the device (see --bf16)")
    group.add_argument("--world-batch", choices=WORLD_BATCH_CHOICES, default="keep",
                       help="with several processes (torchrun): keep = each process takes its share of the recipe's "
                            "batch (accumulation steps, else per-device batch, divided by the processes), so the "
                            "effective batch stays the single-process one; scale = every process runs the recipe's "
                            "batch")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The shared TrainConfig with the command-line overrides applied, and the overrides alone."""
    overrides = {name: getattr(args, name) for name in TrainConfig.field_names() if hasattr(args, name)}
    cfg = dataclasses.replace(TrainConfig(), **overrides)
    overrides.update({name: getattr(args, name) for name in DISTILL_KEYS if hasattr(args, name)})
    return cfg, overrides
