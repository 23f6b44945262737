"""The report's tables and per-item listings, each built from one stage's typed records."""
from __future__ import annotations

import math
from pathlib import Path

from bmwlm.config import MODEL_KEYS, PREPROCESS_REPORT_FILE, SCRAPE_REPORT_FILE, VARIANTS
from bmwlm.records.data import PreprocessReport, ScrapeReport
from bmwlm.records.evaluation import ChoiceScore, Metrics, QAPrediction, SplitScore
from bmwlm.records.prune import BlockImportance
from bmwlm.records.training import LogLine, RunSummary
from bmwlm.report.inputs import model_entry, training_of
from bmwlm.report.text import (
    DASH, NA, flatten, fmt, fmt_acc_interval, fmt_ci, fmt_count, fmt_seconds, md_cell, md_row, num, short_date,
)

TABLE_COLUMNS = (
    "model", "params", "blocks", "size MB", "val loss", "val ppl [95% CI]", "train-slice ppl [95% CI]",
    "QA acc [95% CI]", "QA acc seen / unseen", "cloze acc [95% CI]", "train time",
)


def ppl(score: SplitScore | None) -> float | None:
    return score.perplexity if score is not None else None


def acc_ci(score: ChoiceScore | None, method: str = "normalised") -> str:
    """'37.5% [23–52%] (n=48)': one method's accuracy with its interval."""
    if score is None or method not in score.methods:
        return NA
    return fmt_acc_interval(score.methods[method].accuracy) + f" (n={score.n})"


# ---------------------------------------------------------------- metrics per model


def _model_row(key: str, metrics: Metrics | None, runs: dict[str, RunSummary]) -> list[str]:
    recorded = metrics.models.get(key) if metrics is not None else None
    name = f"`{key}`" + (f" {recorded.label}" if recorded is not None and recorded.label else "")
    entry = model_entry(metrics, key)
    if entry is None:
        return [name] + [NA] * (len(TABLE_COLUMNS) - 1)
    trained = key in VARIANTS or entry.training is not None
    training = training_of(metrics, runs, key) if trained else None
    qa = entry.qa.methods.get("normalised") if entry.qa else None
    v, t = entry.validation, entry.train_slice
    return [
        name,
        fmt_count(entry.parameters),
        fmt(entry.blocks, ".0f"),
        fmt(entry.size_mb, ".0f"),
        fmt(v.loss if v else None, ".3f"),
        fmt_ci(ppl(v), v.ci95 if v else None),
        fmt_ci(ppl(t), t.ci95 if t else None),
        acc_ci(entry.qa),
        f"{fmt_acc_interval(qa.seen)} / {fmt_acc_interval(qa.unseen)}" if qa else NA,
        acc_ci(entry.cloze),
        (fmt_seconds(training.train_seconds) if training else NA) if trained else DASH,
    ]


def metrics_table(metrics: Metrics | None, runs: dict[str, RunSummary] | None = None) -> str:
    """Markdown table, one row per model (an unavailable model is a row of n/a)."""
    rows = [md_row(TABLE_COLUMNS), md_row("---" for _ in TABLE_COLUMNS)]
    rows += [md_row(_model_row(key, metrics, runs or {})) for key in MODEL_KEYS]
    return "\n".join(rows)


def unavailable_notes(metrics: Metrics) -> list[str]:
    notes = []
    for key in MODEL_KEYS:
        entry = metrics.models.get(key)
        if model_entry(metrics, key) is None:
            why = entry.error if entry is not None and entry.error else (
                "not in metrics.json" if entry is None else "marked unavailable")
            notes.append(f"- `{key}`: {NA} ({why})")
    return notes


# ---------------------------------------------------------------- data, block removal, training


