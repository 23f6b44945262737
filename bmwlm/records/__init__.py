"""Typed records: what one stage writes and the next reads (documented in docs/records.md).

| file | record | written by | read by |
|---|---|---|---|
| outputs/prune/block_importance.json | `prune.BlockImportance` | 04 | 03 (pruned variant), 05, 06 |
| outputs/prune/block_scores*.json (04 --scores-only) | `prune.BlockScoring` | 04 | the depth study |
| outputs/prune/removal_curve.json (04 --curve) | `prune.RemovalCurve` | 04 | `make study`, report.depth |
| outputs/runs/<variant>/run.json | `training.RunSummary` | 03 | 05, 06 |
| outputs/runs/<variant>/log.jsonl (one a line) | `training.LogLine` | 03 | 03 (--resume), 06 |
| outputs/eval/metrics.json | `evaluation.Metrics` (`EvalSettings`, a `ModelEntry` per model key) | 05 | 06 |
| outputs/eval/generations.jsonl (one a line) | `evaluation.Generation` | 05 | 06 |
| outputs/eval/qa_predictions.jsonl (one a line) | `evaluation.QAPrediction` | 05 | 06 |
| data/raw/scrape_report.json (what 06 shows of it) | `data.ScrapeReport` | 01 | 06 |
| data/processed/preprocess_report.json (what 06 shows of it) | `data.PreprocessReport` | 02 | 06 |

Every record is a dataclass (`base.Record`) with `from_dict`/`to_dict`, `load`/`save`; a reader
uses attributes, never string keys, so renaming a field breaks every reader's test at once.
"""
