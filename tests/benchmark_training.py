#!/usr/bin/env python
"""Training, evaluation and generation throughput on this machine (not part of the default test run).

    .venv/bin/python tests/benchmark_training.py [--model smollm2-135m] [--steps 1] [--rounds 3]
    .venv/bin/pytest -m benchmark tests/benchmark_training.py      (the same with --steps 1 --rounds 1)

Everything is measured in one process, on the same batches, recipes alternating round by round
(the machine is shared, so single timings are noisy; the median over rounds is reported):
- the ceiling: GFLOP/s of large bf16 and float32 matmuls (2048^2 and 4096^2, best of a few);
- training tokens/s of 03_train.py's default recipe (TrainConfig: bf16 autocast, packed blocks,
  chunked output-layer loss), the same in float32, a naive baseline (one article per row padded to
  the longest in the batch, float32, the model's own loss; only real tokens count), and one lever
  at a time changed from the default (the model's own loss, fused AdamW, block/batch shape, 1
  thread, torch.compile with compile time counted separately), plus the default recipe run through
  03_train.py's Trainer (to see the Trainer's own overhead);
- each recipe's share of the measured bf16 ceiling (FLOPs = 6 x parameters x tokens) and its peak
  memory (VmHWM, reset before each recipe);
- evaluation tokens/s (bmwlm.modeling.evaluate_nll, bf16 and float32) and greedy generation new
  tokens/s with the KV cache (float32 and bf16 autocast);
- optionally (--loss-check-steps N) N training steps from the same start on the same batches in
  bf16 autocast and in float32, then the validation loss of both: does bf16 reach the same loss?
- instead of all that, `--prune`: stage 04 before and after the prefix cache, side by side in one process
  (`bench_prune`: each with its defaults, and both algorithms on the same tokens); `--prune-budget`: how
  many calibration tokens 04's block ranking needs (`prune_budget`, float32 and bf16).
Results go to stdout and to outputs/benchmark/benchmark.json.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import PrinterCallback, ProgressCallback, TrainerCallback, default_data_collator
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: python tests/benchmark_training.py
    sys.path.insert(0, str(ROOT))

from bmwlm.config import DEFAULT_MODEL, OUTPUTS_DIR, PREPROCESS, TRAIN_FILE, VALIDATION_FILE, TrainConfig  # noqa: E402
from bmwlm.hardware import bf16_supported, cpu_model, matmul_gflops, set_threads, versions  # noqa: E402
from bmwlm.io import read_jsonl, require, write_json  # noqa: E402
from bmwlm.modeling import (  # noqa: E402
    autocast_context, compile_blocks, count_parameters, evaluate_nll, get_blocks, load_model, load_tokenizer,
)
from bmwlm.train.loss import causal_lm_loss  # noqa: E402
from bmwlm.train.trainer import PackedLMTrainer, training_arguments  # noqa: E402
from bmwlm.windows import evenly_spaced, pack_documents, tokenize_texts  # noqa: E402

BENCHMARK_FILE = OUTPUTS_DIR / "benchmark" / "benchmark.json"


# ---------------------------------------------------------------- helpers


def reset_peak_memory() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process, where Linux allows it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def release_memory() -> float:
    """Free what can be freed, reset the peak counter, and return the resident memory now (MB).

    The benchmark keeps the model and its AdamW states alive between recipes; this baseline shows
    how much of a recipe's peak they are.
    """

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back to the OS, so the peak is this recipe's
    reset_peak_memory()
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_memory_mb() -> float:
    """Peak resident memory since the last reset (VmHWM), else since the process started."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_ceiling(repeats: int = 3) -> dict:
    return {f"{dtype}_{n}": round(matmul_gflops(dtype, n, repeats, budget_s=None), 1)  # exactly n: the label says n
            for n in (2048, 4096) for dtype in ("bfloat16", "float32")}


@dataclasses.dataclass
class Recipe:
    name: str
    bf16: bool = True
    loss_chunk_size: int | None = None  # None: TrainConfig's
    optim: str | None = None  # None: TrainConfig's
    block_size: int | None = None
    batch_size: int | None = None
    threads: int | None = None  # None: the benchmark's (--threads)
    compile: str | None = None  # None: TrainConfig's; "none", "blocks" (each transformer block) or "model"
    naive: bool = False  # one padded article per row, the model's own loss
    trainer: bool = False  # the whole 03_train.py Trainer step
    note: str = ""


