"""Every measurement of one model, in the order 05 makes them, as one metrics.json entry; then what
needs all models at once: the paired comparisons and the interleaved speed measurement.

Precision: perplexities run under bfloat16 autocast by default (weights stay float32; float32 costs
several times as much on a CPU and moves them only in the last digits, see the precision check); the
multiple-choice sets are scored in float32, so a near-tie cannot flip with the CPU's bf16 kernels;
generation runs in float32. Every model's `precision_check` re-scores its Q&A items (and the cloze
items with `--precision-check all`) and a few validation windows under bf16 autocast and records every
flip.
"""
from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass

import evaluate

from bmwlm.evaluate import compare
from bmwlm.evaluate.choice import evaluate_choices, precision_name, score_items
from bmwlm.evaluate.cost import measure_cost
from bmwlm.evaluate.data import EvalData
from bmwlm.evaluate.generation import (
    GENERATION_PROMPTS, answer_questions, generate_samples, generation_summary, pick_questions,
)
from bmwlm.evaluate.models import ModelSpec, empty_entry, weights_size_mb
from bmwlm.evaluate.perplexity import score_articles, train_slice
from bmwlm.evaluate.precision import precision_check
from bmwlm.evaluate.qa import ChoiceItem
from bmwlm.modeling import count_parameters, load_model, load_tokenizer, num_blocks
from bmwlm.records.evaluation import Comparison, CostMeasurement, Generation, ModelEntry, QAPrediction
from bmwlm.windows import text_windows

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """How to measure (05's command-line options; the defaults live there)."""

    block_size: int
    batch_size: int  # windows per perplexity forward pass
    score_batch_size: int  # options continuing one prompt per forward pass
    train_slice_tokens: int  # 0: as many as the validation split has
    bootstrap: int
    seed: int
    max_new_tokens: int
    answer_new_tokens: int
    questions: int
    perplexity_bf16: bool
    choice_bf16: bool
    precision_check: str  # "qa", "all" (Q&A and cloze) or "none"
    precision_windows: int
    progress: bool
    device: str = "cpu"  # where every model runs (05's --device, resolved by bmwlm.hardware.resolve_device)


def evaluate_model(spec: ModelSpec, data: EvalData, opts: EvalOptions,
                   metric: evaluate.EvaluationModule) -> tuple[ModelEntry, list[Generation], list[QAPrediction]]:
    """All measurements of one model: (metrics entry, generation records, prediction records)."""
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(spec.path)
    model = load_model(spec.path).to(opts.device)
    model.eval()
    entry = empty_entry(spec)
    entry.available, entry.error = True, None
    entry.parameters, entry.blocks = count_parameters(model), num_blocks(model)
    entry.size_mb = weights_size_mb(spec.path)
    common = dict(batch_size=opts.batch_size, bf16=opts.perplexity_bf16, metric=metric, n_resamples=opts.bootstrap,
                  seed=opts.seed, progress=opts.progress)

    v = entry.validation = score_articles(model, tokenizer, data.validation_texts, data.validation_ids, opts.block_size,
                                          desc=f"{spec.key} val", **common)
    log.info("%s: validation loss %.4f, perplexity %.2f [%.2f, %.2f] over %d tokens of %d articles (%s); separators "
             "%.1f%% of the loss", spec.key, v.loss, v.perplexity, *v.ci95, v.tokens, v.articles, v.precision,
             100 * v.separators.share_of_loss)
    if data.train_texts:
        picked = train_slice(tokenizer, data.train_texts, opts.train_slice_tokens or v.tokens)
        ts = entry.train_slice = score_articles(model, tokenizer, [data.train_texts[i] for i in picked],
                                                [data.train_ids[i] for i in picked], opts.block_size,
                                                desc=f"{spec.key} train", **common)
        ts.selection = (f"{len(picked)} whole articles evenly spaced through the {len(data.train_texts)} "
                        "date-ordered train articles")
        log.info("%s: train-slice perplexity %.2f [%.2f, %.2f] over %d tokens (%s)", spec.key, ts.perplexity,
                 *ts.ci95, ts.tokens, ts.selection)

    predictions: list[QAPrediction] = []
    float32_scores: dict[str, tuple[list[ChoiceItem], list]] = {}
    for set_name, items in (("qa", data.qa_items), ("cloze", data.cloze_items)):
        if not items:
            continue
        start = time.perf_counter()
        own, neutral = score_items(model, tokenizer, items, bf16=opts.choice_bf16, progress=opts.progress,
                                   desc=f"{spec.key} {set_name}")
        summary, records = evaluate_choices(items, own, neutral, set_name=set_name, model_key=spec.key,
                                            precision=precision_name(opts.choice_bf16, opts.device),
                                            n_resamples=opts.bootstrap, seed=opts.seed)
        summary.seconds = round(time.perf_counter() - start, 2)
        setattr(entry, set_name, summary)
        predictions.extend(records)
        if not opts.choice_bf16 and (opts.precision_check == "all" or set_name == opts.precision_check):
            float32_scores[set_name] = (items, own)
        log.info("%s: %s accuracy %s (n=%d, %s)", spec.key, set_name, ", ".join(
            f"{m} {a.accuracy.value:.3f} [{a.accuracy.ci95[0]:.3f}, {a.accuracy.ci95[1]:.3f}]"
            for m, a in summary.methods.items()), summary.n, summary.precision)

    if float32_scores:
        windows = text_windows(tokenizer, data.validation_texts, opts.block_size)[:opts.precision_windows]
        check = entry.precision_check = precision_check(model, tokenizer, float32_scores, windows)
        log.info("%s: float32 vs bf16 autocast: %d of %d picks flip (%s); median |Δ option log-likelihood| %.4f; "
                 "perplexity of %d windows %.3f vs %.3f", spec.key, len(check.flips), check.items,
                 ", ".join(f.item_id for f in check.flips) or "none", check.median_abs_diff_loglik,
                 check.perplexity_windows, check.perplexity_float32 or math.nan, check.perplexity_bf16 or math.nan)

    start = time.perf_counter()
    generations = generate_samples(model, tokenizer, GENERATION_PROMPTS, spec.key, opts.max_new_tokens, opts.seed)
    questions = pick_questions(data.qa_items, opts.questions)
    answers, quality = answer_questions(model, tokenizer, questions, spec.key, opts.answer_new_tokens, opts.bootstrap,
                                        opts.seed)
    generations += answers
    entry.generation = generation_summary(len(GENERATION_PROMPTS), len(questions), opts.max_new_tokens,
                                          opts.answer_new_tokens, quality, time.perf_counter() - start)
    log.info("%s: answers %s", spec.key, "; ".join(
        f"{s}: " + (f"contain the answer {q.contains_answer.value:.2f}, on topic {q.on_topic.value:.2f}, "
                    f"distinct-2 {q.distinct_2 or 0:.2f}" if q.available else q.note) for s, q in quality.items()))
    entry.seconds = round(time.perf_counter() - t0, 1)
    del model
    gc.collect()
    return entry, generations, predictions


