"""What the stage 01 tests share: fast settings, the invented articles, and a crawl run in-process."""
from __future__ import annotations

import json
from pathlib import Path

from bmwlm.scrape.run import scrape
from bmwlm.scrape.settings import Settings
from standin_server import StandinServer, synthetic_articles

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "01_scrape.py"
# Fast settings for every crawl: no pause, tiny backoff, short timeout.
FAST = {"delay": 0.0, "backoff": 0.01, "max_wait": 2.0, "timeout": 2.0, "retries": 3}
ARTICLES = synthetic_articles(45)  # 5 pages of 10 in a stand-in with per_page=10


def expected_text(article: dict) -> str:
    """The text 01 should make of a stand-in article's body."""
    return "\n\n".join(" ".join(p.split()) for p in article["body"])


def ids(articles) -> list[str]:
    return [a["id"] for a in articles]


def read_output(out: Path) -> tuple[list[dict], dict]:
    """(articles.jsonl as records, scrape_report.json) of an output folder."""
    articles_file = out / "articles.jsonl"
    articles = [json.loads(line) for line in articles_file.read_text().splitlines()] if articles_file.exists() else []
    return articles, json.loads((out / "scrape_report.json").read_text())


def crawl(server: StandinServer, out: Path, *, expect: str = "complete", on_article=None, **overrides):
    """Run a crawl in-process with FAST settings (topics: none unless given), check that it ends
    with status `expect`; returns (articles, report)."""
    settings = Settings(base_url=server.base_url, out=out, **{"topics": [], **FAST, **overrides})
    outcome = scrape(settings, on_article=on_article)
    assert outcome.status == expect, outcome.reason
    return read_output(out)
