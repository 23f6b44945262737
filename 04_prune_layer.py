#!/usr/bin/env python
"""Stage 04: remove one transformer block from the base model, chosen on the training split.

Reads
  - the model (`--model`, default the packaged SmolLM2-135M; `gpt2`, a hub id or a local
    `save_pretrained` directory also work),
  - the training split `data/processed/train.jsonl` (02_preprocess.py): the calibration sample,
  - the validation split `data/processed/validation.jsonl`, only to check that it shares no article with
    the calibration sample and, with `--report-validation` or `--curve`, to report after the choice.
Writes (fields in docs/records.md)
  - default: `outputs/models/<base>-minus-block<k>/` (model + tokenizer, written to a temporary directory
    and renamed) and `outputs/prune/block_importance.json` (`BlockImportance`), which 03 and 05 read;
  - `--scores-only`: only the scores of `--model` (e.g. a fine-tuned model), in `--scores-file`
    (`BlockScoring`); nothing removed, no model written;
  - `--curve` (the depth study, `make study`): `outputs/prune/removal_curve.json` (`RemovalCurve`: five
    selection methods, their scores and sets for k = 0 … `--max-removed`, calibration and validation
    perplexity of each, each validation window's loss and the paired intervals between methods) and the
    model without the best method's K blocks;
  - `--curve-windows`: the per-window validation losses and intervals added to an existing
    removal_curve.json that lacks them (the recorded sets re-scored; nothing chosen again).

Why it works this way (details in bmwlm/prune/)
  - A block's importance is the loss increase when it is skipped, which is exactly the loss of the model
    without it; the block with the smallest increase is removed (or --block K). The input/output cosine,
    the cheap proxy of the layer-pruning papers, is recorded beside it.
  - The choice is made on a calibration sample of the TRAINING split: evenly spaced 256-token windows
    across the whole split (it is in date order, so its first N tokens would be its oldest weeks). The
    validation split carries every reported number, so it never takes part in a choice.
  - Prefix caching: per batch the intact model runs once, keeping each block's input; skipping block k then
    runs only blocks k+1 … N-1 and the output layer. Same losses as one forward pass per block (tested to
    1e-4 in float32), about half the compute, and the removed models need no extra pass.
  - Float32 by default, so the choice does not depend on a CPU's bf16 kernels; the default budget
    (`--calibration-tokens`, 16 windows) is the smallest at which every disjoint evenly spaced sample of
    that size chose the same block as an 8x larger reference (README). On a machine shared with other
    torch jobs, fewer threads finish sooner (`--threads`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bmwlm.config import (
    BLOCK_IMPORTANCE_FILE, DEFAULT_MODEL, DEVICE_CHOICES, MODELS_DIR, PRUNE_DIR, TRAIN_FILE, VALIDATION_FILE, TrainConfig,
)
from bmwlm.io import setup_logging

SCRIPT = "04_prune_layer.py"
# Kept in step with bmwlm.prune.DEFAULT_CALIBRATION_TOKENS (a test checks); here so --help stays light.
DEFAULT_CALIBRATION_TOKENS = 4080
log = logging.getLogger("prune")


def parse_block(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a block index such as 27, got {value!r}")


def parse_args(argv=None) -> argparse.Namespace:
    cfg = TrainConfig()
    p = argparse.ArgumentParser(
        description="Score every transformer block on a calibration sample of the training split and "
                    "write the model with one block removed (the least important, or --block K).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model to score: the packaged default (works offline), gpt2, a model-hub id or a local directory")
    p.add_argument("--block", type=parse_block, default="auto",
                   help="'auto' removes the block whose skipping raises the calibration loss least; "
                        "an integer K removes block K (0-based; scores are still computed)")
    p.add_argument("--train-file", type=Path, default=TRAIN_FILE,
                   help="training split (02_preprocess.py): the calibration sample is drawn from it")
    p.add_argument("--calibration-tokens", type=int, default=DEFAULT_CALIBRATION_TOKENS,
                   help="predicted tokens of the calibration sample, in evenly spaced windows over the whole "
                        "training split (0 = every window)")
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE,
                   help="validation split: checked to share no article with the calibration sample; scored only "
                        "after the choice, for reporting (--report-validation, --curve)")
    p.add_argument("--report-validation", action=argparse.BooleanOptionalAction, default=False,
                   help="after the choice, also score the intact model and the chosen, last, middle and cosine-proxy "
                        "removals on the validation split (labelled as reporting; --curve always scores it)")
    p.add_argument("--validation-tokens", type=int, default=0,
                   help="predicted validation tokens scored for reporting, in evenly spaced windows over the whole "
                        "split (0 = every window)")
    p.add_argument("--scores-only", action="store_true",
                   help="only score the blocks of --model (e.g. outputs/runs/full/model) into --scores-file; "
                        "remove nothing")
    p.add_argument("--scores-file", type=Path, default=PRUNE_DIR / "block_scores.json",
                   help="where --scores-only writes its record")
    p.add_argument("--curve", action="store_true",
                   help="depth study: five selection methods, the removal curve for k = 0 .. --max-removed, and "
                        "the model without the best method's blocks (writes removal_curve.json)")
    p.add_argument("--curve-windows", action="store_true",
                   help="add to an existing removal_curve.json (in --out-dir) the loss of each validation window "
                        "for every set it records, and the paired intervals between methods; nothing is chosen "
                        "again, and the record is rewritten only if the re-drawn windows reproduce its losses")
    p.add_argument("--max-removed", type=int, default=0,
                   help="--curve: largest number of blocks removed (0 = a quarter of the depth, rounded)")
    p.add_argument("--block-size", type=int, default=cfg.block_size, help="tokens per scoring window")
    p.add_argument("--batch-size", type=int, default=cfg.per_device_eval_batch_size,
                   help="windows per forward pass")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bfloat16 autocast where the device has it, instead of float32 (faster on CPUs with "
                        "native bf16, but near-ties may then depend on the CPU's kernels)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where to run (auto: CUDA, MPS, then CPU)")
    p.add_argument("--out-models-dir", type=Path, default=MODELS_DIR, help="where the smaller models are written")
    p.add_argument("--out-dir", type=Path, default=PRUNE_DIR,
                   help=f"where {BLOCK_IMPORTANCE_FILE.name} and removal_curve.json are written")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads; 0 = the physical cores not busy with other jobs (bmwlm.hardware)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (every block's score)")
    args = p.parse_args(argv)
    if sum((args.scores_only, args.curve, args.curve_windows)) > 1:
        p.error("--scores-only, --curve and --curve-windows are separate runs; give one")
    if args.calibration_tokens < 0 or args.validation_tokens < 0 or args.max_removed < 0:
        p.error("--calibration-tokens, --validation-tokens and --max-removed must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    # torch and transformers load here, after parsing, so that --help answers at once
    from bmwlm.hardware import DeviceUnavailableError
    from bmwlm.prune import STAGE_ERRORS
    from bmwlm.prune.stage import Stage, curve, curve_windows, remove_one, scores_only

    try:
        st = Stage(args)
        log.info("%s: %d blocks", args.model, st.n_blocks)
        if args.curve_windows:  # the record's sets, re-scored on the validation windows: no calibration needed
            out_file = curve_windows(st)
        else:
            st.calibrate()
            st.score()
            out_file = scores_only(st) if args.scores_only else curve(st) if args.curve else remove_one(st)
    except (*STAGE_ERRORS, DeviceUnavailableError) as exc:
        print(f"{SCRIPT}: error: {exc}", file=sys.stderr)
        return 1
    log.info("wrote %s in %.0f s total", out_file, st.seconds())
    return 0


if __name__ == "__main__":
    sys.exit(main())
