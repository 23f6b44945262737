"""Stage 06: turn the pipeline's measurements into one readable report with figures.

Reads (each optional, see docs/records.md for the fields):
  outputs/eval/metrics.json, generations.jsonl, qa_predictions.jsonl   (05_evaluate.py)
  outputs/runs/<variant>/log.jsonl and run.json                         (03_train.py)
  outputs/prune/block_importance.json                                   (04_prune_layer.py)
  data/processed/preprocess_report.json, data/raw/scrape_report.json    (02 / 01)
Writes:
  outputs/report/report.md and beside it loss_curves.png, perplexity.png,
  block_importance.png, qa_accuracy.png (linked relatively from the markdown).
Why:
  the question of the project is what removing one transformer block costs and saves; this stage
  puts every measured number side by side and writes the trade-off as text generated from those
  numbers, so re-running the pipeline re-writes the conclusions too. A missing model or input only
  removes its row or section; with neither evaluation metrics nor training runs there is nothing
  to report and the stage stops with an error naming 05_evaluate.py and 03_train.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MultipleLocator, NullFormatter, PercentFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from bmwlm.config import EVAL_DIR, PROCESSED_DIR, PRUNE_DIR, RAW_DIR, REPORT_DIR, ROOT, RUNS_DIR  # noqa: E402
from bmwlm.io import MissingInputError, write_text, read_json, require, setup_logging  # noqa: E402

log = logging.getLogger("06_report")

MODEL_KEYS = ("base", "base_minus_block", "full", "pruned")
# One colour per model in every figure (Okabe-Ito, readable for colour-blind readers).
MODEL_COLORS = {"base": "#666666", "base_minus_block": "#E69F00", "full": "#0072B2", "pruned": "#009E73"}
EXTRA_COLORS = ("#CC79A7", "#D55E00", "#56B4E9", "#F0E442")
NA = "n/a"
DASH = "–"  # not applicable (e.g. training time of a model that was not trained)
FIGSIZE = (8, 4.5)
WRAP = 100  # completions are wrapped at this width for reading; generations.jsonl keeps them exact
DPI = 140
FIGURES = ("loss_curves.png", "perplexity.png", "block_importance.png", "qa_accuracy.png")


# ---------------------------------------------------------------- numbers and formatting

def num(x) -> float | None:
    """`x` as a finite float, or None (for missing keys, nulls, NaN, booleans and strings)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def get(d, *keys):
    """d[k1][k2]... or None when any level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def fmt(x, spec: str = ".2f", na: str = NA) -> str:
    v = num(x)
    return na if v is None else format(v, spec)


def fmt_count(n, na: str = NA) -> str:
    """134515008 -> '134.5M', 20480 -> '20.5k', 512 -> '512'."""
    v = num(n)
    if v is None:
        return na
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            s = f"{v / div:.1f}"
            return (s.removesuffix(".0") if suffix == "k" else s) + suffix
    return f"{v:.0f}"


def fmt_seconds(s, na: str = NA) -> str:
    v = num(s)
    if v is None:
        return na
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.2f} h"


def fmt_acc(frac, na: str = NA) -> str:
    v = num(frac)
    return na if v is None else f"{100 * v:.1f}%"


def pct_change(old, new) -> float | None:
    """Relative change from `old` to `new` in percent, or None if either is unknown or old is 0."""
    a, b = num(old), num(new)
    if a is None or b is None or a == 0:
        return None
    return 100.0 * (b - a) / a


def change_phrase(pct: float, up: str = "higher", down: str = "lower") -> str:
    """12.3 -> '12.3% higher'; -4 -> '4.0% lower'; 0.01 -> 'unchanged (0.0%)'."""
    if abs(pct) < 0.05:
        return "unchanged (0.0%)"
    return f"{abs(pct):.1f}% {up if pct > 0 else down}"


def smooth(values, window: int) -> list[float]:
    """Trailing moving average: out[i] is the mean of the last `window` values up to i.

    The first points average over what exists so far, so the output has the input's length
    and starts at the first value (no lag-induced dip at the start of a loss curve).
    """
    vals = [float(v) for v in values]
    if window <= 1 or not vals:
        return vals
    csum = np.cumsum([0.0] + vals)
    out = []
    for i in range(len(vals)):
        lo = max(0, i + 1 - window)
        out.append(float((csum[i + 1] - csum[lo]) / (i + 1 - lo)))
    return out


def md_cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def fenced(text: str, width: int | None = None) -> str:
    """A fenced code block that survives backticks inside `text`, lines wrapped at `width`."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    body = text.rstrip()
    if width:
        body = "\n".join(textwrap.fill(line, width, break_long_words=False, replace_whitespace=False)
                         if len(line) > width else line for line in body.split("\n"))
    return f"{fence}text\n{body}\n{fence}"


def rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- reading the inputs

@dataclass
class Inputs:
    metrics: dict | None = None
    importance: dict | None = None
    logs: dict[str, list[dict]] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    generations: list[dict] = field(default_factory=list)
    qa_predictions: list[dict] = field(default_factory=list)
    preprocess: dict | None = None
    scrape: dict | None = None
    found: dict[str, Path] = field(default_factory=dict)  # what was read, for the header
    notes: dict[str, str] = field(default_factory=dict)  # why an input is absent, per section


