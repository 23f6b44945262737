"""Stage 06 (bmwlm.report, 06_report.py): the report builds from realistic stage outputs made through
the typed records, degrades gracefully, and its trade-off text is computed from the inputs.

`write_inputs` saves what stages 01–05 would, each through its record type (bmwlm/records/): a
30-block importance file, two training logs with ~50 train and ~6 eval lines, metrics for the four
models, generations for six prompts, Q&A predictions. (tests/test_evaluate.py feeds the real 05's
output to the real 06.) Run this file as a script to build a demo report to look at:
    .venv/bin/python tests/test_report.py /tmp/report_demo
"""
from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT  # first: it puts the repository on sys.path when this file runs as a script
from bmwlm import stats
from bmwlm.config import MODEL_KEYS
from bmwlm.evaluate import choice, compare, perplexity
from bmwlm.evaluate.qa import ChoiceItem
from bmwlm.io import jsonl_text, write_text
from bmwlm.records.data import CleaningTotals, DropCount, PreprocessReport, ScrapeReport, SplitSummary
from bmwlm.records.evaluation import (
    AnswerQuality, ArticleLosses, ChoiceScore, CostMeasurement, CostOfModel, EvalSettings, FrequencyPrior, Generation,
    GenerationSummary, MethodAccuracy, Metrics, ModelEntry, PrecisionCheck, PrecisionFlip, QAPrediction, SplitScore,
    TrainingTotals,
)
from bmwlm.records.prune import BlockImportance, BlockScore, CalibrationSample, ProxyComparison, RemovalResult
from bmwlm.records.training import LogLine, RunSummary
from bmwlm.report import figures, markdown, tables, text
from bmwlm.report.inputs import load_inputs

BLOCK_PARAMS = 3_540_096  # one SmolLM2-135M block
BASE_PARAMS = 134_515_008


def fake_importance(removed: int = 27) -> BlockImportance:
    rng = random.Random(1)
    scores = []
    for b in range(30):
        if b == 0:
            delta = 6.1
        elif b == 1:
            delta = 1.4
        else:
            delta = 0.05 + 0.25 * math.exp(-((b - 8) / 9) ** 2) + rng.uniform(0, 0.05) + (0.35 if b == 29 else 0)
        if b == removed:
            delta = 0.012
        scores.append(BlockScore(block=b, loss_without=3.12 + delta, delta_loss=delta, importance=delta,
                                 cosine_similarity=round(min(0.995, 0.75 + 0.008 * b + rng.uniform(-0.02, 0.02)), 4)))
    return BlockImportance(
        base_model="smollm2-135m", base_model_path="outputs/models/SmolLM2-135M", method="loss_increase",
        eval_tokens=4080, baseline_loss=3.12, scores=scores, selection="auto", removed_block=removed, precision="float32",
        calibration=CalibrationSample(file="data/processed/train.jsonl", rule="evenly spaced", block_size=256, windows=16,
                                      windows_total=2042, predicted_tokens=4080, budget_tokens=4080, budget_reason="test",
                                      articles=17, articles_total=410, first_published="2024-10-31T11:00:00+01:00",
                                      last_published="2025-10-22T16:00:00+02:00", validation_articles_checked=46),
        naive_comparison={"chosen": RemovalResult(block=removed, loss=3.132), "last": RemovalResult(block=29, loss=3.52),
                          "middle": RemovalResult(block=15, loss=3.33)},
        output_dir=f"outputs/models/SmolLM2-135M-minus-block{removed}", parameters_before=BASE_PARAMS,
        parameters_after=BASE_PARAMS - BLOCK_PARAMS, blocks_before=30, blocks_after=29, seconds=118.0,
        proxy_comparison=ProxyComparison(method="cosine_similarity", block=3, loss=3.41,
                                         rank_correlation_with_importance=0.76))


def fake_log(variant: str, steps: int = 250, offset: float = 0.0, s_per_step: float = 4.5) -> list[LogLine]:
    rng = random.Random(variant)
    tokens_per_step = 8 * 256

    def eval_loss(step):
        return 3.1 + offset - 0.75 * (1 - math.exp(-step / 70)) + 0.01 * rng.random()
    lines = [LogLine(step=0, epoch=0.0, tokens=0, eval_loss=eval_loss(0), seconds=0.0)]
    for step in range(5, steps + 1, 5):
        loss = 3.2 + offset - 0.95 * (1 - math.exp(-step / 60)) + rng.gauss(0, 0.08)
        lines.append(LogLine(step=step, epoch=step / 200, tokens=step * tokens_per_step, loss=loss,
                             lr=2e-4 * (1 - step / steps), seconds=step * s_per_step))
        if step % 60 == 0 or step == steps:
            lines.append(LogLine(step=step, epoch=step / 200, tokens=step * tokens_per_step,
                                 eval_loss=eval_loss(step), seconds=step * s_per_step + 3))
    return lines


