"""Copy a finished run's machine-readable files into `docs/results/`, where the README's tables are
generated from (`bmwlm.report.readme`) and where a reader audits every number.

What is copied (each only if it exists; nothing else is touched):
- `run/`: 04's `block_importance.json`; each variant's `run.json` and `log.jsonl`; 05's `metrics.json`,
  `generations.jsonl` and `qa_predictions.jsonl`; the harness results (`eval/harness/<model>.json`);
  06's `report.md` and figures, made anew from the published files (below); the model cards of the pruned base and both fine-tuned models (as
  `cards/<model>.md`);
- `seeds/seed<N>/<variant>/`: `run.json` and `log.jsonl` of every seed-study run, and `seeds/summary.json`
  (per variant mean and sd of the final validation perplexity; pruned − full paired by seed, 95% t interval);
- `study/`: the depth study's records (`removal_curve.json`, `block_scores_finetuned.json`,
  `healing_eval.json`), each healing run's `run.json` and `log.jsonl` (`study/runs/<run>/pruned/`, as
  `make study` writes them), the teacher's (`study/teacher/full/`: the fine-tuned full model the study
  distilled from and measured the gap against), and its section (`study/report/depth.md` and figures) made
  anew from the published files.

`--only run|seeds|study` (repeatable) publishes only those parts and leaves the others as they are: a depth
study made in another work folder (`BMWLM_WORKDIR`) is published with `--only study` without its own
re-run of the default recipe replacing the default run's files.

The cloze items are sentences of BMW press releases; the project keeps no copy of that text, so the
published `qa_predictions.jsonl` keeps the cloze rows' ids, source article, answer, picks and scores
but not the sentence or its options (05 rebuilds them from `data/processed/validation.jsonl` with its
seed). The Q&A items are the project's own text and stay whole. The published report is 06 run on the
published files, so its item-by-item cloze table shows the same note instead of the sentence.

    python -m bmwlm.report.publish          # or: make publish
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from bmwlm.config import (
    BLOCK_IMPORTANCE_FILE, EVAL_DIR, GENERATIONS_FILE, METRICS_FILE, OUTPUTS_DIR, PRUNE_DIR, QA_PREDICTIONS_FILE, ROOT,
    RUNS_DIR, STUDY_RUNS_DIR, VARIANTS,
)
from bmwlm.io import display_path, jsonl_text, read_json, read_jsonl, setup_logging, write_json, write_text
from bmwlm.records.prune import FINETUNED_SCORES_FILE, HEALING_EVAL_FILE, REMOVAL_CURVE_FILE
from bmwlm.report import depth

RESULTS_DIR = ROOT / "docs" / "results"
SEEDS_DIR = OUTPUTS_DIR / "seeds"
HARNESS_DIR = EVAL_DIR / "harness"
PARTS = ("run", "seeds", "study")
REDACTED = "(cloze item {item} of validation article {source}: sentence not kept, 05 rebuilds it)"
log = logging.getLogger("publish")


def redact_cloze(rows: list[dict]) -> list[dict]:
    """Prediction rows with each cloze item's sentence and options (corpus text) replaced."""
    out = []
    for row in rows:
        if row.get("set") == "cloze":
            row = {**row, "question": REDACTED.format(item=row.get("item_id"), source=row.get("source_id")),
                   "options": [f"option {chr(65 + i)}" for i in range(len(row.get("options", [])))]}
        out.append(row)
    return out


def _copy(src: Path, dst: Path, copied: list[Path]) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied.append(dst)


def _copy_run(run_dir: Path, dst: Path, copied: list[Path]) -> None:
    for name in ("run.json", "log.jsonl"):
        _copy(run_dir / name, dst / name, copied)


def pruned_base_card(importance_file: Path) -> Path | None:
    """The pruned base model's card, from the folder 04's record names (None when either is missing)."""
    if not importance_file.is_file():
        return None
    folder = Path(read_json(importance_file)["output_dir"])
    return (folder if folder.is_absolute() else ROOT / folder) / "README.md"


