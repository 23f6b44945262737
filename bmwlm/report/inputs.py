"""Reading what stages 01–05 wrote, as their typed records, for the report.

Every input is optional: a missing or unreadable file only costs its section, and the note says why
(naming the stage that makes it). With neither evaluation metrics nor a training run there is
nothing to report, and `load_inputs` raises `MissingInputError` with one line saying so. JSONL files
are read leniently: a damaged line (a writer killed mid-line, a run still in progress) is skipped
with a warning naming the file and line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bmwlm.config import (
    BLOCK_IMPORTANCE_FILE, EVALUATE, GENERATIONS_FILE, METRICS_FILE, PREPROCESS, PREPROCESS_REPORT_FILE, PRUNE,
    QA_PREDICTIONS_FILE, SCRAPE, SCRAPE_REPORT_FILE, VARIANTS, train_stage,
)
from bmwlm.io import BadRecordError, MissingInputError, display_path, read_json, read_jsonl_lenient, require
from bmwlm.records.base import Record
from bmwlm.records.data import PreprocessReport, ScrapeReport
from bmwlm.records.evaluation import Generation, Metrics, ModelEntry, QAPrediction, TrainingTotals
from bmwlm.records.prune import BlockImportance
from bmwlm.records.training import LogLine, RunSummary, run_files

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    metrics: Metrics | None = None
    importance: BlockImportance | None = None
    logs: dict[str, list[LogLine]] = field(default_factory=dict)  # variant -> log.jsonl
    runs: dict[str, RunSummary] = field(default_factory=dict)  # variant -> run.json
    generations: list[Generation] = field(default_factory=list)
    qa_predictions: list[QAPrediction] = field(default_factory=list)
    scrape: ScrapeReport | None = None
    preprocess: PreprocessReport | None = None
    data_fields: dict[str, dict] = field(default_factory=dict)  # file name -> the whole 01/02 report, listed as is
    found: dict[str, Path] = field(default_factory=dict)  # what was read, for the header
    notes: dict[str, str] = field(default_factory=dict)  # why an input is absent, per section

    def entry(self, key: str) -> ModelEntry | None:
        return model_entry(self.metrics, key)

    def removed_block(self) -> int | None:
        return removed_block(self.metrics, self.importance)


def model_entry(metrics: Metrics | None, key: str) -> ModelEntry | None:
    """The metrics of one model, or None if there are no metrics or the model was unavailable."""
    return metrics.entry(key) if metrics is not None else None


def removed_block(metrics: Metrics | None, importance: BlockImportance | None) -> int | None:
    if importance is not None:
        return importance.removed_block
    return metrics.settings.removed_block if metrics is not None else None


def training_of(metrics: Metrics | None, runs: dict[str, RunSummary], key: str) -> TrainingTotals | None:
    """The training totals of a fine-tuned model: from metrics.json, else from its run.json."""
    entry = metrics.models.get(key) if metrics is not None else None
    if entry is not None and entry.training is not None:
        return entry.training
    return TrainingTotals.from_run(runs[key]) if key in runs else None


def _typed_lines(cls: type[Record]) -> Callable[[Path], list]:
    """A reader of a JSONL file of `cls` records that skips (and logs) damaged lines and records."""
    def read(path: Path) -> list:
        out = []
        for i, row in enumerate(read_jsonl_lenient(path)[0], 1):
            try:
                out.append(cls.from_dict(row, source=f"{path}, record {i}"))
            except BadRecordError as exc:
                log.warning("%s; skipped", exc)
        return out
    return read


def _typed_json(cls: type[Record]) -> Callable[[Path], Record]:
    return lambda path: cls.from_dict(read_json(path), source=str(path))


def _read(inputs: Inputs, key: str, path: Path, stage: object, reader: Callable[[Path], object]):
    """`reader(path)` if the file exists and reads; otherwise None and a note for the section."""
    try:
        value = reader(require(path, str(stage)))
    except MissingInputError as exc:
        inputs.notes[key] = str(exc)
        return None
    except (OSError, ValueError) as exc:  # bad JSON or UTF-8, or a record lacking fields (BadRecordError)
        inputs.notes[key] = f"could not read {display_path(path)}: {exc}"
        log.warning("could not read %s: %s", path, exc)
        return None
    inputs.found[key] = path
    return value


def _read_data_report(inputs: Inputs, key: str, path: Path, stage: object, cls: type[Record]):
    """01's or 02's report: the typed view for the summary, the whole JSON for the field list."""
    raw = _read(inputs, key, path, stage, read_json)
    if raw is None:
        return None
    try:
        view = cls.from_dict(raw, source=str(path))
    except BadRecordError as exc:
        inputs.notes[key] = f"could not read {display_path(path)}: {exc}"
        log.warning("%s", exc)
        del inputs.found[key]
        return None
    inputs.data_fields[path.name] = raw
    return view


def load_inputs(runs_dir: Path, eval_dir: Path, prune_dir: Path, processed_dir: Path, raw_dir: Path) -> Inputs:
    inputs = Inputs()
    inputs.metrics = _read(inputs, "metrics", eval_dir / METRICS_FILE.name, EVALUATE, _typed_json(Metrics))
    inputs.generations = _read(inputs, "generations", eval_dir / GENERATIONS_FILE.name, EVALUATE,
                               _typed_lines(Generation)) or []
    inputs.qa_predictions = _read(inputs, "qa_predictions", eval_dir / QA_PREDICTIONS_FILE.name, EVALUATE,
                                  _typed_lines(QAPrediction)) or []
    inputs.importance = _read(inputs, "importance", prune_dir / BLOCK_IMPORTANCE_FILE.name, PRUNE,
                              _typed_json(BlockImportance))
    inputs.preprocess = _read_data_report(inputs, "preprocess", processed_dir / PREPROCESS_REPORT_FILE.name,
                                          PREPROCESS, PreprocessReport)
    inputs.scrape = _read_data_report(inputs, "scrape", raw_dir / SCRAPE_REPORT_FILE.name, SCRAPE, ScrapeReport)
    for variant in VARIANTS:
        files = run_files(variant, runs_dir)
        if not (files.log_file.exists() or files.run_file.exists()):
            continue
        stage = train_stage(variant)
        lines = _read(inputs, f"log:{variant}", files.log_file, stage, _typed_lines(LogLine))
        if lines:
            inputs.logs[variant] = lines
        run = _read(inputs, f"run:{variant}", files.run_file, stage, _typed_json(RunSummary))
        if run is not None:
            inputs.runs[variant] = run
    if inputs.metrics is None and not inputs.logs and not inputs.runs:
        raise MissingInputError(f"nothing to report: {inputs.notes['metrics']}; and {display_path(runs_dir)} "
                                f"holds no training run (run {train_stage(VARIANTS[0])} first)")
    for note in inputs.notes.values():
        log.info("skipping: %s", note)
    return inputs
