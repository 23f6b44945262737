"""`python -m bmwlm.evaluate.healing`: the healed models scored per validation article and compared in pairs."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from bmwlm.evaluate import healing
from bmwlm.io import write_text
from bmwlm.records.evaluation import ArticleLosses, SplitScore
from bmwlm.records.prune import HealingEvaluation

pytestmark = pytest.mark.usefixtures("one_thread")

# The project's own fixture text (not press-release text): short articles about an imaginary plant.
ARTICLES = [
    f"Article {i}. The plant in Testburg built {100 + 7 * i} electric cars this week and shipped them by rail. "
    f"Workers on line {i % 3} tested the batteries, and the visitors' centre opened a new exhibition."
    for i in range(6)
]


def write_validation(path):
    write_text(path, "".join(json.dumps({"id": f"T{i:04d}EN", "text": t}) + "\n" for i, t in enumerate(ARTICLES)))
    return path


def run_json(final_eval_loss: float) -> dict:
    """The run.json fields the healing evaluation reads (RunSummary's required fields, minimal values)."""
    return {"variant": "pruned", "base_model": "m", "base_model_path": "m", "config": {}, "overrides": {}, "seed": 42,
            "versions": {}, "cpu_model": "cpu", "threads": 1, "precision": "float32", "compiled": False, "loss": "x",
            "parameters": 1, "blocks": 3, "train_blocks": 1, "validation_blocks": 1, "validation_blocks_total": 1,
            "validation_subset": "all", "steps": 1, "epochs": 1.0, "tokens_seen": 1, "train_seconds": 1.0,
            "eval_seconds": 1.0, "wall_seconds": 1.0, "tokens_per_s": 1.0, "matmul_gflops": 1.0,
            "share_of_peak": 0.1, "initial_eval_loss": 5.0, "final_eval_loss": final_eval_loss,
            "final_train_loss": 1.0, "resumed_from_step": None, "train_file": "t", "validation_file": "v",
            "finished_at": "now"}


def place_run(folder, model_dir=None, final_eval_loss=10.0):
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "run.json", json.dumps(run_json(final_eval_loss)))
    if model_dir is not None:
        shutil.copytree(model_dir, folder / "model")


@pytest.fixture()
def study(tmp_path, tiny_gpt2_dir, tiny_llama_dir):
    """Teacher = tiny Llama; both deep-cut runs = the same tiny GPT-2 (so their difference is exactly 0)."""
    runs, study_runs = tmp_path / "runs", tmp_path / "study" / "runs"
    place_run(runs / "full", tiny_llama_dir)
    for name in ("deep_cut_ft", "deep_cut_kd"):
        place_run(study_runs / name / "pruned", tiny_gpt2_dir)
    return runs, study_runs, write_validation(tmp_path / "validation.jsonl")


def evaluate(study, **kw) -> HealingEvaluation:
    runs, study_runs, validation = study
    return healing.evaluate_healing(study_runs, runs, validation, block_size=32, batch_size=4, bf16=False,
                                    n_resamples=200, **kw)


def test_two_copies_of_one_model_differ_by_exactly_zero_and_no_difference_is_claimed(study):
    record = evaluate(study)
    assert set(record.models) == {"full", "deep_cut_ft", "deep_cut_kd"}  # runs without a model are left out
    kd_vs_ft = next(c for c in record.comparisons if (c.a, c.b) == ("deep_cut_kd", "deep_cut_ft"))
    assert kd_vs_ft.difference == 0.0 and kd_vs_ft.ci95 == [0.0, 0.0] and not kd_vs_ft.detectable
    assert kd_vs_ft.sentence.startswith("no detectable difference") and kd_vs_ft.units == len(ARTICLES)


