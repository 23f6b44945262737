"""What one crawl is told to do: the settings a run records in its report, with their defaults.

`01_scrape.py` turns its command line into a `Settings`; tests build one directly. The defaults
here are the command line's defaults, so there is one place to read them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType

from bmwlm.config import RAW_DIR

DEFAULT_BASE_URL = "https://www.press.bmwgroup.com"
# The PressClub's topic feeds (../shared/pressclub.md): id -> name.
TOPICS = MappingProxyType({
    "803": "corporate", "4099": "brands", "4100": "bmw", "5127": "mini", "5236": "technology",
    "5249": "people", "5254": "heritage", "4098": "motorshows", "6629": "motorrad", "6728": "bmw-i",
    "7309": "bmw-m", "10837": "sports",
})
MEGABYTE = 1_000_000


@dataclass
class Settings:
    """One crawl's settings. Times are in seconds; 0 turns a limit off where the field says so."""

    base_url: str = DEFAULT_BASE_URL
    out: Path = RAW_DIR
    max_articles: int = 500  # articles this run collects (0: no limit)
    since: date | None = None
    topics: list[str] = field(default_factory=lambda: list(TOPICS))
    delay: float = 1.0  # pause between network requests, plus up to 50 % jitter
    offline: bool = False
    refresh: bool = False
    details: str = "fallback"  # or "always"
    teasers: bool = True
    timeout: float = 15.0  # deadline for one whole response: connect, headers and body
    retries: int = 4  # after 429/5xx and broken answers; at most 2 after no answer in time
    backoff: float = 0.5
    max_wait: float = 60.0  # longest wait before a retry, Retry-After included
    max_403: int = 3
    max_unanswered: int = 3  # requests in a row without an answer in time: the site is unreachable
    time_limit: float = 3600.0  # the whole crawl (0: no limit)
    max_response_bytes: int = 10 * MEGABYTE  # one response, decompressed
    max_article_chars: int = 100_000  # longer bodies are cut at a paragraph (0: no limit)
    min_body_chars: int = 0
    flush_every: int = 25
    max_pages: int = 500  # per feed: a guard against endless paging
    languages: list[str] = field(default_factory=list)  # id suffixes to keep; empty: any

    def to_dict(self) -> dict:
        out = asdict(self)
        out["out"] = str(self.out)
        out["since"] = self.since.isoformat() if self.since else None
        return out


def parse_topics(value: str) -> list[str]:
    """`all`, `none`, or a comma list of topic ids or names (`803,mini`) -> topic ids."""
    value = (value or "").strip().lower()
    if value in ("", "none"):
        return []
    if value == "all":
        return list(TOPICS)
    by_name = {name: tid for tid, name in TOPICS.items()}
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        tid = by_name.get(part, part)
        if not tid.isdigit():
            raise ValueError(f"unknown topic {part!r}; use ids or one of {', '.join(by_name)}")
        if tid not in out:
            out.append(tid)
    return out


def parse_languages(value: str) -> list[str]:
    """`EN,en_us` -> ["EN", "EN_US"]; "" -> [] (any language)."""
    return [part.strip().upper() for part in (value or "").split(",") if part.strip()]
