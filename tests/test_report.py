"""06_report.py: the report builds from realistic fake stage outputs, degrades gracefully, and its
trade-off text is computed from the inputs.

`write_fake_inputs` writes what stages 01–05 would (docs/records.md): a 30-block importance file,
two training logs with ~50 train and ~6 eval lines, metrics for the four models, generations for
six prompts, Q&A predictions. Run this file as a script to build a demo report to look at:
    .venv/bin/python tests/test_report.py /tmp/report_demo
"""
from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, load_script

report = load_script("06_report")

MODELS = ("base", "base_minus_block", "full", "pruned")
BLOCK_PARAMS = 3_540_096  # one SmolLM2-135M block
BASE_PARAMS = 134_515_008


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def _dump_lines(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def fake_importance(removed: int = 27) -> dict:
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
        scores.append({"block": b, "loss_without": 3.12 + delta, "delta_loss": delta,
                       "cosine_similarity": round(min(0.995, 0.75 + 0.008 * b + rng.uniform(-0.02, 0.02)), 4),
                       "importance": delta})
    return {
        "base_model": "smollm2-135m", "base_model_path": "outputs/models/SmolLM2-135M",
        "method": "loss_increase", "eval_tokens": 32768, "baseline_loss": 3.12, "scores": scores,
        "selection": "auto", "removed_block": removed,
        "naive_comparison": {"chosen": {"block": removed, "loss": 3.132}, "last": {"block": 29, "loss": 3.52},
                             "middle": {"block": 15, "loss": 3.33}},
        "output_dir": f"outputs/models/SmolLM2-135M-minus-block{removed}",
        "parameters_before": BASE_PARAMS, "parameters_after": BASE_PARAMS - BLOCK_PARAMS,
        "blocks_before": 30, "blocks_after": 29, "seconds": 118.0,
    }


def fake_log(variant: str, steps: int = 250, offset: float = 0.0, s_per_step: float = 4.5) -> list[dict]:
    rng = random.Random(variant)
    tokens_per_step = 8 * 256
    lines = []
    def eval_loss(step):
        return 3.1 + offset - 0.75 * (1 - math.exp(-step / 70)) + 0.01 * rng.random()
    lines.append({"step": 0, "epoch": 0.0, "tokens": 0, "eval_loss": eval_loss(0), "seconds": 0.0})
    for step in range(5, steps + 1, 5):
        loss = 3.2 + offset - 0.95 * (1 - math.exp(-step / 60)) + rng.gauss(0, 0.08)
        lines.append({"step": step, "epoch": step / 200, "tokens": step * tokens_per_step, "loss": loss,
                      "lr": 2e-4 * (1 - step / steps), "seconds": step * s_per_step})
        if step % 60 == 0 or step == steps:
            lines.append({"step": step, "epoch": step / 200, "tokens": step * tokens_per_step,
                          "eval_loss": eval_loss(step), "seconds": step * s_per_step + 3})
    return lines


def fake_run(variant: str, log: list[dict], params: int, blocks: int) -> dict:
    evals = [r for r in log if "eval_loss" in r]
    train = [r for r in log if "loss" in r]
    secs = train[-1]["seconds"]
    return {
        "variant": variant, "base_model": "outputs/models/SmolLM2-135M" if variant == "full"
        else "outputs/models/SmolLM2-135M-minus-block27",
        "config": {"block_size": 256, "per_device_train_batch_size": 8, "max_steps": train[-1]["step"]},
        "seed": 42, "versions": {"python": "3.11"}, "threads": 2, "parameters": params, "blocks": blocks,
        "train_blocks": 2000, "validation_blocks": 200, "tokens_seen": train[-1]["tokens"],
        "train_seconds": secs, "wall_seconds": secs + 40, "tokens_per_s": train[-1]["tokens"] / secs,
        "initial_eval_loss": evals[0]["eval_loss"], "final_eval_loss": evals[-1]["eval_loss"],
        "final_train_loss": train[-1]["loss"], "steps": train[-1]["step"],
        "finished_at": "2026-04-20T14:03:11+02:00",
    }


def _acc(n, acc):
    half = 1.96 * math.sqrt(acc * (1 - acc) / n)
    return {"n": n, "accuracy": acc, "ci95": [max(0, acc - half), min(1, acc + half)], "chance": 0.25}


def fake_metrics(runs: dict, val_ppl: dict | None = None, qa_acc: dict | None = None) -> dict:
    val_ppl = {"base": 22.4, "base_minus_block": 23.1, "full": 11.8, "pruned": 12.2, **(val_ppl or {})}
    train_ppl = {"base": 21.9, "base_minus_block": 22.5, "full": 10.1, "pruned": 10.6}
    qa_acc = {"base": 0.41, "base_minus_block": 0.39, "full": 0.55, "pruned": 0.52, **(qa_acc or {})}
    cloze = {"base": 0.33, "base_minus_block": 0.31, "full": 0.47, "pruned": 0.45}
    models = {}
    for key in MODELS:
        params = BASE_PARAMS - (BLOCK_PARAMS if key in ("base_minus_block", "pruned") else 0)
        training = None
        if key in runs:
            training = {k: runs[key].get(k) for k in ("train_seconds", "tokens_per_s", "tokens_seen", "steps")}
        qa = _acc(44, qa_acc[key])
        qa.update(mean_loglik_correct=-1.9 + 0.3 * qa_acc[key],
                  by_split={"train": {"n": 32, "accuracy": qa_acc[key] + 0.03},
                            "validation": {"n": 12, "accuracy": qa_acc[key] - 0.05}})
        cl = _acc(100, cloze[key])
        cl["mean_loglik_correct"] = -2.5
        models[key] = {
            "label": {"base": "SmolLM2-135M (base)", "base_minus_block": "SmolLM2-135M minus block 27",
                      "full": "SmolLM2-135M fine-tuned", "pruned": "SmolLM2-135M-minus-27 fine-tuned"}[key],
            "path": f"outputs/{key}", "available": True, "error": None,
            "parameters": params, "blocks": 29 if params < BASE_PARAMS else 30, "size_mb": params * 4 / 2**20,
            "validation": {"loss": math.log(val_ppl[key]), "perplexity": val_ppl[key], "tokens": 51234,
                           "tokens_per_s": 2100.0},
            "train_slice": {"loss": math.log(train_ppl[key]), "perplexity": train_ppl[key], "tokens": 51200},
            "qa": qa, "cloze": cl,
            "generation": {"new_tokens_per_s": 25.0 if params == BASE_PARAMS else 25.9},
            "training": training,
        }
    return {"settings": {"block_size": 256, "qa_file": "data/qa/bmw_qa.jsonl", "seed": 0}, "models": models}


PROMPTS = [
    "The new BMW iX3 is", "BMW Group sales in the third quarter", "Munich. The BMW M Motorsport team",
    "The Neue Klasse platform", "BMW Motorrad presents", "The MINI Countryman Electric offers",
]


def fake_generations() -> list[dict]:
    out = []
    for i, prompt in enumerate(PROMPTS):
        for key in MODELS:
            for decoding in ("greedy", "sampled"):
                text = (f" a {key} completion for prompt {i} ({decoding}); it talks about electric range, "
                        "charging and the production network in Debrecen.\nSecond line with `code`.")
                out.append({"model": key, "prompt_id": f"p{i + 1}", "prompt": prompt, "decoding": decoding,
                            "settings": {"max_new_tokens": 48} if decoding == "greedy"
                            else {"max_new_tokens": 48, "temperature": 0.8, "top_p": 0.95},
                            "completion": text, "new_tokens": 48, "seconds": 1.9})
    return out


def fake_predictions() -> list[dict]:
    rng = random.Random(3)
    out = []
    for set_name, n, p in (("qa", 44, {"base": .41, "base_minus_block": .39, "full": .55, "pruned": .52}),
                           ("cloze", 100, {"base": .33, "base_minus_block": .31, "full": .47, "pruned": .45})):
        for i in range(n):
            options = ["Munich", "Leipzig", "Spartanburg", "Debrecen"]
            for key in MODELS:
                correct = rng.random() < p[key]
                out.append({"model": key, "set": set_name, "item_id": f"{set_name}{i}",
                            "question": f"Where is plant {i} | located?", "options": options, "answer": "Munich",
                            "predicted": "Munich" if correct else rng.choice(options[1:]), "correct": correct,
                            "option_scores": [-1.0, -2.0, -2.5, -3.0], "source_id": "T0454734EN",
                            "split": "train" if i % 4 else "validation"})
    return out


def write_fake_inputs(root: Path, *, unavailable=(), val_ppl=None, qa_acc=None,
                      skip=()) -> dict[str, Path]:
    """Write fake outputs of stages 01–05 under `root`; returns the directories for the CLI."""
    dirs = {name: root / name for name in ("runs", "eval", "prune", "processed", "raw", "report")}
    logs = {"full": fake_log("full"), "pruned": fake_log("pruned", offset=0.03, s_per_step=4.38)}
    runs = {"full": fake_run("full", logs["full"], BASE_PARAMS, 30),
            "pruned": fake_run("pruned", logs["pruned"], BASE_PARAMS - BLOCK_PARAMS, 29)}
    if "runs" not in skip:
        for v in logs:
            _dump_lines(dirs["runs"] / v / "log.jsonl", logs[v])
            _dump(dirs["runs"] / v / "run.json", runs[v])
    if "importance" not in skip:
        _dump(dirs["prune"] / "block_importance.json", fake_importance())
    if "metrics" not in skip:
        metrics = fake_metrics(runs, val_ppl, qa_acc)
        for key in unavailable:
            metrics["models"][key] = {"label": key, "path": "missing", "available": False,
                                      "error": "model directory not found"}
        _dump(dirs["eval"] / "metrics.json", metrics)
    if "generations" not in skip:
        _dump_lines(dirs["eval"] / "generations.jsonl", fake_generations())
        _dump_lines(dirs["eval"] / "qa_predictions.jsonl", fake_predictions())
    if "data" not in skip:
        # shapes as 01_scrape.py and 02_preprocess.py write them
        _dump(dirs["raw"] / "scrape_report.json",
              {"status": "complete", "articles": 500, "by_source": {"rss2": 488, "detail": 12},
               "requests": 512, "cache_hits": 480, "retries": 2, "failures": 0})
        _dump(dirs["processed"] / "preprocess_report.json",
              {"articles": {"in": 500, "unique_ids": 500, "out": 471, "train": 424, "validation": 47},
               "dropped": {"duplicate_id": {"count": 0, "ids": []}, "too_short": {"count": 8, "articles": []},
                           "exact_duplicate": {"count": 21, "pairs": []}, "near_duplicate": {"count": 0}},
               "cleaning": {"chars_in": 2_800_000, "chars_out": 2_300_000, "percent_chars_removed": 17.86},
               "splits": {"train": {"articles": 424, "chars": 2_000_000, "tokens": 412345,
                                    "published_min": "2024-10-31T09:00:00+01:00",
                                    "published_max": "2025-10-02T10:00:00+02:00"},
                          "validation": {"articles": 47, "chars": 230_000, "tokens": 45120,
                                         "published_min": "2025-10-03T08:00:00+02:00",
                                         "published_max": "2025-12-30T11:15:00+01:00"}}})
    return dirs


def cli_args(dirs: dict[str, Path]) -> list[str]:
    return ["--runs-dir", str(dirs["runs"]), "--eval-dir", str(dirs["eval"]), "--prune-dir", str(dirs["prune"]),
            "--processed-dir", str(dirs["processed"]), "--raw-dir", str(dirs["raw"]),
            "--out-dir", str(dirs["report"])]


def build(tmp_path: Path, **kwargs) -> tuple[str, dict[str, Path]]:
    dirs = write_fake_inputs(tmp_path, **kwargs)
    assert report.main(cli_args(dirs)) == 0
    return (dirs["report"] / "report.md").read_text(encoding="utf-8"), dirs


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    return build(tmp_path_factory.mktemp("report"))


def test_report_has_every_section_a_row_per_model_and_existing_figures(full_report):
    md, dirs = full_report
    for heading in ("# Pruning one transformer block", "## Trade-offs", "## Data", "## Metrics per model",
                    "## Block removal", "## Training: loss curves", "## Q&A answers item by item",
                    "## Generations"):
        assert heading in md
    for key in MODELS:
        assert re.search(rf"^\| `{key}` ", md, flags=re.M), key
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(report.FIGURES)
    for link in links:
        png = dirs["report"] / link
        assert png.exists() and png.stat().st_size > 5000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "_Skipped" not in md
    data = md.split("## Data", 1)[1].split("##", 1)[0]
    assert "500 articles (rss2 488, detail 12)" in data and "471 articles of 500" in data
    assert "| train | 424 | 412.3k | 2024-10-31 … 2025-10-02 |" in data


def test_generations_show_each_prompt_with_greedy_inline_and_sampled_folded(full_report):
    md, _ = full_report
    section = md.split("## Generations", 1)[1]
    assert section.count("### Prompt") == len(PROMPTS)
    assert section.count("<details><summary>Sampled completions") == len(PROMPTS)
    first = section.split("### Prompt 2", 1)[0]
    greedy = first.split("<details>", 1)[0]
    for key in MODELS:
        assert f"a {key} completion for prompt 0 (greedy)" in greedy
    assert "(sampled)" not in greedy
    assert "temperature=0.8" in first


def test_training_section_reports_initial_and_final_eval_loss_per_variant(full_report):
    md, dirs = full_report
    section = md.split("## Training: loss curves", 1)[1].split("##", 1)[0]
    for variant in ("full", "pruned"):
        run = json.loads((dirs["runs"] / variant / "run.json").read_text())
        row = next(line for line in section.splitlines() if line.startswith(f"| {variant} "))
        assert f"{run['initial_eval_loss']:.3f}" in row and f"{run['final_eval_loss']:.3f}" in row


def test_unavailable_model_shows_as_na_and_report_still_builds(tmp_path):
    md, dirs = build(tmp_path, unavailable=("pruned",))
    row = next(line for line in md.splitlines() if line.startswith("| `pruned`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["n/a"] * (len(cells) - 1)
    assert "model directory not found" in md
    assert (dirs["report"] / "perplexity.png").stat().st_size > 0
    assert (dirs["report"] / "qa_accuracy.png").stat().st_size > 0


def test_metrics_table_has_one_row_per_model_and_na_for_absent_ones():
    metrics = fake_metrics({})
    del metrics["models"]["full"]
    table = report.metrics_table(metrics)
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(MODELS)
    assert rows[2].count("n/a") == len(report.TABLE_COLUMNS) - 1
    assert "22.40" in rows[0] and "41.0%" in rows[0]


def test_tradeoff_paragraph_states_numbers_computed_from_the_inputs():
    runs = {"full": {"train_seconds": 1000.0, "steps": 250}, "pruned": {"train_seconds": 950.0, "steps": 250}}
    metrics = fake_metrics(runs)
    text = report.tradeoff_paragraph(metrics, fake_importance(), runs)
    assert "block 27 of 30" in text
    assert f"{100 * BLOCK_PARAMS / BASE_PARAMS:.1f}% of the parameters" in text      # 2.6%
    assert "5.0% of the training time per step" in text                               # 4.00 s -> 3.80 s
    assert f"{100 * (23.1 - 22.4) / 22.4:.1f}% higher (22.40 → 23.10)" in text        # before fine-tuning
    assert f"{100 * (12.2 - 11.8) / 11.8:.1f}% higher" in text                        # after fine-tuning
    assert "from 55.0% (full) to 52.0% (pruned)" in text


def test_tradeoff_paragraph_changes_when_an_input_changes():
    runs = {"full": {"train_seconds": 1000.0, "steps": 250}, "pruned": {"train_seconds": 950.0, "steps": 250}}
    before = report.tradeoff_paragraph(fake_metrics(runs), fake_importance(), runs)
    changed = fake_metrics(runs, val_ppl={"pruned": 14.0}, qa_acc={"pruned": 0.30})
    after = report.tradeoff_paragraph(changed, fake_importance(), runs)
    assert after != before
    assert f"{100 * (14.0 - 11.8) / 11.8:.1f}% higher" in after
    assert "to 30.0% (pruned)" in after and "to 30.0% (pruned)" not in before
    moved = report.tradeoff_paragraph(fake_metrics(runs), fake_importance(removed=12), runs)
    assert "block 12 of 30" in moved


def test_missing_optional_inputs_skip_their_sections_with_a_note(tmp_path):
    md, dirs = build(tmp_path, skip=("importance", "generations", "data"))
    assert "## Block removal\n\n_Skipped: missing input" in md and "04_prune_layer.py" in md
    assert "## Generations\n\n_Skipped:" in md and "05_evaluate.py" in md
    assert "02_preprocess.py" in md
    assert not (dirs["report"] / "block_importance.png").exists()
    assert "block_importance.png" not in md


def test_report_builds_from_training_runs_alone(tmp_path):
    md, dirs = build(tmp_path, skip=("metrics", "generations"))
    assert "## Metrics per model\n\n_Skipped: missing input" in md
    assert (dirs["report"] / "loss_curves.png").exists()


def test_missing_metrics_and_runs_exit_nonzero_naming_the_stages_without_traceback(tmp_path):
    dirs = write_fake_inputs(tmp_path, skip=("metrics", "runs"))
    proc = subprocess.run([sys.executable, str(ROOT / "06_report.py"), *cli_args(dirs)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode != 0
    assert "05_evaluate.py" in proc.stderr and "03_train.py" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (dirs["report"] / "report.md").exists()


def test_smooth_is_a_trailing_moving_average_of_the_same_length():
    assert report.smooth([1, 2, 3, 4, 5], 3) == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert report.smooth([4.0, 2.0], 1) == [4.0, 2.0]
    assert report.smooth([], 5) == []


def test_token_counts_read_as_k_and_m():
    assert report.fmt_count(20480) == "20.5k"
    assert report.fmt_count(512000) == "512k"
    assert report.fmt_count(134_515_008) == "134.5M"
    assert report.fmt_count(None) == "n/a"


def test_half_written_last_log_line_is_skipped(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 5, "tokens": 10, "loss": 3.0}\n{"step": 10, "tok', encoding="utf-8")
    assert report.read_jsonl_tolerant(path) == [{"step": 5, "tokens": 10, "loss": 3.0}]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/report_demo")
    sys.exit(report.main(cli_args(write_fake_inputs(out))))