def test_every_healed_model_is_compared_with_the_teacher_over_the_same_articles(study):
    record = evaluate(study)
    pairs = {(c.a, c.b) for c in record.comparisons}
    assert pairs == {("deep_cut_kd", "deep_cut_ft"), ("deep_cut_ft", "full"), ("deep_cut_kd", "full")}
    teacher, student = record.models["full"].validation, record.models["deep_cut_ft"].validation
    assert teacher.per_article.article_ids == student.per_article.article_ids == [f"T{i:04d}EN" for i in range(6)]
    comp = next(c for c in record.comparisons if (c.a, c.b) == ("deep_cut_ft", "full"))
    assert comp.difference == pytest.approx(student.perplexity - teacher.perplexity)
    assert comp.ci95[0] <= comp.difference <= comp.ci95[1]
    assert teacher.ci95[0] <= teacher.perplexity <= teacher.ci95[1]


def metrics_file(tmp_path, loss: float):
    """A minimal 05 metrics.json with one model entry ("pruned") holding a per-article validation score."""
    per_article = ArticleLosses(article_ids=[f"T{i:04d}EN" for i in range(6)], nll=[loss * 10] * 6, tokens=[10] * 6,
                                separator_nll=[0.0] * 6, separator_tokens=[0] * 6, first_nll=[0.0] * 6,
                                first_tokens=[0] * 6)
    score = SplitScore(loss=loss, perplexity=math.exp(loss), tokens=60, windows=2, ci95=[1.0, 2.0], articles=6,
                       per_article=per_article)
    path = tmp_path / "metrics.json"
    write_text(path, json.dumps({"settings": {}, "models": {"pruned": {"label": "p", "path": "p",
                                 "validation": score.to_dict()}}, "comparisons": []}))
    return path


def test_a_05_entry_stands_for_a_run_without_its_model_only_when_the_losses_agree(tmp_path):
    from bmwlm.records.training import RunSummary

    summary = RunSummary.from_dict(run_json(2.73559))
    taken = healing.from_metrics("one_block_ft", summary, metrics_file(tmp_path, 2.7355921), "pruned")
    assert taken.from_metrics and taken.source.endswith("metrics.json:pruned")
    assert taken.validation.per_article.tokens == [10] * 6
    with pytest.raises(healing.HealingInputError, match="not the same model"):
        healing.from_metrics("one_block_ft", summary, metrics_file(tmp_path, 2.7400), "pruned")
    with pytest.raises(healing.HealingInputError, match="no per-article validation score"):
        healing.from_metrics("one_block_ft", summary, metrics_file(tmp_path, 2.7355921), "full")


def test_the_command_writes_its_record_and_refuses_a_mismatched_05_entry_in_one_line(study, tmp_path, capsys):
    runs, study_runs, validation = study
    place_run(study_runs / "one_block_ft" / "pruned", final_eval_loss=2.9)  # run.json only, its model not kept
    common = ["--study-runs-dir", str(study_runs), "--runs-dir", str(runs), "--validation-file", str(validation),
              "--block-size", "32", "--bootstrap", "100", "--no-bf16", "--device", "cpu", "--threads", "1",
              "--no-progress"]
    bad = healing.main([*common, "--from-metrics", f"one_block_ft={metrics_file(tmp_path, 2.0)}:pruned",
                        "--out", str(tmp_path / "bad.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert bad == 1 and len(err) == 1 and "not the same model" in err[0] and not (tmp_path / "bad.json").exists()
    assert healing.main([*common, "--from-metrics", "one_block_ft=nonsense", "--out", str(tmp_path / "x.json")]) == 1
    assert "expected RUN=FILE:ENTRY" in capsys.readouterr().err
    out = tmp_path / "healing_eval.json"
    assert healing.main([*common, "--out", str(out)]) == 0
    record = HealingEvaluation.load(out)
    assert set(record.models) == {"full", "deep_cut_ft", "deep_cut_kd"} and record.precision == "float32"


def test_a_study_with_no_model_at_all_names_what_to_run(tmp_path):
    with pytest.raises(Exception, match="make study"):
        healing.evaluate_healing(tmp_path / "study", tmp_path / "runs", write_validation(tmp_path / "v.jsonl"))
