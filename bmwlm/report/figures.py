"""The report's five figures, drawn from the typed records; each is returned as PNG bytes (or None
when its inputs are absent) so that the report and its figures are written together.

One colour per model in every figure (Okabe-Ito, readable for colour-blind readers).
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: render to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MultipleLocator, NullFormatter, PercentFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from bmwlm.config import MODEL_KEYS  # noqa: E402
from bmwlm.records.evaluation import Metrics  # noqa: E402
from bmwlm.records.prune import BlockImportance  # noqa: E402
from bmwlm.records.training import LogLine  # noqa: E402
from bmwlm.report.inputs import Inputs, model_entry  # noqa: E402
from bmwlm.report.tables import ppl, scored_split, split_log  # noqa: E402
from bmwlm.report.text import NA, fmt, fmt_count  # noqa: E402

MODEL_COLORS = {"base": "#666666", "base_minus_block": "#E69F00", "full": "#0072B2", "pruned": "#009E73"}
FIGSIZE = (8, 4.5)
DPI = 140
FIGURES = ("loss_curves.png", "perplexity.png", "block_importance.png", "qa_accuracy.png", "comparisons.png")


def smooth(values, window: int) -> list[float]:
    """Trailing moving average: out[i] is the mean of the last `window` values up to i.

    The first points average over what exists so far, so the output has the input's length
    and starts at the first value (no lag-induced dip at the start of a loss curve).
    """
    vals = [float(v) for v in values]
    if window <= 1 or not vals:
        return vals
    csum = np.cumsum([0.0] + vals)
    return [float((csum[i + 1] - csum[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)))
            for i in range(len(vals))]


def png_bytes(fig) -> bytes:
    """A figure as PNG bytes (closed afterwards), for writing together with report.md."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def short_label(key: str, block: int | None = None) -> str:
    if key == "base_minus_block":
        return f"base − block {block}" if block is not None else "base − 1 block"
    return {"base": "base", "full": "full\nfine-tuned", "pruned": "pruned\nfine-tuned"}.get(key, key)


def _model_ticks(ax, block: int | None) -> None:
    ax.set_xlim(-0.6, len(MODEL_KEYS) - 0.4)
    ax.set_xticks(range(len(MODEL_KEYS)))
    ax.set_xticklabels([short_label(k, block) for k in MODEL_KEYS])
    for tick, key in zip(ax.get_xticklabels(), MODEL_KEYS):
        tick.set_color(MODEL_COLORS[key])
        tick.set_fontweight("bold")


def _na_marker(ax, i, why: str = "not available") -> None:
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(i, 0.04, f"{NA}\n({why})", transform=trans, ha="center", va="bottom", color="0.4",
            fontstyle="italic", fontsize=10)