def read_jsonl_tolerant(path: Path) -> list[dict]:
    """JSON lines, skipping (and logging) lines that do not parse, e.g. a half-written last line."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d is not valid JSON; skipped", path, lineno)
    return records


def _read_optional(path: Path, stage: str, reader, inputs: Inputs, key: str):
    """Read `path` if it exists and parses; otherwise note why, for the section that needs it."""
    try:
        data = reader(require(path, stage))
    except MissingInputError as exc:
        inputs.notes[key] = str(exc)
        log.info("skipping: %s", exc)
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        inputs.notes[key] = f"could not read {path}: {exc}"
        log.warning("could not read %s: %s", path, exc)
        return None
    inputs.found[key] = path
    return data


def run_variants(runs_dir: Path) -> list[str]:
    """Variant folders holding a log.jsonl or run.json, `full` and `pruned` first."""
    if not runs_dir.is_dir():
        return []
    names = [p.name for p in runs_dir.iterdir()
             if p.is_dir() and ((p / "log.jsonl").exists() or (p / "run.json").exists())]
    order = {"full": 0, "pruned": 1}
    return sorted(names, key=lambda n: (order.get(n, 2), n))


def load_inputs(runs_dir: Path, eval_dir: Path, prune_dir: Path,
                processed_dir: Path, raw_dir: Path) -> Inputs:
    inputs = Inputs()
    inputs.metrics = _read_optional(eval_dir / "metrics.json", "05_evaluate.py", read_json, inputs, "metrics")
    inputs.generations = _read_optional(eval_dir / "generations.jsonl", "05_evaluate.py",
                                        read_jsonl_tolerant, inputs, "generations") or []
    inputs.qa_predictions = _read_optional(eval_dir / "qa_predictions.jsonl", "05_evaluate.py",
                                           read_jsonl_tolerant, inputs, "qa_predictions") or []
    inputs.importance = _read_optional(prune_dir / "block_importance.json", "04_prune_layer.py",
                                       read_json, inputs, "importance")
    inputs.preprocess = _read_optional(processed_dir / "preprocess_report.json", "02_preprocess.py",
                                       read_json, inputs, "preprocess")
    inputs.scrape = _read_optional(raw_dir / "scrape_report.json", "01_scrape.py", read_json, inputs, "scrape")
    for variant in run_variants(runs_dir):
        stage = f"03_train.py --variant {variant}"
        lines = _read_optional(runs_dir / variant / "log.jsonl", stage, read_jsonl_tolerant,
                               inputs, f"log:{variant}")
        if lines:
            inputs.logs[variant] = lines
        run = _read_optional(runs_dir / variant / "run.json", stage, read_json, inputs, f"run:{variant}")
        if isinstance(run, dict):
            inputs.runs[variant] = run
    if not isinstance(inputs.metrics, dict):
        inputs.metrics = None
    if not isinstance(inputs.importance, dict):
        inputs.importance = None
    if inputs.metrics is None and not inputs.logs and not inputs.runs:
        why_metrics = inputs.notes.get("metrics", f"missing {eval_dir / 'metrics.json'}")
        raise MissingInputError(
            f"nothing to report: {why_metrics}, and "
            f"{runs_dir} holds no <variant>/log.jsonl or run.json; "
            "run 03_train.py --variant full and --variant pruned, then 05_evaluate.py"
        )
    return inputs


# ---------------------------------------------------------------- model accessors

def model_entry(metrics: dict | None, key: str) -> dict | None:
    """The metrics of one model, or None if it is absent or marked unavailable."""
    entry = get(metrics, "models", key)
    if not isinstance(entry, dict) or entry.get("available") is False:
        return None
    return entry


def model_keys(metrics: dict | None) -> list[str]:
    extra = [k for k in (get(metrics, "models") or {}) if k not in MODEL_KEYS]
    return list(MODEL_KEYS) + sorted(extra)


def color_for(key: str) -> str:
    if key in MODEL_COLORS:
        return MODEL_COLORS[key]
    return EXTRA_COLORS[sum(map(ord, key)) % len(EXTRA_COLORS)]


def removed_block(metrics: dict | None, importance: dict | None) -> int | None:
    k = get(importance, "removed_block")
    if isinstance(k, int):
        return k
    k = get(metrics, "settings", "removed_block")
    return k if isinstance(k, int) else None


def short_label(key: str, block: int | None = None) -> str:
    if key == "base_minus_block":
        return f"base − block {block}" if block is not None else "base − 1 block"
    return {"base": "base", "full": "full\nfine-tuned", "pruned": "pruned\nfine-tuned"}.get(key, key)


def ppl(split: dict | None) -> float | None:
    """Perplexity of a {'loss', 'perplexity'} record, from the loss if the field is missing."""
    p = num(get(split, "perplexity"))
    if p is None and num(get(split, "loss")) is not None:
        p = math.exp(min(num(split["loss"]), 700.0))
    return p


def training_record(metrics: dict | None, runs: dict[str, dict], key: str) -> dict | None:
    """The training totals of a fine-tuned model: from metrics.json, else from its run.json."""
    t = get(metrics, "models", key, "training")
    if isinstance(t, dict):
        return t
    return runs.get(key)


def seconds_per_step(training: dict | None) -> float | None:
    secs, steps = num(get(training, "train_seconds")), num(get(training, "steps"))
    if secs is None or not steps:
        return None
    return secs / steps


# ---------------------------------------------------------------- markdown pieces

TABLE_COLUMNS = (
    "model", "params", "blocks", "size MB", "val loss", "val ppl", "train-slice ppl",
    "QA acc [95% CI]", "QA mean loglik", "QA acc train / val", "cloze acc [95% CI]",
    "train time", "train tok/s", "gen tok/s",
)


def _acc_ci(rec: dict | None) -> str:
    acc = num(get(rec, "accuracy"))
    if acc is None:
        return NA
    ci = get(rec, "ci95")
    text = fmt_acc(acc)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(num(c) is not None for c in ci):
        text += f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}%]"
    n = get(rec, "n")
    return text + (f" (n={n})" if isinstance(n, int) else "")


def _model_row(key: str, entry: dict | None, metrics: dict | None, runs: dict[str, dict]) -> list[str]:
    label = get(metrics, "models", key, "label")
    name = f"`{key}`" + (f" {label}" if label else "")
    if entry is None:
        return [name] + [NA] * (len(TABLE_COLUMNS) - 1)
    trained = key in ("full", "pruned") or get(entry, "training") is not None
    training = training_record(metrics, runs, key) if trained else None
    by_split = get(entry, "qa", "by_split") or {}
    split_acc = " / ".join(fmt_acc(get(by_split, s, "accuracy")) for s in ("train", "validation"))
    return [
        name,
        fmt_count(entry.get("parameters")),
        fmt(entry.get("blocks"), ".0f"),
        fmt(entry.get("size_mb"), ".0f"),
        fmt(get(entry, "validation", "loss"), ".3f"),
        fmt(ppl(get(entry, "validation")), ".2f"),
        fmt(ppl(get(entry, "train_slice")), ".2f"),
        _acc_ci(get(entry, "qa")),
        fmt(get(entry, "qa", "mean_loglik_correct"), ".3f"),
        split_acc if by_split else NA,
        _acc_ci(get(entry, "cloze")),
        fmt_seconds(get(training, "train_seconds")) if trained else DASH,
        fmt(get(training, "tokens_per_s"), ".0f") if trained else DASH,
        fmt(get(entry, "generation", "new_tokens_per_s"), ".1f"),
    ]


def metrics_table(metrics: dict | None, runs: dict[str, dict] | None = None) -> str:
    """Markdown table, one row per model (unavailable models are a row of n/a)."""
    runs = runs or {}
    rows = [TABLE_COLUMNS, tuple("---" for _ in TABLE_COLUMNS)]
    for key in model_keys(metrics):
        rows.append(_model_row(key, model_entry(metrics, key), metrics, runs))
    return "\n".join("| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows)


def unavailable_notes(metrics: dict | None) -> list[str]:
    notes = []
    for key in model_keys(metrics):
        entry = get(metrics, "models", key)
        if model_entry(metrics, key) is None:
            why = get(entry, "error") or ("not in metrics.json" if entry is None else "marked unavailable")
            notes.append(f"- `{key}`: {NA} ({why})")
    return notes


def _param_numbers(metrics, importance) -> tuple[float | None, float | None]:
    before = num(get(model_entry(metrics, "base"), "parameters")) or num(get(importance, "parameters_before"))
    after = (num(get(model_entry(metrics, "base_minus_block"), "parameters"))
             or num(get(importance, "parameters_after"))
             or num(get(model_entry(metrics, "pruned"), "parameters")))
    return before, after


def _ci_overlap(a: dict | None, b: dict | None) -> bool | None:
    ca, cb = get(a, "ci95"), get(b, "ci95")
    if not (isinstance(ca, (list, tuple)) and isinstance(cb, (list, tuple)) and len(ca) == len(cb) == 2):
        return None
    if any(num(x) is None for x in (*ca, *cb)):
        return None
    return ca[0] <= cb[1] and cb[0] <= ca[1]


def _accuracy_sentence(what: str, metrics) -> str | None:
    """'Q&A accuracy moves from a (full) to b (pruned) after fine-tuning and ...; significance.'"""
    name = "Q&A" if what == "qa" else "Cloze"
    moves, overlaps, ns = [], [], set()
    for a, b, ctx in (("full", "pruned", "after fine-tuning"), ("base", "base_minus_block", "without it")):
        ra, rb = get(model_entry(metrics, a), what), get(model_entry(metrics, b), what)
        acc_a, acc_b = num(get(ra, "accuracy")), num(get(rb, "accuracy"))
        if acc_a is None or acc_b is None:
            continue
        moves.append(f"from {fmt_acc(acc_a)} ({a}) to {fmt_acc(acc_b)} ({b}) {ctx}")
        overlaps.append(_ci_overlap(ra, rb))
        if isinstance(get(rb, "n"), int):
            ns.add(rb["n"])
    if not moves:
        return None
    s = f"{name} accuracy moves " + " and ".join(moves)
    on = f"on {ns.pop()} items, " if len(ns) == 1 else ""
    if overlaps and all(o is True for o in overlaps):
        s += f"; {on}{'both differences are' if len(moves) > 1 else 'the difference is'} within sampling noise " \
             "(95% intervals overlap)"
    elif any(o is False for o in overlaps):
        s += "; the 95% intervals do not overlap for " + " and ".join(
            m.split(" (")[-1].split(")")[0] for m, o in zip(moves, overlaps) if o is False)
    return s + "."


def tradeoff_paragraph(metrics: dict | None, importance: dict | None,
                       runs: dict[str, dict] | None = None) -> str:
    """The trade-off of removing one block, written from the measured numbers only."""
    runs = runs or {}
    k = removed_block(metrics, importance)
    block = f"block {k}" if k is not None else "one block"
    total = num(get(importance, "blocks_before")) or num(get(model_entry(metrics, "base"), "blocks"))
    sentences = []

    before, after = _param_numbers(metrics, importance)
    spf = seconds_per_step(training_record(metrics, runs, "full"))
    spp = seconds_per_step(training_record(metrics, runs, "pruned"))
    saves, costs = [], []
    if before and after:
        saves.append(f"{100 * (before - after) / before:.1f}% of the parameters "
                     f"({fmt_count(before)} → {fmt_count(after)})")
    if spf and spp:
        saved = 100 * (spf - spp) / spf
        text = f"training time per step ({spf:.2f} s → {spp:.2f} s)"
        (saves if saved >= 0 else costs).append(f"{abs(saved):.1f}% {'of the ' if saved >= 0 else 'more '}{text}")
    if saves or costs:
        s = f"Removing {block}" + (f" of {total:.0f}" if total else "")
        if saves:
            s += " saves " + " and ".join(saves)
        if costs:
            s += (" but" if saves else "") + " costs " + " and ".join(costs)
        sentences.append(s + ".")

    p_base = ppl(get(model_entry(metrics, "base"), "validation"))
    p_minus = ppl(get(model_entry(metrics, "base_minus_block"), "validation"))
    p_full = ppl(get(model_entry(metrics, "full"), "validation"))
    p_pruned = ppl(get(model_entry(metrics, "pruned"), "validation"))
    before_ft = pct_change(p_base, p_minus)
    after_ft = pct_change(p_full, p_pruned)
    if before_ft is not None:
        sentences.append(f"Before fine-tuning, the cut makes validation perplexity "
                         f"{change_phrase(before_ft)} ({p_base:.2f} → {p_minus:.2f}).")
    if after_ft is not None:
        sentences.append(f"After fine-tuning, the pruned model's validation perplexity is "
                         f"{change_phrase(after_ft)} than the full model's ({p_full:.2f} → {p_pruned:.2f}).")
    ft_gain = pct_change(p_base, p_full)
    if ft_gain is not None:
        sentences.append(f"Fine-tuning itself makes perplexity {change_phrase(ft_gain)} "
                         f"(base {p_base:.2f} → full {p_full:.2f}).")

    gaps = {key: pct_change(ppl(get(model_entry(metrics, key), "train_slice")),
                            ppl(get(model_entry(metrics, key), "validation"))) for key in MODEL_KEYS}
    gaps = {key: g for key, g in gaps.items() if g is not None}
    if gaps:
        listed = ", ".join(f"{g:+.1f}% ({key})" for key, g in gaps.items())
        s = f"Validation perplexity relative to train-slice perplexity: {listed}"
        ref = gaps.get("base")
        tuned = [gaps[key] for key in ("full", "pruned") if key in gaps]
        if ref is not None and tuned and max(tuned) - ref > 5:
            s += "; the gap widens with fine-tuning, so the models fit their training articles " \
                 "better than unseen ones (some over-fitting)"
        sentences.append(s + ".")

    for what in ("qa", "cloze"):
        s = _accuracy_sentence(what, metrics)
        if s:
            sentences.append(s)

    g_full = num(get(model_entry(metrics, "full"), "generation", "new_tokens_per_s"))
    g_pruned = num(get(model_entry(metrics, "pruned"), "generation", "new_tokens_per_s"))
    g = pct_change(g_full, g_pruned)
    if g is not None:
        sentences.append(f"Generation is {change_phrase(g, 'faster', 'slower')} "
                         f"({g_full:.1f} → {g_pruned:.1f} new tokens/s).")

    if not sentences:
        return ("Not enough measurements for a trade-off: it needs the metrics of at least two of the "
                "models (05_evaluate.py) or the block-importance file (04_prune_layer.py).")
    return " ".join(sentences)


def _first(d: dict | None, *keys):
    for k in keys:
        v = get(d, k)
        if v is not None:
            return v
    return None


def _count(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, list):
        return len(v)
    if isinstance(v, dict):
        return _count(_first(v, "articles", "n_articles", "documents", "docs", "n", "count", "rows"))
    return None


def _short_date(v) -> str:
    return str(v)[:10] if v is not None else "?"


def date_range(d: dict | None) -> tuple[str, str] | None:
    """(first, last) publication date from the usual key spellings, or None."""
    for key in ("date_range", "published_range", "published", "dates"):
        v = get(d, key)
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return _short_date(v[0]), _short_date(v[1])
        if isinstance(v, dict):
            for lo, hi in (("min", "max"), ("first", "last"), ("start", "end"), ("from", "to"),
                           ("oldest", "newest"), ("earliest", "latest")):
                if v.get(lo) is not None or v.get(hi) is not None:
                    return _short_date(v.get(lo)), _short_date(v.get(hi))
    for lo, hi in (("first_published", "last_published"), ("published_min", "published_max"),
                   ("min_published", "max_published"), ("oldest", "newest"), ("date_min", "date_max"),
                   ("earliest", "latest"), ("start_date", "end_date")):
        if get(d, lo) is not None or get(d, hi) is not None:
            return _short_date(get(d, lo)), _short_date(get(d, hi))
    return None


def _flatten(d, prefix: str = "", depth: int = 3) -> list[tuple[str, str]]:
    out = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 1:
            out.extend(_flatten(v, name + ".", depth - 1))
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out.append((name, str(v)))
        elif isinstance(v, list) and len(v) <= 5 and all(isinstance(x, (str, int, float)) for x in v):
            out.append((name, ", ".join(map(str, v))))
        elif isinstance(v, list):
            out.append((name, f"list of {len(v)}"))
    return out


SPLIT_NAMES = ("train", "validation", "val", "test")


def data_summary(scrape: dict | None, preprocess: dict | None) -> str:
    """Articles, split sizes, tokens and date ranges, from whichever keys the reports use."""
    if scrape is None and preprocess is None:
        return ""
    lines = []
    if scrape is not None:
        n = _count(_first(scrape, "articles", "n_articles", "articles_written", "total_articles",
                          "written", "count"))
        dr = date_range(scrape)
        s = "- Scraped: " + (f"{n} articles" if n is not None else "article count not recorded")
        by_source = get(scrape, "by_source")
        if isinstance(by_source, dict) and by_source:
            s += " (" + ", ".join(f"{k} {v}" for k, v in by_source.items()) + ")"
        lines.append(s + (f", published {dr[0]} … {dr[1]}." if dr else "."))
    if preprocess is not None:
        arts = get(preprocess, "articles")
        if isinstance(arts, dict):  # {"in": 500, "unique_ids": 498, "out": 471, ...}
            a_in, a_out = _count(_first(arts, "in", "raw")), _count(_first(arts, "out", "kept"))
        else:
            a_in = _count(_first(preprocess, "articles_in"))
            a_out = _count(_first(preprocess, "articles_out", "kept", "articles_kept", "n_articles", "articles"))
        if a_out is not None:
            s = f"- After preprocessing: {a_out} articles" + (f" of {a_in}" if a_in is not None else "")
            dropped = get(preprocess, "dropped")
            if isinstance(dropped, dict):
                counts = [(k, _count(v) if not isinstance(v, dict) else _count(_first(v, "count", "n")))
                          for k, v in dropped.items()]
                counts = [f"{k.replace('_', ' ')} {c}" for k, c in counts if c]
                if counts:
                    s += " (dropped: " + ", ".join(counts) + ")"
            removed = num(get(preprocess, "cleaning", "percent_chars_removed"))
            if removed is not None:
                s += f"; cleaning removed {removed:.1f}% of the characters"
            lines.append(s + ".")
        splits_obj = get(preprocess, "splits") if isinstance(get(preprocess, "splits"), dict) else preprocess
        rows = []
        for name in SPLIT_NAMES:
            sp = get(splits_obj, name)
            flat_n = _first(preprocess, f"{name}_articles", f"n_{name}")
            flat_t = _first(preprocess, f"{name}_tokens")
            if sp is None and flat_n is None and flat_t is None:
                continue
            n = _count(sp) if sp is not None else _count(flat_n)
            tokens = _first(sp, "tokens", "n_tokens", "num_tokens", "total_tokens") if isinstance(sp, dict) else None
            tokens = tokens if tokens is not None else flat_t
            dr = date_range(sp) if isinstance(sp, dict) else None
            rows.append(f"| {name} | {n if n is not None else NA} | {fmt_count(tokens)} | "
                        f"{dr[0] + ' … ' + dr[1] if dr else NA} |")
        if rows:
            lines += ["", "| split | articles | tokens | published |", "|---|---|---|---|", *rows]
    details = []
    for title, d in (("scrape_report.json", scrape), ("preprocess_report.json", preprocess)):
        flat = _flatten(d)
        if flat:
            details += [f"**{title}**", ""] + [f"- `{k}`: {md_cell(v)}" for k, v in flat[:80]] + [""]
    if details:
        lines += ["", "<details><summary>All recorded data fields</summary>", "", *details, "</details>"]
    return "\n".join(lines).strip("\n")


def importance_section(importance: dict, figure: str | None) -> str:
    k = importance.get("removed_block")
    scores = [s for s in importance.get("scores") or [] if isinstance(s, dict)]
    base = num(importance.get("baseline_loss"))
    lines = [
        f"Method: `{importance.get('method', NA)}` on {fmt_count(importance.get('eval_tokens'))} validation "
        f"tokens of `{importance.get('base_model', NA)}`; intact-model loss {fmt(base, '.3f')}. "
        f"Selection: {importance.get('selection', NA)}; removed block **{k}** "
        f"({fmt(importance.get('blocks_before'), '.0f')} → {fmt(importance.get('blocks_after'), '.0f')} blocks, "
        f"{fmt_count(importance.get('parameters_before'))} → {fmt_count(importance.get('parameters_after'))} "
        f"parameters; scoring took {fmt_seconds(importance.get('seconds'))}).",
    ]
    nc = importance.get("naive_comparison")
    if isinstance(nc, dict) and nc:
        lines += ["", "Validation loss with one block removed — chosen block vs naive choices:", "",
                  "| choice | block | val loss | Δ vs intact |", "|---|---|---|---|"]
        for name, rec in nc.items():
            loss = num(get(rec, "loss"))
            delta = f"{loss - base:+.3f}" if loss is not None and base is not None else NA
            lines.append(f"| {name} | {get(rec, 'block')} | {fmt(loss, '.3f')} | {delta} |")
    proxy = importance.get("proxy_comparison")
    if isinstance(proxy, dict) and proxy.get("block") is not None:
        rho = num(proxy.get("rank_correlation_with_importance"))
        lines += ["", f"The `{proxy.get('method', 'proxy')}` proxy would remove block {proxy['block']} "
                      f"(val loss {fmt(proxy.get('loss'), '.3f')})"
                      + (f"; rank correlation with the measured importance: {rho:.2f}" if rho is not None else "")
                      + "."]
    ranked = sorted((s for s in scores if num(s.get("importance")) is not None), key=lambda s: s["importance"])
    if ranked:
        fmt_b = lambda s: f"{s['block']} ({s['importance']:.3f})"  # noqa: E731
        lines += ["", "Least important blocks: " + ", ".join(map(fmt_b, ranked[:3]))
                  + "; most important: " + ", ".join(map(fmt_b, ranked[::-1][:3])) + "."]
    if figure:
        lines += ["", f"![Block importance]({figure})"]
    return "\n".join(lines)


def split_log(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train lines, eval lines) of a log.jsonl."""
    evals = [r for r in records if num(r.get("eval_loss")) is not None]
    train = [r for r in records if num(r.get("loss")) is not None and r.get("eval_loss") is None]
    return train, evals