def cost_pair(entries: dict[str, ModelEntry]) -> list[str]:
    """The two models the speed measurement compares: full and pruned if both ran, else base and
    base_minus_block (each pair has the two architectures: all blocks, one block fewer)."""
    for pair in (("full", "pruned"), ("base", "base_minus_block")):
        if all(entries.get(k) is not None and entries[k].available for k in pair):
            return list(pair)
    return []


def run_cost(specs: dict[str, ModelSpec], entries: dict[str, ModelEntry], data: EvalData, opts: EvalOptions,
             rounds: int, batch: int, new_tokens: int) -> CostMeasurement | None:
    """Load the pair `cost_pair` names and time them interleaved (None when there is no pair)."""
    pair = cost_pair(entries)
    if rounds <= 0 or not pair:
        return None
    tokenizer = load_tokenizer(specs[pair[0]].path)
    models = {k: load_model(specs[k].path).to(opts.device) for k in pair}
    windows = text_windows(tokenizer, data.validation_texts, opts.block_size)
    cost = measure_cost(models, tokenizer, windows, [p for _, p in GENERATION_PROMPTS], rounds=rounds,
                        batch_size=batch, new_tokens=new_tokens, n_resamples=opts.bootstrap, seed=opts.seed)
    del models
    gc.collect()
    log.info("cost (%d interleaved rounds): %s", rounds, "; ".join(
        f"{k}: train step {c.train_step_seconds.value:.3f} s, generation {c.generation_seconds_per_sequence.value:.3f} "
        f"s/sequence ({c.generation_tokens_per_s:.1f} tokens/s)" for k, c in cost.per_model.items()))
    return cost


def all_comparisons(entries: dict[str, ModelEntry], predictions: list[QAPrediction], data: EvalData,
                    cost: CostMeasurement | None, opts: EvalOptions) -> list[Comparison]:
    n, seed = opts.bootstrap, opts.seed
    items = {name: its for name, its in (("qa", data.qa_items), ("cloze", data.cloze_items)) if its}
    available = {k: e for k, e in entries.items() if e.available}
    return [*compare.perplexity_comparisons(available, n, seed), *compare.gap_comparisons(available, n, seed),
            *compare.choice_comparisons(predictions, items, n, seed),
            *compare.baseline_comparisons(predictions, data.qa_items, data.frequency_prior, n, seed),
            *compare.speed_comparisons(cost, n, seed)]


def _f(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "—"


def summary_table(models: dict[str, ModelEntry]) -> str:
    """A plain-text table of the headline numbers, for the log."""
    head = (f"{'model':<17} {'params':>8} {'blocks':>6} {'val ppl [95% CI]':>22} {'train ppl':>9} "
            f"{'QA norm/calib/prior':>20} {'cloze norm/calib/prior':>22}")
    lines = [head, "-" * len(head)]
    for key, e in models.items():
        if not e.available:
            lines.append(f"{key:<17} unavailable: {e.error}")
            continue
        v = e.validation
        val = f"{_f(v.perplexity, '.2f')} [{_f(v.ci95[0], '.2f')}, {_f(v.ci95[1], '.2f')}]" if v else "—"

        def accs(score):
            return "/".join(_f(m.accuracy.value, ".2f") for m in score.methods.values()) if score else "—"
        lines.append(f"{key:<17} {_f(e.parameters / 1e6, '.1f') + 'M':>8} {e.blocks:>6} {val:>22} "
                     f"{_f(e.train_slice and e.train_slice.perplexity, '.2f'):>9} {accs(e.qa):>20} {accs(e.cloze):>22}")
    return "\n".join(lines)
