"""All six stages, run one by one as a user would, against the stand-in PressClub on a tiny model.

Each stage runs as a subprocess of its script (so argument parsing, exit codes and file hand-over
are what is tested), in a temporary BMWLM_WORKDIR so real runs' files are never touched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.standin_server import StandinServer

pytestmark = pytest.mark.e2e

MAX_ARTICLES = 160
# 03's settings for every tiny run here (the default variants and the depth study's): one recipe, as in real runs
TRAIN_ARGS = ["--max-steps", "6", "--eval-steps", "3", "--save-steps", "3", "--logging-steps", "1", "--block-size", "64",
              "--per-device-train-batch-size", "4", "--eval-max-blocks", "48", "--no-torch-compile", "--threads", "1"]


def work_env(work: Path) -> dict:
    """The environment of every command here: offline, with its files in the work folder `work`."""
    return {**os.environ, "BMWLM_WORKDIR": str(work), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_stage(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, shared_corpus, tiny_llama_dir):
    work = tmp_path_factory.mktemp("e2e")
    env = work_env(work)
    tiny = str(tiny_llama_dir)
    with StandinServer.from_jsonl(shared_corpus) as server:
        run_stage("01_scrape.py", "--base-url", server.base_url, "--delay", "0",
                  "--max-articles", str(MAX_ARTICLES), env=env)
    run_stage("02_preprocess.py", "--tokenizer", tiny, env=env)
    run_stage("04_prune_layer.py", "--model", tiny, "--calibration-tokens", "2048", "--block-size", "64", env=env)
    train_args = ["--model", tiny, *TRAIN_ARGS]
    run_stage("03_train.py", "--variant", "full", *train_args, env=env)
    run_stage("03_train.py", "--variant", "pruned", *train_args, env=env)
    run_stage("05_evaluate.py", "--base-model", tiny, "--block-size", "64", "--cloze-max", "20",
              "--max-new-tokens", "8", "--bootstrap", "200", "--train-slice-tokens", "2048", env=env)
    run_stage("06_report.py", env=env)
    return work


def test_scrape_collects_unique_articles_from_the_standin(pipeline_run):
    articles = read_jsonl(pipeline_run / "data/raw/articles.jsonl")
    ids = [a["id"] for a in articles]
    assert len(ids) == MAX_ARTICLES == len(set(ids))
    assert all(a["text"] and "<p>" not in a["text"] for a in articles)


def test_preprocess_writes_disjoint_chronological_splits(pipeline_run):
    train = read_jsonl(pipeline_run / "data/processed/train.jsonl")
    val = read_jsonl(pipeline_run / "data/processed/validation.jsonl")
    assert train and val
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert max(r["published"] for r in train) <= min(r["published"] for r in val)


def test_prune_writes_a_loadable_model_with_one_block_fewer(pipeline_run):
    from transformers import AutoModelForCausalLM

    importance = json.loads((pipeline_run / "outputs/prune/block_importance.json").read_text())
    assert len(importance["scores"]) == 4
    model = AutoModelForCausalLM.from_pretrained(importance["output_dir"])
    assert model.config.num_hidden_layers == 3


def test_both_variants_train_with_identical_settings_and_log_losses(pipeline_run):
    runs = {v: json.loads((pipeline_run / f"outputs/runs/{v}/run.json").read_text()) for v in ("full", "pruned")}
    assert runs["full"]["config"] == runs["pruned"]["config"]
    assert runs["full"]["blocks"] == 4 and runs["pruned"]["blocks"] == 3
    for variant in runs:
        log = read_jsonl(pipeline_run / f"outputs/runs/{variant}/log.jsonl")
        assert any("loss" in line for line in log) and any("eval_loss" in line for line in log)
        assert (pipeline_run / f"outputs/runs/{variant}/model/config.json").exists()


def test_evaluate_scores_all_four_models(pipeline_run):
    from bmwlm.records.evaluation import Metrics

    metrics = Metrics.load(pipeline_run / "outputs/eval/metrics.json")
    assert set(metrics.models) == {"base", "base_minus_block", "full", "pruned"}
    for key, m in metrics.models.items():
        assert m.available, (key, m.error)
        assert m.validation.perplexity > 1
        assert 0 <= m.qa.accuracy <= 1
        assert set(m.qa.methods) == {"normalised", "calibrated", "prior_only"}
    gens = read_jsonl(pipeline_run / "outputs/eval/generations.jsonl")
    assert {g["model"] for g in gens} == set(metrics.models)
    assert read_jsonl(pipeline_run / "outputs/eval/qa_predictions.jsonl")


def test_report_links_figures_that_exist(pipeline_run):
    report_dir = pipeline_run / "outputs/report"
    text = (report_dir / "report.md").read_text()
    pngs = sorted(report_dir.glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        assert png.name in text and png.stat().st_size > 1000


def test_every_model_directory_and_the_corpus_carry_a_generated_card(pipeline_run):
    from huggingface_hub import DatasetCard, ModelCard

    importance = json.loads((pipeline_run / "outputs/prune/block_importance.json").read_text())
    block = importance["removed_block"]
    pruned_base = Path(importance["output_dir"])
    pruned_base = pruned_base if pruned_base.is_absolute() else ROOT / pruned_base
    cards = {"pruned base": pruned_base} | {v: pipeline_run / f"outputs/runs/{v}/model" for v in ("full", "pruned")}
    for name, folder in cards.items():
        card = ModelCard.load(folder / "README.md")
        assert card.data.to_dict()["license"] == "apache-2.0", name
        assert "## Limits" in card.text and "## How it was made" in card.text, name
    assert f"minus block {block}" in ModelCard.load(cards["pruned"] / "README.md").text
    dataset = DatasetCard.load(pipeline_run / "data/processed/README.md")
    assert "publisher's terms" in dataset.text and "| train |" in dataset.text


def test_evaluation_writes_its_measurements_into_the_cards_of_the_models_it_measured(pipeline_run):
    from huggingface_hub import ModelCard

    from bmwlm.records.evaluation import Metrics

    metrics = Metrics.load(pipeline_run / "outputs/eval/metrics.json")
    importance = json.loads((pipeline_run / "outputs/prune/block_importance.json").read_text())
    pruned_base = Path(importance["output_dir"])
    folders = {"base_minus_block": pruned_base if pruned_base.is_absolute() else ROOT / pruned_base,
               **{v: pipeline_run / f"outputs/runs/{v}/model" for v in ("full", "pruned")}}
    for key, folder in folders.items():
        card = ModelCard.load(folder / "README.md")
        index = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
        entry = metrics.models[key]
        assert index[("validation split", "perplexity")] == round(entry.validation.perplexity, 4), key
        assert index[("BMW Q&A set", "accuracy")] == round(entry.qa.accuracy, 4), key
        assert index[("BMW cloze set", "accuracy")] == round(entry.cloze.accuracy, 4), key


def test_training_writes_tensorboard_events_with_the_logged_losses(pipeline_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for variant in ("full", "pruned"):
        events = EventAccumulator(str(pipeline_run / f"outputs/runs/{variant}/tensorboard"))
        events.Reload()
        logged = [line for line in read_jsonl(pipeline_run / f"outputs/runs/{variant}/log.jsonl") if "loss" in line]
        losses = {e.step: e.value for e in events.Scalars("train/loss")}
        assert losses and all(abs(losses[line["step"]] - line["loss"]) < 1e-4 for line in logged)


def test_published_results_hold_the_run_s_records_and_no_cloze_sentence(pipeline_run, tmp_path):
    dest = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bmwlm.report.publish", "--outputs", str(pipeline_run / "outputs"),
                           "--dest", str(dest)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in ("run/eval/metrics.json", "run/prune/block_importance.json", "run/runs/pruned/run.json",
                "run/cards/full.md", "run/report/report.md", "run/report/loss_curves.png"):
        assert (dest / rel).is_file(), rel
    cloze = [p["question"] for p in read_jsonl(pipeline_run / "outputs/eval/qa_predictions.jsonl") if p["set"] == "cloze"]
    assert cloze
    published = "".join(f.read_text(encoding="utf-8") for f in dest.rglob("*") if f.suffix in (".md", ".json", ".jsonl"))
    assert not [q for q in cloze if q[:50] in published]
    assert "## Cloze" in (dest / "run/report/report.md").read_text(encoding="utf-8")


def run_make_study(work: Path, tiny: str) -> subprocess.CompletedProcess:
    """`make study` in `work` with the tiny model and a small budget (the recipe's shape, not its size): a deep
    cut of 2 of the 4 blocks, and the paired evaluation on the first articles of the validation split only."""
    few = work / "data/processed/validation_first_articles.jsonl"
    if not few.exists():
        lines = (work / "data/processed/validation.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        few.write_text("".join(lines[:5]), encoding="utf-8")
    args = [f"PY={sys.executable}", "STAMP=",  # this interpreter; no venv install from a test
            f"STUDY_PRUNE_ARGS=--model {tiny} --calibration-tokens 1024 --block-size 64 --validation-tokens 1024 "
            "--max-removed 2 --threads 1 --no-progress",
            f"STUDY_TRAIN_ARGS=--model {tiny} {' '.join(TRAIN_ARGS)}",
            f"STUDY_HEALING_ARGS=--validation-file {few} --block-size 64 --bootstrap 200 --no-bf16 --threads 1 "
            "--no-progress"]
    proc = subprocess.run(["make", "--no-print-directory", "study", *args], cwd=ROOT, env=work_env(work),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"make study failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_make_study_runs_every_piece_and_remakes_only_the_evaluation_a_newer_run_outdates(
        pipeline_run, tiny_llama_dir, tmp_path):
    work = tmp_path / "study"
    shutil.copytree(pipeline_run, work, symlinks=True)  # the default run's files, as `make study` expects them
    run_make_study(work, str(tiny_llama_dir))

    curve = json.loads((work / "outputs/prune/removal_curve.json").read_text())
    deep_cut = (ROOT / curve["deep_cut"]["output_dir"]).resolve()
    assert len(curve["deep_cut"]["blocks"]) == 2 and deep_cut.is_relative_to(work.resolve())
    assert json.loads((deep_cut / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((work / "outputs/prune/block_scores_finetuned.json").read_text())["model"].endswith("runs/full/model")
    runs = {name: json.loads((work / f"outputs/study/runs/{name}/pruned/run.json").read_text())
            for name in ("one_block_ft", "one_block_kd", "deep_cut_ft", "deep_cut_kd")}
    assert all(("distillation from" in r["loss"]) == name.endswith("_kd") for name, r in runs.items())
    assert os.path.samefile(work / "outputs/study/runs/one_block_ft/pruned/run.json",
                            work / "outputs/runs/pruned/run.json")  # the default pruned run, reused, not re-trained
    assert len({json.dumps(r["config"], sort_keys=True) for r in runs.values()}) == 1  # one recipe for every run
    healing = work / "outputs/study/healing_eval.json"
    assert len(json.loads(healing.read_text())["models"]) == 5  # four healed models and the teacher
    depth = (work / "outputs/study/report/depth.md").read_text(encoding="utf-8")
    assert "not run" not in depth and "Not measured" not in depth and "Not comparable" not in depth
    assert "Paired comparisons over" in depth and "rank correlation" in depth  # the evaluation and the shift read

    def made_files() -> dict[Path, int]:  # everything make study makes but its report, which it always re-renders
        return {f: f.stat().st_mtime_ns for f in (work / "outputs").rglob("*")
                if f.is_file() and "report" not in f.relative_to(work / "outputs").parts}

    made, before = healing.stat().st_mtime_ns, made_files()
    run_make_study(work, str(tiny_llama_dir))  # nothing new: no run trained, no score or evaluation re-made
    assert made_files() == before
    newer = work / "outputs/study/runs/deep_cut_kd/pruned/run.json"
    os.utime(newer, ns=(made + 10**9, made + 10**9))  # a run finished after the evaluation
    run_make_study(work, str(tiny_llama_dir))
    assert healing.stat().st_mtime_ns > made
