#!/usr/bin/env python
"""Stage 03: fine-tune a causal language model on the processed PressClub articles.

Reads
  data/processed/train.jsonl, data/processed/validation.jsonl (02_preprocess.py); the base model:
    --variant full    the --model value: the packaged SmolLM2-135M by default, `gpt2`, any model-hub
                      id or a local save_pretrained directory;
    --variant pruned  the directory named by `output_dir` in outputs/prune/block_importance.json
                      (04_prune_layer.py), or --pruned-model DIR.
Writes outputs/runs/<variant>/ (layout and fields in docs/records.md)
  model/        save_pretrained model + tokenizer, saved to a temporary directory and renamed, so it is
                never half-written;
  log.jsonl     a train line every `logging_steps` (and at the last step); an eval line at step 0,
                every `eval_steps` and at the end;
  run.json      every setting, seed, library versions, device, processes, effective batch, parameters,
                timings, tokens, first/last eval loss;
  tensorboard/  the log's points as TensorBoard scalars (`make tensorboard` shows both variants together);
  checkpoints/  Trainer checkpoints every `save_steps` (the last two are kept) for --resume.
A fresh run (without --resume) first deletes the variant's old model, log, run.json, events and checkpoints.

Where it runs
  --device auto|cpu|cuda|mps (auto: CUDA, then MPS, then the CPU); the autocast dtype follows the device.
  torchrun --nproc_per_node N 03_train.py ... trains with DDP (gloo on the CPU, NCCL on CUDA); each
  process takes its share of the recipe's batch (--world-batch keep), only rank 0 writes.

Why it is built this way
- One recipe: both variants take every setting from bmwlm.config.TrainConfig, so their comparison
  cannot drift. Command-line overrides (--max-steps, --learning-rate, ...) apply to whichever variant
  is run and are recorded in run.json.
- Packing (HF run_clm's group_texts, here bmwlm.windows): articles joined by EOS and cut into
  `block_size` blocks, so no compute is spent on padding. The validation loss uses the same windows
  and the same token-weighted loss as stages 04 and 05 (bmwlm.modeling.evaluate_nll), so the curves
  and the tables agree.
- transformers.Trainer runs the loop (bmwlm.train.trainer): warm-up and cosine schedule, clipping,
  checkpoints and an exact --resume come with it. bfloat16 autocast where the CPU has native bf16
  (weights and optimizer state stay float32), each transformer block torch.compile'd, and a chunked
  output-layer loss that never holds the full float32 logits (bmwlm.train.loss). Each log line prints
  tokens/s and the share of the CPU's measured bf16 matmul ceiling, so a reader sees at once whether
  the machine is used well. The measurements behind these choices are in the README.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from bmwlm.config import BLOCK_IMPORTANCE_FILE, DEFAULT_MODEL, RUNS_DIR, TRAIN_FILE, VALIDATION_FILE, VARIANTS
from bmwlm.io import setup_logging
from bmwlm.train.options import add_config_arguments, add_device_arguments, config_from_args

SCRIPT = "03_train.py"
log = logging.getLogger("train")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, required=True, default=argparse.SUPPRESS,
                   help="full: fine-tune --model; pruned: fine-tune the model written by 04_prune_layer.py")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="base model for --variant full: the packaged default (works offline), gpt2, "
                        "a model-hub id or a local directory")
    p.add_argument("--pruned-model", type=Path, default=argparse.SUPPRESS,
                   help="base model directory for --variant pruned (default: the output_dir named in --prune-file)")
    p.add_argument("--prune-file", type=Path, default=BLOCK_IMPORTANCE_FILE,
                   help="04_prune_layer.py's record, naming the pruned model for --variant pruned")
    p.add_argument("--train-file", type=Path, default=TRAIN_FILE, help="training split (02_preprocess.py)")
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE, help="validation split (02_preprocess.py)")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="writes <runs-dir>/<variant>/")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads; 0 = the physical cores not busy with other jobs (bmwlm.hardware)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in <runs-dir>/<variant>/checkpoints/")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_device_arguments(p)  # --device, --world-batch
    add_config_arguments(p)  # --block-size, --max-steps, ...: one option per TrainConfig field
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    rank = int(os.environ.get("RANK", "0"))  # torchrun / accelerate launch: rank 0 speaks for the run
    if rank:
        logging.getLogger().setLevel(logging.WARNING)
    cfg, overrides = config_from_args(args)
    # torch and transformers load here, after parsing, so that --help answers at once
    from bmwlm.train.run import STAGE_ERRORS, resolve_base_model, train_variant

    try:
        base_model = resolve_base_model(args.variant, args.model, getattr(args, "pruned_model", None), args.prune_file)
        run = train_variant(args.variant, base_model, cfg, train_file=args.train_file,
                            validation_file=args.validation_file, runs_dir=args.runs_dir, resume=args.resume,
                            overrides=overrides, progress=args.progress, threads=args.threads,
                            device=args.device, world_batch=args.world_batch)
    except STAGE_ERRORS as exc:
        print(f"{SCRIPT}: error{f' (rank {rank})' if rank else ''}: {exc}", file=sys.stderr)
        return 1
    if run is None:  # not rank 0: rank 0 wrote the outputs
        return 0

    first, last = run.initial_eval_loss, run.final_eval_loss
    log.info("%s: validation loss %s -> %.4f (perplexity %s -> %.2f); %d tokens in %.0f s (%.0f tokens/s); wrote %s",
             args.variant, f"{first:.4f}" if first is not None else "?", last,
             f"{math.exp(first):.2f}" if first is not None else "?", math.exp(last), run.tokens_seen,
             run.train_seconds, run.tokens_per_s, Path(args.runs_dir) / args.variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