def training_section(logs: dict[str, list[dict]], runs: dict[str, dict], figure: str | None) -> str:
    variants = list(dict.fromkeys([*logs, *runs]))
    head = ("| variant | fine-tuned from | blocks | params | steps | tokens seen | train time | s/step | "
            "tokens/s | initial eval loss (ppl) | final eval loss (ppl) | final train loss | finished |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in variants:
        run = runs.get(v, {})
        train, evals = split_log(logs.get(v, []))
        init = num(run.get("initial_eval_loss"))
        final = num(run.get("final_eval_loss"))
        init = init if init is not None else (evals[0]["eval_loss"] if evals else None)
        final = final if final is not None else (evals[-1]["eval_loss"] if evals else None)
        last_train = num(run.get("final_train_loss"))
        last_train = last_train if last_train is not None else (train[-1]["loss"] if train else None)
        with_ppl = lambda x: f"{x:.3f} ({math.exp(x):.1f})" if x is not None else NA  # noqa: E731
        tokens = run.get("tokens_seen", train[-1].get("tokens") if train else None)
        secs = run.get("train_seconds", train[-1].get("seconds") if train else None)
        lines.append("| " + " | ".join(md_cell(c) for c in (
            v, Path(str(run.get("base_model", NA))).name, fmt(run.get("blocks"), ".0f"),
            fmt_count(run.get("parameters")), fmt(run.get("steps"), ".0f"), fmt_count(tokens),
            fmt_seconds(secs), fmt(seconds_per_step(run), ".2f"), fmt(run.get("tokens_per_s"), ".0f"),
            with_ppl(init), with_ppl(final), fmt(last_train, ".3f"), str(run.get("finished_at", NA))[:19],
        )) + " |")
    if figure:
        lines += ["", f"![Training and validation loss]({figure})"]
    return "\n".join(lines)


def qa_section(preds: list[dict], metrics: dict | None) -> str:
    """Per-item view of Q&A/cloze answers: what fine-tuning and pruning changed."""
    by = {}  # (set, item) -> {model: record}
    for p in preds:
        by.setdefault((p.get("set", "qa"), p.get("item_id")), {})[p.get("model")] = p
    lines = []
    for set_name in sorted({s for s, _ in by}, key=lambda n: (n != "qa", str(n))):
        items = {i: m for (s, i), m in by.items() if s == set_name}
        models = [k for k in model_keys(metrics) if any(k in m for m in items.values())]
        counts = ", ".join(
            f"{k} {sum(bool(m[k].get('correct')) for m in items.values() if k in m)}"
            f"/{sum(k in m for m in items.values())}" for k in models)
        lines.append(f"- **{set_name}** ({len(items)} items) — correct: {counts}.")
        for a, b, what in (("base", "full", "fine-tuning"), ("full", "pruned", "removing the block (both fine-tuned)"),
                           ("base", "base_minus_block", "removing the block (no fine-tuning)")):
            both = [m for m in items.values() if a in m and b in m]
            if not both:
                continue
            fixed = sum(not m[a].get("correct") and bool(m[b].get("correct")) for m in both)
            broke = sum(bool(m[a].get("correct")) and not m[b].get("correct") for m in both)
            lines.append(f"  - {what}: {fixed} items turn right, {broke} turn wrong ({a} → {b}).")
        diff = [m for m in items.values() if "full" in m and "pruned" in m
                and m["full"].get("predicted") != m["pruned"].get("predicted")]
        if diff:
            lines += ["", f"<details><summary>{set_name}: items where full and pruned answer differently "
                          f"({len(diff)}, first 8 shown)</summary>", "",
                      "| question | answer | full | pruned |", "|---|---|---|---|"]
            for m in diff[:8]:
                r = m["full"]
                mark = lambda x: ("✓ " if x.get("correct") else "✗ ") + str(x.get("predicted"))  # noqa: E731
                lines.append(f"| {md_cell(r.get('question', ''))} | {md_cell(r.get('answer', ''))} | "
                             f"{md_cell(mark(m['full']))} | {md_cell(mark(m['pruned']))} |")
            lines += ["", "</details>", ""]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in str(text).splitlines() or [""])


