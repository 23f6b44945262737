"""What a crawl counts, and `scrape_report.json`, the record of the last run.

The report's `status` is the contract with stage 02: "complete" only when the crawl ended by its
own stopping rules (end of the feeds, --max-articles, --since); while a run is under way the file
says "running" (so a killed run leaves an incomplete status behind); otherwise it names why the
run stopped early ("interrupted", "unreachable", "blocked", "time_limit", "partial").
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bmwlm.config import USER_AGENT
from bmwlm.io import write_json
from bmwlm.scrape.settings import Settings
from bmwlm.scrape.store import Collection

log = logging.getLogger(__name__)

COMPLETE = "complete"
RUNNING = "running"
# Counters always present in the report's "faults" (others appear when met).
FAULT_KINDS = (
    "http_429", "http_5xx", "timeouts", "connection_errors", "http_403", "malformed_xml",
    "non_xml_pages", "items_without_id", "empty_bodies", "suspect_bodies", "detail_fallbacks",
    "articles_without_body", "robots_disallowed", "duplicates_merged", "conflicting_duplicates",
    "off_site_refused", "too_large", "bad_bytes_replaced", "articles_truncated",
    "articles_dropped_too_long", "stale_temp_files_removed",
)
MAX_FAILED_URLS = 200  # listed in the report; `failures` counts them all


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Stats:
    """Counters of one run."""

    started_at: str = field(default_factory=now_utc)
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    network_requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    faults: Counter = field(default_factory=lambda: Counter(dict.fromkeys(FAULT_KINDS, 0)))
    failed_urls: list[dict] = field(default_factory=list)
    feeds: list[dict] = field(default_factory=list)

    def fail(self, url: str, reason: str) -> None:
        self.failures += 1
        if len(self.failed_urls) < MAX_FAILED_URLS:
            self.failed_urls.append({"url": url, "reason": reason})
        log.warning("giving up on %s: %s", url, reason)


def write_report(path: Path, settings: Settings, stats: Stats, collection: Collection, *,
                 status: str, stopped_reason: str | None = None) -> dict:
    """Write `scrape_report.json` atomically and return it. `articles` and the counts beside it
    describe the collection on disk; `collected_this_run` and `new_articles` this run."""
    articles = collection.records()
    stats.faults["conflicting_duplicates"] = collection.conflicts_in_run + len(collection.conflicts_with_previous)
    report = {
        "status": status,
        "stopped_reason": stopped_reason,
        "started_at": stats.started_at,
        "finished_at": None if status == RUNNING else now_utc(),
        "updated_at": now_utc(),
        "seconds": round(time.monotonic() - stats.started, 2),
        "articles": len(articles),
        "articles_before": len(collection.previous),
        "collected_this_run": len(collection.run),
        "new_articles": len(collection.new_ids),
        "unreadable_lines_before": collection.unreadable_lines,
        "by_source": dict(Counter(a.get("source", "") for a in articles)),
        "with_teaser": sum(1 for a in articles if a.get("teaser")),
        "in_several_topics": sum(1 for a in articles if len(a.get("topics") or []) > 1),
        "requests": stats.requests,
        "network_requests": stats.network_requests,
        "cache_hits": stats.cache_hits,
        "retries": stats.retries,
        "failures": stats.failures,
        "faults": dict(sorted(stats.faults.items())),
        "failed_urls": stats.failed_urls,
        "feeds": stats.feeds,
        "settings": settings.to_dict(),
        "user_agent": USER_AGENT,
    }
    write_json(path, report)
    return report