def fake_run(variant: str, log: list[LogLine], params: int, blocks: int, **changes) -> RunSummary:
    evals = [r for r in log if r.is_eval]
    train = [r for r in log if r.loss is not None]
    secs = train[-1].seconds
    run = RunSummary(
        variant=variant, base_model="outputs/models/SmolLM2-135M" if variant == "full"
        else "outputs/models/SmolLM2-135M-minus-block27", base_model_path="outputs/models/SmolLM2-135M",
        config={"block_size": 256, "per_device_train_batch_size": 8, "max_steps": train[-1].step}, overrides={},
        seed=42, versions={"python": "3.11"}, cpu_model="test CPU", threads=2, precision="bf16-autocast",
        compiled=True, loss="chunked output layer, 512 positions", parameters=params, blocks=blocks,
        train_blocks=2000, validation_blocks=200, validation_blocks_total=200, validation_subset="all",
        steps=train[-1].step, epochs=1.25, tokens_seen=train[-1].tokens, train_seconds=secs, eval_seconds=40.0,
        wall_seconds=secs + 40, tokens_per_s=train[-1].tokens / secs, matmul_gflops=400.0,
        share_of_peak=0.2, initial_eval_loss=evals[0].eval_loss, final_eval_loss=evals[-1].eval_loss,
        final_train_loss=train[-1].loss, resumed_from_step=None, train_file="data/processed/train.jsonl",
        validation_file="data/processed/validation.jsonl", finished_at="2026-04-20T14:03:11+02:00")
    return replace(run, **changes)


def fake_settings() -> EvalSettings:
    return EvalSettings(
        models=list(MODEL_KEYS), base_model="smollm2-135m", removed_block=27, block_size=256, windowing="w",
        batch_size=8, train_slice_tokens=16384,
        precision={"perplexity": "bf16 autocast", "qa_and_cloze": "float32", "generation": "float32"},
        methods={m: f"the {m} method" for m in ("normalised", "calibrated", "prior_only")}, neutral_prompt="Answer:",
        qa_prompt="Question: {question}\\nAnswer: {option}", bootstrap_resamples=2000, seed=0, cloze_max=150,
        max_new_tokens=48, answer_new_tokens=40, repetition_penalty=1.1, qa_file="data/qa/bmw_qa.jsonl",
        validation_file="v", train_file="t", threads=2, torch="2", transformers="5", validation_articles=47,
        train_articles=424, qa_items=44, qa_answer_positions={"A": 11, "B": 11, "C": 11, "D": 11},
        qa_split_source={"processed": 44, "qa_file": 0}, qa_splits={"train": 32, "validation": 12},
        qa_seen={"seen": 33, "unseen": 11}, qa_seen_source="train split search", qa_seen_changed=[],
        cloze_items=100, cloze_articles=25, cloze_answer_positions={"A": 25, "B": 25, "C": 25, "D": 25}, seconds=420.0)


VAL_PPL = {"base": 22.4, "base_minus_block": 23.1, "full": 11.8, "pruned": 12.2}
TRAIN_PPL = {"base": 21.9, "base_minus_block": 22.5, "full": 10.1, "pruned": 10.6}
QA_ACC = {"base": .41, "base_minus_block": .39, "full": .55, "pruned": .52}
CLOZE_ACC = {"base": .33, "base_minus_block": .31, "full": .47, "pruned": .45}
METHODS = ("normalised", "calibrated", "prior_only")


def fake_articles(ppl: float, n: int, seed: int) -> ArticleLosses:
    """Per-article sums whose pooled perplexity is `ppl`; the same articles (and noise) for every model."""
    rng = random.Random(seed)
    tokens = [rng.randint(400, 1600) for _ in range(n)]
    noise = [rng.uniform(-0.15, 0.15) for _ in range(n)]
    nll = [t * (math.log(ppl) + e) for t, e in zip(tokens, noise)]
    shift = (math.log(ppl) * sum(tokens) - sum(nll)) / sum(tokens)
    nll = [x + shift * t for x, t in zip(nll, tokens)]
    return ArticleLosses(article_ids=[f"A{i}" for i in range(n)], nll=nll, tokens=tokens,
                         separator_nll=[6.0] * n, separator_tokens=[1] * n, first_nll=[8.0] * n, first_tokens=[1] * n)