def data_summary(scrape: ScrapeReport | None, preprocess: PreprocessReport | None, fields: dict[str, dict]) -> str:
    """Articles scraped and kept, split sizes, tokens and date ranges; then every recorded field."""
    lines = []
    if scrape is not None:
        s = f"- Scraped: {scrape.articles} articles"
        if scrape.by_source:
            s += " (" + ", ".join(f"{k} {v}" for k, v in scrape.by_source.items()) + ")"
        lines.append(s + ".")
    if preprocess is not None:
        s = f"- After preprocessing: {preprocess.articles_kept} articles of {preprocess.articles_read}"
        dropped = [f"{why} {n}" for why, n in preprocess.dropped_counts().items() if n]
        if dropped:
            s += " (dropped: " + ", ".join(dropped) + ")"
        s += f"; cleaning removed {preprocess.cleaning.percent_chars_removed:.1f}% of the characters"
        lines.append(s + ".")
        rows = []
        for name, sp in preprocess.splits.items():
            dated = sp.published_min is not None or sp.published_max is not None
            published = f"{short_date(sp.published_min)} … {short_date(sp.published_max)}" if dated else NA
            rows.append(f"| {name} | {sp.articles} | {fmt_count(sp.tokens)} | {published} |")
        if rows:
            lines += ["", "| split | articles | tokens | published |", "|---|---|---|---|", *rows]
    details = []
    for title in (SCRAPE_REPORT_FILE.name, PREPROCESS_REPORT_FILE.name):
        flat = flatten(fields.get(title))
        if flat:
            details += [f"**{title}**", ""] + [f"- `{k}`: {md_cell(v)}" for k, v in flat[:80]] + [""]
    if details:
        lines += ["", "<details><summary>All recorded data fields</summary>", "", *details, "</details>"]
    return "\n".join(lines).strip("\n")


def scored_split(imp: BlockImportance) -> str:
    """Which tokens 04 scored the blocks on: the calibration sample of the train split (records since the
    sample existed), or the validation split (older records, made before 04 stopped looking at it)."""
    return "calibration" if imp.calibration is not None else "validation"


def importance_section(imp: BlockImportance, figure: str | None) -> str:
    base = imp.baseline_loss
    where = scored_split(imp)
    cal = imp.calibration
    sample = (f" ({cal.windows} evenly spaced windows of the training split, {cal.articles} articles; no "
              "validation article)" if cal is not None else "")
    lines = [
        f"Method: `{imp.method}` on {fmt_count(imp.eval_tokens)} {where} tokens{sample} of `{imp.base_model}`, "
        f"{imp.precision or 'precision not recorded'}; "
        f"intact-model loss {fmt(base, '.3f')}. Selection: {imp.selection}; removed block **{imp.removed_block}** "
        f"({imp.blocks_before} → {imp.blocks_after} blocks, {fmt_count(imp.parameters_before)} → "
        f"{fmt_count(imp.parameters_after)} parameters; scoring took {fmt_seconds(imp.seconds)}).",
    ]
    if imp.naive_comparison:
        lines += ["", f"{where.capitalize()} loss with one block removed — chosen block vs naive choices:", "",
                  f"| choice | block | {where} loss | Δ vs intact |", "|---|---|---|---|"]
        for name, rec in imp.naive_comparison.items():
            lines.append(f"| {name} | {rec.block} | {fmt(rec.loss, '.3f')} | {rec.loss - base:+.3f} |")
    proxy = imp.proxy_comparison
    if proxy is not None:
        lines += ["", f"The `{proxy.method}` proxy would remove block {proxy.block} "
                      f"({where} loss {fmt(proxy.loss, '.3f')}); rank correlation with the measured importance: "
                      f"{proxy.rank_correlation_with_importance:.2f}."]
    ranked = sorted(imp.scores, key=lambda s: s.importance)
    if ranked:
        def show(s):
            return f"{s.block} ({s.importance:.3f})"
        lines += ["", "Least important blocks: " + ", ".join(map(show, ranked[:3]))
                  + "; most important: " + ", ".join(map(show, ranked[::-1][:3])) + "."]
    if figure:
        lines += ["", f"![Block importance]({figure})"]
    return "\n".join(lines)


def split_log(lines: list[LogLine]) -> tuple[list[LogLine], list[LogLine]]:
    """(train lines, eval lines) of a log.jsonl."""
    return [r for r in lines if r.loss is not None and not r.is_eval], [r for r in lines if r.is_eval]


def _with_ppl(loss: float | None) -> str:
    v = num(loss)
    return f"{v:.3f} ({math.exp(min(v, 700.0)):.1f})" if v is not None else NA