def plot_loss_curves(logs: dict[str, list[LogLine]], window: int | None = None) -> bytes | None:
    """Train loss (raw, light + moving average) and validation loss (markers) of every variant."""
    series = {v: split_log(lines) for v, lines in logs.items()}
    series = {v: s for v, s in series.items() if s[0] or s[1]}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for variant, (train, evals) in series.items():
        color = MODEL_COLORS[variant]
        if train:
            x, y = [r.tokens for r in train], [r.loss for r in train]
            w = window or max(3, len(y) // 12)
            ax.plot(x, y, color=color, alpha=0.25, lw=1)
            ax.plot(x, smooth(y, w), color=color, lw=2.2, label=f"{variant}: train loss (avg of {w} logs)")
        if evals:
            ax.plot([r.tokens for r in evals], [r.eval_loss for r in evals], color=color, ls="--", lw=1,
                    marker="o", ms=6, mfc="white", mew=1.8, label=f"{variant}: validation loss", zorder=3)
    ax.plot([], [], color="0.5", alpha=0.35, lw=1, label="raw logged train loss")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_count(x)))
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("cross-entropy loss (nats / token)")
    sec = ax.secondary_yaxis("right", functions=(lambda x: np.exp(np.clip(x, -50, 50)),
                                                 lambda p: np.log(np.clip(p, 1e-12, None))))
    sec.set_ylabel("perplexity")
    ax.set_title("Fine-tuning loss: " + " vs ".join(series))
    ax.grid(alpha=0.3)
    xmax = max(r.tokens for tr, ev in series.values() for r in tr + ev)
    ax.set_xlim(-0.015 * xmax, xmax * 1.02 if xmax else 1)
    ax.legend(fontsize=8.5, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    return png_bytes(fig)


def plot_perplexity(metrics: Metrics, block: int | None = None) -> bytes | None:
    """Validation perplexity per model (95% interval over articles as error bars), with the train-slice
    perplexity beside it where measured."""
    entries = [model_entry(metrics, k) for k in MODEL_KEYS]
    vals = [ppl(e.validation) if e else None for e in entries]
    trains = [ppl(e.train_slice) if e else None for e in entries]
    cis = {"v": [e.validation.ci95 if e and e.validation else None for e in entries],
           "t": [e.train_slice.ci95 if e and e.train_slice else None for e in entries]}
    present = [v for v in vals + trains if v is not None] + [c[1] for c in cis["v"] + cis["t"] if c]
    if not present:
        return None
    has_train = any(t is not None for t in trains)
    w = 0.38 if has_train else 0.6
    fig, ax = plt.subplots(figsize=FIGSIZE)
    log_scale = max(present) / max(min(present), 1e-9) > 8
    for i, (k, e, v, t) in enumerate(zip(MODEL_KEYS, entries, vals, trains)):
        if v is None and t is None:
            _na_marker(ax, i, "not available" if e is None else "not measured")
            continue
        c = MODEL_COLORS[k]
        for value, ci, x, style in ((v, cis["v"][i], i - w / 2 if has_train else i, {}),
                                    (t, cis["t"][i], i + w / 2, {"alpha": 0.35, "hatch": "///"})):
            if value is None:
                continue
            yerr = [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]] if ci else None
            ax.bar(x, value, w, color=c, edgecolor=c, yerr=yerr, capsize=4, error_kw=dict(ecolor="0.2", lw=1.1),
                   **style)
            ax.text(x, (ci[1] if ci else value) * (1.04 if log_scale else 1.0) + (0 if log_scale else 0.01 * max(present)),
                    f"{value:.1f}", ha="center", va="bottom", fontsize=9, color="0.1" if not style else "0.3")
    _model_ticks(ax, block)
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
    handles = [Patch(color="0.45", label="validation"), Line2D([], [], color="0.2", marker="|", ls="",
                                                               ms=10, label="95% CI (resampling articles)")]
    if has_train:
        handles.append(Patch(facecolor=(0.45, 0.45, 0.45, 0.35), hatch="///", edgecolor="0.45",
                             label="train slice (over-fitting check)"))
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9)
    ax.set_title(f"Perplexity per model ({metrics.settings.precision.get('perplexity', '')})")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return png_bytes(fig)


def _clip_top(values: list[float]) -> float | None:
    """A y-limit that keeps small bars readable when one or two blocks dwarf the rest."""
    pos = sorted(v for v in values if v > 0)
    if len(pos) < 4:
        return None
    typical = pos[int(0.85 * (len(pos) - 1))]
    return typical * 1.9 if pos[-1] > typical * 2.5 else None


def _label_removed(ax, blocks: list[int], imp: list[float], k: int, ymax: float, color: str) -> float:
    """Annotate the removed block on the side whose next bars are lower (the label runs over about five
    bars), just above them; returns the (maybe grown) y-limit."""
    i = blocks.index(k)
    clipped = [min(x, ymax) for x in imp]
    left, right = clipped[max(0, i - 5):i], clipped[i + 1:i + 6]
    to_right = bool(right) and (not left or max(right) <= max(left))
    local = max([clipped[i], *(right if to_right else left)])
    y_text = local + 0.25 * ymax  # above the "last" / "middle" tags written over their bars
    if y_text > 0.8 * ymax:
        ymax = y_text / 0.8
        ax.set_ylim(top=ymax)
    ax.annotate(f"removed: block {k}\nimportance {imp[i]:.3f}", xy=(k, max(imp[i], 0)),
                xytext=(k + (0.3 if to_right else -0.3), y_text), ha="left" if to_right else "right", va="bottom",
                fontsize=9, color=color, fontweight="bold", arrowprops=dict(arrowstyle="->", color=color, lw=1.5))
    return ymax