def report_from_published(eval_dir: Path, outputs: Path, out_dir: Path) -> list[Path]:
    """06 run on the published 05 files (and the run's other records), into `out_dir`."""
    data = outputs.parent / "data"
    args = ["--eval-dir", eval_dir, "--runs-dir", outputs / RUNS_DIR.relative_to(OUTPUTS_DIR),
            "--prune-dir", outputs / PRUNE_DIR.relative_to(OUTPUTS_DIR), "--processed-dir", data / "processed",
            "--raw-dir", data / "raw", "--study-runs-dir", outputs / STUDY_RUNS_DIR.relative_to(OUTPUTS_DIR),
            "--out-dir", out_dir]
    proc = subprocess.run([sys.executable, str(ROOT / "06_report.py"), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"06_report.py on the published files failed:\n{proc.stderr[-2000:]}")
    return sorted(out_dir.glob("*.md")) + sorted(out_dir.glob("*.png"))


def published_study(dest: Path = RESULTS_DIR) -> depth.Study:
    """The depth study as published under `dest` (what the README's depth section and figures show); the
    teacher is `study/teacher/full/` when published, else the default run's full model. The notes on missing
    pieces name paths relative to the repository, so the text is the same in any clone."""
    study_dir = dest / "study"
    teacher = study_dir / "teacher" if (study_dir / "teacher" / "full" / "run.json").is_file() else dest / "run" / "runs"
    study = depth.load_study(study_dir / REMOVAL_CURVE_FILE.name, dest / "run" / "prune" / BLOCK_IMPORTANCE_FILE.name,
                             study_dir / FINETUNED_SCORES_FILE.name, study_dir / "runs", teacher,
                             study_dir / HEALING_EVAL_FILE.name)
    study.notes = {k: v.replace(f"{ROOT}/", "") for k, v in study.notes.items()}
    return study


def publish_run(dest: Path, outputs: Path) -> list[Path]:
    """The default run: 04's record, both variants' runs and cards, 05's files and harness results, 06's report."""
    copied: list[Path] = []
    run = dest / "run"
    prune = outputs / PRUNE_DIR.relative_to(OUTPUTS_DIR)
    evald = outputs / EVAL_DIR.relative_to(OUTPUTS_DIR)
    runs = outputs / RUNS_DIR.relative_to(OUTPUTS_DIR)
    importance = prune / BLOCK_IMPORTANCE_FILE.name
    _copy(importance, run / "prune" / importance.name, copied)
    for variant in VARIANTS:
        _copy_run(runs / variant, run / "runs" / variant, copied)
        _copy(runs / variant / "model" / "README.md", run / "cards" / f"{variant}.md", copied)
    card = pruned_base_card(importance)
    if card is not None:
        _copy(card, run / "cards" / "base_minus_block.md", copied)
    for f in (METRICS_FILE, GENERATIONS_FILE):
        _copy(evald / f.name, run / "eval" / f.name, copied)
    predictions = evald / QA_PREDICTIONS_FILE.name
    if predictions.is_file():
        target = run / "eval" / predictions.name
        write_text(target, jsonl_text(redact_cloze(read_jsonl(predictions))))
        copied.append(target)
    for harness in sorted((evald / HARNESS_DIR.name).glob("*.json")):
        _copy(harness, run / "eval" / "harness" / harness.name, copied)
    if (run / "eval" / METRICS_FILE.name).is_file():
        copied += report_from_published(run / "eval", outputs, run / "report")
    return copied


def publish_seeds(dest: Path, outputs: Path) -> list[Path]:
    """Every seed-study run, and the summary the README's seed tables read."""
    copied: list[Path] = []
    for run_json in sorted((outputs / SEEDS_DIR.relative_to(OUTPUTS_DIR)).glob("seed*/*/run.json")):
        _copy_run(run_json.parent, dest / "seeds" / run_json.parent.parent.name / run_json.parent.name, copied)
    if (dest / "seeds").is_dir():
        from bmwlm.report.readme import seed_summary  # the README's seed tables read the same summary

        summary = dest / "seeds" / "summary.json"
        write_json(summary, seed_summary(dest))
        copied.append(summary)
    return copied


def publish_study(dest: Path, outputs: Path) -> list[Path]:
    """The depth study's records, healing runs and teacher run, and its section rendered from them."""
    copied: list[Path] = []
    prune = outputs / PRUNE_DIR.relative_to(OUTPUTS_DIR)
    study_runs = outputs / STUDY_RUNS_DIR.relative_to(OUTPUTS_DIR)
    for f in (REMOVAL_CURVE_FILE, FINETUNED_SCORES_FILE):
        _copy(prune / f.name, dest / "study" / f.name, copied)
    _copy(study_runs.parent / HEALING_EVAL_FILE.name, dest / "study" / HEALING_EVAL_FILE.name, copied)
    healing_runs = sorted(study_runs.glob("*/pruned/run.json"))
    for run_json in healing_runs:
        _copy_run(run_json.parent, dest / "study" / "runs" / run_json.parent.parent.name / "pruned", copied)
    if healing_runs:  # the teacher and gap target of those runs
        _copy_run(outputs / RUNS_DIR.relative_to(OUTPUTS_DIR) / "full", dest / "study" / "teacher" / "full", copied)
    study = published_study(dest)
    if depth.has_study(study):
        report = depth.render(study, dest / "study" / "report")
        copied += [report, *(report.parent / name for name in depth.figures(study))]
    return copied


PUBLISHERS = {"run": publish_run, "seeds": publish_seeds, "study": publish_study}


def publish(dest: Path = RESULTS_DIR, outputs: Path = OUTPUTS_DIR, parts=PARTS) -> list[Path]:
    """Copy everything listed in the module docstring (only `parts`) from `outputs` into `dest`; returns what
    was written."""
    return [path for part in PARTS if part in parts for path in PUBLISHERS[part](Path(dest), Path(outputs))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Copy a finished run's result files into docs/results/ (see the module "
                                            "docstring for the list).")
    p.add_argument("--outputs", type=Path, default=OUTPUTS_DIR, help="the run's outputs folder (default: %(default)s)")
    p.add_argument("--dest", type=Path, default=RESULTS_DIR, help="where they go (default: %(default)s)")
    p.add_argument("--only", action="append", choices=PARTS, default=None,
                   help="publish only this part (repeatable; default: all of them); the others stay as they are")
    args = p.parse_args(argv)
    setup_logging(False)
    copied = publish(args.dest, args.outputs, args.only or PARTS)
    if not copied:
        print(f"error: nothing to publish under {args.outputs}; run the pipeline first (make pipeline-offline)",
              file=sys.stderr)
        return 1
    log.info("published %d file(s) under %s", len(copied), display_path(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
