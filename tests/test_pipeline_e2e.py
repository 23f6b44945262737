"""All six stages, run one by one as a user would, against the stand-in PressClub on a tiny model.

Each stage runs as a subprocess of its script (so argument parsing, exit codes and file hand-over
are what is tested), in a temporary BMWLM_WORKDIR so real runs' files are never touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.standin_server import StandinServer

pytestmark = pytest.mark.e2e

MAX_ARTICLES = 160


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
    env = {**os.environ, "BMWLM_WORKDIR": str(work), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    tiny = str(tiny_llama_dir)
    with StandinServer.from_jsonl(shared_corpus) as server:
        run_stage("01_scrape.py", "--base-url", server.base_url, "--delay", "0",
                  "--max-articles", str(MAX_ARTICLES), env=env)
    run_stage("02_preprocess.py", "--tokenizer", tiny, env=env)
    run_stage("04_prune_layer.py", "--model", tiny, "--max-eval-tokens", "2048", "--block-size", "64", env=env)
    train_args = ["--model", tiny, "--max-steps", "6", "--eval-steps", "3", "--save-steps", "3",
                  "--logging-steps", "1", "--block-size", "64", "--per-device-train-batch-size", "4",
                  "--no-torch-compile", "--threads", "1"]
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
    metrics = json.loads((pipeline_run / "outputs/eval/metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "base_minus_block", "full", "pruned"}
    for key, m in metrics["models"].items():
        assert m["available"], (key, m.get("error"))
        assert m["validation"]["perplexity"] > 1
        assert 0 <= m["qa"]["accuracy"] <= 1
    gens = read_jsonl(pipeline_run / "outputs/eval/generations.jsonl")
    assert {g["model"] for g in gens} == set(metrics["models"])
    assert read_jsonl(pipeline_run / "outputs/eval/qa_predictions.jsonl")


def test_report_links_figures_that_exist(pipeline_run):
    report_dir = pipeline_run / "outputs/report"
    text = (report_dir / "report.md").read_text()
    pngs = sorted(report_dir.glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        assert png.name in text and png.stat().st_size > 1000
