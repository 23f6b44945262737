"""The depth study's report section (issue 8): how much depth SmolLM2 can lose, and how well training heals it.

Reads only the study's own files, each optional (a missing one becomes a note, never an error):
- `outputs/prune/removal_curve.json` (`04 --curve`): five methods' chosen sets and the calibration and
  validation perplexity for k = 0 … K blocks removed;
- `outputs/prune/block_importance.json` (04) and `outputs/prune/block_scores_finetuned.json`
  (`04 --scores-only --model outputs/runs/full/model`): per-block importance before and after fine-tuning;
- `outputs/study/runs/<name>/pruned/{run.json,log.jsonl}` for the four healing runs and
  `outputs/runs/full/{run.json,log.jsonl}` (the fine-tuned full model, the teacher and the target of the healing);
- `outputs/study/healing_eval.json` (`python -m bmwlm.evaluate.healing`): every healed model's validation
  perplexity with its interval over articles, and the paired comparisons (distillation vs fine-tuning, each vs
  the teacher).

`depth_section(study, figures)` returns the markdown; `plot_removal_curve`, `plot_healing` and
`plot_importance_shift` return PNG bytes; `render(study, out_dir)` writes `depth.md` and its figures (what `make study` runs last,
`python -m bmwlm.report.depth`). 06_report.py adds the same section and figures to report.md when
`has_study` finds any of the study's files.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MultipleLocator, NullFormatter  # noqa: E402

from bmwlm import stats  # noqa: E402
from bmwlm.config import BLOCK_IMPORTANCE_FILE, RUNS_DIR, STUDY_REPORT_DIR, STUDY_RUNS_DIR  # noqa: E402
from bmwlm.io import BadRecordError, MissingInputError, write_together  # noqa: E402
from bmwlm.prune.budget import spearman  # noqa: E402
from bmwlm.report.figures import png_bytes  # noqa: E402
from bmwlm.records.prune import (  # noqa: E402
    FINETUNED_SCORES_FILE, HEALING_EVAL_FILE, HEALING_RUNS, REMOVAL_CURVE_FILE, TEACHER, BlockImportance, BlockScore,
    BlockScoring, HealingEvaluation, RemovalCurve,
)
from bmwlm.records.training import LogLine, RunSummary, load_log, run_files  # noqa: E402
from bmwlm.report.text import NA, fmt, fmt_count, fmt_seconds, md_row  # noqa: E402

FIGURES = ("removal_curve.png", "healing.png", "importance_shift.png")
# Okabe-Ito, one colour and marker per method in every figure
METHOD_STYLE = {"loss_increase": ("#0072B2", "o"), "iterative_loss": ("#009E73", "s"),
                "block_influence": ("#E69F00", "^"), "angular_span": ("#CC79A7", "D"), "last_blocks": ("#666666", "v")}


@dataclass
class Study:
    curve: RemovalCurve | None = None
    before: BlockImportance | None = None  # 04's scores of the base model
    after: BlockScoring | None = None  # the same scores of the fine-tuned full model
    runs: dict[str, RunSummary] = field(default_factory=dict)  # HEALING_RUNS folder name -> run.json
    full: RunSummary | None = None  # the fine-tuned full model's run (teacher, gap target)
    logs: dict[str, list[LogLine]] = field(default_factory=dict)  # run name (or TEACHER) -> its log.jsonl
    healing: HealingEvaluation | None = None  # per-article scores and paired comparisons of the healed models
    notes: dict[str, str] = field(default_factory=dict)  # what is missing, and why


def _try(notes: dict, key: str, load):
    try:
        return load()
    except (MissingInputError, BadRecordError, OSError, ValueError) as exc:
        notes[key] = str(exc)
        return None


def _log(folder: Path) -> list[LogLine] | None:
    path = Path(folder) / "log.jsonl"
    return load_log(path) if path.is_file() else None


def load_study(curve_file: Path = REMOVAL_CURVE_FILE, importance_file: Path = BLOCK_IMPORTANCE_FILE,
               finetuned_scores_file: Path = FINETUNED_SCORES_FILE, study_runs_dir: Path = STUDY_RUNS_DIR,
               runs_dir: Path = RUNS_DIR, healing_file: Path = HEALING_EVAL_FILE) -> Study:
    """Every study record that exists; `notes` says why the others are absent. The teacher is `<runs_dir>/full`."""
    s = Study()
    s.curve = _try(s.notes, "curve", lambda: RemovalCurve.load(curve_file, "04_prune_layer.py --curve (make study)"))
    s.before = _try(s.notes, "before", lambda: BlockImportance.load(importance_file, "04_prune_layer.py (make prune)"))
    s.after = _try(s.notes, "after", lambda: BlockScoring.load(
        finetuned_scores_file, "04_prune_layer.py --scores-only --model outputs/runs/full/model (make study)"))
    s.full = _try(s.notes, "full", lambda: run_files("full", runs_dir).summary())
    folders = {TEACHER: run_files("full", runs_dir).folder}
    for name in HEALING_RUNS.values():
        folders[name] = Path(study_runs_dir) / name / "pruned"
        run = _try(s.notes, name, lambda f=folders[name]: RunSummary.load(f / "run.json", "make study"))
        if run is not None:
            s.runs[name] = run
    for name, folder in folders.items():
        lines = _try(s.notes, f"log:{name}", lambda f=folder: _log(f))
        if lines:
            s.logs[name] = lines
    s.healing = _try(s.notes, "healing", lambda: HealingEvaluation.load(
        healing_file, "python -m bmwlm.evaluate.healing (make study)"))
    return s


def has_study(study: Study) -> bool:
    """Whether any of the study's own files exists (04's block_importance.json alone is the default run's)."""
    return study.curve is not None or study.after is not None or bool(study.runs) or study.healing is not None