def recipes(cfg: TrainConfig, with_compile: bool) -> list[Recipe]:
    """The default recipe, its float32 twin, the naive baseline, then one lever at a time."""
    tokens = cfg.block_size * cfg.per_device_train_batch_size
    other_optim = "adamw_torch" if cfg.optim == "adamw_torch_fused" else "adamw_torch_fused"
    longer, shorter = cfg.block_size * 2, max(64, cfg.block_size // 2)
    out = [
        Recipe("default", note="03_train.py's recipe (TrainConfig)"),
        Recipe("float32", bf16=False, note="default without bf16 autocast"),
        Recipe("naive", bf16=False, naive=True, loss_chunk_size=0, optim="adamw_torch", compile="none",
               note="one article per row, padded to the longest in the batch (<= 1024 tokens), float32, "
                    "the model's own loss, foreach AdamW, eager"),
        Recipe("eager" if cfg.torch_compile else "compile-blocks", compile="none" if cfg.torch_compile else "blocks",
               note="default with the torch.compile setting flipped"),
        Recipe("model-loss", loss_chunk_size=0, note="default with the model's own loss (full float32 logits)"),
        Recipe("chunk2048" if cfg.loss_chunk_size != 2048 else "chunk256",
               loss_chunk_size=2048 if cfg.loss_chunk_size != 2048 else 256, note="other loss chunk size"),
        Recipe(other_optim.replace("adamw_torch_fused", "adamw-fused").replace("adamw_torch", "adamw-foreach"),
               optim=other_optim),
        Recipe(f"block{longer}x{max(1, tokens // longer)}", block_size=longer, batch_size=max(1, tokens // longer),
               note="same tokens per step, longer blocks"),
        Recipe(f"block{shorter}x{tokens // shorter}", block_size=shorter, batch_size=tokens // shorter,
               note="same tokens per step, shorter blocks"),
        Recipe(f"batch{cfg.per_device_train_batch_size * 2}", batch_size=cfg.per_device_train_batch_size * 2,
               note="twice the tokens per step"),
        Recipe("1-thread", threads=1),
        Recipe("trainer", trainer=True, note="default recipe through 03_train.py's PackedLMTrainer"),
    ]
    if with_compile:
        out += [Recipe("compile-model", compile="model", loss_chunk_size=0,
                       note="torch.compile of the whole model (blocks eager), its own loss")]
    return out


# ---------------------------------------------------------------- training steps


def make_optimizer(model, optim: str, weight_decay: float, lr: float):
    """AdamW as TrainingArguments.optim names it: adamw_torch (foreach) or adamw_torch_fused."""

    kind = {"adamw_torch": {"foreach": True}, "adamw_torch_fused": {"fused": True}}[optim]
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, **kind)


class Bench:
    """One model, the same data for every recipe, a fresh optimizer per measurement."""

    def __init__(self, model_name: str, train_file: Path, cfg: TrainConfig, threads: int = 0):

        self.cfg, self.threads = cfg, set_threads(threads)
        self.tokenizer = load_tokenizer(model_name)
        self.model = load_model(model_name)
        self.params = count_parameters(self.model)
        texts = [r["text"] for r in read_jsonl(require(train_file, str(PREPROCESS)))]
        self.docs = tokenize_texts(self.tokenizer, texts)
        config = self.model.config
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1024)
        self.naive_length = min(1024, self.max_positions)
        self.optimizers: dict = {}
        self.compiled_blocks, self.compiled_model = None, None

    def blocks(self, block_size: int, n: int) -> list[list[int]]:

        return pack_documents(self.docs, block_size, self.tokenizer.eos_token_id)[:n]

    def batches(self, r: Recipe, n: int):
        """`n` batches for recipe `r`: (input_ids, labels or None, attention_mask or None, useful tokens)."""

        if r.naive:
            rows = max(1, (r.block_size or self.cfg.block_size) * (r.batch_size or self.cfg.per_device_train_batch_size)
                       // self.naive_length)
            out = []
            for i in range(n):
                docs = [d[:self.naive_length] for d in self.docs[i * rows:(i + 1) * rows]]
                width = max(len(d) for d in docs)
                ids = torch.full((rows, width), self.tokenizer.pad_token_id)
                mask = torch.zeros((rows, width), dtype=torch.long)
                for j, d in enumerate(docs):
                    ids[j, :len(d)], mask[j, :len(d)] = torch.tensor(d), 1
                labels = ids.masked_fill(mask == 0, -100)
                out.append((ids, labels, mask, int(mask.sum())))
            return out
        bs, bsz = r.block_size or self.cfg.block_size, r.batch_size or self.cfg.per_device_train_batch_size
        blocks = self.blocks(bs, bsz * n)
        return [(torch.tensor(blocks[i * bsz:(i + 1) * bsz]), None, None, bs * bsz) for i in range(n)]

    def optimizer(self, optim: str):
        """One AdamW per kind, kept across recipes: its state's values do not change a step's cost."""
        if optim not in self.optimizers:
            self.optimizers[optim] = make_optimizer(self.model, optim, self.cfg.weight_decay, lr=1e-6)
        return self.optimizers[optim]

    def step(self, forward, optimizer, batch, bf16: bool, chunk: int) -> float:

        ids, labels, mask, _ = batch
        with autocast_context(bf16):
            if labels is not None:
                loss = forward(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
            else:
                loss = causal_lm_loss(forward, ids, chunk)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def run(self, r: Recipe, steps: int, warmup: int) -> dict:
        """Tokens/s of `steps` timed steps after `warmup` untimed ones (new shapes, compilation)."""

        model = self.model
        model.train()
        torch.set_num_threads(r.threads or self.threads)
        chunk = self.cfg.loss_chunk_size if r.loss_chunk_size is None else r.loss_chunk_size
        if r.trainer:
            warmup = max(1, warmup)  # a new Trainer makes its optimizer state in its first step
        batches = self.batches(r, warmup + steps)
        baseline = release_memory()
        if r.trainer:
            self.compiled_forward(r)
            result = self.run_trainer(r, batches, warmup)
        else:
            forward = self.compiled_forward(r)
            opt = self.optimizer(r.optim or self.cfg.optim)
            t_first = time.perf_counter()
            for b in batches[:warmup]:
                self.step(forward, opt, b, r.bf16, chunk)
            first = time.perf_counter() - t_first
            t0 = time.perf_counter()
            losses = [self.step(forward, opt, b, r.bf16, chunk) for b in batches[warmup:]]
            seconds = time.perf_counter() - t0
            useful = sum(b[3] for b in batches[warmup:])
            result = {"tokens_per_s": useful / seconds, "seconds_per_step": seconds / steps, "loss": losses[-1],
                      "warmup_seconds": first}
        result["peak_memory_mb"] = round(peak_memory_mb())
        result["baseline_memory_mb"] = round(baseline)
        torch.set_num_threads(self.threads)
        return result

    def compiled_forward(self, r: Recipe):
        """The module to train through for recipe `r`, with each block compiled or eager as `r` asks."""


        want = r.compile or ("blocks" if self.cfg.torch_compile else "none")
        blocks = get_blocks(self.model)
        if want == "blocks" and self.compiled_blocks is None:
            compile_blocks(self.model)  # compiled code is cached: switching back costs nothing
            self.compiled_blocks = [b._compiled_call_impl for b in blocks]
        for i, block in enumerate(blocks):
            block._compiled_call_impl = self.compiled_blocks[i] if want == "blocks" else None
        if want == "model":
            if self.compiled_model is None:
                self.compiled_model = torch.compile(self.model)
            return self.compiled_model
        return self.model

    def run_trainer(self, r: Recipe, batches, warmup: int) -> dict:
        """The default recipe through 03_train.py's Trainer subclass, timed per step by a callback."""


        class StepTimer(TrainerCallback):
            def __init__(self):
                self.times = []

            def on_step_begin(self, args, state, control, **kwargs):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.times.append(time.perf_counter() - self.t0)

        cfg = dataclasses.replace(self.cfg, max_steps=len(batches), learning_rate=1e-6)
        blocks = [row.tolist() for b in batches for row in b[0]]
        with tempfile.TemporaryDirectory() as tmp:
            args = training_arguments(cfg, Path(tmp), r.bf16, resuming=True)
            args.eval_strategy, args.save_strategy = IntervalStrategy.NO, SaveStrategy.NO
            args.data_seed = None
            trainer = PackedLMTrainer(model=self.model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks}),
                              data_collator=default_data_collator, loss_chunk_size=self.cfg.loss_chunk_size)
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
            timer = StepTimer()
            trainer.add_callback(timer)
            trainer.train()
        # accelerate wrapped model.forward in autocast for the Trainer: undo it for the other recipes
        self.model.__dict__.pop("forward", None)
        self.model.__dict__.pop("_original_forward", None)
        timed = timer.times[warmup:]
        tokens = batches[0][3]
        return {"tokens_per_s": tokens * len(timed) / sum(timed), "seconds_per_step": sum(timed) / len(timed),
                "warmup_seconds": sum(timer.times[:warmup])}