def fake_split(ppl: float, n: int, seed: int) -> SplitScore:
    a = fake_articles(ppl, n, seed)
    ci = stats.bootstrap_perplexity(a.nll, a.tokens, 200)
    return SplitScore(loss=math.log(ppl), perplexity=ppl, tokens=sum(a.tokens), windows=len(a.tokens) * 4,
                      precision="bf16 autocast", ci95=ci.ci95, articles=n, per_article=a,
                      separators=perplexity.separator_share(a, 200, 0))


def fake_predictions(qa_acc: dict | None = None) -> list[QAPrediction]:
    rng = random.Random(3)
    qa_acc = {**QA_ACC, **(qa_acc or {})}
    out = []
    for set_name, n, p in (("qa", 44, qa_acc), ("cloze", 100, CLOZE_ACC)):
        for i in range(n):
            for key in MODEL_KEYS:
                correct = {m: rng.random() < p[key] * (0.6 if m == "prior_only" else 1.0) for m in METHODS}
                predicted = {m: "A" if c else rng.choice("BCD") for m, c in correct.items()}
                out.append(QAPrediction(
                    model=key, set=set_name, item_id=f"{set_name}{i}", question=f"Where is plant {i} | located?",
                    options=["Munich", "Leipzig", "Spartanburg", "Debrecen"], answer="A", predicted=predicted,
                    correct=correct, option_scores={m: [-1.0, -2.0, -2.5, -3.0] for m in METHODS},
                    option_loglik_sum=[-2.0, -4.0, -5.0, -6.0], option_loglik_sum_neutral=[-3.0, -3.5, -5.0, -6.0],
                    option_tokens=[2, 2, 2, 2], precision="float32", source_id=f"T{i // 4}",
                    split="train" if i % 4 else "validation", seen_in_train=i % 4 != 0 if set_name == "qa" else None))
    return out


def _choice_score(preds: list[QAPrediction], key: str, set_name: str) -> ChoiceScore:
    mine = [p for p in preds if p.model == key and p.set == set_name]
    clusters = None if set_name == "qa" else [p.source_id for p in mine]
    methods = {}
    for m in METHODS:
        c = [p.correct[m] for p in mine]
        methods[m] = MethodAccuracy(accuracy=choice.accuracy_interval(c, clusters, 200))
        if set_name == "qa":
            methods[m].seen = choice.accuracy_interval([x for x, p in zip(c, mine) if p.seen_in_train], None, 200)
            methods[m].unseen = choice.accuracy_interval([x for x, p in zip(c, mine) if not p.seen_in_train], None, 200)
    return ChoiceScore(n=len(mine), precision="float32", methods=methods,
                       uniform_guess=0.25 if set_name == "qa" else None)


def fake_cost(pruned_slower: bool = False) -> CostMeasurement:
    rng = random.Random(5)
    load = [rng.uniform(0.9, 1.3) for _ in range(6)]
    full = [3.0 * x for x in load]
    pruned = [t * (1.1 if pruned_slower else 0.97) for t in full]

    def model(train):
        gen = [0.8 * x for x in load]
        return CostOfModel(train_step_seconds=choice.interval(stats.bootstrap_mean(train, None, 200)),
                           generation_seconds_per_sequence=choice.interval(stats.bootstrap_mean(gen, None, 200)),
                           generation_tokens_per_s=32 / (sum(gen) / len(gen)), train_step_rounds=train,
                           generation_rounds=gen)
    return CostMeasurement(models=["full", "pruned"], rounds=6, train_batch=[4, 256], train_precision="bf16 autocast",
                           generation_new_tokens=32, generation_precision="float32",
                           per_model={"full": model(full), "pruned": model(pruned)}, threads=2, seconds=60.0)