def plot_block_importance(importance: BlockImportance) -> bytes | None:
    """Importance per block (removed block highlighted), cosine similarity in a second panel."""
    if not importance.scores:
        return None
    blocks = [s.block for s in importance.scores]
    imp = [s.importance for s in importance.scores]
    cos = [s.cosine_similarity for s in importance.scores]
    k = importance.removed_block
    hi_color, lo_color = MODEL_COLORS["base_minus_block"], "#8C9DB0"
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5.6), sharex=True, height_ratios=[2.3, 1])
    ax.bar(blocks, imp, color=[hi_color if b == k else lo_color for b in blocks], width=0.75)
    top = _clip_top(imp)
    if top is None:
        top = max(imp) * 1.2 if max(imp) > 0 else 1.0
    ax.set_ylim(min(0.0, min(imp) * 1.1), top)
    ymax = _label_removed(ax, blocks, imp, k, top, hi_color) if k in blocks else top
    for b, v in zip(blocks, imp):
        if v > ymax:  # bar cut at the top of the axis: write its value inside it
            ax.text(b, ymax * 0.97, f"{v:.2f} ↑", ha="center", va="top", rotation=90, fontsize=8,
                    color="white", fontweight="bold")
    nc = importance.naive_comparison
    for name in ("last", "middle"):
        if name in nc and nc[name].block in blocks and nc[name].block != k:
            b = nc[name].block
            ax.text(b, min(imp[blocks.index(b)], ymax) + 0.02 * ymax, name, ha="center", va="bottom", fontsize=8,
                    color="0.3", rotation=90)
    ax.axhline(0, color="0.2", lw=0.8)
    ax.set_ylabel(f"Δ {scored_split(importance)} loss when skipped\n(nats / token)" if importance.method == "loss_increase"
                  else f"importance ({importance.method})")
    ax.set_title(f"Block importance of {importance.base_model} ({len(blocks)} blocks)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax2.plot(blocks, cos, color="0.35", marker="o", ms=3.5, lw=1.2)
    if k in blocks:
        ax2.plot([k], [cos[blocks.index(k)]], "o", ms=8, color=hi_color, zorder=3)
    ax2.set_ylabel("cos(block input,\nblock output)")
    ax2.grid(alpha=0.3)
    lo, hi = min(cos), max(cos)
    pad = max(0.02, 0.1 * (hi - lo))
    ax2.set_ylim(lo - pad, min(1.0, hi + pad) if hi <= 1 else hi + pad)
    ax2.set_xlabel("block index")
    ax2.xaxis.set_major_locator(MultipleLocator(1 if len(blocks) <= 32 else 4))
    ax2.tick_params(axis="x", labelsize=8)
    ax2.set_xlim(min(blocks) - 0.7, max(blocks) + 0.7)
    if nc:
        note = f"{scored_split(importance).capitalize()} loss without the block — " + ", ".join(
            f"{name} ({rec.block}): {fmt(rec.loss, '.3f')}" for name, rec in nc.items())
        note += f"; intact model: {importance.baseline_loss:.3f}"
        fig.text(0.01, 0.01, note, fontsize=8, color="0.3", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.035, 1, 1))
    else:
        fig.tight_layout()
    return png_bytes(fig)


METHOD_STYLE = {"normalised": {"alpha": 1.0, "hatch": None}, "calibrated": {"alpha": 0.6, "hatch": ".."},
                "prior_only": {"alpha": 0.25, "hatch": "///"}}
METHOD_NAMES = {"normalised": "normalised", "calibrated": "calibrated", "prior_only": "prior only (no question)"}


