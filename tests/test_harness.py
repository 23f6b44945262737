"""The BMW tasks under EleutherAI's lm-evaluation-harness agree with 05's scorer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bmwlm import harness
from bmwlm.evaluate.qa import load_qa_items
from tests.conftest import ROOT

lm_eval = pytest.importorskip("lm_eval", reason="install requirements-harness.txt (make test does)")


def test_qa_task_documents_are_exactly_the_items_05_scores():
    docs = harness.qa_docs()
    items = load_qa_items(harness.QA_FILE)
    assert [d["id"] for d in docs] == [it.id for it in items]
    for d, it in zip(docs, items):
        assert d["context"] == it.context and d["options"] == it.options
        assert d["options"][d["label"]] == it.options[it.answer_index]


def test_harness_picks_the_same_options_as_05s_scorer(tiny_llama_dir):
    rows = harness.harness_choices(str(tiny_llama_dir), ["bmw_qa"], limit=24, batch_size=8)
    metrics = rows.pop("_metrics")["bmw_qa"]
    assert set(metrics) >= {"acc,none", "acc_norm,none"}
    docs = harness.qa_docs()[:24]
    assert [r["id"] for r in rows["bmw_qa"]] == [d["id"] for d in docs]
    mine = harness.scorer_choices(str(tiny_llama_dir), docs)
    result = harness.agreement("bmw_qa", rows["bmw_qa"], mine)
    # Same model, same float32, same tokens: the log-likelihoods agree to numerical noise, so the
    # choices agree everywhere except, at most, on items whose two best options are a near tie.
    assert result.max_abs_loglik_diff < 1e-3
    assert result.same_acc >= result.items - result.near_ties
    assert result.same_acc_norm >= result.items - result.near_ties
    acc = sum(r["acc_choice"] == r["label"] for r in rows["bmw_qa"]) / len(rows["bmw_qa"])
    assert metrics["acc,none"] == pytest.approx(acc)


def test_the_documented_lm_eval_command_runs_the_bmw_qa_task(tiny_llama_dir, tmp_path):
    out = tmp_path / "harness-out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={tiny_llama_dir},dtype=float32", "--tasks", "bmw_qa",
           "--include_path", str(ROOT / "lm_eval_tasks"), "--device", "cpu", "--batch_size", "8",
           "--limit", "8", "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out.rglob("results_*.json")]
    assert results and "bmw_qa" in results[0]["results"]
