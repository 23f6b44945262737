"""The report's evaluation sections, each built from 05's typed records: the paired comparisons, the
Q&A set with its controls, the cloze set, the separators, precision, speed and generated answers.

Nothing here computes a comparison: every comparative sentence is the `sentence` 05 wrote with the
test behind it (`bmwlm.stats.compare`), and every table cell is a recorded number with its interval.
"""
from __future__ import annotations

from bmwlm.config import MODEL_KEYS
from bmwlm.records.evaluation import Comparison, Generation, Metrics
from bmwlm.report.text import (
    NA, fenced, fmt, fmt_acc_interval, fmt_ci, fmt_interval, md_cell, md_row, quote, sentence_case, signed_ci,
)

METHOD_LABELS = {"normalised": "normalised", "calibrated": "calibrated", "prior_only": "prior only (no question)"}
PAIR_LABELS = {("full", "base"): "fine-tuning", ("base_minus_block", "base"): "removing the block, before fine-tuning",
               ("pruned", "full"): "removing the block, after fine-tuning",
               ("pruned", "base_minus_block"): "fine-tuning the pruned model"}
FAMILY_TITLES = {"perplexity": "Perplexity (validation)", "gap": "Over-fitting: validation minus train-slice loss",
                 "qa": "Q&A accuracy", "cloze": "Cloze accuracy", "baseline": "Q&A accuracy against the frequency prior",
                 "speed": "Speed (interleaved measurement)"}
WRAP = 100


def _difference(c: Comparison) -> str:
    if c.family in ("qa", "cloze", "baseline"):
        return signed_ci(c.difference, c.ci95, "+.1f", 100) + " points"
    if c.family == "speed":
        return signed_ci(c.difference, c.ci95, "+.3f") + " s"
    if c.family == "gap":
        return signed_ci(c.difference, c.ci95, "+.3f") + " nats/token"
    return signed_ci(c.difference, c.ci95, "+.2f")


def _value(c: Comparison, v: float) -> str:
    if c.family in ("qa", "cloze", "baseline"):
        return f"{100 * v:.1f}%"
    return fmt(v, ".3f" if c.family in ("speed", "gap") else ".2f")


def _verdict(c: Comparison) -> str:
    if not c.detectable:
        return "no detectable difference"
    return f"{c.a} {'higher' if c.difference > 0 else 'lower'}"


def comparisons_section(metrics: Metrics, figure: str | None) -> str:
    """Every paired comparison 05 made, one table per family: a − b with its 95% interval and the test."""
    if not metrics.comparisons:
        return "_No comparisons: fewer than two models were evaluated._"
    out = ["Every comparison is paired: both models are scored on the same articles or items and the "
           "bootstrap resamples the same units for both; accuracy differences also get McNemar's exact test. "
           "A direction is stated only when the 95% interval of the difference excludes 0.", ""]
    for family, title in FAMILY_TITLES.items():
        rows = metrics.comparisons_of(family)
        if not rows:
            continue
        out += [f"**{title}**", "", "| a − b | what | a | b | difference [95% CI] | verdict | test |",
                "|---|---|---|---|---|---|---|"]
        for c in rows:
            pair = f"{c.a} − {c.b}" + (f" ({PAIR_LABELS[(c.a, c.b)]})" if (c.a, c.b) in PAIR_LABELS else "")
            out.append(md_row((pair, c.metric, _value(c, c.a_value), _value(c, c.b_value), _difference(c),
                               _verdict(c), c.test)))
        out.append("")
    if figure:
        out += [f"![Paired differences]({figure})"]
    return "\n".join(out).rstrip()