def _accuracy_panel(ax, metrics: Metrics, what: str, block: int | None) -> float:
    """Bars of one set; returns the highest interval end drawn."""
    entries = [model_entry(metrics, k) for k in MODEL_KEYS]
    w = 0.8 / len(METHOD_STYLE)
    top = 0.0
    for i, (k, e) in enumerate(zip(MODEL_KEYS, entries)):
        score = getattr(e, what) if e is not None else None
        if score is None:
            _na_marker(ax, i, "not available" if e is None else "not measured")
            continue
        for j, (m, style) in enumerate(METHOD_STYLE.items()):
            if m not in score.methods:
                continue
            est = score.methods[m].accuracy
            x = i + (j - (len(METHOD_STYLE) - 1) / 2) * w
            yerr = [[max(0.0, est.value - est.ci95[0])], [max(0.0, est.ci95[1] - est.value)]]
            ax.bar(x, est.value, w * 0.92, color=MODEL_COLORS[k], alpha=style["alpha"], hatch=style["hatch"],
                   edgecolor=MODEL_COLORS[k], yerr=yerr, capsize=3, error_kw=dict(ecolor="0.2", lw=1.0))
            ax.text(x, est.ci95[1] + 0.01, f"{100 * est.value:.0f}", ha="center", va="bottom", fontsize=7.5)
            top = max(top, est.ci95[1])
    _model_ticks(ax, block)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return top


def plot_qa_accuracy(metrics: Metrics, block: int | None = None) -> bytes | None:
    """Q&A (left) and cloze (right) accuracy per model under the three scoring methods, 95% CI error
    bars; on the Q&A panel the two real baselines (frequency-prior guesser, uniform guess). No chance
    line on the cloze panel: its prior-only bars are the baseline that means something there."""
    entries = [model_entry(metrics, k) for k in MODEL_KEYS]
    sets = [(s, t) for s, t in (("qa", "Q&A set"), ("cloze", "cloze set"))
            if any(e is not None and getattr(e, s) is not None for e in entries)]
    if not sets:
        return None
    fig, axes = plt.subplots(1, len(sets), figsize=(6.2 * len(sets), 4.9), squeeze=False)
    for ax, (what, title) in zip(axes[0], sets):
        top = _accuracy_panel(ax, metrics, what, block)
        n = next(getattr(e, what).n for e in entries if e is not None and getattr(e, what) is not None)
        unit = "items" if what == "qa" else f"articles ({metrics.settings.cloze_articles})"
        ax.set_title(f"{title}: {n} items, intervals resample {unit}", fontsize=10)
        baselines = []
        if what == "qa":
            prior = metrics.frequency_prior
            if prior is not None:
                ax.axhline(prior.accuracy.value, color="#CC79A7", ls="--", lw=1.6, zorder=0.5)
                ax.axhspan(*prior.accuracy.ci95, color="#CC79A7", alpha=0.10, zorder=0.4, lw=0)
                lo, hi = prior.accuracy.ci95
                baselines.append(Line2D([], [], color="#CC79A7", ls="--", lw=1.6, label=(
                    f"frequency-prior guesser {100 * prior.accuracy.value:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}%]")))
            guess = next((e.qa.uniform_guess for e in entries if e and e.qa and e.qa.uniform_guess), None)
            if guess:
                ax.axhline(guess, color="0.2", ls=":", lw=1.3, zorder=0.5)
                baselines.append(Line2D([], [], color="0.2", ls=":", lw=1.3,
                                        label=f"uniform guess {100 * guess:.0f}% (balanced positions)"))
        ax.set_ylim(0, min(1.08, max(0.5, top * (1.45 if baselines else 1.2))))
        if baselines:
            ax.legend(handles=baselines, loc="upper left", fontsize=8, framealpha=0.95, title="baselines",
                      title_fontsize=8)
    axes[0][0].set_ylabel("accuracy (error bars: 95% CI)")
    handles = [Patch(facecolor=(0.45, 0.45, 0.45, st["alpha"]), hatch=st["hatch"], edgecolor="0.45",
                     label=METHOD_NAMES[m]) for m, st in METHOD_STYLE.items()]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False,
               title="scoring method", title_fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return png_bytes(fig)


