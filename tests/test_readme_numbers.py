"""The README's results tables equal what the committed result files under docs/results/ say."""
from __future__ import annotations

import re

from bmwlm.report import readme
from tests.conftest import ROOT


def _text() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_has_the_generated_tables():
    names = {m.group("name") for m in readme.BLOCK_RE.finditer(_text())}
    assert names == set(readme.TABLES)  # every table the results section is built from, each once
    assert len(list(readme.BLOCK_RE.finditer(_text()))) == len(readme.TABLES)


def test_every_generated_readme_table_matches_the_committed_result_files():
    assert readme.check_readme(_text()) == []


def test_a_number_changed_in_the_readme_is_caught():
    text = _text()
    m = next(readme.BLOCK_RE.finditer(text))
    body = m.group("body")
    digit = re.search(r"\d", body)
    changed = body[:digit.start()] + str((int(digit.group()) + 1) % 10) + body[digit.end():]
    tampered = text[:m.start("body")] + changed + text[m.end("body"):]
    assert readme.check_readme(tampered) == [f"{m.group('name')}: differs from docs/results"]


def test_an_empty_generated_block_is_caught_and_filled():
    text = "intro\n<!-- generated:data -->\n<!-- /generated:data -->\nend\n"
    assert readme.check_readme(text) == ["data: differs from docs/results"]
    filled = readme.render_readme(text)
    assert readme.check_readme(filled) == [] and "| scraped" in filled and filled.endswith("-->\nend\n")


def test_the_seed_summary_pairs_the_variants_by_seed_and_matches_the_committed_runs():
    import math

    summary = readme.seed_summary()
    runs = readme.seed_runs()
    for variant, stats_ in summary["variants"].items():
        assert stats_["per_seed"] == {s: math.exp(r.final_eval_loss) for s, r in sorted(runs[variant].items())}
    paired = summary["pruned_minus_full"]
    assert paired["seeds"] == sorted(set(runs["full"]) & set(runs["pruned"]))
    assert paired["values"] == [summary["variants"]["pruned"]["per_seed"][s] - summary["variants"]["full"]["per_seed"][s]
                                for s in paired["seeds"]]