def fake_metrics(runs: dict[str, RunSummary], val_ppl: dict | None = None, qa_acc: dict | None = None,
                 pruned_slower: bool = False) -> Metrics:
    val_ppl = {**VAL_PPL, **(val_ppl or {})}
    preds = fake_predictions(qa_acc)
    labels = {"base": "SmolLM2-135M (base)", "base_minus_block": "SmolLM2-135M minus block 27",
              "full": "SmolLM2-135M fine-tuned", "pruned": "SmolLM2-135M-minus-27 fine-tuned"}
    models = {}
    for key in MODEL_KEYS:
        params = BASE_PARAMS - (BLOCK_PARAMS if key in ("base_minus_block", "pruned") else 0)
        answers = {"plain": AnswerQuality(style="plain", available=True, note=None, questions=8,
                                          contains_answer=choice.accuracy_interval([True, False] * 4, None, 200),
                                          on_topic=choice.accuracy_interval([True] * 6 + [False] * 2, None, 200),
                                          distinct_2=0.8),
                   "chat": AnswerQuality(style="chat", available=False, note="not available: no template",
                                         questions=0, contains_answer=None, on_topic=None, distinct_2=None)}
        models[key] = ModelEntry(
            label=labels[key], path=f"outputs/{key}", available=True, error=None, parameters=params,
            blocks=29 if params < BASE_PARAMS else 30, size_mb=params * 4 / 2**20,
            validation=fake_split(val_ppl[key], 40, 1), train_slice=fake_split(TRAIN_PPL[key], 14, 2),
            qa=_choice_score(preds, key, "qa"), cloze=_choice_score(preds, key, "cloze"),
            generation=GenerationSummary(openings=6, questions=8, max_new_tokens=48, answer_new_tokens=40,
                                         precision="float32", answers=answers),
            precision_check=PrecisionCheck(method="normalised", items=144, same_prediction=142, flips=[
                PrecisionFlip(set="qa", item_id="qa3", float32="A", bf16="C", margin_float32=0.002),
                PrecisionFlip(set="cloze", item_id="cloze7", float32="B", bf16="A", margin_float32=0.004)],
                max_abs_diff_score=0.01, median_abs_diff_loglik=0.03, perplexity_windows=4,
                perplexity_float32=val_ppl[key], perplexity_bf16=val_ppl[key] * 1.001),
            training=TrainingTotals.from_run(runs[key]) if key in runs else None)
    items = {name: [ChoiceItem(p.item_id, p.question, p.options, p.answer, source_id=p.source_id,
                               seen_in_train=p.seen_in_train) for p in preds if p.set == name and p.model == "base"]
             for name in ("qa", "cloze")}
    prior_hits = [i % 4 == 1 for i in range(44)]
    cost = fake_cost(pruned_slower)
    comparisons = [*compare.perplexity_comparisons(models, 200, 0), *compare.gap_comparisons(models, 200, 0),
                   *compare.choice_comparisons(preds, items, 200, 0),
                   *compare.baseline_comparisons(preds, items["qa"], prior_hits, 200, 0),
                   *compare.speed_comparisons(cost, 200, 0)]
    prior = FrequencyPrior(accuracy=choice.accuracy_interval(prior_hits, None, 200), seen=None, unseen=None)
    return Metrics(settings=fake_settings(), models=models, comparisons=comparisons, frequency_prior=prior, cost=cost)


PROMPTS = [
    "The new BMW iX3 is", "BMW Group sales in the third quarter", "Munich. The BMW M Motorsport team",
    "The Neue Klasse platform", "BMW Motorrad presents", "The MINI Countryman Electric offers",
]


def fake_generations() -> list[Generation]:
    out = []
    for i, prompt in enumerate(PROMPTS):
        for key in MODEL_KEYS:
            for decoding in ("greedy", "sampled"):
                completion = (f" a {key} completion for prompt {i} ({decoding}); it talks about electric range, "
                              "charging and the production network in Debrecen.\nSecond line with `code`.")
                settings = {"max_new_tokens": 48} if decoding == "greedy" else \
                    {"max_new_tokens": 48, "temperature": 0.8, "top_p": 0.95}
                out.append(Generation(model=key, prompt_id=f"p{i + 1}", prompt=prompt, decoding=decoding,
                                      settings=settings, completion=completion, new_tokens=48, seconds=1.9))
    for key in MODEL_KEYS:
        for i in range(2):
            out.append(Generation(model=key, prompt_id=f"plain:qa-00{i}", prompt=f"Question: Who leads plant {i}?\nAnswer:",
                                  decoding="greedy", settings={"max_new_tokens": 40}, completion=f" {key} answer {i}",
                                  new_tokens=3, seconds=0.5, kind="question", style="plain", item_id=f"qa-00{i}",
                                  seen_in_train=i == 0, contains_answer=i == 0, on_topic=True, distinct_2=1.0))
    return out


