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
from bmwlm.stats import mean_sd, paired_t_interval

RESULTS_DIR = ROOT / "docs" / "results"
README = ROOT / "README.md"
# A block's body may be empty (a new table not rendered yet): then the two markers are on consecutive lines.
BLOCK_RE = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?:(?P<body>.*?)\n)?(<!-- /generated:(?P=name) -->)", re.S)


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


RUN = "run"  # docs/results/run/: the default run's files (bmwlm.report.publish)


def _metrics(results: Path) -> dict:
    return read_json(results / RUN / "eval" / "metrics.json")


def _acc(interval: dict | None) -> str:
    if not interval:
        return "—"
    lo, hi = interval["ci95"]
    return f"{100 * interval['value']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def run_models_table(results: Path = RESULTS_DIR) -> str:
    """The four models of the default run: size, perplexities, Q&A and cloze accuracy (05's metrics.json)."""
    m = _metrics(results)
    lines = ["| model | parameters | blocks | validation perplexity [95% CI] | train-slice perplexity | Q&A normalised "
             "| Q&A calibrated | Q&A prior only | cloze normalised | cloze calibrated |", "|---" * 10 + "|"]
    for key, e in m["models"].items():
        if not e["available"]:
            lines.append(f"| `{key}` | unavailable: {e['error']} |" + " |" * 8)
            continue
        v, t = e["validation"], e["train_slice"]
        qa, cz = e["qa"]["methods"], e["cloze"]["methods"]
        lines.append(f"| `{key}` | {e['parameters'] / 1e6:.1f}M | {e['blocks']} | {v['perplexity']:.2f} "
                     f"[{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] | {t['perplexity']:.2f} | "
                     + " | ".join(_acc(qa[k]["accuracy"]) for k in ("normalised", "calibrated", "prior_only")) + " | "
                     + " | ".join(_acc(cz[k]["accuracy"]) for k in ("normalised", "calibrated")) + " |")
    prior = m.get("frequency_prior")
    if prior:
        lines.append(f"| frequency-prior guesser (never reads the question) | | | | | {_acc(prior['accuracy'])} | | | | |")
    return "\n".join(lines)


# The comparisons the README quotes (05 writes every pair; docs/results/run/eval/metrics.json has them all)
README_PAIRS = {("full", "base"), ("pruned", "full"), ("base_minus_block", "base"), ("pruned", "base_minus_block")}
README_METRICS = ("validation perplexity", "validation perplexity without separators",
                  "validation minus train-slice loss", "Q&A accuracy (normalised)", "Q&A accuracy (calibrated)",
                  "Q&A accuracy (prior_only)", "cloze accuracy (normalised)", "cloze accuracy (calibrated)")


def run_comparisons(results: Path = RESULTS_DIR) -> str:
    """The sentences 05 wrote from its paired tests, for the pairs and measures the README discusses."""
    out = []
    for c in _metrics(results)["comparisons"]:
        pair = (c["a"], c["b"])
        if c["family"] == "speed" or (pair in README_PAIRS and c["metric"] in README_METRICS) \
                or (c["family"] == "baseline" and c["metric"] in README_METRICS):
            out.append(f"- {c['sentence']}")
    return "\n".join(out)


