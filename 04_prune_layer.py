"""Stage 04: remove one transformer block from the base model.

Reads
  - the base model (`--model`, default the packaged SmolLM2-135M; `gpt2`, a hub id or a local
    `save_pretrained` directory also work),
  - the validation split `data/processed/validation.jsonl` (records with `text`, written by
    02_preprocess.py).
Writes
  - `outputs/models/<base>-minus-block<k>/`: the model with block k deleted (model + tokenizer via
    `save_pretrained`; written to a temporary directory and renamed, so it is never half-written),
  - `outputs/prune/block_importance.json`: every block's scores, the choice, the naive comparison
    (layout in docs/records.md; 03_train.py reads `output_dir`, 05/06 read the rest).

Why it works this way
  - Importance = validation-loss increase when the block is skipped (its output replaced by its
    input, i.e. the residual stream passes through unchanged). It measures directly what we care
    about, language-model loss, and it is exactly the loss of the model with the block deleted
    (a test checks the logits are identical), so the block it picks is the one whose removal hurts
    the loss least on these tokens. Skipping is a temporary patch of one block's `forward`
    (`skip_block`), so scoring 30 blocks needs no model copies.
  - The cosine similarity between each block's input and output hidden states (Gromov et al.,
    "The Unreasonable Ineffectiveness of the Deeper Layers", 2024; ShortGPT's Block Influence) is
    recorded for comparison: it costs no extra pass (forward hooks during the baseline pass) but
    only looks at one block's local change, not at what the later blocks and the head make of it.
    On SmolLM2-135M (32k validation tokens) both measures pick block 14 and agree on the extremes
    (blocks 0, 1, 29), but the cosine misranks blocks that matter: block 11 changes its input as
    little as an average block (cosine 0.963, 11th cheapest of 30 by cosine) yet skipping it costs
    +1.82 loss (4th most expensive); block 5 is the 2nd cheapest by loss and only the 15th
    cheapest by cosine (Spearman rank correlation 0.75). So the loss is the primary measure and
    the cosine a secondary column; `proxy_comparison` records the block the cosine would pick and
    its real loss. (The loss ranking held in float32 and on held-out validation tokens.)
    Hooks rather than `output_hidden_states=True`: for Llama the last entry of `hidden_states`
    is taken after the final norm, so it is not the last block's output.
  - The chosen block is plain argmin of `importance`; the naive choices (last block, middle block)
    are removed for real (`remove_block`) and scored on the same tokens, to show the measurement
    is worth its minutes.
  - Scores use the first `--max-eval-tokens` validation tokens, packed into `--block-size` blocks
    the same way training and evaluation do (`pack_documents`), under bf16 autocast (the deltas
    match float32 to 0.001): 32k tokens keep the 34 forward passes of SmolLM2-135M to minutes on
    2 CPU cores. On a machine shared with other torch jobs, `--threads 1` is several times faster.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from bmwlm.config import (
    BLOCK_IMPORTANCE_FILE,
    DEFAULT_MODEL,
    MODELS_DIR,
    PRUNE_DIR,
    VALIDATION_FILE,
    TrainConfig,
)
from bmwlm.io import MissingInputError, display_path, read_jsonl, require, setup_logging, write_json
from bmwlm.modeling import (
    ModelUnavailableError,
    count_parameters,
    save_pretrained_atomically,
    evaluate_nll,
    get_blocks,
    load_model,
    load_tokenizer,
    model_slug,
    pack_documents,
    remove_block,
    resolve_model,
    tokenize_texts,
)

log = logging.getLogger("prune")

METHOD = "loss_increase"
DEFAULT_MAX_EVAL_TOKENS = 32768


class PruneInputError(ValueError):
    """A bad --block value or an unusable validation file: reported without a traceback."""


# --------------------------------------------------------------------------- data

def load_eval_blocks(path: Path, tokenizer, block_size: int, max_tokens: int | None) -> list[list[int]]:
    """The first `max_tokens` validation tokens (all if None/0), packed into `block_size` blocks."""
    texts = [r["text"] for r in read_jsonl(path) if r.get("text")]
    if not texts:
        raise PruneInputError(f"{path} holds no records with text")
    blocks = pack_documents(tokenize_texts(tokenizer, texts), block_size, tokenizer.eos_token_id, keep_tail=True)
    if not max_tokens:
        return blocks
    kept, total = [], 0
    for b in blocks:
        if total >= max_tokens:
            break
        b = b[: max_tokens - total]
        if len(b) < 2:
            break
        kept.append(b)
        total += len(b)
    return kept


# --------------------------------------------------------------------------- measuring

def _identity_forward(hidden_states, *args, **kwargs):
    return hidden_states


@contextlib.contextmanager
def skip_block(model, index: int):
    """Temporarily make block `index` the identity (output = input), without copying the model.

    Patches the block instance's `forward`; module hooks, parameters and the other blocks are
    untouched, and the original `forward` is restored on exit even after an error. Relies on the
    transformers 5 block interface: a block takes the hidden states first and returns them as one
    tensor (GPT-2 and Llama both do).
    """
    block = get_blocks(model)[index]
    patched_before = "forward" in vars(block)
    original = vars(block).get("forward")
    block.forward = _identity_forward
    try:
        yield model
    finally:
        if patched_before:
            block.forward = original
        else:
            del block.forward


def mean_loss(model, blocks: Sequence[Sequence[int]], bf16: bool, batch_size: int) -> float:
    nll, n = evaluate_nll(model, blocks, batch_size=batch_size, bf16=bf16)
    return nll / n


def baseline_loss_and_cosines(model, blocks, bf16: bool, batch_size: int) -> tuple[float, list[float]]:
    """Loss of the intact model and, from the same pass, each block's mean input/output cosine.

    The cosine is averaged over every token position; computed in float32 from forward hooks.
    """
    import torch

    model_blocks = get_blocks(model)
    sums = [0.0] * len(model_blocks)
    counts = [0] * len(model_blocks)

    def make_hook(i):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            sums[i] += cos.sum().item()
            counts[i] += cos.numel()
        return hook

    handles = [b.register_forward_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(model_blocks)]
    try:
        loss = mean_loss(model, blocks, bf16, batch_size)
    finally:
        for h in handles:
            h.remove()
    return loss, [s / c for s, c in zip(sums, counts)]


def block_importance(model, blocks, bf16: bool = True, batch_size: int = 8,
                     progress: bool = False) -> tuple[float, list[dict]]:
    """Baseline loss and one score dict per block, in block order.

    Each dict: `block`, `loss_without` (validation loss with the block skipped), `delta_loss`
    (= loss_without - baseline), `cosine_similarity` (mean cos(input, output) of the block) and
    `importance` (= delta_loss, the measure `choose_block` minimises).
    """
    from tqdm.auto import tqdm

    baseline, cosines = baseline_loss_and_cosines(model, blocks, bf16, batch_size)
    log.info("baseline validation loss %.4f", baseline)
    scores = []
    bar = tqdm(range(len(get_blocks(model))), desc="skip block", unit="block", disable=not progress)
    for i in bar:
        with skip_block(model, i):
            loss = mean_loss(model, blocks, bf16, batch_size)
        delta = loss - baseline
        scores.append({"block": i, "loss_without": loss, "delta_loss": delta,
                       "cosine_similarity": cosines[i], "importance": delta})
        bar.set_postfix(block=i, delta=f"{delta:+.4f}")
        log.debug("block %d: loss without %.4f (%+.4f), cosine %.4f", i, loss, delta, cosines[i])
    return baseline, scores


def choose_block(scores: Sequence[dict], key: str = "importance") -> int:
    """The block with the smallest `key` (ties: the lower index)."""
    return min(scores, key=lambda s: (s[key], s["block"]))["block"]


def cosine_choice(scores: Sequence[dict]) -> int:
    """The block the cosine proxy would remove: the one that changes its input least."""
    return max(scores, key=lambda s: (s["cosine_similarity"], -s["block"]))["block"]


def naive_blocks(n_blocks: int) -> dict[str, int]:
    """The choices one would make without measuring: the last block and the middle one."""
    return {"last": n_blocks - 1, "middle": n_blocks // 2}


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation (no ties expected in float scores)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    if n < 2:
        return float("nan")
    d2 = sum((a - b) ** 2 for a, b in zip(rx, ry))
    return 1 - 6 * d2 / (n * (n * n - 1))


def without_block(model, index: int):
    """A copy of `model` with block `index` deleted (config and layer_idx fixed by remove_block)."""
    return remove_block(copy.deepcopy(model), index)


# --------------------------------------------------------------------------- writing


# --------------------------------------------------------------------------- command line

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
        description="Score every transformer block of the base model on the validation split and "
                    "write the model with one block removed (the least important, or --block K).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="base model: the packaged default, 'gpt2', a hub id or a local directory")
    p.add_argument("--block", type=parse_block, default="auto",
                   help="'auto' removes the block whose skipping raises the validation loss least; "
                        "an integer K removes block K (0-based; scores are still computed)")
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE,
                   help="JSONL with a 'text' field per record")
    p.add_argument("--max-eval-tokens", type=int, default=DEFAULT_MAX_EVAL_TOKENS,
                   help="score on the first N validation tokens (0 = all)")
    p.add_argument("--block-size", type=int, default=cfg.block_size, help="tokens per evaluation block")
    p.add_argument("--batch-size", type=int, default=cfg.per_device_eval_batch_size,
                   help="evaluation blocks per forward pass")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=cfg.bf16,
                   help="bfloat16 autocast for the forward passes (weights stay float32)")
    p.add_argument("--out-models-dir", type=Path, default=MODELS_DIR,
                   help="where <base>-minus-block<k>/ is written")
    p.add_argument("--out-dir", type=Path, default=PRUNE_DIR,
                   help=f"where {BLOCK_IMPORTANCE_FILE.name} is written")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); on a machine shared "
                        "with other torch jobs 1 thread is several times faster than oversubscribed cores")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar over blocks")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (every block's score)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """The whole stage; returns the record written to block_importance.json."""
    import torch

    started = time.perf_counter()
    validation_file = require(args.validation_file, "02_preprocess.py (make preprocess)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = resolve_model(args.model)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    model.eval()
    n_blocks = len(get_blocks(model))
    if args.block != "auto" and not -n_blocks <= args.block < n_blocks:
        raise PruneInputError(f"--block {args.block}: the model has {n_blocks} blocks (0..{n_blocks - 1})")
    params_before = count_parameters(model)
    log.info("%s: %d blocks, %d parameters", args.model, n_blocks, params_before)

    blocks = load_eval_blocks(validation_file, tokenizer, args.block_size, args.max_eval_tokens)
    eval_tokens = sum(len(b) for b in blocks)
    predicted_tokens = sum(len(b) - 1 for b in blocks)
    log.info("scoring on %d validation tokens (%d blocks of <= %d), bf16 autocast %s, %d threads",
             eval_tokens, len(blocks), args.block_size, "on" if args.bf16 else "off", torch.get_num_threads())

    t0 = time.perf_counter()
    baseline, scores = block_importance(model, blocks, bf16=args.bf16, batch_size=args.batch_size,
                                        progress=args.progress)
    score_seconds = time.perf_counter() - t0
    log.info("scored %d blocks in %.0f s (%.0f tokens/s over %d forward passes)", n_blocks, score_seconds,
             eval_tokens * (n_blocks + 1) / score_seconds, n_blocks + 1)

    if args.block == "auto":
        selection, chosen = "auto", choose_block(scores)
    else:
        selection, chosen = "manual", args.block % n_blocks

    # Remove the candidate blocks for real and score the resulting models on the same tokens.
    removed_loss: dict[int, float] = {}
    pruned = None
    candidates = {"chosen": chosen, **naive_blocks(n_blocks)}
    proxy = cosine_choice(scores)
    for index in dict.fromkeys([*candidates.values(), proxy]):
        candidate = without_block(model, index)
        removed_loss[index] = mean_loss(candidate, blocks, args.bf16, args.batch_size)
        log.info("block %d removed: validation loss %.4f (%+.4f)", index, removed_loss[index],
                 removed_loss[index] - baseline)
        if index == chosen:
            pruned = candidate
        else:
            del candidate
    naive_comparison = {name: {"block": b, "loss": removed_loss[b]} for name, b in candidates.items()}

    params_after = count_parameters(pruned)
    out_dir = Path(args.out_models_dir) / f"{model_slug(args.model)}-minus-block{chosen}"
    save_pretrained_atomically(pruned, tokenizer, out_dir)
    log.info("removed block %d (%s): %d -> %d blocks, %d -> %d parameters (-%.1f%%); wrote %s",
             chosen, selection, n_blocks, len(get_blocks(pruned)), params_before, params_after,
             100 * (params_before - params_after) / params_before, out_dir)

    record = {
        "base_model": str(args.model),
        "base_model_path": display_path(model_path),
        "method": METHOD,
        "eval_tokens": eval_tokens,
        "baseline_loss": baseline,
        "scores": scores,
        "selection": selection,
        "removed_block": chosen,
        "naive_comparison": naive_comparison,
        "output_dir": display_path(out_dir),
        "parameters_before": params_before,
        "parameters_after": params_after,
        "blocks_before": n_blocks,
        "blocks_after": len(get_blocks(pruned)),
        "seconds": round(time.perf_counter() - started, 1),
        # Beyond docs/records.md: settings and the evidence for the choice of measure.
        "predicted_tokens": predicted_tokens,
        "validation_file": display_path(validation_file),
        "block_size": args.block_size,
        "bf16": args.bf16,
        "threads": torch.get_num_threads(),
        "scoring_seconds": round(score_seconds, 1),
        "proxy_comparison": {
            "method": "cosine_similarity",
            "block": proxy,
            "loss": removed_loss[proxy],
            "rank_correlation_with_importance": spearman(
                [s["importance"] for s in scores], [-s["cosine_similarity"] for s in scores]),
        },
    }
    out_file = Path(args.out_dir) / BLOCK_IMPORTANCE_FILE.name
    write_json(out_file, record)
    log.info("wrote %s in %.0f s total", out_file, record["seconds"])
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        run(args)
    except (MissingInputError, ModelUnavailableError, PruneInputError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
