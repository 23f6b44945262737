"""The README's results tables, generated from the result files committed under `docs/results/`.

Each table sits in README.md between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`. This
module renders every table from the committed files; `check_readme` compares them with the README and
names each table whose text differs, so a number edited by hand (or a result file replaced without
regenerating the README) fails `tests/test_readme_numbers.py`.

    python -m bmwlm.report.readme            # rewrite the generated tables in README.md
    python -m bmwlm.report.readme --check    # exit 1 and name the tables that differ
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Callable

from bmwlm.config import ROOT
from bmwlm.io import read_json, write_text
from bmwlm.records.training import RunSummary
from bmwlm.stats import mean_sd

RESULTS_DIR = ROOT / "docs" / "results"
README = ROOT / "README.md"
BLOCK_RE = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(\n<!-- /generated:(?P=name) -->)", re.S)


def _date(iso: str | None) -> str:
    return (iso or "")[:10]


def data_table(results: Path = RESULTS_DIR) -> str:
    """Collection and cleaning of the shared corpus (scrape and preprocess reports)."""
    scrape = read_json(results / "data" / "scrape_report.json")
    pre = read_json(results / "data" / "preprocess_report.json")
    dropped = {why: d["count"] for why, d in pre["dropped"].items() if isinstance(d, dict) and d.get("count")}
    rows = [
        ("scraped (`01`, stand-in, `--delay 0`)",
         f"{scrape['articles']} articles, status `{scrape['status']}`, {scrape['requests']} requests, "
         f"{scrape['seconds']:.1f} s"),
        ("kept after cleaning (`02`)",
         f"{pre['articles']['out']} of {pre['articles']['in']} "
         f"({', '.join(f'{why.replace(chr(95), chr(32))}: {n}' for why, n in dropped.items()) or 'none dropped'}); "
         f"{pre['cleaning']['percent_chars_removed']:.1f}% of characters removed"),
    ]
    for name in ("train", "validation"):
        s = pre["splits"][name]
        rows.append((name, f"{s['articles']} articles, {s['tokens']:,} tokens, {_date(s['published_min'])} … "
                           f"{_date(s['published_max'])}; largest article {s['largest_article']['share']:.1%} "
                           "of its characters"))
    return "| | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def rules_table(results: Path = RESULTS_DIR) -> str:
    """What each cleaning rule removed, largest first."""
    rules = read_json(results / "data" / "preprocess_report.json")["cleaning"]["rules"]
    ordered = sorted(rules.items(), key=lambda kv: -kv[1]["chars"])
    return "| rule | articles | characters |\n|---|---|---|\n" + "\n".join(
        f"| `{name}` | {r['articles']} | {r['chars']:,} |" for name, r in ordered if r["chars"])


def seed_runs(results: Path = RESULTS_DIR) -> dict[str, dict[int, RunSummary]]:
    """Every committed run.json of the seed study: {variant: {seed: RunSummary}}."""
    out: dict[str, dict[int, RunSummary]] = {}
    for path in sorted((results / "seeds").glob("seed*/*/run.json")):
        run = RunSummary.load(path)
        out.setdefault(run.variant, {})[run.seed] = run
    return out


def seeds_table(results: Path = RESULTS_DIR) -> str:
    """Final validation perplexity per variant and seed, with mean ± standard deviation."""
    runs = seed_runs(results)
    lines = ["| variant | seeds | validation perplexity before → after, per seed | mean ± sd after |",
             "|---|---|---|---|"]
    for variant, by_seed in runs.items():
        per_seed = ", ".join(f"{math.exp(r.initial_eval_loss):.2f} → {math.exp(r.final_eval_loss):.2f} (seed {s})"
                             for s, r in sorted(by_seed.items()))
        summary = mean_sd([math.exp(r.final_eval_loss) for r in by_seed.values()])
        spread = f"{summary['mean']:.2f} ± {summary['sd']:.2f}" if summary["sd"] is not None else \
            f"{summary['mean']:.2f} (one seed: no spread yet)"
        lines.append(f"| {variant} | {len(by_seed)} | {per_seed} | {spread} |")
    return "\n".join(lines)


def seed42_comparisons(results: Path = RESULTS_DIR) -> str:
    """The sentences 05 wrote from its paired tests for the base model vs the seed-42 full model."""
    metrics = read_json(results / "seeds" / "seed42" / "eval" / "metrics.json")
    return "\n".join(f"- {c['sentence']}" for c in metrics["comparisons"])


TABLES: dict[str, Callable[[Path], str]] = {"data": data_table, "rules": rules_table, "seeds": seeds_table,
                                            "seed42-comparisons": seed42_comparisons}


def render_readme(text: str, results: Path = RESULTS_DIR) -> str:
    """`text` with every generated block replaced by its table rendered from `results`."""
    def fill(m: re.Match) -> str:
        return m.group(1) + TABLES[m.group("name")](results) + m.group(4)
    return BLOCK_RE.sub(fill, text)


def check_readme(text: str, results: Path = RESULTS_DIR) -> list[str]:
    """Names of the generated tables whose README text differs from the committed files (or is unknown)."""
    problems = []
    for m in BLOCK_RE.finditer(text):
        name = m.group("name")
        if name not in TABLES:
            problems.append(f"{name}: no such table")
        elif m.group("body") != TABLES[name](results):
            problems.append(f"{name}: differs from {results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Regenerate (or --check) the README's results tables from docs/results/.")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 naming the tables that differ")
    args = p.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    if args.check:
        problems = check_readme(text)
        for line in problems:
            print(f"README.md table {line}", file=sys.stderr)
        return 1 if problems else 0
    write_text(README, render_readme(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
