"""Stage 06: turn the pipeline's measurements into one readable report with figures.

Reads (each optional; records in bmwlm/records/, fields in docs/records.md):
  outputs/eval/metrics.json, generations.jsonl, qa_predictions.jsonl   (05_evaluate.py)
  outputs/runs/<variant>/log.jsonl and run.json                         (03_train.py)
  outputs/prune/block_importance.json                                   (04_prune_layer.py)
  outputs/prune/removal_curve.json, block_scores_finetuned.json,
  outputs/study/runs/<run>/pruned/run.json                              (make study: the depth study)
  data/processed/preprocess_report.json, data/raw/scrape_report.json    (02 / 01)
Writes (all together):
  outputs/report/report.md and beside it loss_curves.png, perplexity.png,
  block_importance.png, qa_accuracy.png, comparisons.png (linked relatively from the markdown); with
  the depth study's files, a "Depth study" section and removal_curve.png, importance_shift.png.
Why:
  the question of the project is what removing one transformer block costs and saves; this stage
  puts every measured number side by side, each with its interval, and states a comparison only as
  the sentence 05 wrote from its paired test ("X is lower than Y (95% CI of the difference …)" or
  "no detectable difference"), so re-running the pipeline re-writes the conclusions too. A missing model or input only
  removes its row or section; with neither evaluation metrics nor a training run there is nothing
  to report, and the stage stops with one line naming what is missing and the stage that makes it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from bmwlm.config import (
    EVAL_DIR, EVALUATE, PREPROCESS, PROCESSED_DIR, PRUNE, PRUNE_DIR, RAW_DIR, REPORT_DIR, REPORT_FILE, RUNS_DIR, SCRAPE,
    STUDY_RUNS_DIR,
)
from bmwlm.io import MissingInputError, display_path, setup_logging, write_together
from bmwlm.report.inputs import load_inputs
from bmwlm.report.markdown import render_markdown

log = logging.getLogger("report")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                   help="the training runs: <variant>/log.jsonl and run.json (default: %(default)s)")
    p.add_argument("--eval-dir", type=Path, default=EVAL_DIR, help=f"{EVALUATE.script} outputs (default: %(default)s)")
    p.add_argument("--prune-dir", type=Path, default=PRUNE_DIR,
                   help=f"{PRUNE.script} outputs (default: %(default)s)")
    p.add_argument("--study-runs-dir", type=Path, default=STUDY_RUNS_DIR,
                   help="the depth study's healing runs (make study) (default: %(default)s)")
    p.add_argument("--processed-dir", type=Path, default=PROCESSED_DIR,
                   help=f"{PREPROCESS.script} outputs (default: %(default)s)")
    p.add_argument("--raw-dir", type=Path, default=RAW_DIR, help=f"{SCRAPE.script} outputs (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=REPORT_DIR,
                   help=f"where {REPORT_FILE.name} and its figures go (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        inputs = load_inputs(args.runs_dir, args.eval_dir, args.prune_dir, args.processed_dir, args.raw_dir)
    except MissingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # The one deferred import: matplotlib is slow to load, which --help and a missing input should not wait for.
    from bmwlm.report import depth
    from bmwlm.report.figures import make_figures

    pngs = make_figures(inputs)
    study = depth.study_inputs(args.prune_dir, args.study_runs_dir, args.runs_dir)
    study_pngs = depth.figures(study) if depth.has_study(study) else {}
    pngs |= {name: study_pngs.get(name) for name in depth.FIGURES}
    made = {name: name for name, png in pngs.items() if png is not None}
    depth_md = depth.depth_section(study, {n: n for n in study_pngs}) if depth.has_study(study) else None
    report = args.out_dir / REPORT_FILE.name
    write_together({report: render_markdown(inputs, made, depth_md),
                    **{args.out_dir / name: png for name, png in pngs.items() if png is not None}})
    for name, png in pngs.items():
        if png is None and (args.out_dir / name).exists():  # an old figure would no longer match the report
            (args.out_dir / name).unlink()
    log.info("wrote %s and %d figure(s): %s", display_path(report), len(made), ", ".join(made))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
