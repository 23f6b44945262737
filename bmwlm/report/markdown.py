"""report.md: the trade-off paragraph written from the measured numbers and the tests behind them, the
generations, and the assembly of every section (a missing input leaves its section with a note saying why)."""
from __future__ import annotations

from datetime import datetime, timezone

from bmwlm.config import EVALUATE, MODEL_KEYS, PRUNE, train_stage
from bmwlm.io import display_path
from bmwlm.records.evaluation import Generation, Metrics
from bmwlm.records.prune import BlockImportance
from bmwlm.records.training import RunSummary
from bmwlm.report.evaluation import (
    PAIR_LABELS, answers_section, cloze_section, comparisons_section, precision_section, qa_controls_section,
    separator_section, speed_section,
)
from bmwlm.report.inputs import Inputs, model_entry, removed_block
from bmwlm.report.tables import (
    data_summary, importance_section, metrics_table, qa_section, training_section, unavailable_notes,
)
from bmwlm.report.text import DASH, NA, fenced, fmt, fmt_count, md_cell, quote, sentence_case

WRAP = 100  # completions are wrapped at this width for reading; generations.jsonl keeps them exact
# The comparisons the trade-off paragraph states, by topic: (family, metric, pairs; None = every pair).
HEADLINE = (("full", "base"), ("pruned", "full"))
TRADEOFF = {
    "Speed": (("speed", "training step time", None), ("speed", "generation latency per sequence", None)),
    "Perplexity": (("perplexity", "validation perplexity", None),),
    "Over-fitting": (("gap", "validation minus train-slice loss", None),),
    "Knowledge probes": (("qa", "Q&A accuracy (normalised)", HEADLINE), ("qa", "Q&A accuracy (calibrated)", HEADLINE),
                         ("cloze", "cloze accuracy (normalised)", HEADLINE), ("cloze", "cloze accuracy (calibrated)", HEADLINE),
                         ("baseline", "Q&A accuracy (normalised)", (("full", "frequency_prior"),)),
                         ("baseline", "Q&A accuracy (calibrated)", (("full", "frequency_prior"),))),
}


# ---------------------------------------------------------------- the trade-off, from the numbers


def _size_sentence(metrics: Metrics | None, importance: BlockImportance | None) -> str | None:
    """'Removing block k of N removes x% of the parameters (a → b).' (counted, not estimated)."""
    k = removed_block(metrics, importance)
    base, minus, pruned = (model_entry(metrics, key) for key in ("base", "base_minus_block", "pruned"))
    total = importance.blocks_before if importance else (base.blocks if base else None)
    if importance is not None:  # both counts from one record, never one from each
        before, after = importance.parameters_before, importance.parameters_after
    else:
        before = base.parameters if base else None
        after = (minus.parameters if minus else None) or (pruned.parameters if pruned else None)
    if not (before and after):
        return None
    s = f"Removing {f'block {k}' if k is not None else 'one block'}" + (f" of {total}" if total else "")
    return s + f" removes {100 * (before - after) / before:.1f}% of the parameters ({fmt_count(before)} → " \
               f"{fmt_count(after)}; counted, no test needed)."


def tradeoff_paragraph(metrics: Metrics | None, importance: BlockImportance | None,
                       runs: dict[str, RunSummary] | None = None) -> str:
    """The trade-off of removing one block and of fine-tuning: the parameter count, then the comparisons
    in `TRADEOFF`, each as the sentence 05 wrote from its paired test (a direction only when the 95%
    interval of the difference excludes 0). Nothing here compares two numbers by itself; the full
    list is in the comparisons section."""
    size = _size_sentence(metrics, importance)
    lines = [f"- **Size**: {size}"] if size else []
    for topic, wanted in TRADEOFF.items():
        found = []
        for family, metric, pairs in wanted:
            found += [c for c in (metrics.comparisons if metrics else [])
                      if (c.family, c.metric) == (family, metric) and (pairs is None or (c.a, c.b) in pairs)]
        if found:
            lines.append(f"- **{topic}**:")
            lines += [f"  - {sentence_case(PAIR_LABELS[(c.a, c.b)])}: {c.sentence}" if (c.a, c.b) in PAIR_LABELS
                      else f"  - {sentence_case(c.sentence)}" for c in found]
    if not lines:
        return (f"Not enough measurements for a trade-off: it needs the metrics of at least two of the "
                f"models ({EVALUATE.script}) or the block-importance file ({PRUNE.script}).")
    return "\n".join(lines)