def generations_section(gens: list[dict], metrics: dict | None) -> str:
    """Per prompt: the prompt, each model's greedy completion, the sampled ones folded away."""
    prompts: dict = {}
    for g in gens:
        prompts.setdefault(g.get("prompt_id", g.get("prompt")), []).append(g)
    known = model_keys(metrics)
    order = known + sorted({g.get("model") for g in gens if g.get("model") not in known}, key=str)
    greedy = next((g.get("settings") for g in gens if g.get("decoding", "greedy") == "greedy"), None)
    desc = ", ".join(f"{k}={v}" for k, v in greedy.items()) if isinstance(greedy, dict) else ""
    out = [f"{len(prompts)} prompts; greedy completions{f' ({desc})' if desc else ''} inline, sampled ones "
           f"folded. Lines are wrapped at {WRAP} characters; the exact text is in generations.jsonl.", ""]
    for n, (pid, recs) in enumerate(prompts.items(), 1):
        out += [f"### Prompt {n} (`{pid}`)", "", _quote(recs[0].get("prompt", "")), ""]
        for decoding in ("greedy", "sampled"):
            chosen = [r for r in recs if r.get("decoding", "greedy") == decoding]
            if not chosen:
                continue
            block = []
            for key in order:
                mine = [r for r in chosen if r.get("model") == key]
                if not mine and model_entry(metrics, key) is None and not any(
                        r.get("model") == key for r in gens):
                    continue
                for r in mine or [None]:
                    if r is None:
                        block += [f"**{key}**: {NA}", ""]
                        continue
                    block += [f"**{key}** · {r.get('new_tokens', '?')} new tokens · "
                              f"{fmt(r.get('seconds'), '.1f')} s", "", fenced(str(r.get("completion", "")), WRAP), ""]
            if decoding == "greedy":
                out += block
            else:
                settings = chosen[0].get("settings") or {}
                desc = ", ".join(f"{k}={v}" for k, v in settings.items()) if isinstance(settings, dict) else ""
                out += [f"<details><summary>Sampled completions{f' ({desc})' if desc else ''}</summary>", "",
                        *block, "</details>", ""]
    return "\n".join(out)