def fake_preprocess_report() -> PreprocessReport:
    def split(articles, tokens, first, last):
        return SplitSummary(articles=articles, tokens=tokens, published_min=first, published_max=last)
    return PreprocessReport(
        articles={"in": 500, "unique_ids": 500, "out": 471, "train": 424, "validation": 47},
        dropped={"duplicate_id": DropCount(count=0), "too_short": DropCount(count=8),
                 "exact_duplicate": DropCount(count=21), "near_duplicate": DropCount(count=0),
                 "dedup_policy": "the longest copy is kept"},
        cleaning=CleaningTotals(percent_chars_removed=17.86),
        splits={"train": split(424, 412345, "2024-10-31T09:00:00+01:00", "2025-10-02T10:00:00+02:00"),
                "validation": split(47, 45120, "2025-10-03T08:00:00+02:00", "2025-12-30T11:15:00+01:00")})


def write_inputs(root: Path, *, unavailable=(), val_ppl=None, qa_acc=None, skip=()) -> dict[str, Path]:
    """Save stage 01–05 outputs under `root` through their record types; returns the directories for the CLI."""
    dirs = {name: root / name for name in ("runs", "eval", "prune", "processed", "raw", "report", "study")}
    logs = {"full": fake_log("full"), "pruned": fake_log("pruned", offset=0.03, s_per_step=4.38)}
    runs = {"full": fake_run("full", logs["full"], BASE_PARAMS, 30),
            "pruned": fake_run("pruned", logs["pruned"], BASE_PARAMS - BLOCK_PARAMS, 29)}
    if "runs" not in skip:
        for v in logs:
            write_text(dirs["runs"] / v / "log.jsonl", jsonl_text(line.to_dict() for line in logs[v]))
            runs[v].save(dirs["runs"] / v / "run.json")
    if "importance" not in skip:
        fake_importance().save(dirs["prune"] / "block_importance.json")
    if "metrics" not in skip:
        metrics = fake_metrics(runs, val_ppl, qa_acc)
        for key in unavailable:
            metrics.models[key] = ModelEntry(label=key, path="missing", available=False,
                                             error="model directory not found")
        metrics.save(dirs["eval"] / "metrics.json")
    if "generations" not in skip:
        write_text(dirs["eval"] / "generations.jsonl", jsonl_text(g.to_dict() for g in fake_generations()))
        write_text(dirs["eval"] / "qa_predictions.jsonl", jsonl_text(p.to_dict() for p in fake_predictions()))
    if "data" not in skip:
        ScrapeReport(status="complete", articles=500, by_source={"rss2": 488, "detail": 12}).save(
            dirs["raw"] / "scrape_report.json")
        fake_preprocess_report().save(dirs["processed"] / "preprocess_report.json")
    return dirs


def cli_args(dirs: dict[str, Path]) -> list[str]:
    return ["--runs-dir", str(dirs["runs"]), "--eval-dir", str(dirs["eval"]), "--prune-dir", str(dirs["prune"]),
            "--processed-dir", str(dirs["processed"]), "--raw-dir", str(dirs["raw"]),
            "--out-dir", str(dirs["report"]), "--study-runs-dir", str(dirs["study"])]