# ---------------------------------------------------------------- evaluation and generation


def bench_eval(model, tokenizer, validation_file: Path, cfg: TrainConfig, n_blocks: int = 24) -> dict:


    texts = [r["text"] for r in read_jsonl(require(validation_file, str(PREPROCESS)))]
    blocks = pack_documents(tokenize_texts(tokenizer, texts), cfg.block_size, tokenizer.eos_token_id)[:n_blocks]
    out = {"blocks": len(blocks), "block_size": cfg.block_size}
    for name, bf16 in (("bf16", True), ("float32", False)):
        evaluate_nll(model, blocks[:cfg.per_device_eval_batch_size], cfg.per_device_eval_batch_size, bf16)  # warm-up
        t0 = time.perf_counter()
        nll, n = evaluate_nll(model, blocks, cfg.per_device_eval_batch_size, bf16)
        seconds = time.perf_counter() - t0
        out[name] = {"tokens_per_s": round(n / seconds, 1), "loss": round(nll / n, 4)}
    # The same scoring with the chunked output layer + loss of 03_train.py (bf16): worth it for evaluate_nll?
    ids = torch.tensor(blocks)
    model.eval()
    with torch.inference_mode(), autocast_context(True):
        causal_lm_loss(model, ids[:cfg.per_device_eval_batch_size], cfg.loss_chunk_size or 512)
        t0 = time.perf_counter()
        batches = [ids[i:i + cfg.per_device_eval_batch_size] for i in range(0, len(ids), cfg.per_device_eval_batch_size)]
        total = sum(causal_lm_loss(model, b, cfg.loss_chunk_size or 512).item() * len(b) for b in batches)
        seconds = time.perf_counter() - t0
    out["bf16_chunked_loss"] = {"tokens_per_s": round(ids[:, 1:].numel() / seconds, 1),
                                "loss": round(total / len(ids), 4)}
    return out


