"""The four models 05 compares, where each one is, or why it is unavailable.

- `base`: the `--base-model` value (the packaged SmolLM2-135M by default, a directory or a hub id);
- `base_minus_block`: the base model with one block removed, not fine-tuned: the directory 04 names
  in block_importance.json (`bmwlm.records.prune`, the one rule for finding it);
- `full` / `pruned`: `<runs-dir>/<variant>/model`, written by 03_train.py, with their run.json totals.

A missing model is not fatal: its entry says why, naming the stage that makes it. After measuring,
`refresh_cards` rewrites the card of every model directory the pipeline made with 05's results.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bmwlm import cards
from bmwlm.config import PRUNE
from bmwlm.io import MissingInputError, display_path
from bmwlm.modeling import ModelUnavailableError, model_slug, removed_blocks, resolve_model
from bmwlm.records.evaluation import ModelEntry, PruningInfo, TrainingTotals
from bmwlm.records.prune import BlockImportance, load_block_importance
from bmwlm.records.training import RunSummary, run_files

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class ModelSpec:
    key: str  # one of MODEL_KEYS
    label: str
    path: str | None = None  # what load_model takes: a directory or a hub id
    error: str | None = None  # why the model cannot be evaluated
    run_file: Path | None = None  # full / pruned: 03's run.json
    removed_block: int | None = None  # base_minus_block: the block 04 removed (when its record is readable)
    pruning: PruningInfo | None = None  # base_minus_block, when evaluated: how the block was chosen


def read_importance(prune_file: Path) -> tuple[BlockImportance | None, str | None]:
    """04's record, or None and the reason (missing: names 04; unreadable: logged)."""
    try:
        return load_block_importance(prune_file), None
    except MissingInputError as exc:
        return None, str(exc)
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and BadRecordError
        log.warning("cannot read %s (%s); re-run %s", prune_file, exc, PRUNE)
        return None, f"unreadable {display_path(prune_file)} ({exc}); run {PRUNE} again"


def resolve_model_specs(base_model: str, runs_dir: Path, prune_file: Path,
                        wanted: Sequence[str]) -> dict[str, ModelSpec]:
    """Where each of the four models lives, or why it is unavailable (naming the stage that makes it)."""
    slug = model_slug(base_model)
    importance, prune_error = read_importance(prune_file)
    minus = f"minus block {importance.removed_block}" if importance else "minus one block"
    specs = {
        "base": ModelSpec("base", f"{slug} (base)"),
        "base_minus_block": ModelSpec("base_minus_block", f"{slug} {minus} (not fine-tuned)",
                                      removed_block=importance.removed_block if importance else None),
        "full": ModelSpec("full", f"{slug} fine-tuned (full)", run_file=run_files("full", runs_dir).run_file),
        "pruned": ModelSpec("pruned", f"{slug} {minus}, fine-tuned", run_file=run_files("pruned", runs_dir).run_file),
    }
    for key, spec in specs.items():
        if key not in wanted:
            spec.error = "not evaluated (not in --models)"
        elif key == "base":
            try:
                spec.path = resolve_model(base_model)
            except ModelUnavailableError as exc:
                spec.error = str(exc)
        elif key == "base_minus_block":
            if importance is None:
                spec.error = prune_error
                continue
            try:
                spec.path = str(importance.model_dir(prune_file))
            except MissingInputError as exc:
                spec.error = str(exc)
                continue
            spec.pruning = PruningInfo(removed_block=importance.removed_block, selection=importance.selection,
                                       method=importance.method, seconds=importance.seconds)
        else:
            try:
                spec.path = str(run_files(key, runs_dir).trained_model())
            except MissingInputError as exc:
                spec.error = str(exc)
    return specs


def weights_size_mb(path: str | None) -> float | None:
    """Size of the weight files in a model directory, in MiB (None for a model-hub id)."""
    if not path or not Path(path).is_dir():
        return None
    size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return round(size / 2**20, 1)


def training_totals(run_file: Path | None) -> TrainingTotals | None:
    """The totals of 03's run.json, or None when there is none (an unreadable one is logged)."""
    if run_file is None or not run_file.exists():
        return None
    try:
        return TrainingTotals.from_run(RunSummary.load(run_file))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): no training totals", run_file, exc)
        return None


def empty_entry(spec: ModelSpec) -> ModelEntry:
    """The metrics.json entry of a model before (or instead of) measuring it."""
    return ModelEntry(label=spec.label, path=display_path(spec.path) if spec.path else None, available=False,
                      error=spec.error, training=training_totals(spec.run_file), pruning=spec.pruning)


def refresh_cards(specs: dict[str, ModelSpec], entries: dict[str, ModelEntry], prune_file: Path) -> list[Path]:
    """Rewrite the model card of each model directory the pipeline wrote (base_minus_block by 04, full
    and pruned by 03) with 05's measurements in its model-index; the base model's folder is not ours
    to write. A model that was not evaluated keeps its card. Returns the cards written."""
    from transformers import AutoConfig  # deferred like the rest of torch / transformers (05's --help)

    written = []
    for key, spec in specs.items():
        entry = entries.get(key)
        if key == "base" or entry is None or not entry.available or not spec.path or not Path(spec.path).is_dir():
            continue
        results = cards.eval_results(entry)
        try:
            if key == "base_minus_block":
                facts = cards.pruned_base_facts(load_block_importance(prune_file))
                facts.results = [*facts.results, *results]
            else:
                removed = removed_blocks(AutoConfig.from_pretrained(spec.path))
                facts = cards.finetuned_facts(RunSummary.load(spec.run_file), removed, results)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a record gone or lacking a field: keep the card
            log.warning("%s: card not refreshed (%s: %s)", key, type(exc).__name__, exc)
            continue
        written.append(cards.write_model_card(spec.path, facts))
    return written
