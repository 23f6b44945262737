"""What `preprocess_report.json` says: per-rule totals, per-split counts and date ranges, token
counts, and the few lines the stage prints at the end."""
from __future__ import annotations

from typing import Callable, Sequence

from bmwlm.clean.records import parse_published
from bmwlm.clean.rules import RULES

TokenCounter = Callable[[list[str]], int]


class RuleTotals:
    """Sum of what each rule removed over many articles: articles touched, matches, paragraphs, chars."""

    def __init__(self) -> None:
        self.totals = {r.name: {"description": r.description, "articles": 0, "matches": 0, "paragraphs": 0, "chars": 0}
                       for r in RULES}
        self.chars_in = self.chars_out = 0

    def add(self, stats: dict) -> None:
        """Add the stats `clean_text` returned for one article."""
        self.chars_in += stats["chars_in"]
        self.chars_out += stats["chars_out"]
        for name, s in stats["rules"].items():
            t = self.totals[name]
            if s["matches"] or s["chars"]:
                t["articles"] += 1
            t["matches"] += s["matches"]
            t["paragraphs"] += s["paragraphs"]
            t["chars"] += s["chars"]

    def as_dict(self) -> dict:
        removed = self.chars_in - self.chars_out
        return {
            "chars_in": self.chars_in,
            "chars_out": self.chars_out,
            "percent_chars_removed": round(100 * removed / self.chars_in, 2) if self.chars_in else 0.0,
            "note": "chars_in counts the raw text, chars_out the cleaned bodies (before length and duplicate "
                    "filters); per rule: articles touched, matches (lines, spans or sentences), whole paragraphs "
                    "and characters removed",
            "rules": self.totals,
        }


def split_summary(records: Sequence[dict], count_tokens: TokenCounter | None) -> dict:
    """Articles, characters, tokens, date range and the largest article's share of the characters."""
    dates = sorted((parse_published(r["published"]), r["published"]) for r in records)
    chars = sum(r["n_chars"] for r in records)
    largest = max(records, key=lambda r: r["n_chars"], default=None)
    return {
        "articles": len(records),
        "chars": chars,
        "tokens": count_tokens([r["text"] for r in records]) if count_tokens and records else None,
        "published_min": dates[0][1] if dates else None,
        "published_max": dates[-1][1] if dates else None,
        "largest_article": None if largest is None else {
            "id": largest["id"], "chars": largest["n_chars"], "share": round(largest["n_chars"] / chars, 4),
        },
    }


def load_token_counter(name: str | None) -> TokenCounter | None:
    """A function that counts tokens in a list of texts, or None for `--tokenizer none`."""
    if not name or str(name).lower() == "none":
        return None
    # imported here, the one lazy import of this package: transformers takes seconds to import,
    # and `--tokenizer none` or `--help` should not wait for it
    from bmwlm.modeling import load_tokenizer

    tokenizer = load_tokenizer(name)

    def count(texts: list[str]) -> int:
        total = 0
        for i in range(0, len(texts), 64):
            enc = tokenizer(texts[i:i + 64], add_special_tokens=False, verbose=False)
            total += sum(len(ids) for ids in enc["input_ids"])
        return total

    return count


def dropped_counts(dropped: dict) -> str:
    """"2 too short, 1 other language" for the entries of report["dropped"] that dropped something."""
    parts = [f"{v['count']} {k.replace('_', ' ')}" for k, v in dropped.items() if isinstance(v, dict) and v["count"]]
    return ", ".join(parts) or "none"


def summary_lines(report: dict) -> list[str]:
    """What the stage logs when it is done."""
    a, c, d, s = report["articles"], report["cleaning"], report["dropped"], report["splits"]
    busiest = sorted(c["rules"].items(), key=lambda kv: -kv[1]["chars"])[:5]
    keep = report["language"]["keep"]
    lines = [
        f"cleaning removed {c['percent_chars_removed']:.1f}% of characters; biggest rules: "
        + ", ".join(f"{k} {v['chars']} chars in {v['articles']} articles" for k, v in busiest),
        f"dropped: {dropped_counts(d)} (min {d['too_short']['min_chars']} chars, near duplicates at Jaccard >= "
        f"{d['near_duplicate']['threshold']:.2f}, languages kept: {keep if isinstance(keep, str) else ' '.join(keep)})",
    ]
    if report["truncated"]["count"]:
        lines.append(f"truncated {report['truncated']['count']} article(s) to at most "
                     f"{report['truncated']['max_chars']} characters")
    for name in ("train", "validation"):
        tok = f", {s[name]['tokens']} tokens" if s[name]["tokens"] is not None else ""
        big = s[name]["largest_article"]
        share = f"; largest article {big['id']} is {100 * big['share']:.1f}% of its characters" if big else ""
        lines.append(f"{name}: {s[name]['articles']} articles, {s[name]['chars']} chars{tok}, "
                     f"{s[name]['published_min']} .. {s[name]['published_max']}{share}")
    lines.append(f"kept {a['out']} of {a['in']} articles in {report['timings']['total_s']:.1f} s")
    return lines
