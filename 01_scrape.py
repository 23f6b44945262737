"""Stage 1: collect BMW Group PressClub articles into `data/raw/articles.jsonl`.

Reads
    The PressClub at `--base-url` (default the live site, or the stand-in `tests/standin_server.py`):
    `/robots.txt`, the full-text feeds `/global/rss2` and `/global/rss2/topic/{id}` page by page,
    the teaser feeds `/global/rss…` for the "+++" summaries, and an article's detail page only when
    its feed body is missing or cut short.
Writes (under `--out`, default data/raw)
    `articles.jsonl`      one article a line, unique by id (fields in ../shared/DESIGN.md), newest
                          first. The collection only grows: what a run collects is merged into
                          what the file held, and every write replaces the file atomically.
    `scrape_report.json`  the run's status ("running" while it works, "complete" only when the
                          crawl ended by its own rules; stage 02 refuses anything else), counts of
                          requests, cache hits, retries, failures and of every fault met.
    `cache/`              every complete 200 answer (requests-cache, SQLite): a re-run replays
                          from it, `--offline` uses nothing else, `--refresh` asks again.

Why: the rss2 feeds carry whole bodies, 20 articles a request, so a crawl needs few requests; and a
crawl of the open web must stay polite, on the site it was pointed at, and bounded in time and
size whatever the server does. How each of these is done is in `bmwlm/scrape/` (start at
`bmwlm/scrape/__init__.py`).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from datetime import date
from pathlib import Path
from types import MappingProxyType

from bmwlm.config import RAW_DIR
from bmwlm.io import setup_logging
from bmwlm.scrape.run import scrape
from bmwlm.scrape.settings import DEFAULT_BASE_URL, MEGABYTE, TOPICS, Settings, parse_languages, parse_topics
from bmwlm.scrape.store import ARTICLES_NAME, REPORT_NAME, Busy
from bmwlm.scrape.urls import Site

EXIT_CODES = MappingProxyType({"complete": 0, "unreachable": 1, "partial": 1, "blocked": 3, "time_limit": 4,
                               "interrupted": 130})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show each default once; not for on/off flags, nor for empty defaults (the help says what
    empty means); keep the epilog's line breaks."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default in (None, ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="01_scrape.py", formatter_class=HelpFormatter,
        description="Collect BMW Group PressClub articles from its full-text RSS feeds into\n"
                    "data/raw/articles.jsonl (one article a line, unique by id; the collection only\n"
                    "grows), with a response cache so that a re-run resumes and --offline replays.",
        epilog="offline example (a stand-in server on this machine):\n"
               "  python tests/standin_server.py --corpus ../shared/corpus/pressclub_articles.jsonl --port 8765 &\n"
               "  python 01_scrape.py --base-url http://127.0.0.1:8765 --delay 0\n"
               "exit status: 0 complete; 1 site unreachable, nothing collected, the global feed failed, or\n"
               "another run holds --out; 2 bad arguments; 3 stopped after repeated 403; 4 --time-limit\n"
               "reached; 130 interrupted. Articles collected before a stop are always kept.",
    )
    add = parser.add_argument
    add("--base-url", default=DEFAULT_BASE_URL,
        help="site to read; the crawl never leaves its host (http or https), redirects included")
    add("--out", type=Path, default=RAW_DIR, help="output folder (articles.jsonl, scrape_report.json, cache/)")
    add("--max-articles", type=int, default=Settings.max_articles,
        help="stop after this run collected this many unique articles (0: no limit)")
    add("--since", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
        help="skip articles published before this day and stop paging there (default: no limit)")
    add("--topics", default="all",
        help="topic feeds to read after the global feed, for the articles' topic lists: 'all', 'none', "
             f"or ids/names separated by commas ({', '.join(f'{k}={v}' for k, v in TOPICS.items())})")
    add("--languages", default="",
        help="keep only ids with these language suffixes, e.g. EN,EN_US (default: any language)")
    add("--offline", action="store_true", help="use only the response cache; no network at all")
    add("--refresh", action="store_true",
        help="download everything again and update the cache; articles already collected are kept")
    add("--details", choices=["fallback", "always"], default=Settings.details,
        help="read an article's detail page only when its feed body is missing or cut short, or always "
             "(adds category and teaser for every article; one more request each)")
    add("--no-teasers", dest="teasers", action="store_false",
        help="do not read the plain /rss feed pages for the '+++' teasers")
    add("--min-body-chars", type=int, default=Settings.min_body_chars,
        help="treat a feed body shorter than this as cut short and read the detail page (0: off)")
    add("--max-article-chars", type=int, default=Settings.max_article_chars,
        help="cut a longer body at its last paragraph break within this many characters; drop it if its "
             "first paragraph is longer (0: no limit)")
    add("--delay", type=float, default=Settings.delay,
        help="seconds between network requests, plus up to 50%% jitter (cache hits do not wait)")
    add("--timeout", type=float, default=Settings.timeout,
        help="seconds allowed for one whole response: connecting, headers and the complete body")
    add("--time-limit", type=float, default=Settings.time_limit,
        help="seconds allowed for the whole crawl, waits included; then stop, keeping what was collected (0: no limit)")
    add("--max-response-mb", type=float, default=Settings.max_response_bytes / MEGABYTE,
        help="refuse a response larger than this many megabytes (10^6 bytes) after decompression (0: no limit)")
    add("--retries", type=int, default=Settings.retries,
        help="retries of a request after 429/5xx or a broken answer (at most 2 after no answer in time)")
    add("--backoff", type=float, default=Settings.backoff,
        help="backoff factor: waits of about 0, 2b, 4b, 8b seconds between retries (never less than --delay)")
    add("--max-wait", type=float, default=Settings.max_wait, help="longest wait before a retry, Retry-After included")
    add("--max-403", type=int, default=Settings.max_403, help="stop the crawl after this many 403 answers in a row")
    add("--flush-every", type=int, default=Settings.flush_every,
        help="rewrite articles.jsonl after this many changes (new articles, topics)")
    add("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the command line; ValueError on a bad --base-url or --topics."""
    Site(args.base_url)
    return Settings(
        base_url=args.base_url.rstrip("/"), out=args.out, max_articles=max(0, args.max_articles),
        since=args.since, topics=parse_topics(args.topics), languages=parse_languages(args.languages),
        offline=args.offline, refresh=args.refresh, details=args.details, teasers=args.teasers,
        min_body_chars=max(0, args.min_body_chars), max_article_chars=max(0, args.max_article_chars),
        delay=max(0.0, args.delay), timeout=args.timeout, time_limit=max(0.0, args.time_limit),
        max_response_bytes=int(max(0.0, args.max_response_mb) * MEGABYTE),
        retries=max(0, args.retries), backoff=max(0.0, args.backoff), max_wait=max(0.0, args.max_wait),
        max_403=max(1, args.max_403), flush_every=max(1, args.flush_every),
    )