def header(inputs: Inputs, now: datetime) -> str:
    lines = ["# Pruning one transformer block: results report", "",
             f"Report generated {now.strftime('%Y-%m-%d %H:%M %Z').strip()}."]
    finished = [f"{v} {str(r.get('finished_at'))[:16]}" for v, r in inputs.runs.items() if r.get("finished_at")]
    if finished:
        lines[-1] += " Training finished: " + "; ".join(finished) + "."
    if inputs.found:
        lines += ["", "Inputs read (modification time):", ""]
        for key, path in inputs.found.items():
            mtime = datetime.fromtimestamp(Path(path).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
            lines.append(f"- `{rel(path)}` ({mtime})")
    return "\n".join(lines)


def _skipped(*reasons: str) -> str:
    return "_Skipped: " + "; ".join(r for r in reasons if r) + "._"


def render_markdown(inputs: Inputs, figures: dict[str, str | None], now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc).astimezone()
    m = inputs.metrics
    sec = [header(inputs, now)]

    sec += ["## Trade-offs", tradeoff_paragraph(m, inputs.importance, inputs.runs)]

    data = data_summary(inputs.scrape, inputs.preprocess)
    sec += ["## Data", data or _skipped(inputs.notes.get("scrape", ""), inputs.notes.get("preprocess", ""))]

    sec.append("## Metrics per model")
    if m is None:
        sec.append(_skipped(inputs.notes.get("metrics", "no metrics.json")))
    else:
        body = [metrics_table(m, inputs.runs), "",
                "Perplexity = exp(mean cross-entropy per token). QA/cloze accuracy: share of items where the "
                "correct option has the highest log-likelihood, with the 95% interval 05_evaluate.py reports. "
                f"{DASH} = not applicable, {NA} = not measured or model unavailable."]
        notes = unavailable_notes(m)
        if notes:
            body += ["", "Unavailable models:", "", *notes]
        settings = get(m, "settings")
        if isinstance(settings, dict) and settings:
            body += ["", "Evaluation settings: " + ", ".join(f"`{k}`={md_cell(v)}" for k, v in settings.items())]
        for name, alt in (("perplexity.png", "Perplexity per model"), ("qa_accuracy.png", "QA and cloze accuracy")):
            if figures.get(name):
                body += ["", f"![{alt}]({figures[name]})"]
        sec.append("\n".join(body))

    sec.append("## Block removal")
    if inputs.importance is None:
        sec.append(_skipped(inputs.notes.get("importance", "no block_importance.json")))
    else:
        sec.append(importance_section(inputs.importance, figures.get("block_importance.png")))

    sec.append("## Training: loss curves")
    if not inputs.logs and not inputs.runs:
        sec.append(_skipped("no outputs/runs/<variant>/log.jsonl; run 03_train.py --variant full|pruned"))
    else:
        sec.append(training_section(inputs.logs, inputs.runs, figures.get("loss_curves.png")))

    sec.append("## Q&A answers item by item")
    sec.append(qa_section(inputs.qa_predictions, m) if inputs.qa_predictions
               else _skipped(inputs.notes.get("qa_predictions", "no qa_predictions.jsonl")))

    sec.append("## Generations")
    sec.append(generations_section(inputs.generations, m) if inputs.generations
               else _skipped(inputs.notes.get("generations", "no generations.jsonl")))
    return "\n\n".join(s.rstrip() for s in sec) + "\n"


# ---------------------------------------------------------------- figures

def _save(fig, path: Path) -> Path:
    """Save a figure atomically (temporary file, then rename) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=DPI)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _token_axis(ax) -> None:
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_count(x)))


def plot_loss_curves(logs: dict[str, list[dict]], path: Path, window: int | None = None) -> Path | None:
    """Train loss (raw, light + moving average) and validation loss (markers) of every variant."""
    series = {v: split_log(r) for v, r in logs.items()}
    series = {v: s for v, s in series.items() if s[0] or s[1]}
    if not series:
        return None
    all_lines = [r for tr, ev in series.values() for r in tr + ev]
    xkey = "tokens" if all(num(r.get("tokens")) is not None for r in all_lines) else "step"
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for variant, (train, evals) in series.items():
        color = color_for(variant)
        if train:
            x = [r[xkey] for r in train]
            y = [r["loss"] for r in train]
            w = window or max(3, len(y) // 12)
            ax.plot(x, y, color=color, alpha=0.25, lw=1)
            ax.plot(x, smooth(y, w), color=color, lw=2.2, label=f"{variant}: train loss (avg of {w} logs)")
        if evals:
            ax.plot([r[xkey] for r in evals], [r["eval_loss"] for r in evals], color=color, ls="--", lw=1,
                    marker="o", ms=6, mfc="white", mew=1.8, label=f"{variant}: validation loss", zorder=3)
    ax.plot([], [], color="0.5", alpha=0.35, lw=1, label="raw logged train loss")
    if xkey == "tokens":
        _token_axis(ax)
        ax.set_xlabel("training tokens seen")
    else:
        ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats / token)")
    sec = ax.secondary_yaxis("right", functions=(lambda x: np.exp(np.clip(x, -50, 50)),
                                                 lambda p: np.log(np.clip(p, 1e-12, None))))
    sec.set_ylabel("perplexity")
    ax.set_title("Fine-tuning loss: " + " vs ".join(series))
    ax.grid(alpha=0.3)
    xmax = max(num(r.get(xkey)) or 0 for r in all_lines)
    ax.set_xlim(-0.015 * xmax, xmax * 1.02 if xmax else 1)
    ax.legend(fontsize=8.5, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    return _save(fig, path)


def _model_ticks(ax, keys, block) -> None:
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([short_label(k, block) for k in keys])
    for tick, key in zip(ax.get_xticklabels(), keys):
        tick.set_color(color_for(key))
        tick.set_fontweight("bold")


def _na_marker(ax, i, why: str = "not available") -> None:
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(i, 0.04, f"{NA}\n({why})", transform=trans, ha="center", va="bottom", color="0.4",
            fontstyle="italic", fontsize=10)


def plot_perplexity(metrics: dict, path: Path, block: int | None = None) -> Path | None:
    """Validation perplexity per model, with the train-slice perplexity beside it where measured."""
    keys = list(MODEL_KEYS)
    vals = [ppl(get(model_entry(metrics, k), "validation")) for k in keys]
    trains = [ppl(get(model_entry(metrics, k), "train_slice")) for k in keys]
    if all(v is None for v in vals + trains):
        return None
    has_train = any(t is not None for t in trains)
    w = 0.38 if has_train else 0.6
    fig, ax = plt.subplots(figsize=FIGSIZE)
    present = [v for v in vals + trains if v is not None]
    log_scale = max(present) / max(min(present), 1e-9) > 8
    for i, (k, v, t) in enumerate(zip(keys, vals, trains)):
        if v is None and t is None:
            _na_marker(ax, i, "not available" if model_entry(metrics, k) is None else "not measured")
            continue
        c = color_for(k)
        if v is not None:
            b = ax.bar(i - w / 2 if has_train else i, v, w, color=c, edgecolor=c)
            ax.bar_label(b, fmt="%.1f", padding=2, fontsize=9)
        if t is not None:
            b = ax.bar(i + w / 2, t, w, color=c, alpha=0.35, hatch="///", edgecolor=c)
            ax.bar_label(b, fmt="%.1f", padding=2, fontsize=9, color="0.25")
    _model_ticks(ax, keys, block)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(min(present) * 0.6, max(present) * 2.2)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("perplexity (log scale, lower is better)")
    else:
        ax.set_ylabel("perplexity (lower is better)")
        ax.set_ylim(0, max(present) * 1.3)  # headroom for the value labels and the legend
    handles = [Patch(color="0.45", label="validation")]
    if has_train:
        handles.append(Patch(facecolor=(0.45, 0.45, 0.45, 0.35), hatch="///", edgecolor="0.45",
                             label="train slice (over-fitting check)"))
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9)
    ax.set_title("Perplexity per model")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return _save(fig, path)


def _clip_top(values: list[float]) -> float | None:
    """A y-limit that keeps small bars readable when one or two blocks dwarf the rest."""
    pos = sorted(v for v in values if v > 0)
    if len(pos) < 4:
        return None
    typical = pos[int(0.85 * (len(pos) - 1))]
    return typical * 1.9 if pos[-1] > typical * 2.5 else None


def plot_block_importance(importance: dict, path: Path) -> Path | None:
    """Importance per block (removed block highlighted), cosine similarity in a second panel."""
    scores = [s for s in importance.get("scores") or [] if isinstance(s, dict) and isinstance(s.get("block"), int)]
    if not scores:
        return None
    blocks = [s["block"] for s in scores]
    imp = [num(s.get("importance", s.get("delta_loss"))) or 0.0 for s in scores]
    cos = [num(s.get("cosine_similarity")) for s in scores]
    has_cos = any(c is not None for c in cos)
    k = importance.get("removed_block")
    hi_color, lo_color = MODEL_COLORS["base_minus_block"], "#8C9DB0"
    if has_cos:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5.6), sharex=True, height_ratios=[2.3, 1])
    else:
        fig, ax = plt.subplots(figsize=FIGSIZE)
        ax2 = None
    ax.bar(blocks, imp, color=[hi_color if b == k else lo_color for b in blocks], width=0.75)
    top = _clip_top(imp)
    if top is None:
        top = max(imp) * 1.2 if max(imp) > 0 else 1.0
    ax.set_ylim(min(0.0, min(imp) * 1.1), top)
    ymax = top
    if k in blocks:
        i = blocks.index(k)
        v = imp[i]
        # put the label just above the tallest neighbouring bar, growing the axis if needed
        local = max(min(x, ymax) for x in imp[max(0, i - 3): i + 4])
        y_text = local + 0.12 * ymax
        if y_text > 0.8 * ymax:
            ymax = y_text / 0.8
            ax.set_ylim(top=ymax)
        ha = "right" if i > len(blocks) - 4 else "left" if i < 3 else "center"
        x_text = k + {"right": 0.6, "left": -0.6, "center": 0.0}[ha]
        ax.annotate(f"removed: block {k}\nimportance {v:.3f}", xy=(k, max(v, 0)), xytext=(x_text, y_text),
                    ha=ha, va="bottom", fontsize=9, color=hi_color, fontweight="bold",
                    arrowprops=dict(arrowstyle="->", color=hi_color, lw=1.5))
    for b, v in zip(blocks, imp):
        if v > ymax:  # bar cut at the top of the axis: write its value inside it
            ax.text(b, ymax * 0.97, f"{v:.2f} ↑", ha="center", va="top", rotation=90, fontsize=8,
                    color="white", fontweight="bold")
    nc = importance.get("naive_comparison") or {}
    for name in ("last", "middle"):
        b = get(nc, name, "block")
        if b in blocks and b != k:
            v = min(imp[blocks.index(b)], ymax)
            ax.text(b, v + 0.02 * ymax, name, ha="center", va="bottom", fontsize=8, color="0.3", rotation=90)
    ax.axhline(0, color="0.2", lw=0.8)
    method = importance.get("method", "loss_increase")
    ax.set_ylabel("Δ val loss when skipped\n(nats / token)" if method == "loss_increase"
                  else f"importance ({method})")
    ax.set_title(f"Block importance of {importance.get('base_model', 'the base model')} "
                 f"({len(blocks)} blocks)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    last = ax2 or ax
    if ax2 is not None:
        xs = [b for b, c in zip(blocks, cos) if c is not None]
        ys = [c for c in cos if c is not None]
        ax2.plot(xs, ys, color="0.35", marker="o", ms=3.5, lw=1.2)
        if k in xs:
            ax2.plot([k], [ys[xs.index(k)]], "o", ms=8, color=hi_color, zorder=3)
        ax2.set_ylabel("cos(block input,\nblock output)")
        ax2.grid(alpha=0.3)
        lo, hi = min(ys), max(ys)
        pad = max(0.02, 0.1 * (hi - lo))
        ax2.set_ylim(lo - pad, min(1.0, hi + pad) if hi <= 1 else hi + pad)
    last.set_xlabel("block index")
    last.xaxis.set_major_locator(MultipleLocator(1 if len(blocks) <= 32 else 4))
    last.tick_params(axis="x", labelsize=8)
    last.set_xlim(min(blocks) - 0.7, max(blocks) + 0.7)
    base = num(importance.get("baseline_loss"))
    parts = [f"{name} ({get(rec, 'block')}): {fmt(get(rec, 'loss'), '.3f')}" for name, rec in nc.items()
             if isinstance(rec, dict)]
    if parts:
        note = "Val loss without the block — " + ", ".join(parts)
        if base is not None:
            note += f"; intact model: {base:.3f}"
        fig.text(0.01, 0.01, note, fontsize=8, color="0.3", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.035, 1, 1))
    else:
        fig.tight_layout()
    return _save(fig, path)


def plot_qa_accuracy(metrics: dict, path: Path, block: int | None = None) -> Path | None:
    """Q&A and cloze accuracy per model with 95% CI error bars and the chance level."""
    keys = list(MODEL_KEYS)
    sets = [("qa", "Q&A", None), ("cloze", "cloze", "///")]
    present = [(s, lab, h) for s, lab, h in sets
               if any(num(get(model_entry(metrics, k), s, "accuracy")) is not None for k in keys)]
    if not present:
        return None
    w = 0.8 / len(present)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, k in enumerate(keys):
        entry = model_entry(metrics, k)
        if entry is None or all(num(get(entry, s, "accuracy")) is None for s, _, _ in present):
            _na_marker(ax, i, "not available" if entry is None else "not measured")
            continue
        c = color_for(k)
        for j, (s, _, hatch) in enumerate(present):
            acc = num(get(entry, s, "accuracy"))
            if acc is None:
                continue
            x = i + (j - (len(present) - 1) / 2) * w
            ci = get(entry, s, "ci95")
            top = acc
            yerr = None
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(num(v) is not None for v in ci):
                yerr = [[max(0.0, acc - ci[0])], [max(0.0, ci[1] - acc)]]
                top = max(acc, ci[1])
            ax.bar(x, acc, w * 0.92, color=c, alpha=0.35 if hatch else 1.0, hatch=hatch, edgecolor=c,
                   yerr=yerr, capsize=4, error_kw=dict(ecolor="0.2", lw=1.2))
            ax.text(x, top + 0.015, f"{100 * acc:.0f}%", ha="center", va="bottom", fontsize=9)
    chances = {}
    for s, lab, _ in present:
        vals = {num(get(model_entry(metrics, k), s, "chance")) for k in keys} - {None}
        for v in vals:
            chances.setdefault(v, []).append(lab)
    styles = ["--", ":", "-."]
    handles = [Patch(facecolor="0.45" if not h else (0.45, 0.45, 0.45, 0.35), hatch=h, edgecolor="0.45",
                     label=f"{lab} (n={get(_first_available(metrics, keys, s), s, 'n') or '?'})")
               for s, lab, h in present]
    for n, (v, labs) in enumerate(sorted(chances.items())):
        ls = styles[n % len(styles)]
        ax.axhline(v, color="0.15", ls=ls, lw=1.2, zorder=0.5)
        handles.append(Line2D([], [], color="0.15", ls=ls, label=f"chance {100 * v:.0f}% ({', '.join(labs)})"))
    _model_ticks(ax, keys, block)
    ax.set_ylim(0, 1.12)
    ax.set_yticks(np.arange(0, 1.01, 0.2))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("accuracy (error bars: 95% CI)")
    ax.set_title("Multiple-choice accuracy per model")
    ax.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8.5, framealpha=0.95)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return _save(fig, path)


def _first_available(metrics, keys, what) -> dict | None:
    for k in keys:
        e = model_entry(metrics, k)
        if get(e, what, "n") is not None:
            return e
    return None


def make_figures(inputs: Inputs, out_dir: Path) -> dict[str, str | None]:
    """Draw every figure whose inputs exist; returns {file name: relative link or None}."""
    block = removed_block(inputs.metrics, inputs.importance)
    jobs = {
        "loss_curves.png": (lambda p: plot_loss_curves(inputs.logs, p)) if inputs.logs else None,
        "perplexity.png": (lambda p: plot_perplexity(inputs.metrics, p, block)) if inputs.metrics else None,
        "block_importance.png": (lambda p: plot_block_importance(inputs.importance, p))
        if inputs.importance else None,
        "qa_accuracy.png": (lambda p: plot_qa_accuracy(inputs.metrics, p, block)) if inputs.metrics else None,
    }
    made = {}
    for name, job in jobs.items():
        path = out_dir / name
        result = job(path) if job else None
        made[name] = name if result else None
        if result:
            log.info("wrote %s", rel(path))
        elif path.exists():  # a figure left from an earlier run would no longer match the report
            path.unlink()
    return made


def build_report(runs_dir: Path = RUNS_DIR, eval_dir: Path = EVAL_DIR, prune_dir: Path = PRUNE_DIR,
                 processed_dir: Path = PROCESSED_DIR, raw_dir: Path = RAW_DIR,
                 out_dir: Path = REPORT_DIR) -> Path:
    """Read every input, draw the figures, write report.md; returns its path."""
    inputs = load_inputs(Path(runs_dir), Path(eval_dir), Path(prune_dir), Path(processed_dir), Path(raw_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = make_figures(inputs, out_dir)
    report = out_dir / "report.md"
    write_text(report, render_markdown(inputs, figures))
    log.info("wrote %s", rel(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="03_train.py outputs")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR, help="05_evaluate.py outputs")
    parser.add_argument("--prune-dir", type=Path, default=PRUNE_DIR, help="04_prune_layer.py outputs")
    parser.add_argument("--processed-dir", type=Path, default=PROCESSED_DIR, help="02_preprocess.py outputs")
    parser.add_argument("--raw-dir", type=Path, default=RAW_DIR, help="01_scrape.py outputs")
    parser.add_argument("--out-dir", type=Path, default=REPORT_DIR, help="where report.md and figures go")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        report = build_report(args.runs_dir, args.eval_dir, args.prune_dir, args.processed_dir,
                              args.raw_dir, args.out_dir)
    except MissingInputError as exc:
        log.error("%s", exc)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
