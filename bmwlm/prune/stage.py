"""04's three modes over one shared start (`Stage`): remove one block (the default), score only, and the
depth study's removal curve. `04_prune_layer.py` parses the options and calls one of them; torch and
transformers are imported here, after parsing, so that `--help` answers at once."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from bmwlm import prune
from bmwlm.cards import pruned_base_facts, write_model_card
from bmwlm.config import BLOCK_IMPORTANCE_FILE, PREPROCESS
from bmwlm.hardware import autocast_dtype, cpu_model, precision_name, resolve_device, set_threads
from bmwlm.io import display_path, require
from bmwlm.modeling import (
    count_parameters, load_model, load_tokenizer, model_slug, num_blocks, resolve_model, save_pretrained_atomically,
)
from bmwlm.prune.curve import best_method, removal_curve, validation_comparisons
from bmwlm.prune.methods import METHOD_LABELS, METHODS, iterative_selection, quarter_depth, selection_from
from bmwlm.prune.scoring import set_losses
from bmwlm.records.prune import (
    BlockImportance, BlockScoring, CalibrationSample, DeepCut, IterativeStep, RemovalCurve, RemovalResult,
    StudyScores, ValidationReport, load_removal_curve,
)

log = logging.getLogger("prune")
CURVE_WINDOWS_TOLERANCE = 1e-4  # nats: a re-drawn window set must reproduce the recorded validation losses


class Stage:
    """The steps every mode shares: load, draw the calibration sample, score every block."""

    def __init__(self, args):
        self.args, self.prune, self.started = args, prune, time.perf_counter()
        self.train_file = require(args.train_file, str(PREPROCESS))
        self.threads = set_threads(args.threads)
        self.device = resolve_device(args.device)
        self.dtype = autocast_dtype(self.device, args.bf16)
        self.precision, self.cpu = precision_name(self.dtype), cpu_model()
        self.model_path = resolve_model(args.model)
        self.tokenizer = load_tokenizer(args.model)
        self.model = load_model(args.model).to(self.device).eval()
        self.runner = prune.BlockRunner(self.model, self.device, self.dtype)
        self.n_blocks = self.runner.n_blocks

    def calibrate(self):
        """Draw the calibration sample, check it against the validation split, check the runner."""
        a, prune = self.args, self.prune
        self.sample = prune.calibration_sample(self.train_file, self.tokenizer, a.block_size, a.calibration_tokens)
        val_file = a.validation_file if Path(a.validation_file).exists() else None
        checked = prune.check_disjoint(self.sample, val_file)
        prune.runner.check_runner(self.runner, torch.tensor(self.sample.windows[:2]))
        s = self.sample
        self.calibration = CalibrationSample(
            file=display_path(self.train_file), block_size=a.block_size,
            rule=f"{len(s.windows)} evenly spaced {a.block_size}-token windows over the packed training split "
                 f"(window i*{s.windows_total}//{len(s.windows)}, i = 0..{len(s.windows) - 1}; EOS-separated "
                 "articles, as training packs them)",
            windows=len(s.windows), windows_total=s.windows_total, predicted_tokens=s.predicted_tokens,
            budget_tokens=a.calibration_tokens,
            budget_reason=(prune.BUDGET_REASON if a.calibration_tokens == prune.DEFAULT_CALIBRATION_TOKENS
                           else "set with --calibration-tokens"),
            articles=len(s.article_ids), articles_total=s.articles_total, first_published=s.first_published,
            last_published=s.last_published, validation_articles_checked=checked,
            window_indices=s.window_indices, article_ids=s.article_ids)
        log.info("calibration sample: %d predicted tokens in %d of %d training windows, %d of %d articles "
                 "(%s .. %s); %d validation articles checked, none shared; %s, %d thread(s)",
                 s.predicted_tokens, len(s.windows), s.windows_total, len(s.article_ids), s.articles_total,
                 s.first_published, s.last_published, checked, self.precision, self.threads)

    def score(self):
        t0 = time.perf_counter()
        self.window_scores = self.prune.score_windows(self.runner, self.sample.windows, self.args.batch_size,
                                                      self.args.progress)
        self.scoring_seconds = time.perf_counter() - t0
        self.baseline, self.scores = self.prune.block_scores(self.window_scores)
        log.info("scored %d blocks in %.0f s (prefix-cached); intact calibration loss %.4f",
                 self.n_blocks, self.scoring_seconds, self.baseline)
        for s in self.scores:
            log.debug("block %d: loss without %.4f (%+.4f), cosine %.4f", s.block, s.loss_without, s.delta_loss,
                      s.cosine_similarity)

    def validation(self, tokens: int | None = None):
        """The validation windows: `tokens` predicted tokens (default --validation-tokens; 0 = all), evenly spaced."""
        return self.prune.validation_windows(require(self.args.validation_file, str(PREPROCESS)), self.tokenizer,
                                             self.args.block_size,
                                             self.args.validation_tokens if tokens is None else tokens)

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def remove_one(st: Stage) -> Path:
    """Default mode: choose, write the smaller model and block_importance.json."""

    a, prune, n = st.args, st.prune, st.n_blocks
    prune.check_block(a.block, n)
    selection = "auto" if a.block == "auto" else "manual"
    chosen = prune.choose_block(st.scores) if a.block == "auto" else a.block % n
    candidates = {"chosen": chosen, **prune.naive_blocks(n)}
    losses = {s.block: s.loss_without for s in st.scores}  # skipping a block = removing it (tested)
    proxy = prune.cosine_choice(st.scores)

    report = None
    if a.report_validation:
        sets = {**candidates, "cosine_proxy": proxy}
        windows = st.validation()
        val = set_losses(st.runner, windows, [[]] + [[b] for b in sets.values()], a.batch_size, a.progress,
                         "validation (reporting)")
        report = ValidationReport(
            note="scored after the block was chosen on the calibration sample; for reporting only",
            file=display_path(a.validation_file), predicted_tokens=sum(len(w) - 1 for w in windows),
            baseline_loss=val[0], removed={name: RemovalResult(block=b, loss=v)
                                           for (name, b), v in zip(sets.items(), val[1:])})
        log.info("validation (reporting only): intact %.4f, without block %d %.4f", val[0], chosen, val[1])

    pruned = prune.without_blocks(st.model, [chosen])
    out_dir = Path(a.out_models_dir) / f"{model_slug(a.model)}-minus-block{chosen}"
    save_pretrained_atomically(pruned, st.tokenizer, out_dir)
    params_before, params_after = count_parameters(st.model), count_parameters(pruned)
    log.info("removed block %d (%s): %d -> %d blocks, %d -> %d parameters (-%.1f%%); wrote %s",
             chosen, selection, n, num_blocks(pruned), params_before, params_after,
             100 * (params_before - params_after) / params_before, out_dir)
    record = BlockImportance(
        base_model=str(a.model), base_model_path=display_path(st.model_path), method=prune.METHOD,
        eval_tokens=st.sample.predicted_tokens, baseline_loss=st.baseline, scores=st.scores, selection=selection,
        removed_block=chosen,
        naive_comparison={name: RemovalResult(block=b, loss=losses[b]) for name, b in candidates.items()},
        output_dir=display_path(out_dir), parameters_before=params_before, parameters_after=params_after,
        blocks_before=n, blocks_after=num_blocks(pruned), seconds=st.seconds(),
        proxy_comparison=prune.proxy_comparison(st.scores, losses),
        validation_file=display_path(a.validation_file) if Path(a.validation_file).exists() else None,
        block_size=a.block_size, bf16=st.dtype is not None, threads=st.threads, cpu_model=st.cpu,
        scoring_seconds=round(st.scoring_seconds, 1), calibration=st.calibration, precision=st.precision,
        device=str(st.device), scoring="prefix-cached", validation_report=report,
    )
    out_file = Path(a.out_dir) / BLOCK_IMPORTANCE_FILE.name
    record.save(out_file)
    write_model_card(out_dir, pruned_base_facts(record))  # the smaller model's card, from the record just written
    return out_file


def scores_only(st: Stage) -> Path:
    """--scores-only: the scores of any model, nothing removed."""

    a = st.args
    record = BlockScoring(
        model=str(a.model), model_path=display_path(st.model_path), method=st.prune.METHOD,
        eval_tokens=st.sample.predicted_tokens, baseline_loss=st.baseline, scores=st.scores,
        least_important=st.prune.choose_block(st.scores), calibration=st.calibration, precision=st.precision,
        device=str(st.device), block_size=a.block_size, threads=st.threads, cpu_model=st.cpu,
        scoring_seconds=round(st.scoring_seconds, 1), seconds=st.seconds())
    record.save(a.scores_file)
    return Path(a.scores_file)


def curve(st: Stage) -> Path:
    """--curve: five methods, the removal curve, and the deep-cut model."""

    a, prune, n = st.args, st.prune, st.n_blocks
    k_max = a.max_removed or quarter_depth(n)
    if k_max > n - 1:
        raise prune.PruneInputError(f"--max-removed {k_max}: the model has {n} blocks and keeps its final one")
    steps = iterative_selection(st.runner, st.sample.windows, k_max, a.batch_size, a.progress,
                                first_losses=st.window_scores.losses_without())
    selection = selection_from(st.window_scores, k_max, steps)
    validation = st.validation()
    curves = removal_curve(st.runner, selection, st.sample.windows, validation, a.batch_size, METHODS, a.progress)
    best = best_method(curves, k_max)
    blocks = curves[best][k_max].blocks
    cut = prune.without_blocks(st.model, blocks)
    out_dir = Path(a.out_models_dir) / f"{model_slug(a.model)}-minus-{k_max}-blocks"
    save_pretrained_atomically(cut, st.tokenizer, out_dir)
    log.info("deep cut: %s removes blocks %s; wrote %s", best, blocks, out_dir)
    val_base = curves[METHODS[0]][0].validation_loss  # k = 0: the intact model
    window_tokens = [len(w) - 1 for w in validation]

    record = RemovalCurve(
        base_model=str(a.model), base_model_path=display_path(st.model_path), n_blocks=n, max_removed=k_max,
        methods=list(METHODS), method_labels=dict(METHOD_LABELS), calibration=st.calibration,
        validation_file=display_path(a.validation_file), validation_tokens=sum(window_tokens),
        baseline_calibration_loss=st.baseline, baseline_validation_loss=val_base,
        scores=StudyScores(
            delta_loss=selection.delta_losses, block_influence=[1 - c for c in selection.cosines],
            angular_distance={str(k): v for k, v in selection.angular.items()},
            angular_distance_all_tokens={str(k): v for k, v in selection.angular_all_tokens.items()},
            iterative=[IterativeStep(removed_before=s.removed_before, losses={str(c): v for c, v in s.losses.items()},
                                     chosen=s.chosen) for s in selection.iterative]),
        curves=curves,
        deep_cut=DeepCut(method=best, blocks=blocks, output_dir=display_path(out_dir), parameters=count_parameters(cut)),
        precision=st.precision, device=str(st.device), block_size=a.block_size, batch_size=a.batch_size,
        threads=st.threads, cpu_model=st.cpu, seconds=st.seconds(),
        validation_window_tokens=window_tokens,
        validation_comparisons=validation_comparisons(curves, best, window_tokens))
    out_file = Path(a.out_dir) / "removal_curve.json"
    record.save(out_file)
    return out_file


def curve_windows(st: Stage) -> Path:
    """--curve-windows: the validation loss of each window for every set an existing removal_curve.json
    records (one written before the curve kept them), and the paired intervals from them. Nothing is chosen
    again: the sets are the record's. The record is rewritten only if every set's mean over the re-drawn
    windows equals its recorded validation loss, which proves the same model, split and windows."""
    a, prune = st.args, st.prune
    out_file = Path(a.out_dir) / "removal_curve.json"
    record = load_removal_curve(out_file)
    if record.n_blocks != st.n_blocks or record.block_size != a.block_size:
        raise prune.PruneInputError(f"{out_file} is of a {record.n_blocks}-block model with {record.block_size}-token "
                                    f"windows; --model {a.model} has {st.n_blocks} blocks, --block-size {a.block_size}")
    if record.deep_cut is None or not record.validation_tokens:
        raise prune.PruneInputError(f"{out_file} has no validation scores (or no deep cut) to add windows to")
    windows = st.validation(record.validation_tokens)
    points = [p for m in record.methods for p in record.curves[m]]
    nll = dict(zip((tuple(p.blocks) for p in points),
                   prune.set_window_nll(st.runner, windows, [p.blocks for p in points], a.batch_size, a.progress,
                                        "curve: validation windows")))
    worst = 0.0
    for p in points:
        loss = prune.mean_loss(nll[tuple(p.blocks)], windows)
        worst = max(worst, abs(loss - p.validation_loss))
        if not math.isclose(loss, p.validation_loss, abs_tol=CURVE_WINDOWS_TOLERANCE):
            raise prune.PruneInputError(
                f"blocks {p.blocks}: {loss:.6f} on the re-drawn validation windows, {p.validation_loss:.6f} in "
                f"{out_file}; not the same model, split or windows (--validation-file, --model), nothing written")
        p.validation_window_nll = nll[tuple(p.blocks)]
    record.validation_window_tokens = [len(w) - 1 for w in windows]
    record.validation_comparisons = validation_comparisons(record.curves, record.deep_cut.method,
                                                           record.validation_window_tokens)
    record.extra["curve_windows"] = {"cpu_model": st.cpu, "threads": st.threads, "precision": st.precision,
                                     "seconds": st.seconds()}
    record.save(out_file)
    log.info("added the loss of each of %d validation windows to %d sets; largest |mean - recorded| %.1e nats "
             "(allowed %.0e)", len(windows), len(nll), worst, CURVE_WINDOWS_TOLERANCE)
    return out_file