def run_answers_table(results: Path = RESULTS_DIR) -> str:
    """What the models did with the open questions (plain text and chat template)."""
    m = _metrics(results)
    lines = ["| model | plain: contains the answer | plain: on topic | plain: distinct-2 | chat: contains the answer "
             "| chat: on topic | chat: distinct-2 |", "|---" * 7 + "|"]
    for key, e in m["models"].items():
        if not e["available"] or not e.get("generation"):
            continue
        cells = []
        for style in ("plain", "chat"):
            a = e["generation"]["answers"].get(style) or {}
            if not a.get("available"):
                cells += ["n/a", "n/a", "n/a"]
                continue
            cells += [_acc(a["contains_answer"]), _acc(a["on_topic"]),
                      f"{a['distinct_2']:.2f}" if a.get("distinct_2") is not None else "—"]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_block_table(results: Path = RESULTS_DIR) -> str:
    """04's choice in the default run: the calibration sample, the chosen block and the naive choices."""
    imp = read_json(results / RUN / "prune" / "block_importance.json")
    cal = imp["calibration"]
    ranked = sorted(imp["scores"], key=lambda s: s["importance"])
    rows = [("calibration sample", f"{cal['predicted_tokens']:,} predicted tokens in {cal['windows']} of "
                                   f"{cal['windows_total']:,} training windows ({cal['articles']} articles); "
                                   f"{cal['validation_articles_checked']} validation articles checked, none shared"),
            ("scoring", f"{imp['method']}, {imp['precision']}, {imp['scoring']}, {imp['seconds']:.0f} s on "
                        f"{imp['cpu_model']} ({imp['threads']} threads)"),
            ("intact model, calibration loss", f"{imp['baseline_loss']:.3f}"),
            ("least important blocks (Δ loss)", ", ".join(f"{s['block']} ({s['importance']:+.3f})" for s in ranked[:4])),
            ("most important blocks (Δ loss)", ", ".join(f"{s['block']} ({s['importance']:+.3f})"
                                                         for s in ranked[::-1][:3]))]
    rows += [(f"without the {name} block ({r['block']})", f"calibration loss {r['loss']:.3f} "
                                                          f"({r['loss'] - imp['baseline_loss']:+.3f})")
             for name, r in imp["naive_comparison"].items()]
    rows.append(("removed", f"block {imp['removed_block']}: {imp['blocks_before']} → {imp['blocks_after']} blocks, "
                            f"{imp['parameters_before'] / 1e6:.1f}M → {imp['parameters_after'] / 1e6:.1f}M parameters"))
    return "| | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def run_training_table(results: Path = RESULTS_DIR) -> str:
    """Each variant's training run in the default run (its run.json)."""
    lines = ["| variant | seed | blocks | steps × batch × block | tokens seen | validation perplexity before → after "
             "| tokens/s | threads | training time | finished |", "|---" * 10 + "|"]
    for path in sorted((results / RUN / "runs").glob("*/run.json")):
        r = RunSummary.load(path)
        c = r.config
        lines.append(f"| {r.variant} | {r.seed} | {r.blocks} | {c['max_steps']} × {c['per_device_train_batch_size']} × "
                     f"{c['block_size']} | {r.tokens_seen:,} | {math.exp(r.initial_eval_loss):.2f} → "
                     f"{math.exp(r.final_eval_loss):.2f} | {r.tokens_per_s:.0f} | {r.threads} | "
                     f"{r.train_seconds / 60:.0f} min | {_date(r.finished_at)} |")
    return "\n".join(lines)


def run_checks_table(results: Path = RESULTS_DIR) -> str:
    """Per model: the float32-vs-bf16 check, the separators' share of the loss, and the interleaved timings."""
    m = _metrics(results)
    cost = (m.get("cost") or {}).get("per_model", {})
    lines = ["| model | Q&A picks that flip under bf16 autocast | median \\|Δ option log-likelihood\\| (nats) "
             "| perplexity of 4 windows, float32 / bf16 | separators' share of the validation loss "
             "| training step (4 × 256 tokens), s [95% CI] | 32-token generation, s [95% CI] |", "|---" * 7 + "|"]

    def sec(i):
        return f"{i['value']:.3f} [{i['ci95'][0]:.3f}, {i['ci95'][1]:.3f}]"
    for key, e in m["models"].items():
        if not e["available"]:
            continue
        pc, sep = e["precision_check"], e["validation"]["separators"]
        c = cost.get(key)
        lines.append(f"| `{key}` | {len(pc['flips'])} of {pc['items']} | {pc['median_abs_diff_loglik']:.3f} | "
                     f"{pc['perplexity_float32']:.3f} / {pc['perplexity_bf16']:.3f} | {100 * sep['share_of_loss']:.2f}% | "
                     + (f"{sec(c['train_step_seconds'])} | {sec(c['generation_seconds_per_sequence'])} |" if c else "— | — |"))
    return "\n".join(lines)


def harness_table(results: Path = RESULTS_DIR) -> str:
    """lm-evaluation-harness scores of the four models beside 05's, and how often the two scorers agree."""
    m = _metrics(results)
    lines = ["| model | harness `bmw_qa` acc / acc_norm | 05 Q&A (normalised) | harness `bmw_cloze` acc / acc_norm "
             "| 05 cloze (normalised) | same pick as 05's scorer (acc, acc_norm) |", "|---" * 6 + "|"]
    for key in m["models"]:
        path = results / RUN / "eval" / "harness" / f"{key}.json"
        if not path.is_file():
            continue
        h = read_json(path)
        e = m["models"][key]

        def accs(task):
            r = h["metrics"][task]
            return f"{100 * r['acc,none']:.0f}% / {100 * r['acc_norm,none']:.0f}%"
        agree = "; ".join(f"{t.removeprefix('bmw_')} {a['same_acc']}/{a['items']}, {a['same_acc_norm']}/{a['items']}"
                          for t, a in h["agreement"].items())
        lines.append(f"| `{key}` | {accs('bmw_qa')} | {_acc(e['qa']['methods']['normalised']['accuracy'])} | "
                     f"{accs('bmw_cloze')} | {_acc(e['cloze']['methods']['normalised']['accuracy'])} | {agree} |")
    return "\n".join(lines)