def study_inputs(prune_dir: Path, study_runs_dir: Path = STUDY_RUNS_DIR, runs_dir: Path = RUNS_DIR) -> Study:
    """`load_study` with the study's files looked up in one prune folder (06's --prune-dir); the healing
    evaluation beside the healing runs (`<study_runs_dir>/../healing_eval.json`)."""
    return load_study(Path(prune_dir) / REMOVAL_CURVE_FILE.name, Path(prune_dir) / BLOCK_IMPORTANCE_FILE.name,
                      Path(prune_dir) / FINETUNED_SCORES_FILE.name, study_runs_dir, runs_dir,
                      Path(study_runs_dir).parent / HEALING_EVAL_FILE.name)


# ---------------------------------------------------------------- figures


OFF_SCALE = 20  # the curve figure's scale ends near the largest perplexity within this factor of the intact model's


def plot_removal_curve(curve: RemovalCurve) -> bytes | None:
    """Perplexity against blocks removed, a line per method; calibration (where the sets were chosen) on the
    left, validation (reporting) on the right, one log scale for both."""
    if not curve.curves:
        return None
    panels = [("calibration_perplexity", f"Calibration sample ({fmt_count(curve.calibration.predicted_tokens)} "
                                         "training tokens):\nwhere the blocks were chosen")]
    if curve.validation_tokens:
        panels.append(("validation_perplexity", f"Validation windows ({fmt_count(curve.validation_tokens)} tokens):\n"
                                                "scored after every choice"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), sharey=True, squeeze=False)
    values = [getattr(p, key) for pts in curve.curves.values() for p in pts for key, _ in panels
              if getattr(p, key) is not None]
    k_max = curve.max_removed
    tops = []  # per panel: the scale's top (methods above it are named, not drawn to scale)
    for ax, (key, title) in zip(axes[0], panels):
        ends = []
        for method in curve.methods:
            pts = [p for p in curve.curves.get(method, []) if getattr(p, key) is not None]
            if not pts:
                continue
            color, marker = METHOD_STYLE.get(method, ("0.3", "o"))
            ax.plot([p.k for p in pts], [getattr(p, key) for p in pts], color=color, marker=marker, ms=5, lw=2,
                    label=curve.method_labels.get(method, method), alpha=0.9)
            ends.append((getattr(pts[-1], key), method, color))
        base = curve.curves[curve.methods[0]][0]
        ax.axhline(getattr(base, key), color="0.2", lw=0.8, ls=":")
        ax.text(k_max + 0.2, getattr(base, key) * 1.04, f"intact model: {getattr(base, key):.1f}", fontsize=8.5,
                color="0.2", ha="right", va="bottom")
        if curve.deep_cut is not None:
            cut = curve.curves.get(curve.deep_cut.method, [])
            if len(cut) > k_max and getattr(cut[k_max], key) is not None:
                ax.plot([k_max], [getattr(cut[k_max], key)], "o", ms=14, mfc="none", mec="black", mew=1.5, zorder=4)
        base_value = getattr(base, key)
        top = max(v for v in [getattr(p, key) for pts in curve.curves.values() for p in pts]
                  if v is not None and v <= base_value * OFF_SCALE) * 1.35
        for method in curve.methods:  # a method that leaves the scale is named where it leaves, with its values
            pts = [p for p in curve.curves.get(method, []) if getattr(p, key) is not None]
            out = [p for p in pts if getattr(p, key) > top]
            if out:
                color, _ = METHOD_STYLE.get(method, ("0.3", "o"))
                ax.annotate(f"{curve.method_labels.get(method, method)}: off the scale from k = {out[0].k}\n"
                            f"({_big(getattr(out[0], key))}; {_big(getattr(out[-1], key))} at k = {out[-1].k})",
                            xy=(out[0].k, top), xytext=(out[0].k + 0.25, top / 1.12), fontsize=8.5, color=color,
                            va="top", arrowprops=dict(arrowstyle="->", color=color, lw=1))
        tops.append(top)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10.5)
        ax.set_xlabel(f"blocks removed (of {curve.n_blocks})")
        ax.xaxis.set_major_locator(MultipleLocator(1))
        ax.set_xlim(-0.3, k_max + 0.3)
        ax.grid(alpha=0.3, which="both")
        ax.set_axisbelow(True)
    ax0 = axes[0][0]
    ax0.set_ylim(min(values) * 0.8, max(tops))  # the panels share this axis
    ax0.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax0.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax0.yaxis.set_minor_formatter(NullFormatter())
    ax0.set_ylabel("perplexity (log scale, lower is better)")
    handles, labels = ax0.get_legend_handles_labels()
    if curve.deep_cut is not None:
        handles.append(plt.Line2D([], [], marker="o", ms=10, mfc="none", mec="black", ls=""))
        labels.append(f"deep cut chosen for the healing runs ({curve.deep_cut.method}, k = {k_max})")
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8.5, frameon=False)
    fig.suptitle(f"Removing blocks from {curve.base_model} before any fine-tuning ({curve.precision})", fontsize=12)
    fig.tight_layout(rect=(0, 0.1, 1, 0.97))
    return png_bytes(fig)