def bench_generation(model, tokenizer, validation_file: Path, new_tokens: int = 48) -> dict:

    prompt = read_jsonl(validation_file)[0]["title"]
    ids = tokenizer(prompt, return_tensors="pt")
    model.eval()
    out = {"prompt_tokens": int(ids["input_ids"].shape[1]), "new_tokens": new_tokens}
    for name, bf16 in (("float32", False), ("bf16", True)):
        times = []
        with torch.inference_mode(), autocast_context(bf16):
            for _ in range(2):  # the first call meets every sequence length for the first time (slow)
                t0 = time.perf_counter()
                gen = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     use_cache=True, pad_token_id=tokenizer.pad_token_id)
                times.append(time.perf_counter() - t0)
        made = int(gen.shape[1] - ids["input_ids"].shape[1])
        out[name] = {"new_tokens_per_s": round(made / times[1], 1), "first_call_new_tokens_per_s": round(made / times[0], 1)}
    return out


# ---------------------------------------------------------------- bf16 vs float32 loss


def loss_check(bench: Bench, validation_file: Path, steps: int, eval_blocks: int = 24) -> dict:
    """`steps` steps of the default recipe from the same weights and batches, bf16 autocast vs float32."""


    cfg = bench.cfg
    texts = [r["text"] for r in read_jsonl(validation_file)]
    val = pack_documents(tokenize_texts(bench.tokenizer, texts), cfg.block_size, bench.tokenizer.eos_token_id)
    val = evenly_spaced(val, eval_blocks)
    start = copy.deepcopy(bench.model.state_dict())
    batches = bench.batches(Recipe("default"), steps)
    out = {"steps": steps, "learning_rate": cfg.learning_rate, "eval_blocks": len(val)}
    for name, bf16 in (("bf16", True), ("float32", False)):
        bench.model.load_state_dict(start)
        opt = make_optimizer(bench.model, cfg.optim, cfg.weight_decay, lr=cfg.learning_rate)  # constant lr
        bench.model.train()
        losses = [bench.step(bench.model, opt, b, bf16, cfg.loss_chunk_size) for b in batches]
        del opt
        nll, n = evaluate_nll(bench.model, val, cfg.per_device_eval_batch_size, bf16=False)
        out[name] = {"train_loss_first": round(losses[0], 4), "train_loss_last_5": round(statistics.mean(losses[-5:]), 4),
                     "eval_loss_float32_scoring": round(nll / n, 4)}
    bench.model.load_state_dict(start)
    nll, n = evaluate_nll(bench.model, val, cfg.per_device_eval_batch_size, bf16=False)
    out["eval_loss_before"] = round(nll / n, 4)
    return out