def run_report(dirs: dict[str, Path]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "06_report.py"), *cli_args(dirs)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def build(tmp_path: Path, **kwargs) -> tuple[str, dict[str, Path]]:
    dirs = write_inputs(tmp_path, **kwargs)
    proc = run_report(dirs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (dirs["report"] / "report.md").read_text(encoding="utf-8"), dirs


def section(md: str, heading: str) -> str:
    return md.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    return build(tmp_path_factory.mktemp("report"))


def test_report_has_every_section_a_row_per_model_and_the_figures_it_links(full_report):
    md, dirs = full_report
    for heading in ("# Pruning one transformer block", "## Trade-offs", "## Data", "## Metrics per model",
                    "## Paired comparisons", "## Q&A with controls", "## Cloze", "## Separators and article borders",
                    "## Precision", "## Speed", "## Generated answers", "## Block removal",
                    "## Training: loss curves", "## Q&A answers item by item", "## Generations: press-release openings"):
        assert heading in md
    for key in MODEL_KEYS:
        assert re.search(rf"^\| `{key}` ", md, flags=re.M), key
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(figures.FIGURES)
    for link in links:
        png = dirs["report"] / link
        assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "_Skipped" not in md


def test_data_section_shows_the_scrape_and_preprocess_counts_and_date_ranges(full_report):
    data = section(full_report[0], "Data")
    assert "- Scraped: 500 articles (rss2 488, detail 12)." in data
    assert "- After preprocessing: 471 articles of 500 (dropped: too short 8, exact duplicate 21); " \
           "cleaning removed 17.9% of the characters." in data
    assert "| train | 424 | 412.3k | 2024-10-31 … 2025-10-02 |" in data
    assert "| validation | 47 | 45.1k | 2025-10-03 … 2025-12-30 |" in data
    assert "- `dropped.dedup_policy`: the longest copy is kept" in data  # the whole report, listed as recorded


def test_block_removal_section_compares_the_chosen_block_with_naive_choices_and_the_proxy(full_report):
    text_ = section(full_report[0], "Block removal")
    assert "removed block **27** (30 → 29 blocks, 134.5M → 131.0M parameters; scoring took 118 s)" in text_
    assert "Method: `loss_increase` on 4.1k calibration tokens (16 evenly spaced windows of the training split, " \
           "17 articles; no validation article)" in text_
    assert "| choice | block | calibration loss | Δ vs intact |" in text_ and "| last | 29 | 3.520 | +0.400 |" in text_
    assert "The `cosine_similarity` proxy would remove block 3 (calibration loss 3.410); rank correlation with the " \
           "measured importance: 0.76." in text_
    assert "Least important blocks: 27 (0.012)" in text_ and "most important: 0 (6.100), 1 (1.400)" in text_


def test_an_older_importance_record_without_a_calibration_sample_is_labelled_validation():
    from dataclasses import replace

    from bmwlm.report.tables import importance_section

    old = importance_section(replace(fake_importance(), calibration=None), None)
    assert "4.1k validation tokens of" in old and "| choice | block | validation loss |" in old
    assert "calibration" not in old


def test_generations_show_each_prompt_with_greedy_inline_and_sampled_folded(full_report):
    gens = section(full_report[0], "Generations: press-release openings")
    assert gens.count("### Prompt") == len(PROMPTS)
    assert gens.count("<details><summary>Sampled completions") == len(PROMPTS)
    first = gens.split("### Prompt 2", 1)[0]
    greedy = first.split("<details>", 1)[0]
    for key in MODEL_KEYS:
        assert f"a {key} completion for prompt 0 (greedy)" in greedy
    assert "(sampled)" not in greedy
    assert "temperature=0.8" in first


def test_training_section_reports_initial_and_final_eval_loss_per_variant(full_report):
    md, dirs = full_report
    training = section(md, "Training: loss curves")
    for variant in ("full", "pruned"):
        run = RunSummary.load(dirs["runs"] / variant / "run.json")
        row = next(line for line in training.splitlines() if line.startswith(f"| {variant} "))
        assert f"{run.initial_eval_loss:.3f}" in row and f"{run.final_eval_loss:.3f}" in row


def test_qa_section_counts_what_fine_tuning_and_pruning_changed(full_report):
    preds = fake_predictions()
    qa_text = section(full_report[0], "Q&A answers item by item")
    right = {k: sum(p.correct["normalised"] for p in preds if p.set == "qa" and p.model == k) for k in MODEL_KEYS}
    assert f"- **qa** (44 items, normalised method) — correct: base {right['base']}/44, " in qa_text
    by_item = {}
    for p in preds:
        by_item.setdefault((p.set, p.item_id), {})[p.model] = p.correct["normalised"]
    fixed = sum(not m["base"] and m["full"] for (s, _), m in by_item.items() if s == "qa")
    assert f"  - fine-tuning: {fixed} items turn right" in qa_text
    assert " located? | A | " in qa_text and " \\| located?" in qa_text  # the "|" of a question is escaped


def test_unavailable_model_shows_as_na_and_report_still_builds(tmp_path):
    md, dirs = build(tmp_path, unavailable=("pruned",))
    row = next(line for line in md.splitlines() if line.startswith("| `pruned`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["n/a"] * (len(cells) - 1)
    assert "- `pruned`: n/a (model directory not found)" in md
    assert (dirs["report"] / "perplexity.png").stat().st_size > 0
    assert (dirs["report"] / "qa_accuracy.png").stat().st_size > 0


def test_metrics_table_has_one_row_per_model_with_intervals_and_na_for_absent_ones():
    metrics = fake_metrics({})
    del metrics.models["full"]
    rows = [line for line in tables.metrics_table(metrics).splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(MODEL_KEYS)
    assert rows[2].count("n/a") == len(tables.TABLE_COLUMNS) - 1
    base = dict(zip(tables.TABLE_COLUMNS, (c.strip() for c in rows[0].strip("|").split("|"))))
    v = metrics.models["base"].validation
    assert base["val ppl [95% CI]"] == f"22.40 [{v.ci95[0]:.2f}, {v.ci95[1]:.2f}]"
    assert base["train-slice ppl [95% CI]"].startswith("21.90 [") and base["val loss"] == f"{math.log(22.4):.3f}"
    qa = metrics.models["base"].qa.methods["normalised"]
    assert base["QA acc [95% CI]"] == (f"{100 * qa.accuracy.value:.1f}% [{100 * qa.accuracy.ci95[0]:.0f}–"
                                       f"{100 * qa.accuracy.ci95[1]:.0f}%] (n=44)")
    assert base["QA acc seen / unseen"].count("%") == 4 and " / " in base["QA acc seen / unseen"]
    assert base["train time"] == "–" and base["params"] == "134.5M"
    assert "- `full`: n/a (not in metrics.json)" in tables.unavailable_notes(metrics)


def _runs(full_seconds=1000.0, pruned_seconds=950.0) -> dict[str, RunSummary]:
    return {v: fake_run(v, fake_log(v), BASE_PARAMS, 30, train_seconds=s, steps=250)
            for v, s in (("full", full_seconds), ("pruned", pruned_seconds))}


def test_tradeoff_paragraph_states_only_the_sentences_of_the_paired_tests():
    runs = _runs()
    metrics = fake_metrics(runs)
    text_ = markdown.tradeoff_paragraph(metrics, fake_importance(), runs)
    assert f"Removing block 27 of 30 removes {100 * BLOCK_PARAMS / BASE_PARAMS:.1f}% of the parameters" in text_
    ppl = metrics.comparison("perplexity", "validation perplexity", "full", "base")
    assert ppl.detectable and ppl.sentence.startswith("full has lower validation perplexity than base")
    assert f"Fine-tuning: {ppl.sentence}" in text_
    for c in metrics.comparisons_of("speed"):
        assert c.sentence in text_
    claims = [line[4:] for line in text_.splitlines() if line.startswith("  - ")]
    assert all(any(claim.endswith(c.sentence) or claim == text.sentence_case(c.sentence) for c in metrics.comparisons)
               for claim in claims)
    assert "training time per step" not in text_ and "faster" not in text_  # no comparison of separate runs


def test_a_difference_inside_its_interval_is_reported_as_no_detectable_difference():
    runs = _runs()
    metrics = fake_metrics(runs, qa_acc={"pruned": 0.55})  # the same accuracy as full
    c = metrics.comparison("qa", "Q&A accuracy (normalised)", "pruned", "full")
    assert not c.detectable and c.ci95[0] <= 0 <= c.ci95[1]
    assert f"Removing the block, after fine-tuning: {c.sentence}" in markdown.tradeoff_paragraph(metrics, None, runs)
    assert c.sentence.startswith("no detectable difference in Q&A accuracy (normalised) between pruned and full")


def test_tradeoff_paragraph_changes_when_an_input_changes():
    runs = _runs()
    before = markdown.tradeoff_paragraph(fake_metrics(runs), fake_importance(), runs)
    worse = fake_metrics(runs, val_ppl={"pruned": 14.0})
    after = markdown.tradeoff_paragraph(worse, fake_importance(), runs)
    assert after != before
    c = worse.comparison("perplexity", "validation perplexity", "pruned", "full")
    assert c.a_value == pytest.approx(14.0) and c.detectable and c.sentence in after and c.sentence not in before
    moved = markdown.tradeoff_paragraph(fake_metrics(runs), fake_importance(removed=12), runs)
    assert "block 12 of 30" in moved
    slower = fake_metrics(runs, pruned_slower=True)
    step = slower.comparison("speed", "training step time", "pruned", "full")
    assert step.detectable and step.sentence.startswith("pruned has higher training step time than full")
    assert step.sentence in markdown.tradeoff_paragraph(slower, fake_importance(), runs)


def test_qa_controls_section_shows_every_method_by_seen_tag_beside_the_baselines(full_report):
    md, _ = full_report
    qa_text = section(md, "Q&A with controls")
    assert qa_text.count("| `base` |") == 3 and "| frequency-prior guesser |" in qa_text
    assert "| uniform guess | answer positions are balanced | 25% |" in qa_text
    cloze_text = section(md, "Cloze")
    assert "chance" not in cloze_text.split("|")[0].replace("There is no chance line", "")
    assert "resample articles" in cloze_text
    assert "2: qa3 A→C, cloze7 B→A" in section(md, "Precision")
    assert "| `full` |" in section(md, "Speed") and "interleaved rounds" in section(md, "Speed")
    assert "| `base` | chat | 0 | not available: no template |" in section(md, "Generated answers")


def test_tradeoff_without_metrics_or_importance_says_what_it_needs():
    assert markdown.tradeoff_paragraph(None, None).startswith("Not enough measurements for a trade-off")


def test_missing_optional_inputs_skip_their_sections_with_a_note(tmp_path):
    md, dirs = build(tmp_path, skip=("importance", "generations", "data"))
    assert "## Block removal\n\n_Skipped: missing input" in md and "04_prune_layer.py (make prune)" in md
    assert "## Generations: press-release openings\n\n_Skipped: missing input" in md and "05_evaluate.py (make evaluate)" in md
    assert "02_preprocess.py (make preprocess)" in section(md, "Data")
    assert not (dirs["report"] / "block_importance.png").exists()
    assert "block_importance.png" not in md


def test_report_builds_from_training_runs_alone_and_drops_figures_it_no_longer_has(tmp_path):
    _, earlier = build(tmp_path / "all")
    dirs = {**write_inputs(tmp_path / "runs_only", skip=("metrics", "generations")), "report": earlier["report"]}
    assert run_report(dirs).returncode == 0  # into the folder that holds the earlier, complete report
    md = (dirs["report"] / "report.md").read_text(encoding="utf-8")
    assert "## Metrics per model\n\n_Skipped: missing input" in md
    assert (dirs["report"] / "loss_curves.png").exists()
    assert not (dirs["report"] / "perplexity.png").exists() and not (dirs["report"] / "qa_accuracy.png").exists()
    assert not (dirs["report"] / "comparisons.png").exists()


def test_a_record_lacking_a_field_is_reported_by_name_instead_of_guessed(tmp_path):
    dirs = write_inputs(tmp_path)
    raw = (dirs["processed"] / "preprocess_report.json").read_text().replace('"splits"', '"split_summary"')
    (dirs["processed"] / "preprocess_report.json").write_text(raw)
    inputs = load_inputs(dirs["runs"], dirs["eval"], dirs["prune"], dirs["processed"], dirs["raw"])
    assert inputs.preprocess is None and "PreprocessReport lacks splits" in inputs.notes["preprocess"]
    assert inputs.scrape is not None


def test_a_half_written_last_log_line_is_skipped_and_the_rest_is_read(tmp_path):
    dirs = write_inputs(tmp_path)
    log_file = dirs["runs"] / "full" / "log.jsonl"
    whole = len(log_file.read_text().splitlines())
    with open(log_file, "a", encoding="utf-8") as fh:
        fh.write('{"step": 255, "tok')
    inputs = load_inputs(dirs["runs"], dirs["eval"], dirs["prune"], dirs["processed"], dirs["raw"])
    assert len(inputs.logs["full"]) == whole and inputs.logs["full"][-1].step == 250


def test_smooth_is_a_trailing_moving_average_of_the_same_length():
    assert figures.smooth([1, 2, 3, 4, 5], 3) == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert figures.smooth([4.0, 2.0], 1) == [4.0, 2.0]
    assert figures.smooth([], 5) == []


def test_token_counts_read_as_k_and_m():
    assert text.fmt_count(20480) == "20.5k"
    assert text.fmt_count(512000) == "512k"
    assert text.fmt_count(134_515_008) == "134.5M"
    assert text.fmt_count(None) == "n/a"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/report_demo")
    result = run_report(write_inputs(out))
    print(result.stdout or result.stderr, end="")
    sys.exit(result.returncode)