HEALING_STYLE = {"fine-tune": "#0072B2", "distill": "#D55E00"}  # colour per healing; line style per cut
CUT_STYLE = {"one_block": ("-", "o"), "deep_cut": ("--", "s")}


def plot_healing(study: Study, cut_labels: dict[str, str]) -> bytes | None:
    """Validation perplexity at each evaluation of every healing run and of the teacher, against training
    tokens (log scale): how fast each cut heals, and how close each healing gets to the fine-tuned full model."""
    series = [(name, cut, healing) for (cut, healing), name in HEALING_RUNS.items() if study.logs.get(name)]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8.6, 5.2))
    ends = []
    for name, cut, healing in series:
        pts = [(line.tokens, math.exp(line.eval_loss)) for line in study.logs[name] if line.is_eval]
        if not pts:
            continue
        ls, marker = CUT_STYLE.get(cut, ("-", "o"))
        color = HEALING_STYLE.get(healing, "0.4")
        ax.plot([t / 1e3 for t, _ in pts], [p for _, p in pts], ls=ls, marker=marker, color=color, lw=2, ms=6,
                label=f"{cut_labels.get(cut, cut)}, {healing}")
        ends.append((pts[-1][1], color))
    teacher = [(line.tokens, math.exp(line.eval_loss)) for line in study.logs.get(TEACHER, []) if line.is_eval]
    if teacher:
        ax.plot([t / 1e3 for t, _ in teacher], [p for _, p in teacher], color="black", lw=1.5, ls=":", marker=".",
                label=f"no cut ({study.full.blocks if study.full else 'all'} blocks), fine-tune: the teacher")
        ax.axhline(teacher[-1][1], color="black", lw=0.6, alpha=0.5)
    xmax = max(line.tokens for lines in study.logs.values() for line in lines) / 1e3
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(-0.02 * xmax, xmax * 1.1)
    ax.set_xlabel("training tokens (thousands); every run: the same recipe, seed and batches")
    ax.set_ylabel("validation perplexity (log scale, lower is better)")
    ax.set_title("Healing a cut model: plain fine-tuning vs distillation from the fine-tuned full model", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.set_axisbelow(True)
    ax.legend(fontsize=8.5, frameon=False)
    fig.tight_layout()
    # the final value beside each line's end, so the table need not be consulted; close values pushed apart
    ys = [ax.transData.transform((xmax, value))[1] * 72 / fig.dpi for value, _ in ends]  # in points
    for (value, color), dy in zip(ends, label_offsets(ys, min_gap=10.0)):
        ax.annotate(f"{value:.2f}", xy=(xmax, value), xytext=(6, dy), textcoords="offset points", va="center",
                    fontsize=8.5, color=color)
    return png_bytes(fig)


def work_relative(text: str) -> str:
    """`text` with absolute paths into a work folder's outputs/ written from outputs/ on (the published
    section does not name the folder the study happened to run in)."""
    return re.sub(r"(?<![\w.])/(?:\S*/)?(outputs/)", r"\1", text)


def label_offsets(ys: list[float], min_gap: float) -> list[float]:
    """Vertical offsets that keep labels at heights `ys` at least `min_gap` apart (same units), moving each
    label as little as possible upwards from the lowest one."""
    offsets, last = [0.0] * len(ys), -math.inf
    for i in sorted(range(len(ys)), key=ys.__getitem__):
        y = max(ys[i], last + min_gap)
        offsets[i], last = y - ys[i], y
    return offsets


def plot_importance_shift(before: list[BlockScore], after: list[BlockScore], before_label: str = "base model",
                          after_label: str = "fine-tuned full model") -> bytes | None:
    """Per-block loss increase when skipped, before and after fine-tuning, side by side. A symlog scale when
    a few blocks dwarf the rest (SmolLM2's first block costs nats, the cheapest ones hundredths)."""
    if not before or not after or len(before) != len(after):
        return None
    blocks = [s.block for s in before]
    b, a = [s.importance for s in before], [s.importance for s in after]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.3 * len(blocks) + 3), 4.8))
    w = 0.4
    ax.bar([x - w / 2 for x in blocks], b, w, color="#8C9DB0", label=before_label)
    ax.bar([x + w / 2 for x in blocks], a, w, color="#0072B2", label=after_label)
    magnitudes = sorted(abs(v) for v in b + a if v != 0) or [1.0]
    typical = magnitudes[len(magnitudes) // 2]
    if magnitudes[-1] > 20 * typical:
        linthresh = float(f"{typical:.1g}")
        ax.set_yscale("symlog", linthresh=linthresh, linscale=0.7)
        scale_note = f"symlog: linear within ±{linthresh:g}"
    else:
        scale_note = "linear"
    for values, dx, color, name in ((b, -w / 2, "#4A5A6A", "before"), (a, w / 2, "#0072B2", "after")):
        k = min(range(len(values)), key=lambda i: (values[i], i))
        ax.annotate(f"least\n{name}", xy=(blocks[k] + dx, max(values[k], 0)), xytext=(0, 26 if name == "after" else 48),
                    textcoords="offset points", ha="center", fontsize=8, color=color,
                    arrowprops=dict(arrowstyle="->", color=color, lw=1))
    ax.axhline(0, color="0.2", lw=0.8)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_ylabel(f"loss increase when skipped\n(nats / token, {scale_note})")
    ax.set_xlabel("block index")
    ax.xaxis.set_major_locator(MultipleLocator(1 if len(blocks) <= 32 else 4))
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlim(min(blocks) - 0.7, max(blocks) + 0.7)
    lo, hi = min(b + a + [0.0]), max(b + a + [0.0])
    if ax.get_yscale() == "linear":
        pad = 0.25 * (hi - lo or 1.0)
        ax.set_ylim(lo - 0.05 * pad, hi + pad)
    else:
        ax.set_ylim(lo * 1.5 if lo < 0 else 0, hi * 4)
    rho = spearman(b, a)
    ax.set_title(f"Block importance before and after fine-tuning (rank correlation {rho:.2f})", fontsize=11)
    ax.legend(fontsize=9, loc="upper center", ncol=2, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return png_bytes(fig)


def cut_labels(study: Study) -> dict[str, str]:
    """How the two cuts are named: "block 14", "8 blocks [...]" (from 04's records where they exist)."""
    c = study.curve
    return {"one_block": f"block {study.before.removed_block}" if study.before else "one block",
            "deep_cut": f"{len(c.deep_cut.blocks)} blocks {c.deep_cut.blocks}" if c and c.deep_cut else "deep cut"}


def figures(study: Study) -> dict[str, bytes]:
    out = {}
    if study.curve is not None:
        png = plot_removal_curve(study.curve)
        if png:
            out["removal_curve.png"] = png
    png = plot_healing(study, cut_labels(study))
    if png:
        out["healing.png"] = png
    if study.before is not None and study.after is not None and len(study.before.scores) == len(study.after.scores):
        png = plot_importance_shift(study.before.scores, study.after.scores)
        if png:
            out["importance_shift.png"] = png
    return out


# ---------------------------------------------------------------- markdown


def _ppl(loss) -> float | None:
    return math.exp(loss) if loss is not None else None


def gap_closed(before: float | None, after: float | None, target: float | None) -> float | None:
    """Share of the perplexity gap between the cut model and the target that training closed."""
    if None in (before, after, target) or before == target:
        return None
    return (before - after) / (before - target)


def _big(value) -> str:
    """A perplexity for a table cell: one decimal, or two significant digits once it is past 10,000."""
    return fmt(value, ".1f") if value is None or value < 1e4 else f"{value:.1e}".replace("e+0", "e").replace("e+", "e")


def curve_table(curve: RemovalCurve) -> list[str]:
    ks = range(curve.max_removed + 1)
    lines = [md_row(["method", *[f"k = {k}" for k in ks]]), md_row(["---"] * (len(ks) + 1))]
    for method in curve.methods:
        pts = curve.curves.get(method, [])
        cells = [f"{_big(p.validation_perplexity)} ({_big(p.calibration_perplexity)})" for p in pts]
        lines.append(md_row([curve.method_labels.get(method, method), *cells]))
    lines += ["", f"Blocks each method removes at k = {curve.max_removed}: " + "; ".join(
        f"{curve.method_labels.get(m, m)} {curve.curves[m][-1].blocks}" for m in curve.methods if m in curve.curves) + "."]
    return lines


def comparison_table(curve: RemovalCurve) -> list[str]:
    """Each method's validation perplexity relative to the deep-cut method's at every k, with the paired
    interval over validation windows; bold where the interval excludes 1. Empty without per-window losses."""
    comps = curve.validation_comparisons
    if not comps:
        return []
    ref, ks = comps[0].reference, range(1, curve.max_removed + 1)
    by = {(c.method, c.k): c for c in comps}

    def cell(c) -> str:
        if c is None:
            return NA
        if c.same_set:
            return "same set"
        ratio = f"{c.ratio:.2f}" if c.ratio < 100 else _big(c.ratio)
        lo, hi = (f"{x:.2f}" if x < 100 else _big(x) for x in c.ratio_ci95)
        detectable = c.ratio_ci95[0] > 1 or c.ratio_ci95[1] < 1
        return f"{'**' + ratio + '**' if detectable else ratio} [{lo}, {hi}]"

    label = curve.method_labels.get(ref, ref)
    lines = [f"Validation perplexity of each method's set relative to that of {label} at the same k (the "
             f"method of the deep cut, chosen on calibration), with a 95% paired bootstrap interval over the "
             f"{comps[0].windows} validation windows ({comps[0].resamples} resamples); **bold**: the interval "
             "excludes 1, otherwise no detectable difference on these windows.", "",
             md_row(["method", *[f"k = {k}" for k in ks]]), md_row(["---"] * (len(ks) + 1))]
    for method in curve.methods:
        if method != ref:
            lines.append(md_row([curve.method_labels.get(method, method), *[cell(by.get((method, k))) for k in ks]]))
    return lines


def _interval(study: Study, name: str) -> str:
    """The validation perplexity's 95% interval over articles from the healing evaluation (n/a without it)."""
    model = study.healing.models.get(name) if study.healing else None
    ci = model.validation.ci95 if model else None
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else NA


def healing_table(study: Study, cut_blocks: dict[str, str]) -> list[str]:
    full_ppl = _ppl(study.full.final_eval_loss) if study.full else None
    lines = [md_row(["cut", "healing", "val. perplexity before", "after", "95% CI (articles)", "share of the gap "
                     "to the fine-tuned full model closed", "tokens/s", "training time"]), md_row(["---"] * 8)]
    for (cut, healing), name in HEALING_RUNS.items():
        run = study.runs.get(name)
        if run is None:
            lines.append(md_row([cut_blocks.get(cut, cut), healing, NA, NA, NA, NA, NA, f"not run ({name})"]))
            continue
        before, after = _ppl(run.initial_eval_loss), _ppl(run.final_eval_loss)
        share = gap_closed(before, after, full_ppl)
        lines.append(md_row([cut_blocks.get(cut, cut), healing, fmt(before, ".2f"), fmt(after, ".2f"),
                             _interval(study, name), f"{100 * share:.0f}%" if share is not None else NA,
                             fmt(run.tokens_per_s, ".0f"), fmt_seconds(run.train_seconds)]))
    if study.full:
        lines.append(md_row([f"none ({study.full.blocks} blocks)", "fine-tune (the teacher)",
                             fmt(_ppl(study.full.initial_eval_loss)), fmt(full_ppl), _interval(study, TEACHER),
                             "target", fmt(study.full.tokens_per_s, ".0f"), fmt_seconds(study.full.train_seconds)]))
    return lines


def _conditions(study: Study) -> str:
    """Where the training timings come from: the CPU, threads and precision of every run, said once when they
    agree (a run in another precision than the others is then visible: it is not the same recipe)."""
    runs = [*study.runs.values(), *([study.full] if study.full else [])]
    kinds = sorted({f"{r.cpu_model}, {r.threads} thread{'s' if r.threads != 1 else ''}, {r.precision}" for r in runs})
    return "; ".join(kinds)


def healing_sentences(study: Study, cut_blocks: dict[str, str]) -> list[str]:
    """The healing evaluation's paired comparisons as a list, with the models named by cut and healing."""
    if study.healing is None:
        return []
    names = {name: f"{cut_blocks.get(cut, cut)}, {healing}" for (cut, healing), name in HEALING_RUNS.items()}
    names[TEACHER] = "the fine-tuned full model"
    out = []
    for comp in study.healing.comparisons:  # 05's wording (`stats.compare`), the models named by cut and healing
        sentence = stats.compare(comp.metric, names.get(comp.a, comp.a), names.get(comp.b, comp.b), comp.difference,
                                 comp.ci95, test=comp.test)
        out.append(f"- {sentence[0].upper()}{sentence[1:]}")
    if not study.healing.comparisons:
        return ["_The healing evaluation found no pair of scored models to compare._", ""]
    sources = [f"{m.run} from {work_relative(m.source)}" for m in study.healing.models.values() if m.from_metrics]
    note = (f" Scores taken from 05's records because the model folder was not kept: {'; '.join(sources)} (accepted "
            "because the run's own last evaluation gives the same validation loss)." if sources else "")
    return [f"Paired comparisons over the {study.healing.comparisons[0].units} "
            f"validation articles (`python -m bmwlm.evaluate.healing`, {study.healing.precision}, "
            f"{study.healing.bootstrap_resamples} bootstrap resamples; a - b, a direction only when the 95% interval "
            f"excludes 0).{note}", "", *out, ""]


def depth_section(study: Study, figure_paths: dict[str, str] | None = None, heading: str = "## Depth study") -> str:
    """The section's markdown; `figure_paths` maps FIGURES names to the links to use (absent: no image)."""
    figure_paths = figure_paths or {}
    sub = "#" * (len(heading) - len(heading.lstrip("#")) + 1)  # sub-sections one level below `heading`
    out = [heading, ""]
    c = study.curve
    if c is None:
        out += [f"_No removal curve ({study.notes.get('curve', 'not run')})._", ""]
    else:
        cal = c.calibration
        out += [
            f"Blocks of `{c.base_model}` ({c.n_blocks}) removed by five methods, k = 0 … {c.max_removed} "
            f"(about a quarter of the depth). Every choice is made on the calibration sample "
            f"({fmt_count(cal.predicted_tokens)} tokens in {cal.windows} evenly spaced windows of the training "
            f"split, {cal.articles} articles, {str(cal.first_published)[:10]} … {str(cal.last_published)[:10]}); "
            f"the validation windows ({fmt_count(c.validation_tokens)} predicted tokens of the validation split) are scored only afterwards. "
            f"Scores in {c.precision}, no fine-tuning.",
            "",
            "Validation perplexity (calibration perplexity in brackets) with k blocks removed:",
            "",
            *curve_table(c),
            "",
        ]
        if c.deep_cut is not None:
            d = c.deep_cut
            out += [f"Deep cut for the healing runs: `{d.method}` has the lowest calibration perplexity at "
                    f"k = {c.max_removed} and removes blocks {d.blocks} ({fmt_count(d.parameters)} parameters left).", ""]
        if c.validation_comparisons:
            out += [*comparison_table(c), ""]
        else:
            out += ["_No intervals on the curve: this record keeps no per-window validation losses "
                    "(`04_prune_layer.py --curve-windows` adds them)._", ""]
        if "removal_curve.png" in figure_paths:
            out += [f"![Perplexity against blocks removed]({figure_paths['removal_curve.png']})", ""]
    cut_blocks = cut_labels(study)
    out += [f"{sub} Healing: fine-tuning vs distillation from the fine-tuned full model", ""]
    if not study.runs:
        out += ["_No healing run found (outputs/study/runs/; `make study`)._", ""]
    else:
        teacher = next((work_relative(r.loss.split("distillation from ", 1)[1]) for r in study.runs.values()
                        if "distillation from" in r.loss), None)
        out += [
            "Every run uses the recipe of the two main variants (`TrainConfig`: same steps, tokens, seed and batch "
            "order); distillation replaces the loss by the KL divergence to the teacher's next-token distributions"
            + (f" (teacher: {teacher})" if teacher else "") + ". Perplexity on the validation split before and after "
            "training; the share is (before − after) / (before − fine-tuned full model). Tokens/s counts the "
            "student's training tokens, so a distillation run's time includes the teacher's forward passes "
            f"(timings: {_conditions(study)}). One training seed per run: the intervals are over validation "
            "articles, not over training seeds.",
            "",
            *healing_table(study, cut_blocks),
            "",
            *healing_sentences(study, cut_blocks),
        ]
        if "healing.png" in figure_paths:
            out += [f"![Validation perplexity during healing]({figure_paths['healing.png']})", ""]
    out += [f"{sub} Does fine-tuning move importance?", ""]
    if study.before is None or study.after is None:
        missing = "; ".join(study.notes[k] for k in ("before", "after") if k in study.notes)
        out += [f"_Not measured ({missing or 'missing scores'})._", ""]
    elif len(study.before.scores) != len(study.after.scores):
        out += [f"_Not comparable: the base model's scores cover {len(study.before.scores)} blocks, the fine-tuned "
                f"model's {len(study.after.scores)} (the two records come from different models; re-run `make study`)._",
                ""]
    else:
        b, a = study.before, study.after
        rho = spearman([s.importance for s in b.scores], [s.importance for s in a.scores])
        least_b = min(b.scores, key=lambda s: (s.importance, s.block)).block
        out += [f"The same scoring (loss increase when skipped, {a.precision}, the same calibration sample) of the "
                f"base model and of the fine-tuned full model: rank correlation {rho:.2f}; least important block "
                f"{least_b} before, {a.least_important} after. The fine-tuned model has seen the calibration "
                "tokens in training (they come from the training split), which would lower its losses overall; "
                "the ranking is what compares.", ""]
        if "importance_shift.png" in figure_paths:
            out += [f"![Block importance before and after fine-tuning]({figure_paths['importance_shift.png']})", ""]
    return "\n".join(out).rstrip() + "\n"


def render(study: Study, out_dir: Path = STUDY_REPORT_DIR) -> Path:
    """Write depth.md and its figures into `out_dir` (one atomic commit)."""
    pngs = figures(study)
    md = depth_section(study, {name: name for name in pngs}, heading="# Depth study")
    out_dir = Path(out_dir)
    write_together({out_dir / "depth.md": md, **{out_dir / n: png for n, png in pngs.items()}})
    return out_dir / "depth.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the depth study's section (depth.md + figures) from its records.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--curve-file", type=Path, default=REMOVAL_CURVE_FILE, help="04 --curve's record")
    p.add_argument("--importance-file", type=Path, default=BLOCK_IMPORTANCE_FILE, help="04's record (base model)")
    p.add_argument("--finetuned-scores-file", type=Path, default=FINETUNED_SCORES_FILE,
                   help="04 --scores-only's record for the fine-tuned full model")
    p.add_argument("--study-runs-dir", type=Path, default=STUDY_RUNS_DIR, help="the healing runs")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="03's runs (the fine-tuned full model)")
    p.add_argument("--healing-file", type=Path, default=HEALING_EVAL_FILE,
                   help="python -m bmwlm.evaluate.healing's record (intervals and paired comparisons)")
    p.add_argument("--out-dir", type=Path, default=STUDY_REPORT_DIR, help="where depth.md and the figures go")
    args = p.parse_args(argv)
    study = load_study(args.curve_file, args.importance_file, args.finetuned_scores_file, args.study_runs_dir,
                       args.runs_dir, args.healing_file)
    print(render(study, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