def qa_controls_section(metrics: Metrics, figure: str | None) -> str:
    """Q&A accuracy per model and method, overall and by seen / unseen, beside the two baselines."""
    entries = {k: metrics.entry(k) for k in MODEL_KEYS}
    s = metrics.settings
    out = [f"{s.qa_items} hand-written questions; {s.qa_seen.get('seen', 0)} whose answer fact appears in the "
           f"training text (\"seen\"), {s.qa_seen.get('unseen', 0)} whose fact does not (\"unseen\"; tags by "
           f"{s.qa_seen_source}). Intervals resample items. Methods: " + "; ".join(
               f"**{METHOD_LABELS[m]}**: {md_cell(d)}" for m, d in s.methods.items()) + ".", "",
           "| model | method | all items | seen | unseen |", "|---|---|---|---|---|"]
    for key, e in entries.items():
        if e is None or e.qa is None:
            out.append(md_row((f"`{key}`", NA, NA, NA, NA)))
            continue
        for m, acc in e.qa.methods.items():
            out.append(md_row((f"`{key}`", METHOD_LABELS.get(m, m), fmt_acc_interval(acc.accuracy),
                               fmt_acc_interval(acc.seen), fmt_acc_interval(acc.unseen))))
    prior = metrics.frequency_prior
    if prior is not None:
        out.append(md_row(("frequency-prior guesser", "most frequent option in the training text",
                           fmt_acc_interval(prior.accuracy), fmt_acc_interval(prior.seen),
                           fmt_acc_interval(prior.unseen))))
    guess = next((e.qa.uniform_guess for e in entries.values() if e and e.qa and e.qa.uniform_guess), None)
    if guess:
        out.append(md_row(("uniform guess", "answer positions are balanced", f"{100 * guess:.0f}%",
                           f"{100 * guess:.0f}%", f"{100 * guess:.0f}%")))
    out += ["", "Baselines: the frequency-prior guesser never reads the question and picks the option that occurs "
                "most often in the training text; a uniform guess is a real baseline here only because every "
                "letter holds a quarter of the answers. The prior-only method is the model's own question-free "
                "control: what a model scores above it, it owes to the question."]
    if figure:
        out += ["", f"![Q&A and cloze accuracy]({figure})"]
    return "\n".join(out)


def cloze_section(metrics: Metrics) -> str:
    s = metrics.settings
    out = [f"{s.cloze_items} automatic fill-in-the-gap items from {s.cloze_articles} validation articles; the "
           "intervals resample articles (several items come from one article). There is no chance line: the "
           "distractors are spans of the same kind from other articles, and the prior-only control shows what a "
           "model gets without the sentence.", "", "| model | " + " | ".join(METHOD_LABELS.values()) + " |",
           "|---|---|---|---|"]
    for key in MODEL_KEYS:
        e = metrics.entry(key)
        if e is None or e.cloze is None:
            out.append(md_row((f"`{key}`", NA, NA, NA)))
            continue
        out.append(md_row((f"`{key}`", *(fmt_acc_interval(e.cloze.methods[m].accuracy) if m in e.cloze.methods else NA
                                         for m in METHOD_LABELS))))
    return "\n".join(out)


def separator_section(metrics: Metrics) -> str:
    """What the EOS separators and each article's first token contribute to the validation loss."""
    out = ["Documents are packed with an EOS separator after each article (for the SmolLM2 tokenizer "
           "`<|im_end|>`, the Instruct model's end-of-turn token); it belongs to the article it ends. The first token "
           "of each article is predicted right after it. Perplexity without separators leaves them out of the loss "
           "(they stay in the context); without boundaries also leaves out each article's first token.", "",
           "| model | separators: share of tokens | share of loss | loss per separator | first tokens: share of "
           "loss | val ppl [95% CI] | without separators | without boundaries |", "|---|---|---|---|---|---|---|---|"]
    for key in MODEL_KEYS:
        e = metrics.entry(key)
        sep = e.validation.separators if e and e.validation else None
        if sep is None:
            out.append(md_row((f"`{key}`", *[NA] * 7)))
            continue
        out.append(md_row((f"`{key}`", f"{100 * sep.share_of_tokens:.2f}%", f"{100 * sep.share_of_loss:.2f}%",
                           fmt(sep.separator_loss, ".2f"), f"{100 * sep.first_token_share_of_loss:.2f}%",
                           fmt_ci(e.validation.perplexity, e.validation.ci95),
                           fmt_interval(sep.perplexity_without_separators),
                           fmt_interval(sep.perplexity_without_boundaries))))
    return "\n".join(out)