# ---------------------------------------------------------------- generations


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def generations_section(gens: list[Generation]) -> str:
    """Per prompt: the prompt, each model's greedy completion, the sampled ones folded away."""
    prompts: dict[str, list[Generation]] = {}
    for g in gens:
        if g.kind == "opening":
            prompts.setdefault(g.prompt_id, []).append(g)
    models = list(MODEL_KEYS) + sorted({g.model for g in gens} - set(MODEL_KEYS))
    greedy = next((g.settings for g in gens if g.decoding == "greedy"), None)
    desc = f" ({_settings_text(greedy)})" if greedy else ""
    out = [f"{len(prompts)} press-release openings; greedy completions{desc} inline, sampled ones folded. Lines are wrapped at "
           f"{WRAP} characters; the exact text is in generations.jsonl.", ""]
    for n, (pid, recs) in enumerate(prompts.items(), 1):
        out += [f"### Prompt {n} (`{pid}`)", "", quote(recs[0].prompt), ""]
        for decoding in ("greedy", "sampled"):
            chosen = [r for r in recs if r.decoding == decoding]
            if not chosen:
                continue
            block = []
            for r in (r for key in models for r in chosen if r.model == key):
                block += [f"**{r.model}** · {r.new_tokens} new tokens · {fmt(r.seconds, '.1f')} s", "",
                          fenced(r.completion, WRAP), ""]
            if decoding == "greedy":
                out += block
            else:
                out += [f"<details><summary>Sampled completions ({_settings_text(chosen[0].settings)})</summary>", "",
                        *block, "</details>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- the whole report


def header(inputs: Inputs, now: datetime) -> str:
    lines = ["# Pruning one transformer block: results report", "",
             f"Report generated {now.strftime('%Y-%m-%d %H:%M %Z').strip()}."]
    finished = [f"{v} {r.finished_at[:16]}" for v, r in inputs.runs.items()]
    if finished:
        lines[-1] += " Training finished: " + "; ".join(finished) + "."
    if inputs.found:
        lines += ["", "Inputs read (modification time):", ""]
        for path in inputs.found.values():
            mtime = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
            lines.append(f"- `{display_path(path)}` ({mtime})")
    return "\n".join(lines)


def _skipped(*reasons: str) -> str:
    return "_Skipped: " + "; ".join(r for r in reasons if r) + "._"


def _metrics_body(inputs: Inputs, figures: dict[str, str | None]) -> str:
    m = inputs.metrics
    body = [metrics_table(m, inputs.runs), "",
            "Perplexity = exp(mean cross-entropy per token), with its 95% interval from resampling articles "
            f"({m.settings.precision.get('perplexity', NA)}). Accuracy: the normalised method (mean log-prob per "
            "option token), float32, with its 95% interval (Q&A: items, cloze: articles); seen / unseen: whether the "
            f"answer fact appears in the training text. {DASH} = not applicable, {NA} = not measured or model "
            "unavailable. Differences between models are in the comparisons below, not read off this table."]
    notes = unavailable_notes(m)
    if notes:
        body += ["", "Unavailable models:", "", *notes]
    slice_ = next((e.train_slice.selection for k in MODEL_KEYS if (e := m.entry(k)) and e.train_slice), None)
    if slice_:
        body += ["", f"Train slice: {slice_}."]
    settings = {k: v for k, v in m.settings.to_dict().items() if k not in ("methods", "qa_seen_changed")}
    body += ["", "<details><summary>Evaluation settings</summary>", "",
             ", ".join(f"`{k}`={md_cell(v)}" for k, v in settings.items()), "", "</details>"]
    if figures.get("perplexity.png"):
        body += ["", f"![Perplexity per model]({figures['perplexity.png']})"]
    return "\n".join(body)


def render_markdown(inputs: Inputs, figures: dict[str, str | None], depth: str | None = None,
                    now: datetime | None = None) -> str:
    """The report; `depth`: the depth study's section (`bmwlm.report.depth.depth_section`), placed after
    the block-removal section, when the study has files."""
    now = now or datetime.now(timezone.utc).astimezone()
    notes = inputs.notes
    sec = [header(inputs, now), "## Trade-offs", tradeoff_paragraph(inputs.metrics, inputs.importance, inputs.runs)]

    data = data_summary(inputs.scrape, inputs.preprocess, inputs.data_fields)
    sec += ["## Data", data or _skipped(notes.get("scrape", ""), notes.get("preprocess", ""))]

    sec.append("## Metrics per model")
    sec.append(_metrics_body(inputs, figures) if inputs.metrics else _skipped(notes.get("metrics", "no metrics.json")))
    missing = _skipped(notes.get("metrics", "no metrics.json"))
    m = inputs.metrics
    sec += ["## Paired comparisons", comparisons_section(m, figures.get("comparisons.png")) if m else missing,
            "## Q&A with controls", qa_controls_section(m, figures.get("qa_accuracy.png")) if m else missing,
            "## Cloze", cloze_section(m) if m else missing,
            "## Separators and article borders", separator_section(m) if m else missing,
            "## Precision", precision_section(m) if m else missing,
            "## Speed", speed_section(m) if m else missing,
            "## Generated answers", answers_section(m, inputs.generations) if m else missing]

    sec.append("## Block removal")
    sec.append(importance_section(inputs.importance, figures.get("block_importance.png")) if inputs.importance
               else _skipped(notes.get("importance", "no block_importance.json")))
    if depth:
        sec.append(depth)

    sec.append("## Training: loss curves")
    sec.append(training_section(inputs.logs, inputs.runs, figures.get("loss_curves.png"))
               if inputs.logs or inputs.runs else
               _skipped(f"no outputs/runs/<variant>/log.jsonl; run {train_stage('full')} and {train_stage('pruned')}"))

    sec.append("## Q&A answers item by item")
    sec.append(qa_section(inputs.qa_predictions) if inputs.qa_predictions
               else _skipped(notes.get("qa_predictions", "no qa_predictions.jsonl")))

    sec.append("## Generations: press-release openings")
    sec.append(generations_section(inputs.generations) if inputs.generations
               else _skipped(notes.get("generations", "no generations.jsonl")))
    return "\n\n".join(s.rstrip() for s in sec) + "\n"
