"""Stage 05: evaluate the base, base-minus-block, full and pruned models side by side.

Reads
  - the models: `base` (--base-model, default the packaged SmolLM2-135M), `base_minus_block` (the
    directory named in outputs/prune/block_importance.json, written by 04_prune_layer.py), and
    `full` / `pruned` (outputs/runs/<variant>/model and run.json, written by 03_train.py);
  - data/processed/validation.jsonl (held-out articles) and train.jsonl (02_preprocess.py);
  - data/qa/bmw_qa.jsonl (hand-written multiple-choice questions on PressClub facts).
Writes (outputs/eval/, all three together; records in bmwlm/records/evaluation.py, docs/records.md)
  - metrics.json: per model perplexity (with its interval over articles, the separators' share),
    Q&A and cloze accuracy under three scoring methods, a float32-vs-bf16 check, answer quality of
    generated answers; the paired comparisons behind every claim; the frequency-prior baseline; the
    interleaved speed measurement;
  - generations.jsonl: press-release openings continued, and questions answered (plain and chat);
  - qa_predictions.jsonl: every scored Q&A and cloze item, per model, every option under every method.

Why each measurement is made the way it is (details in each module of bmwlm/evaluate/)
  - Perplexity over the same non-overlapping, EOS-separated windows training uses, token-weighted over
    every validation token, so it agrees with 03's eval_loss curves; each token's loss is attributed to
    its article so that intervals and model comparisons resample articles. The same on whole training
    articles spread over the train split shows over-fitting.
  - Q&A and cloze: each option scored as a continuation of the prompt three ways (length-normalised,
    calibrated against a neutral prompt, and the question-free prior control), in float32; intervals
    resample items (Q&A) or articles (cloze); Q&A accuracy is split by whether the answer fact is in
    the training text, beside the frequency-prior guesser on the same items.
  - Every comparison between two models is paired (bootstrap on the same articles or items, McNemar
    for accuracy); speed only from models timed interleaved in one process on the same inputs.
  - A missing model is reported in its entry, not fatal; the stage fails only when none could be run.
  - Every model runs on `--device` (auto: CUDA, then MPS, then the CPU); the device is recorded.
  - The cards (README.md) of the model folders the pipeline wrote (the pruned base from 04, each
    fine-tuned variant from 03) are rewritten with these results in their model-index.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from bmwlm.config import (
    BLOCK_IMPORTANCE_FILE, DEFAULT_MODEL, DEVICE_CHOICES, EVAL_DIR, GENERATIONS_FILE, METRICS_FILE, MODEL_KEYS,
    PRUNE, QA_FILE, QA_PREDICTIONS_FILE, RUNS_DIR, TRAIN_FILE, VALIDATION_FILE, TrainConfig,
)
from bmwlm.evaluate.data import load_eval_data
from bmwlm.io import (
    BadRecordError, MissingInputError, display_path, json_text, jsonl_text, setup_logging, write_together,
)
from bmwlm.records.evaluation import EvalSettings, Metrics, ModelEntry

log = logging.getLogger("stage05")  # not "evaluate": the HF `evaluate` library owns that logger


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODEL_KEYS),
                   help="comma-separated subset of the four models to evaluate (default: %(default)s)")
    p.add_argument("--base-model", default=DEFAULT_MODEL,
                   help="the base model: packaged name, directory or hub id (default: %(default)s)")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                   help="where the training runs are: <variant>/model and run.json (default: %(default)s)")
    p.add_argument("--prune-file", type=Path, default=BLOCK_IMPORTANCE_FILE,
                   help=f"{PRUNE.script}'s record, naming the base-minus-block model (default: %(default)s)")
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE,
                   help="held-out articles: perplexity and the cloze set (default: %(default)s)")
    p.add_argument("--train-file", type=Path, default=TRAIN_FILE,
                   help="training articles: the train-slice perplexity (default: %(default)s)")
    p.add_argument("--qa-file", type=Path, default=QA_FILE, help="the hand-written Q&A set (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=EVAL_DIR,
                   help=f"where {METRICS_FILE.name}, {GENERATIONS_FILE.name} and {QA_PREDICTIONS_FILE.name} go "
                        "(default: %(default)s)")
    p.add_argument("--block-size", type=int, default=TrainConfig.block_size,
                   help="window length in tokens, as in training (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.per_device_eval_batch_size,
                   help="windows per perplexity forward pass (default: %(default)s)")
    p.add_argument("--score-batch-size", type=int, default=32,
                   help="options continuing one prompt per scoring forward pass (default: %(default)s)")
    p.add_argument("--train-slice-tokens", type=int, default=16384,
                   help="tokens of whole training articles (evenly spaced through the train split) scored for the "
                        "over-fitting check; 0 = as many as the validation split (default: %(default)s)")
    p.add_argument("--cloze-max", type=int, default=150,
                   help="at most this many automatic cloze items; 0 = no cloze set (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="bootstrap resamples for the 95%% intervals (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=60,
                   help="tokens generated per press-release opening and decoding (default: %(default)s)")
    p.add_argument("--questions", type=int, default=8,
                   help="Q&A items asked as open questions, half seen in training (default: %(default)s)")
    p.add_argument("--answer-new-tokens", type=int, default=40,
                   help="tokens generated per question answer (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the cloze set, the bootstrap and sampled generation (default: %(default)s)")
    p.add_argument("--fp32-perplexity", action="store_true",
                   help="perplexities in float32 instead of bfloat16 autocast (several times slower on a CPU)")
    p.add_argument("--bf16-choices", action="store_true",
                   help="score the Q&A and cloze sets under bfloat16 autocast instead of float32")
    p.add_argument("--precision-check", choices=("qa", "all", "none"), default="qa", metavar="WHICH",
                   help="items re-scored under bfloat16 autocast to record the flips: qa (the Q&A set), all (Q&A "
                        "and cloze) or none (default: %(default)s)")
    p.add_argument("--precision-windows", type=int, default=4,
                   help="validation windows scored in both precisions per model (default: %(default)s)")
    p.add_argument("--cost-rounds", type=int, default=6,
                   help="interleaved rounds of the speed measurement; 0 = no speed measurement (default: %(default)s)")
    p.add_argument("--cost-batch", type=int, default=4,
                   help="windows per timed training step (default: %(default)s)")
    p.add_argument("--cost-new-tokens", type=int, default=32,
                   help="positions generated per timed sequence (default: %(default)s)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", metavar="DEVICE",
                   help=f"where the models run ({', '.join(DEVICE_CHOICES)}): auto picks CUDA, then MPS, then the CPU; "
                        "on a GPU the bf16 autocast of the perplexities becomes the device's autocast dtype "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads; 0 = the free physical cores, by the load average (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in MODEL_KEYS]
    if unknown:
        p.error(f"unknown model key(s) {unknown}; choose from {', '.join(MODEL_KEYS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    started = time.perf_counter()
    try:
        data = load_eval_data(args.validation_file, args.train_file, args.qa_file, args.cloze_max, args.seed)
    except (MissingInputError, BadRecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # The one deferred import: torch, transformers and `evaluate` take seconds to load, which --help
    # and a missing input should not wait for.
    from bmwlm.evaluate.choice import METHODS, NEUTRAL_PROMPT, accuracy_interval, precision_name
    from bmwlm.evaluate.generation import REPETITION_PENALTY
    from bmwlm.evaluate.models import empty_entry, refresh_cards, resolve_model_specs
    from bmwlm.evaluate.perplexity import load_perplexity_metric
    from bmwlm.evaluate.qa import qa_prompt
    from bmwlm.evaluate.runner import EvalOptions, all_comparisons, evaluate_model, run_cost, summary_table
    from bmwlm.hardware import DeviceUnavailableError, resolve_device, set_threads, versions
    from bmwlm.records.evaluation import FrequencyPrior

    try:
        device = resolve_device(args.device)
    except DeviceUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    threads = set_threads(args.threads)
    specs = resolve_model_specs(args.base_model, args.runs_dir, args.prune_file, args.model_list)
    opts = EvalOptions(block_size=args.block_size, batch_size=args.batch_size, score_batch_size=args.score_batch_size,
                       train_slice_tokens=args.train_slice_tokens, bootstrap=args.bootstrap, seed=args.seed,
                       max_new_tokens=args.max_new_tokens, answer_new_tokens=args.answer_new_tokens,
                       questions=args.questions, perplexity_bf16=not args.fp32_perplexity,
                       choice_bf16=args.bf16_choices, precision_check=args.precision_check,
                       precision_windows=args.precision_windows, progress=not args.no_progress, device=str(device))
    metric = load_perplexity_metric()

    models: dict[str, ModelEntry] = {}
    generations, predictions = [], []
    for key in MODEL_KEYS:
        spec = specs[key]
        if spec.error:
            if key in args.model_list:
                log.warning("%s: unavailable: %s", key, spec.error)
            models[key] = empty_entry(spec)
            continue
        log.info("%s: evaluating %s (%s)", key, spec.label, display_path(spec.path))
        try:
            models[key], gens, preds = evaluate_model(spec, data, opts, metric)
        except Exception as exc:  # one broken model must not cost the others their results
            log.error("%s: evaluation failed: %s: %s", key, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            spec.error = f"{type(exc).__name__}: {exc}"
            models[key] = empty_entry(spec)
            continue
        generations.extend(gens)
        predictions.extend(preds)

    cost = run_cost(specs, models, data, opts, args.cost_rounds, args.cost_batch, args.cost_new_tokens)
    comparisons = all_comparisons(models, predictions, data, cost, opts)
    prior = None
    if data.frequency_prior is not None:
        hits = data.frequency_prior
        prior = FrequencyPrior(
            accuracy=accuracy_interval(hits, None, args.bootstrap, args.seed),
            seen=accuracy_interval([h for h, it in zip(hits, data.qa_items) if it.seen_in_train is True], None,
                                   args.bootstrap, args.seed),
            unseen=accuracy_interval([h for h, it in zip(hits, data.qa_items) if it.seen_in_train is False], None,
                                     args.bootstrap, args.seed))
    lib = versions()
    settings = EvalSettings(
        models=args.model_list, base_model=args.base_model,
        removed_block=specs["base_minus_block"].removed_block, block_size=args.block_size,
        windowing="non-overlapping block_size windows, EOS-separated, tail kept", batch_size=args.batch_size,
        train_slice_tokens=args.train_slice_tokens or "as validation",
        precision={"perplexity": precision_name(opts.perplexity_bf16, device),
                   "qa_and_cloze": precision_name(opts.choice_bf16, device),
                   "precision_check": f"float32 and {precision_name(True, device)} ({args.precision_check})",
                   "generation": "float32", "cost_training_step": precision_name(True, device),
                   "cost_generation": "float32"},
        methods=METHODS, neutral_prompt=NEUTRAL_PROMPT, qa_prompt=qa_prompt("{question}") + " {option}",
        bootstrap_resamples=args.bootstrap, seed=args.seed, cloze_max=args.cloze_max,
        max_new_tokens=args.max_new_tokens, answer_new_tokens=args.answer_new_tokens,
        repetition_penalty=REPETITION_PENALTY, qa_file=display_path(args.qa_file),
        validation_file=display_path(args.validation_file), train_file=display_path(args.train_file), threads=threads,
        torch=lib["torch"], transformers=lib["transformers"], device=str(device), **data.summary(),
        seconds=round(time.perf_counter() - started, 1),
    )
    out = args.out_dir
    metrics = Metrics(settings=settings, models=models, comparisons=comparisons, frequency_prior=prior, cost=cost)
    write_together({
        out / METRICS_FILE.name: json_text(metrics.to_dict()),
        out / GENERATIONS_FILE.name: jsonl_text(g.to_dict() for g in generations),
        out / QA_PREDICTIONS_FILE.name: jsonl_text(p.to_dict() for p in predictions),
    })
    for card in refresh_cards(specs, models, args.prune_file):
        log.info("model card with these results: %s", display_path(card))
    log.info("summary (perplexity over non-overlapping %d-token windows; accuracy: normalised / calibrated / "
             "prior-only):\n%s", args.block_size, summary_table(models))
    for c in comparisons:
        if c.family in ("perplexity", "speed", "gap") or c.metric.endswith("(normalised)"):
            log.info("%s", c.sentence)
    log.info("wrote %s, %s, %s in %.0f s", out / METRICS_FILE.name, GENERATIONS_FILE.name,
             QA_PREDICTIONS_FILE.name, settings.seconds)
    if not any(models[k].available for k in args.model_list):
        print("error: no model could be evaluated ("
              + "; ".join(f"{k}: {models[k].error}" for k in args.model_list) + ")", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