def precision_section(metrics: Metrics) -> str:
    out = ["Precision of each number: " + ", ".join(f"{k.replace('_', ' ')}: {v}"
                                                    for k, v in metrics.settings.precision.items()) + ".", "",
           "| model | items re-scored | picks that flip (float32 → bf16) | median \\|Δ option log-lik\\| | "
           "perplexity of the first windows: float32 / bf16 |", "|---|---|---|---|---|"]
    for key in MODEL_KEYS:
        e = metrics.entry(key)
        c = e.precision_check if e else None
        if c is None:
            out.append(md_row((f"`{key}`", NA, NA, NA, NA)))
            continue
        flips = ", ".join(f"{f.item_id} {f.float32}→{f.bf16}" for f in c.flips) or "none"
        ppl = (f"{fmt(c.perplexity_float32, '.3f')} / {fmt(c.perplexity_bf16, '.3f')} ({c.perplexity_windows} windows)"
               if c.perplexity_windows else NA)
        out.append(md_row((f"`{key}`", c.items, f"{len(c.flips)}: {flips}", fmt(c.median_abs_diff_loglik, ".4f"), ppl)))
    out += ["", "Every item is scored in float32 for the tables above; the bf16 re-scoring shows which picks "
                "depend on the precision (a near-tie can flip with the CPU's bf16 kernels)."]
    return "\n".join(out)


def speed_section(metrics: Metrics) -> str:
    cost = metrics.cost
    if cost is None:
        return "_Not measured: it needs two models of different size (full and pruned, or base and base minus " \
               "the block), and `--cost-rounds` > 0._"
    seq, tokens = cost.train_batch
    out = [f"The two models ran in one process, alternating in {cost.rounds} rounds (after a warm-up) on the same "
           f"inputs, {cost.threads} thread(s): a training step is one forward and backward pass on {seq} × {tokens} "
           f"tokens ({cost.train_precision}, eager, no optimizer step); generation is one sequence of exactly "
           f"{cost.generation_new_tokens} new positions, greedy, {cost.generation_precision}.", "",
           "| model | training step, s [95% CI] | generation, s per sequence [95% CI] | generated positions/s |",
           "|---|---|---|---|"]
    for key, c in cost.per_model.items():
        out.append(md_row((f"`{key}`", fmt_interval(c.train_step_seconds, ".3f"),
                           fmt_interval(c.generation_seconds_per_sequence, ".3f"), fmt(c.generation_tokens_per_s, ".1f"))))
    sentences = [sentence_case(c.sentence) for c in metrics.comparisons_of("speed")]
    if sentences:
        out += ["", *[f"- {s}" for s in sentences]]
    return "\n".join(out)


def answers_section(metrics: Metrics, gens: list[Generation]) -> str:
    """Answer quality per model and style, then the answers themselves (folded)."""
    out = ["Questions of the Q&A set asked without their options, greedy: plain text (`Question: …\\nAnswer:`) and "
           "through the tokenizer's chat template. *Contains the answer*: the reference answer or an alias occurs in "
           "the answer (up to the first blank line or a new \"Question:\"). *On topic*: the answer names a key term "
           "of the question or one of its four options. *Distinct-2*: distinct word bigrams / all bigrams of the "
           "completion (1 = no repetition). Intervals resample questions.", "",
           "| model | style | questions | contains the answer | on topic | distinct-2 |", "|---|---|---|---|---|---|"]
    for key in MODEL_KEYS:
        e = metrics.entry(key)
        if e is None or e.generation is None:
            continue
        for style, q in e.generation.answers.items():
            if not q.available:
                out.append(md_row((f"`{key}`", style, 0, q.note or NA, NA, NA)))
                continue
            out.append(md_row((f"`{key}`", style, q.questions, fmt_acc_interval(q.contains_answer),
                               fmt_acc_interval(q.on_topic), fmt(q.distinct_2, ".2f"))))
    asked = [g for g in gens if g.kind == "question"]
    by_item: dict[str, list[Generation]] = {}
    for g in asked:
        by_item.setdefault(g.item_id or g.prompt_id, []).append(g)
    for item_id, recs in by_item.items():
        q = recs[0]
        tag = "seen in training" if q.seen_in_train else "not in the training text"
        plain = next((g.prompt for g in recs if g.style == "plain"), q.prompt)
        out += ["", f"<details><summary>{item_id} ({tag})</summary>", "", quote(plain), ""]
        styles = ("plain", "chat")
        for g in sorted(recs, key=lambda g: (MODEL_KEYS.index(g.model) if g.model in MODEL_KEYS else 9,
                                             styles.index(g.style) if g.style in styles else 9)):
            marks = ("✓ answer" if g.contains_answer else "✗ answer") + (", on topic" if g.on_topic else ", off topic")
            body = fenced(g.completion, WRAP) if g.completion.strip() else "_(no text: the model ended at once with EOS)_"
            out += [f"**{g.model}** · {g.style} · {marks}", "", body, ""]
        out.append("</details>")
    return "\n".join(out)