def training_section(logs: dict[str, list[LogLine]], runs: dict[str, RunSummary], figure: str | None) -> str:
    """One row per variant from run.json, falling back to the log for a run still in progress."""
    head = ("| variant | fine-tuned from | blocks | params | steps | tokens seen | train time | s/step | "
            "tokens/s | initial eval loss (ppl) | final eval loss (ppl) | final train loss | finished |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in dict.fromkeys([*logs, *runs]):
        run = runs.get(v)
        train, evals = split_log(logs.get(v, []))
        init = run.initial_eval_loss if run and run.initial_eval_loss is not None else (
            evals[0].eval_loss if evals else None)
        final = run.final_eval_loss if run and run.final_eval_loss is not None else (
            evals[-1].eval_loss if evals else None)
        last_train = run.final_train_loss if run and run.final_train_loss is not None else (
            train[-1].loss if train else None)
        tokens = run.tokens_seen if run else (train[-1].tokens if train else None)
        secs = run.train_seconds if run else (train[-1].seconds if train else None)
        lines.append(md_row((
            v, Path(run.base_model).name if run else NA, fmt(run.blocks if run else None, ".0f"),
            fmt_count(run.parameters if run else None), fmt(run.steps if run else None, ".0f"), fmt_count(tokens),
            fmt_seconds(secs), fmt(run.seconds_per_step if run else None, ".2f"),
            fmt(run.tokens_per_s if run else None, ".0f"), _with_ppl(init), _with_ppl(final), fmt(last_train, ".3f"),
            run.finished_at[:19] if run else NA,
        )))
    lines += ["", "Train times and tokens/s are each run's own record; the runs took place at different times on a "
                  "shared CPU, so they are not a speed comparison (that is the interleaved measurement in the "
                  "comparisons)."]
    if figure:
        lines += ["", f"![Training and validation loss]({figure})"]
    return "\n".join(lines)


# ---------------------------------------------------------------- Q&A item by item


def qa_section(preds: list[QAPrediction], method: str = "normalised") -> str:
    """Per-item view of Q&A/cloze answers under one method: what fine-tuning and pruning changed (the
    counts of items that turn right or wrong; whether such a change is more than noise is McNemar's
    test in the comparisons)."""
    by: dict[tuple[str, str], dict[str, QAPrediction]] = {}  # (set, item) -> {model: prediction}
    for p in preds:
        by.setdefault((p.set, p.item_id), {})[p.model] = p
    lines = []
    for set_name in sorted({s for s, _ in by}, key=lambda n: (n != "qa", n)):
        items = [m for (s, _), m in by.items() if s == set_name]
        models = [k for k in MODEL_KEYS if any(k in m for m in items)]
        counts = ", ".join(f"{k} {sum(m[k].correct[method] for m in items if k in m)}/{sum(k in m for m in items)}"
                           for k in models)
        lines.append(f"- **{set_name}** ({len(items)} items, {method} method) — correct: {counts}.")
        for a, b, what in (("base", "full", "fine-tuning"), ("full", "pruned", "removing the block (both fine-tuned)"),
                           ("base", "base_minus_block", "removing the block (no fine-tuning)")):
            both = [m for m in items if a in m and b in m]
            if both:
                fixed = sum(not m[a].correct[method] and m[b].correct[method] for m in both)
                broke = sum(m[a].correct[method] and not m[b].correct[method] for m in both)
                lines.append(f"  - {what}: {fixed} items turn right, {broke} turn wrong ({a} → {b}).")
        diff = [m for m in items if "full" in m and "pruned" in m
                and m["full"].predicted[method] != m["pruned"].predicted[method]]
        if diff:
            lines += ["", f"<details><summary>{set_name}: items where full and pruned answer differently "
                          f"({len(diff)}, first 8 shown)</summary>", "",
                      "| question | answer | full | pruned |", "|---|---|---|---|"]
            for m in diff[:8]:
                marks = [("✓ " if p.correct[method] else "✗ ") + p.predicted[method] for p in (m["full"], m["pruned"])]
                lines.append(md_row((m["full"].question, m["full"].answer, *marks)))
            lines += ["", "</details>", ""]
    return "\n".join(lines)