def seed_summary(results: Path = RESULTS_DIR) -> dict:
    """The seed study in numbers (what `seeds/summary.json` holds): per variant the final validation
    perplexity per seed with mean and sd, and pruned − full paired by seed with its 95% t interval."""
    runs = seed_runs(results)
    final = {v: {s: math.exp(r.final_eval_loss) for s, r in sorted(by_seed.items())} for v, by_seed in runs.items()}
    paired = sorted(set(final.get("full", {})) & set(final.get("pruned", {})))
    return {
        "measure": "final validation perplexity (03's last eval_loss, all validation windows)",
        "variants": {v: {"per_seed": per_seed, **mean_sd(list(per_seed.values()))} for v, per_seed in final.items()},
        "pruned_minus_full": ({"seeds": paired, **paired_t_interval([final["pruned"][s] for s in paired],
                                                                     [final["full"][s] for s in paired])}
                              if paired else None),
    }


def seed_differences(results: Path = RESULTS_DIR) -> str:
    """Pruned minus full final validation perplexity, paired by seed, with the t interval of the mean."""
    d = seed_summary(results)["pruned_minus_full"]
    if d is None:
        return "No seed has both variants yet."
    per_seed = ", ".join(f"{x:+.2f} (seed {s})" for s, x in zip(d["seeds"], d["values"]))
    if d["ci95"] is None:
        return f"Pruned − full validation perplexity, paired by seed: {per_seed}; one seed, no interval yet."
    lo, hi = d["ci95"]
    verdict = ("no detectable difference" if lo <= 0 <= hi else
               "pruned is higher" if lo > 0 else "pruned is lower")
    return (f"Pruned − full validation perplexity, paired by seed: {per_seed}; mean {d['mean']:+.2f} ± "
            f"{d['sd']:.2f} (sd), 95% t interval [{lo:+.2f}, {hi:+.2f}] over {d['n']} seeds: **{verdict}**.")


def depth_block(results: Path = RESULTS_DIR) -> str:
    """The depth study's section as 06 and `make study` write it, from the study's published files."""
    from bmwlm.report import depth, publish  # matplotlib: only when this table is rendered

    study = publish.published_study(results)
    if not depth.has_study(study):
        return "### Depth study\n\n_Not run yet on the real model: no study file under `docs/results/study/` (`make study`)._"
    report = results / "study" / "report"
    figures = {n: (report / n).relative_to(ROOT).as_posix() if report.is_relative_to(ROOT) else str(report / n)
               for n in depth.FIGURES if (report / n).is_file()}
    return depth.depth_section(study, figures, heading="### Depth study").rstrip("\n")


TABLES: dict[str, Callable[[Path], str]] = {
    "data": data_table, "rules": rules_table, "seeds": seeds_table, "seed-differences": seed_differences,
    "run-block": run_block_table, "run-models": run_models_table, "run-comparisons": run_comparisons,
    "run-answers": run_answers_table, "run-training": run_training_table, "run-checks": run_checks_table, "harness": harness_table,
    "depth": depth_block,
}


def render_readme(text: str, results: Path = RESULTS_DIR) -> str:
    """`text` with every generated block replaced by its table rendered from `results`."""
    def fill(m: re.Match) -> str:
        return m.group(1) + TABLES[m.group("name")](results) + "\n" + m.group(4)
    return BLOCK_RE.sub(fill, text)


def check_readme(text: str, results: Path = RESULTS_DIR) -> list[str]:
    """Names of the generated tables whose README text differs from the committed files (or is unknown)."""
    problems = []
    for m in BLOCK_RE.finditer(text):
        name = m.group("name")
        if name not in TABLES:
            problems.append(f"{name}: no such table")
        elif (m.group("body") or "") != TABLES[name](results):
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