def plot_comparisons(metrics: Metrics) -> bytes | None:
    """Forest plot of the paired comparisons, one row per pair of models: the perplexity ratio a / b
    (left, log scale, so a 60% and a 2% change are both readable) and the accuracy difference in points
    (right), each with its 95% interval; a filled marker where the interval excludes no change."""
    panels = [("perplexity", ("validation perplexity", "validation perplexity without separators"),
               "perplexity ratio a / b (log scale; 1 = no change)"),
              ("accuracy", ("Q&A accuracy (normalised)", "Q&A accuracy (calibrated)", "cloze accuracy (normalised)",
                            "cloze accuracy (calibrated)"), "accuracy difference a − b (points)")]
    pairs = list(dict.fromkeys((c.a, c.b) for c in metrics.comparisons if c.family in ("perplexity", "qa", "cloze")))
    if not pairs:
        return None
    height = 2.3 + 0.75 * len(pairs)  # inches: a fixed margin for titles, axis labels and legends
    fig, axes = plt.subplots(1, 2, figsize=(12, height), squeeze=False)
    fig.subplots_adjust(left=0.2, right=0.98, wspace=0.55, top=1 - 0.55 / height, bottom=1.4 / height)
    markers = ["o", "s", "D", "^"]
    for ax, (name, metric_names, xlabel) in zip(axes[0], panels):
        handles = []
        for j, metric in enumerate(metric_names):
            offset = (j - (len(metric_names) - 1) / 2) * 0.18
            for y, (a, b) in enumerate(pairs):
                c = next((c for c in metrics.comparisons if (c.a, c.b, c.metric) == (a, b, metric)), None)
                if c is None:
                    continue
                color = MODEL_COLORS.get(a, "0.3")
                if name == "perplexity":
                    x, (lo, hi) = c.ratio, c.ratio_ci95
                else:
                    x, (lo, hi) = 100 * c.difference, (100 * v for v in c.ci95)
                ax.plot([lo, hi], [y + offset] * 2, color=color, lw=2)
                ax.plot(x, y + offset, marker=markers[j], ms=7, color=color, mfc=color if c.detectable else "white",
                        mew=1.6)
            short = metric.replace("validation perplexity", "all tokens").replace("all tokens without", "without")
            handles.append(Line2D([], [], color="0.3", marker=markers[j], ls="", mfc="white", mew=1.5,
                                  label=short.replace(" accuracy (", " ").rstrip(")")))
        if name == "perplexity":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[-1] in "2468" else ""))
            ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.axvline(1 if name == "perplexity" else 0, color="0.2", lw=1)
        ax.set_yticks(range(len(pairs)))
        ax.set_yticklabels([f"{a} − {b}" if name != "perplexity" else f"{a} / {b}" for a, b in pairs], fontsize=9)
        for tick, (a, _) in zip(ax.get_yticklabels(), pairs):
            tick.set_color(MODEL_COLORS.get(a, "0.2"))
        ax.set_ylim(len(pairs) - 0.5, -0.5)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", which="both", alpha=0.3)
        box = ax.get_position()
        fig.legend(handles=handles, loc="lower right", bbox_to_anchor=(box.x1, 0.0), fontsize=8.5,
                   ncol=2, frameon=False)
    fig.suptitle("Paired comparisons with 95% CI (filled marker: the interval excludes no change)", fontsize=11)
    return png_bytes(fig)


def make_figures(inputs: Inputs) -> dict[str, bytes | None]:
    """Every figure whose inputs exist, as {file name: PNG bytes}; None where a figure has no inputs."""
    block = inputs.removed_block()
    m = inputs.metrics
    return {
        "loss_curves.png": plot_loss_curves(inputs.logs) if inputs.logs else None,
        "perplexity.png": plot_perplexity(m, block) if m else None,
        "block_importance.png": plot_block_importance(inputs.importance) if inputs.importance else None,
        "qa_accuracy.png": plot_qa_accuracy(m, block) if m else None,
        "comparisons.png": plot_comparisons(m) if m else None,
    }
