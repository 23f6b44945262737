"""One whole run of stage 01: take the output folder, crawl, save as it goes, and leave a report
whose `status` says truthfully whether the run finished.

Order of writes: the report says "running" before `articles.jsonl` is touched; every save writes
the articles first and the report after; only the last write may say "complete". A run killed at
any moment therefore leaves an incomplete status next to a collection that never shrank.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bmwlm.scrape.crawl import Crawler
from bmwlm.scrape.fetch import Blocked, Fetcher, SiteUnreachable
from bmwlm.scrape.limits import Clock, TimeLimitReached
from bmwlm.scrape.report import COMPLETE, RUNNING, Stats, write_report
from bmwlm.scrape.settings import Settings
from bmwlm.io import remove_stale_temp_files
from bmwlm.scrape.store import ARTICLES_NAME, REPORT_NAME, Collection, exclusive, interrupts_deferred

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status: str  # "complete", "partial", "unreachable", "blocked", "time_limit", "interrupted", "error"
    reason: str | None
    report: dict


def scrape(settings: Settings, on_article: Callable[[dict], None] | None = None) -> Outcome:
    """Run the crawl into `settings.out`. `on_article` is called with each new record (progress
    display, tests). Raises store.Busy when another crawl holds the folder."""
    out = Path(settings.out)
    with exclusive(out):
        stats = Stats()
        stats.faults["stale_temp_files_removed"] = len(remove_stale_temp_files(out, (ARTICLES_NAME, REPORT_NAME)))
        collection = Collection.load(out / ARTICLES_NAME)
        fetcher = Fetcher(settings, stats, Clock(settings.time_limit))
        crawler = Crawler(settings, fetcher, stats, collection)

        def save(status: str, reason: str | None = None, *, reraise: bool = True) -> dict:
            with interrupts_deferred(reraise):
                if collection.unsaved:
                    collection.save()
                return write_report(out / REPORT_NAME, settings, stats, collection,
                                    status=status, stopped_reason=reason)

        log.info("reading %s%s into %s", settings.base_url, " (offline: cache only)" if settings.offline else "", out)
        status, reason, failure = COMPLETE, None, None
        try:
            save(RUNNING)
            with logging_redirect_tqdm(), tqdm(total=settings.max_articles or None, unit="article",
                                               desc="articles", disable=None, file=sys.stderr) as bar:
                for record in crawler.crawl():
                    if record is not None:
                        bar.update(1)
                        if on_article:
                            on_article(record)
                    if collection.unsaved >= settings.flush_every:
                        save(RUNNING)
            reason = crawler.incomplete_reason()
            status = "partial" if reason else COMPLETE
        except SiteUnreachable as exc:
            status, reason = "unreachable", str(exc)
        except Blocked as exc:
            status, reason = "blocked", str(exc)
            log.error("stopping: %s", exc)
        except TimeLimitReached as exc:
            status, reason = "time_limit", str(exc)
            log.warning("stopping: %s", exc)
        except KeyboardInterrupt:
            status, reason = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
            log.warning("interrupted: the %d articles collected so far are merged into %s; run again to "
                        "finish (the cache makes it quick)", len(collection.run), out / ARTICLES_NAME)
        except Exception as exc:  # a bug: keep what was collected, say so, then show the traceback
            status, reason, failure = "error", f"{type(exc).__name__}: {exc}", exc
        finally:
            try:
                fetcher.close()
            except Exception as exc:  # e.g. the cache interrupted mid-write: it recovers on next open
                log.debug("closing the fetcher: %s", exc)
        report = save(status, reason, reraise=False)
        if failure is not None:
            raise failure
        if status != "unreachable":  # the caller says it in one line
            _log_summary(report, out)
        return Outcome(status, reason, report)


def _log_summary(report: dict, out: Path) -> None:
    log.info(
        "%s: %d articles in %s (%d new, %d collected by this run; %s) in %.1f s: %d requests "
        "(%d network, %d cache hits), %d retries, %d failures; report: %s",
        report["status"], report["articles"], out / ARTICLES_NAME, report["new_articles"],
        report["collected_this_run"],
        ", ".join(f"{k} {v}" for k, v in report["by_source"].items()) or "none", report["seconds"],
        report["requests"], report["network_requests"], report["cache_hits"], report["retries"],
        report["failures"], out / REPORT_NAME,
    )
    faults = {k: v for k, v in report["faults"].items() if v and k != "duplicates_merged"}
    if faults:
        log.info("faults met: %s", ", ".join(f"{k}={v}" for k, v in faults.items()))