def interrupt(signum, frame):
    raise KeyboardInterrupt  # `kill` ends the run like Ctrl-C: what was collected is kept


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0 seconds")
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.verbose)
    logging.getLogger("urllib3").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create --out {settings.out} ({exc.strerror})", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, interrupt)
    try:
        outcome = scrape(settings)
    except Busy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report, articles_file = outcome.report, settings.out / ARTICLES_NAME
    if outcome.status == "unreachable":
        print(f"error: cannot reach {settings.base_url} ({outcome.reason}). Check --base-url (for a local "
              f"stand-in: python tests/standin_server.py --corpus FILE --port 8765), or use --offline to "
              f"replay the response cache in {settings.out / 'cache'}.", file=sys.stderr)
    elif outcome.status in ("partial", "time_limit"):
        print(f"error: {outcome.reason}; {report['articles']} articles kept in {articles_file}, the report "
              f"says the collection is incomplete; run again to finish (the cache makes it quick).",
              file=sys.stderr)
    elif outcome.status == "complete" and not report["collected_this_run"]:
        print("error: no articles collected"
              + (" (the cache holds none: run once without --offline)" if settings.offline else "")
              + f"; see {settings.out / REPORT_NAME}", file=sys.stderr)
        return 1
    return EXIT_CODES.get(outcome.status, 1)


if __name__ == "__main__":
    sys.exit(main())
