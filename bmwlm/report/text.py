"""How the report writes numbers and text: one place for units, rounding and markdown escaping."""
from __future__ import annotations

import math
import textwrap

NA = "n/a"  # not measured, or the model is unavailable
DASH = "–"  # not applicable (e.g. the training time of a model that was not trained)


def num(x) -> float | None:
    """`x` as a finite float, or None (for None, NaN, infinities and booleans)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


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


def fmt_ci(value, ci95, spec: str = ".2f", na: str = NA) -> str:
    """'14.70 [13.21, 16.38]': a value with its 95% interval."""
    v = num(value)
    if v is None:
        return na
    if not ci95 or len(ci95) != 2 or num(ci95[0]) is None or num(ci95[1]) is None:
        return format(v, spec)
    return f"{format(v, spec)} [{format(ci95[0], spec)}, {format(ci95[1], spec)}]"


def fmt_interval(est, spec: str = ".2f", na: str = NA) -> str:
    """An `Interval` record (or None) as 'value [low, high]'."""
    return na if est is None else fmt_ci(est.value, est.ci95, spec, na)


def fmt_acc_interval(est, na: str = NA) -> str:
    """An accuracy `Interval` as '38.0% [29–48%]'."""
    if est is None or num(est.value) is None:
        return na
    return f"{100 * est.value:.1f}% [{100 * est.ci95[0]:.0f}–{100 * est.ci95[1]:.0f}%]"


def signed_ci(diff, ci95, spec: str = "+.2f", scale: float = 1.0) -> str:
    """'+0.32 [+0.10, +0.55]': a difference with its 95% interval."""
    return f"{format(diff * scale, spec)} [{format(ci95[0] * scale, spec)}, {format(ci95[1] * scale, spec)}]"


def sentence_case(text: str) -> str:
    """The text with its first letter capitalised (a `stats.compare` sentence starts lower-case)."""
    return text[:1].upper() + text[1:] if text else text


def md_cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_row(cells) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


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


def quote(text: str) -> str:
    """A markdown block quote of `text`."""
    return "\n".join("> " + line if line else ">" for line in str(text).splitlines() or [""])


def short_date(iso: str | None) -> str:
    return str(iso)[:10] if iso is not None else "?"


def flatten(d, prefix: str = "", depth: int = 3) -> list[tuple[str, str]]:
    """(dotted key, value as text) of a nested dict, down to `depth` levels; long lists as their length."""
    out = []
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 1:
            out.extend(flatten(v, name + ".", depth - 1))
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out.append((name, str(v)))
        elif isinstance(v, list) and len(v) <= 5 and all(isinstance(x, (str, int, float)) for x in v):
            out.append((name, ", ".join(map(str, v))))
        elif isinstance(v, list):
            out.append((name, f"list of {len(v)}"))
    return out