# ---------------------------------------------------------------- main


def run_benchmark(model: str = DEFAULT_MODEL, steps: int = 1, rounds: int = 3, train_file: Path = TRAIN_FILE,
                  validation_file: Path = VALIDATION_FILE, out_file: Path | None = BENCHMARK_FILE,
                  with_compile: bool = False, only: list[str] | None = None, loss_check_steps: int = 0,
                  threads: int = 0) -> dict:

    started = time.perf_counter()
    cfg = TrainConfig()
    bench = Bench(model, train_file, cfg, threads)
    rs = [r for r in recipes(cfg, with_compile) if (not only or r.name in only)
          and (r.block_size or cfg.block_size) <= bench.max_positions
          and (r.threads or bench.threads) <= bench.threads and not (r.threads and bench.threads == 1)]
    print(f"{model}: {bench.params:,} parameters, {bench.threads} threads, torch {torch.__version__}, "
          f"bf16 supported: {bf16_supported()}", flush=True)
    ceilings = [matmul_ceiling()]
    print("matmul GFLOP/s:", ceilings[0], flush=True)
    runs: dict[str, list[dict]] = {r.name: [] for r in rs}
    for rnd in range(rounds):
        for r in rs:
            res = bench.run(r, steps, warmup=1 if rnd == 0 else 0)
            runs[r.name].append(res)
            print(f"round {rnd + 1}/{rounds} {r.name:>16}: {res['tokens_per_s']:7.1f} tokens/s "
                  f"({res['seconds_per_step']:.2f} s/step, peak {res['peak_memory_mb']:,} MB"
                  + (f", warm-up {res['warmup_seconds']:.1f} s)" if rnd == 0 else ")"), flush=True)
        ceilings.append(matmul_ceiling())
    bf16_peak = statistics.median(c["bfloat16_2048"] for c in ceilings) * 1e9
    naive = statistics.median(x["tokens_per_s"] for x in runs["naive"]) if runs.get("naive") else None
    table = {}
    for r in rs:
        rate = statistics.median(x["tokens_per_s"] for x in runs[r.name])
        table[r.name] = {
            "tokens_per_s": round(rate, 1),
            "tokens_per_s_all": [round(x["tokens_per_s"], 1) for x in runs[r.name]],
            "share_of_bf16_peak": round(rate * 6 * bench.params / bf16_peak, 4),
            "vs_naive": round(rate / naive, 2) if naive else None,
            "peak_memory_mb": max(x["peak_memory_mb"] for x in runs[r.name]),
            "baseline_memory_mb": min(x["baseline_memory_mb"] for x in runs[r.name]),
            "warmup_seconds": round(runs[r.name][0]["warmup_seconds"], 1),
            "settings": {k: v for k, v in dataclasses.asdict(r).items() if v not in (None, False, "") and k != "name"},
        }
    default = table.get("default", {}).get("tokens_per_s")
    for name, row in table.items():
        row["vs_default"] = round(row["tokens_per_s"] / default, 2) if default else None
    result = {
        "model": model, "parameters": bench.params, "threads": bench.threads, "steps": steps, "rounds": rounds,
        "config": cfg.to_dict(), "versions": versions(), "machine": cpu_model(),
        "matmul_gflops": ceilings, "bf16_peak_gflops_used": round(bf16_peak / 1e9, 1),
        "training": table,
    }
    print(f"\n{'recipe':>16} {'tokens/s':>9} {'x naive':>8} {'x default':>9} {'bf16 peak':>9} {'peak MB':>8}")
    for name, row in table.items():
        print(f"{name:>16} {row['tokens_per_s']:9.1f} {row['vs_naive'] or 0:8.2f} {row['vs_default'] or 0:9.2f} "
              f"{100 * row['share_of_bf16_peak']:8.1f}% {row['peak_memory_mb']:8,}")
    result["evaluation"] = bench_eval(bench.model, bench.tokenizer, validation_file, cfg)
    print("evaluation:", result["evaluation"], flush=True)
    result["generation"] = bench_generation(bench.model, bench.tokenizer, validation_file)
    print("generation:", result["generation"], flush=True)
    if loss_check_steps:
        result["bf16_vs_float32"] = loss_check(bench, validation_file, loss_check_steps)
        print("bf16 vs float32:", result["bf16_vs_float32"], flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_memory_mb_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if out_file:
        write_json(out_file, result)
        print(f"wrote {out_file}")
    return result


# ---------------------------------------------------------------- stage 04: old vs new, and the calibration budget

PRUNE_BENCHMARK_FILE = OUTPUTS_DIR / "benchmark" / "prune.json"
OLD_04_TOKENS = 32768  # the old default --max-eval-tokens: the first 32k validation tokens


def old_prune_stage(model, windows, bf16: bool, batch_size: int) -> dict:
    """04 as it was before the prefix cache (git show 1ac6bb6:04_prune_layer.py): a baseline pass with
    cosine hooks, one full forward pass per skipped block, then the chosen, last, middle and cosine-proxy
    blocks removed for real (a model copy each) and scored again."""
    from bmwlm.modeling import get_blocks, remove_block
    from bmwlm.prune.scoring import skip_block

    blocks = get_blocks(model)
    sums, counts = [0.0] * len(blocks), [0] * len(blocks)

    def hook(i):
        def f(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            sums[i] += cos.sum().item()
            counts[i] += cos.numel()
        return f

    t0 = time.perf_counter()
    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    nll, n = evaluate_nll(model, windows, batch_size, bf16)
    for h in handles:
        h.remove()
    baseline = nll / n
    losses = []
    for k in range(len(blocks)):
        with skip_block(model, k):
            losses.append(evaluate_nll(model, windows, batch_size, bf16)[0] / n)
    chosen = min(range(len(losses)), key=lambda k: (losses[k], k))
    proxy = max(range(len(blocks)), key=lambda k: (sums[k] / counts[k], -k))
    for index in dict.fromkeys([chosen, len(blocks) - 1, len(blocks) // 2, proxy]):
        evaluate_nll(remove_block(copy.deepcopy(model), index), windows, batch_size, bf16)
    return {"seconds": time.perf_counter() - t0, "tokens": n, "baseline": baseline, "losses": losses,
            "chosen": chosen}


def new_prune_stage(model, windows, dtype, batch_size: int) -> dict:
    """Today's 04 scoring: the runner check, prefix-cached scores of every block, the choice (the removed
    model is a copy with no extra pass)."""
    from bmwlm import prune
    from bmwlm.prune.runner import check_runner

    t0 = time.perf_counter()
    runner = prune.BlockRunner(model, "cpu", dtype)
    check_runner(runner, torch.tensor(windows[:2]))
    ws = prune.score_windows(runner, windows, batch_size)
    baseline, scores = prune.block_scores(ws)
    chosen = prune.choose_block(scores)
    prune.without_blocks(model, [chosen])
    return {"seconds": time.perf_counter() - t0, "tokens": int(ws.tokens.sum()), "baseline": baseline,
            "losses": [s.loss_without for s in scores], "chosen": chosen}


def bench_prune(model_name: str = DEFAULT_MODEL, train_file: Path = TRAIN_FILE, validation_file: Path = VALIDATION_FILE,
                calibration_tokens: int | None = None, old_tokens: int = OLD_04_TOKENS, same_tokens: bool = True,
                threads: int = 0, batch_size: int = 8, out_file: Path | None = PRUNE_BENCHMARK_FILE) -> dict:
    """The old and the new 04 in one process: (1) each with its defaults (old: the first 32k validation
    tokens, bf16 autocast, one pass per block + 4 removal passes; new: the calibration sample of the training
    split, float32, prefix-cached), the speed-up the stage gained; (2) with `same_tokens`, both algorithms on
    the new default's tokens in the new default's precision: the speed-up of the algorithm alone, and the
    largest difference between their losses."""
    from bmwlm import prune

    threads = set_threads(threads)
    calibration_tokens = calibration_tokens or prune.DEFAULT_CALIBRATION_TOKENS
    tokenizer, model = load_tokenizer(model_name), load_model(model_name).eval()
    cal = prune.calibration_sample(require(train_file, str(PREPROCESS)), tokenizer, 256, calibration_tokens).windows
    # the old cap counted input tokens: its first 32768 validation tokens were 128 windows of 256
    val, seen = [], 0
    for w in prune.validation_windows(require(validation_file, str(PREPROCESS)), tokenizer, 256, None):
        if seen >= old_tokens:
            break
        val.append(w[:old_tokens - seen])
        seen += len(val[-1])
    print(f"04 benchmark: {model_name}, {threads} thread(s), {cpu_model()}; old default: {sum(len(w) - 1 for w in val)} "
          f"validation tokens in bf16; new default: {sum(len(w) - 1 for w in cal)} calibration tokens in float32",
          flush=True)
    evaluate_nll(model, cal[:2], 2, False)  # warm-up (oneDNN picks its kernels)
    result = {"model": model_name, "threads": threads, "machine": cpu_model(), "versions": versions()}
    new = new_prune_stage(model, cal, None, batch_size)
    print(f"new 04 (default): {new['seconds']:.0f} s, block {new['chosen']}", flush=True)
    old = old_prune_stage(model, val, True, batch_size)
    print(f"old 04 (default): {old['seconds']:.0f} s, block {old['chosen']}", flush=True)
    again = new_prune_stage(model, cal, None, batch_size)  # before and after the old run: a load change shows
    print(f"new 04 (default, again): {again['seconds']:.0f} s, block {again['chosen']}", flush=True)
    new_runs = [round(new["seconds"], 1), round(again["seconds"], 1)]
    new["seconds"] = (new["seconds"] + again["seconds"]) / 2
    result["defaults"] = {
        "old": {"seconds": round(old["seconds"], 1), "tokens": old["tokens"], "split": "validation (first tokens)",
                "precision": "bfloat16 autocast", "chosen": old["chosen"]},
        "new": {"seconds": round(new["seconds"], 1), "runs_seconds": new_runs, "tokens": new["tokens"],
                "split": "train (evenly spaced windows)", "precision": "float32", "chosen": new["chosen"]},
        "speedup": round(old["seconds"] / new["seconds"], 2)}
    if same_tokens:
        same_old = old_prune_stage(model, cal, False, batch_size)
        print(f"old algorithm on the new default's tokens: {same_old['seconds']:.0f} s, block {same_old['chosen']}",
              flush=True)
        result["same_tokens"] = {
            "tokens": new["tokens"], "precision": "float32", "old_seconds": round(same_old["seconds"], 1),
            "new_seconds": round(new["seconds"], 1), "speedup": round(same_old["seconds"] / new["seconds"], 2),
            "same_block": same_old["chosen"] == new["chosen"],
            "max_abs_loss_difference": max(abs(a - b) for a, b in zip(same_old["losses"], new["losses"]))}
    d = result["defaults"]
    print(f"\n{'04 scoring':<44} {'tokens':>7} {'precision':>18} {'seconds':>8} {'block':>6}")
    print(f"{'old (HEAD: one full pass per block, validation)':<44} {d['old']['tokens']:>7} {'bfloat16 autocast':>18} "
          f"{d['old']['seconds']:>8.0f} {d['old']['chosen']:>6}")
    print(f"{'new (prefix-cached, calibration sample)':<44} {d['new']['tokens']:>7} {'float32':>18} "
          f"{d['new']['seconds']:>8.0f} {d['new']['chosen']:>6}   (mean of {new_runs[0]:.0f} s before, "
          f"{new_runs[1]:.0f} s after the old run)")
    print(f"speed-up of the default stage: {d['speedup']:.2f}x")
    if same_tokens:
        st = result["same_tokens"]
        print(f"same tokens and precision ({st['tokens']} calibration tokens, float32): old {st['old_seconds']:.0f} s, "
              f"new {st['new_seconds']:.0f} s, speed-up {st['speedup']:.2f}x; same block: {st['same_block']}; "
              f"largest loss difference {st['max_abs_loss_difference']:.2e}")
    if out_file:
        write_json(out_file, result)
        print(f"wrote {out_file}")
    return result


def prune_budget(model_name: str = DEFAULT_MODEL, train_file: Path = TRAIN_FILE, pool_windows: int = 128,
                 sizes=(4, 8, 16, 32, 64), precisions=("float32",), threads: int = 0, batch_size: int = 8,
                 out_file: Path | None = OUTPUTS_DIR / "benchmark" / "prune_budget.json") -> dict:
    """How many calibration tokens the ranking needs: one prefix-cached scoring of a large pool of evenly
    spaced training windows (the reference), then every evenly spaced sub-grid of each size read off it
    (bmwlm.prune.budget). With two precisions, also how the bf16 ranking compares with float32's."""
    import numpy as np

    from bmwlm import prune
    from bmwlm.prune.budget import budget_table, smallest_budget, spearman

    threads = set_threads(threads)
    tokenizer, model = load_tokenizer(model_name), load_model(model_name).eval()
    pool = prune.calibration_sample(require(train_file, str(PREPROCESS)), tokenizer, 256, pool_windows * 255)
    result = {"model": model_name, "pool_windows": len(pool.windows), "pool_tokens": pool.predicted_tokens,
              "windows_total": pool.windows_total, "threads": threads, "machine": cpu_model(), "precisions": {}}
    deltas = {}
    for name in precisions:
        dtype = None if name == "float32" else torch.bfloat16
        t0 = time.perf_counter()
        ws = prune.score_windows(prune.BlockRunner(model, "cpu", dtype), pool.windows, batch_size, progress=True)
        ref, rows = budget_table(ws, sizes)
        best = smallest_budget(rows)
        deltas[name] = ws.delta_losses()
        result["precisions"][name] = {
            "seconds": round(time.perf_counter() - t0, 1), "reference_block": ref,
            "reference_delta_loss": [round(float(x), 5) for x in ws.delta_losses()],
            "budgets": [r.to_dict() for r in rows],
            "smallest_budget_keeping_the_block": best.to_dict() if best else None}
        print(f"{name}: reference block {ref} ({pool.predicted_tokens} tokens, {time.perf_counter() - t0:.0f} s)")
        print(f"{'windows':>8} {'tokens':>7} {'grids':>6} {'block (grid 0)':>15} {'rho (grid 0)':>13} "
              f"{'same block':>11} {'rho min':>8}")
        for r in rows:
            print(f"{r.windows:>8} {r.tokens:>7} {r.grids:>6} {r.chosen_first_grid:>15} {r.rho_first_grid:>13.3f} "
                  f"{100 * r.share_same_block:>10.0f}% {r.rho_min:>8.3f}")
    if len(deltas) == 2:
        a, b = deltas.values()
        result["precision_agreement"] = {"spearman": spearman(a, b), "max_abs_delta_difference": float(np.abs(a - b).max())}
        print("bf16 vs float32 ranking:", result["precision_agreement"])
    if out_file:
        write_json(out_file, result)
        print(f"wrote {out_file}")
    return result


@pytest.mark.benchmark
def test_benchmark_training(tmp_path):
    if not TRAIN_FILE.exists():
        pytest.skip(f"{TRAIN_FILE} missing: run 02_preprocess.py first")
    result = run_benchmark(steps=1, rounds=1)
    assert result["training"]["default"]["tokens_per_s"] > 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model to measure (as 03_train.py --model)")
    p.add_argument("--steps", type=int, default=1, help="timed training steps per recipe and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all recipes (median reported)")
    p.add_argument("--train-file", type=Path, default=TRAIN_FILE, help="articles the training batches are made of")
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE, help="articles evaluation is timed on")
    p.add_argument("--out", type=Path, default=BENCHMARK_FILE, help="where the results are written")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes of compiling)")
    p.add_argument("--only", nargs="*", default=argparse.SUPPRESS, help="recipe names to run (default: all)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for everything (0 = auto, bmwlm.hardware's policy); 1 keeps numbers stable while "
                        "another job holds a core")
    p.add_argument("--loss-check-steps", type=int, default=0,
                   help="also train N steps in bf16 and in float32 from the same start and compare losses")
    p.add_argument("--prune", action="store_true",
                   help="instead of training: time the old 04 (one pass per block) against the new one (prefix-cached), "
                        "each with its defaults and on the same tokens; writes outputs/benchmark/prune.json")
    p.add_argument("--prune-same-tokens", action=argparse.BooleanOptionalAction, default=True,
                   help="--prune: also run the old algorithm on the new default's tokens and precision")
    p.add_argument("--prune-budget", action="store_true",
                   help="instead of training: how many calibration tokens 04's ranking needs (a 128-window reference, "
                        "float32 and bf16); writes outputs/benchmark/prune_budget.json")
    args = p.parse_args(argv)
    if args.prune or args.prune_budget:
        if args.prune_budget:
            prune_budget(args.model, args.train_file, precisions=("float32", "bfloat16"), threads=args.threads)
        if args.prune:
            bench_prune(args.model, args.train_file, args.validation_file, same_tokens=args.prune_same_tokens,
                        threads=args.threads)
        return 0
    run_benchmark(args.model, args.steps, args.rounds, args.train_file, args.validation_file, args.out,
                  args.compile, getattr(args, "only", None), args.loss_check_steps, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
