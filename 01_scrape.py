"""Stage 1: collect BMW Group PressClub articles into `data/raw/articles.jsonl`.

Reads
    The PressClub at `--base-url` (default the live site, https://www.press.bmwgroup.com, or the
    stand-in `tests/standin_server.py`): `/robots.txt`, the full-text feeds `/global/rss2` and
    `/global/rss2/topic/{id}` page by page, the teaser feeds `/global/rss…` for the "+++" summaries,
    and an article's detail page `/global/article/detail/{ID}` only when its feed body is missing
    or cut short.
Writes (under `--out`, default data/raw)
    `articles.jsonl`      one article a line, unique by id (fields in ../shared/DESIGN.md), written
                          atomically every `--flush-every` new articles and at the end;
    `scrape_report.json`  settings, timestamps, counts of requests, cache hits, retries, failures
                          and of every kind of fault met (malformed XML, items without id, ...);
    `cache/`              every successful response (requests-cache, SQLite): a re-run after a
                          crash replays from it, `--offline` uses nothing else.

Why these choices
    - The rss2 feeds carry the whole body, 20 articles a request: 500 articles cost ~25 requests
      instead of 500 detail pages. Feeds are newest first, so `--since` and `--max-articles` end
      the paging early. The channel's `rel="next"` link drops `/global` on the live site; we keep
      its path and query but put them on `--base-url`, so a stand-in on 127.0.0.1 works too.
    - Topic feeds (`--topics`, default all) overlap the global feed; they only tell which topics an
      article belongs to. Articles are deduplicated by id, first sighting wins.
    - Responses are cached forever (only 200s), so killing the scraper at any moment and running it
      again yields the same articles with almost no network traffic; `--refresh` re-downloads
      (needed to see articles published since the pages were cached).
      Pages that fail to parse are dropped from the cache so a re-run asks for them again.
    - Manners: robots.txt (protego), the project's User-Agent, `--delay` seconds plus up to 50 %
      jitter between network requests (cache hits do not wait), retries with exponential backoff
      that honour Retry-After (urllib3 `Retry` on the requests adapter), a stop after
      `--max-403` 403 answers in a row.
    - Text is taken as-is: markup, images, scripts and tables go, entities are decoded,
      non-breaking spaces become spaces, paragraphs are joined by a blank line. Cleaning
      boilerplate is stage 2's job.
"""
from __future__ import annotations

import argparse
import io
import logging
import random
import re
import signal
import sys
import time
import xml.sax
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import feedparser
import requests
import requests_cache
from bs4 import BeautifulSoup
from protego import Protego
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

from bmwlm.config import RAW_DIR, USER_AGENT
from bmwlm.io import setup_logging, write_json, write_jsonl

log = logging.getLogger("scrape")

DEFAULT_BASE_URL = "https://www.press.bmwgroup.com"
MUNICH = ZoneInfo("Europe/Berlin")
TOPICS = {
    "803": "corporate", "4099": "brands", "4100": "bmw", "5127": "mini", "5236": "technology",
    "5249": "people", "5254": "heritage", "4098": "motorshows", "6629": "motorrad", "6728": "bmw-i",
    "7309": "bmw-m", "10837": "sports",
}
ID_RE = re.compile(r"(?<![A-Za-z0-9])(T\d{7,}[A-Z]{2}(?:_[A-Z]{2})?)(?![A-Za-z0-9])", re.IGNORECASE)
ELLIPSES = ("...", "\u2026", "[...]", "[\u2026]")
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Counters always present in scrape_report.json["faults"] (others appear when met).
FAULT_KINDS = ("http_429", "http_5xx", "timeouts", "connection_errors", "http_403", "malformed_xml",
               "non_xml_pages", "items_without_id", "empty_bodies", "suspect_bodies", "detail_fallbacks",
               "articles_without_body", "robots_disallowed", "duplicates_merged")

# ---------------------------------------------------------------------------------------------
# Pure parsing helpers
# ---------------------------------------------------------------------------------------------
DROP_TAGS = ["script", "style", "noscript", "template", "img", "picture", "source", "svg", "video",
             "audio", "iframe", "object", "embed", "figure", "table", "button", "form", "input",
             "select", "textarea", "head", "title", "meta", "link"]
BLOCK_TAGS = ["p", "div", "section", "article", "main", "header", "footer", "aside", "nav",
              "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd",
              "blockquote", "pre", "address", "hr", "body", "html"]
_PARA = "\u2029"  # paragraph separator: marks block boundaries while we flatten the tree
_LINE = "\u2028"  # line separator: marks <br>
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
_NBSP = re.compile(r"[\u00a0\u202f\u2007]")


def html_to_text(html: str | bytes | None) -> str:
    """Plain text of an HTML fragment: markup, images, scripts and tables removed, entities
    decoded, non-breaking spaces turned into spaces, whitespace collapsed the way a browser
    does, `<br>` kept as a line break, block elements (p, div, li, h*) as paragraphs joined by
    one blank line. Nothing else is cleaned."""
    if not html:
        return ""
    if isinstance(html, str) and "<" not in html and "&" not in html:  # plain text already
        return _SPACES.sub(" ", _NBSP.sub(" ", html)).strip()
    soup = BeautifulSoup(html, "lxml")
    for tag in soup.find_all(DROP_TAGS):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with(_LINE)
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_before(_PARA)
        tag.append(_PARA)
    text = _SPACES.sub(" ", _NBSP.sub(" ", soup.get_text()))
    paragraphs = []
    for chunk in text.split(_PARA):
        lines = [line.strip() for line in chunk.split(_LINE)]
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def article_id_from(*candidates: str | None) -> str | None:
    """The first PressClub article id (`T0457178EN`, `T0012345EN_US`) found in the candidates
    (guid, link, ...), upper-cased; None when there is none."""
    for value in candidates:
        if value:
            match = ID_RE.search(value)
            if match:
                return match.group(1).upper()
    return None


def id_language(article_id: str) -> str:
    """`EN` for T0457178EN, `EN_US` for T0012345EN_US."""
    return re.sub(r"^T\d+", "", article_id)


def parse_pubdate(value: str | None) -> datetime | None:
    """An RFC 822 feed date (`Fri, 17 Apr 2026 16:20:14 +0200`) or ISO 8601 string, offset kept.
    A date without offset is read as Munich time. None when unparseable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    moment = None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=MUNICH)
    return moment


_JAVA_DATE = re.compile(
    r"^\w{3}\s+(\w{3})\s+(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})\s+([A-Za-z+\-:0-9]+)\s+(\d{4})$"
)
_TZ_ABBREVIATIONS = {"CET": 1, "CEST": 2, "MEZ": 1, "MESZ": 2, "UTC": 0, "GMT": 0, "Z": 0}


def parse_detail_date(value: str | None) -> datetime | None:
    """A detail page's date: `14.08.2025` (sent for Accept-Language: en-US; read as Munich
    midnight) or Java style `Fri Nov 21 10:00:00 CET 2025`. None when unparseable."""
    if not value or not value.strip():
        return None
    value = " ".join(value.split())
    try:
        day = datetime.strptime(value, "%d.%m.%Y")
        return day.replace(tzinfo=MUNICH)
    except ValueError:
        pass
    match = _JAVA_DATE.match(value)
    if match:
        month, day, hour, minute, second, zone, year = match.groups()
        try:
            naive = datetime.strptime(f"{year} {month} {day} {hour}:{minute}:{second}", "%Y %b %d %H:%M:%S")
        except ValueError:
            return None
        hours = _TZ_ABBREVIATIONS.get(zone.upper())
        if hours is None:
            return naive.replace(tzinfo=MUNICH)  # unknown zone name: the site is in Munich
        return naive.replace(tzinfo=timezone(timedelta(hours=hours)))
    return parse_pubdate(value)


def iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else ""


@dataclass
class FeedItem:
    id: str | None
    title: str
    url: str
    published: datetime | None
    body_html: str | None  # None: the item has no description at all


@dataclass
class FeedPage:
    items: list[FeedItem]
    next_url: str | None
    malformed: str | None = None  # what was wrong when the XML had to be read leniently
    fetched_at: str = ""  # set by the crawler: when the page was downloaded


class FeedError(ValueError):
    """A feed page that cannot be used."""


class NotAFeedError(FeedError):
    """The answer is not XML at all (the live site sends an HTML page past the last page)."""


class MalformedFeedError(FeedError):
    """Broken XML from which not even the channel could be recovered."""


def _looks_like_html(head: str) -> bool:
    head = head.lstrip("\ufeff \t\r\n").lower()
    return head.startswith(("<!doctype html", "<html")) or ("<html" in head[:1000] and "<rss" not in head[:1000])


def parse_feed(document: str | bytes) -> FeedPage:
    """Items and the `rel="next"` link of one RSS page (feedparser: tolerant of broken XML).

    Raises NotAFeedError for an HTML or empty answer, MalformedFeedError for XML too broken to
    recover. A page read leniently comes back with `malformed` set."""
    data = document.encode("utf-8") if isinstance(document, str) else (document or b"")
    head = data[:2000].decode("latin-1")
    if not data.strip():
        raise NotAFeedError("empty answer")
    if _looks_like_html(head):
        raise NotAFeedError("an HTML page, not a feed")
    parsed = feedparser.parse(io.BytesIO(data), sanitize_html=False, resolve_relative_uris=False)
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    broken = isinstance(problem, xml.sax.SAXException)
    if not parsed.get("version") and not parsed.entries:
        if broken:
            raise MalformedFeedError(f"malformed XML: {problem}")
        raise NotAFeedError("not an RSS document")
    next_url = None
    for link in parsed.feed.get("links", []):
        if link.get("rel") == "next" and link.get("href"):
            next_url = link["href"].strip()
    items = []
    for entry in parsed.entries:
        guid, link = entry.get("id"), entry.get("link")
        body = None
        if entry.get("content"):
            body = max((c.get("value", "") for c in entry.content), key=len)
        if entry.get("summary") is not None and (body is None or len(entry.summary) > len(body)):
            body = entry.summary
        items.append(FeedItem(
            id=article_id_from(guid, link),
            title=(entry.get("title") or "").strip(),
            url=(link or "").strip(),
            published=parse_pubdate(entry.get("published") or entry.get("updated")),
            body_html=body,
        ))
    return FeedPage(items=items, next_url=next_url, malformed=f"{problem}" if broken else None)


def parse_detail_page(html: str | bytes) -> dict:
    """The fields of an article detail page: title (h1), teaser (h2.teaser or ""), date (the
    span.date text as shown), published (that date as ISO 8601 with offset, "" if unreadable;
    both date styles), category (span.category or ""), text (div#article-text without the CO2
    summary and the "Show entire text" button)."""
    soup = BeautifulSoup(html, "lxml")
    root = soup.select_one("div.article-detail") or soup

    def text_of(selector: str) -> str:
        node = root.select_one(selector) or soup.select_one(selector)
        return " ".join(_NBSP.sub(" ", node.get_text(" ")).split()) if node else ""

    body = soup.select_one("#article-text") or soup.select_one(".article-text")
    text = ""
    if body is not None:
        for node in body.select(".co2_summary, button, .readmore"):
            node.decompose()
        text = html_to_text(str(body))
    date_text = text_of("div.article-info span.date") or text_of("span.date")
    return {
        "title": text_of("h1"),
        "teaser": text_of("h2.teaser"),
        "date": date_text,
        "published": iso(parse_detail_date(date_text)),
        "category": text_of("div.article-info span.category") or text_of("span.category"),
        "text": text,
    }


def truncation_reason(text: str, *, html: str | None = None, lead: str = "", teaser: str = "",
                      min_chars: int = 0) -> str | None:
    """Why a feed body looks missing or cut short, or None when it looks whole.

    `html` is the raw description (a body cut inside its markup does not end with a tag);
    `lead` is the plain feed's description when that is the body's start cut off with "...";
    `teaser` the "+++" summary. A whole body is at least as long as either."""
    if not text.strip():
        return "empty"
    if text.rstrip().endswith(ELLIPSES):
        return "ends with an ellipsis"
    raw = (html or "").strip()
    if re.search(r"<(p|div|br)\b", raw, re.IGNORECASE) and not raw.endswith(">"):
        return "cut off inside its HTML"
    if min_chars and len(text) < min_chars:
        return f"shorter than {min_chars} characters"
    for name, other in (("lead", _strip_ellipsis(lead)), ("teaser", teaser)):
        if other and len(_squash(text)) < len(_squash(other)):
            return f"shorter than the feed's {name}"
    return None


def _strip_ellipsis(text: str) -> str:
    text = text.rstrip()
    for mark in ELLIPSES:
        if text.endswith(mark):
            return text[: -len(mark)].rstrip()
    return text


def _squash(text: str) -> str:
    return " ".join(text.split())


def teaser_from_plain(description: str, body_text: str = "") -> tuple[str, str]:
    """Split a plain /rss description into (teaser, lead): the "+++" summary is a teaser; a lead
    cut off with "..." (the start of the body) is not, it only helps to spot cut bodies."""
    text = html_to_text(description).replace("\n\n", " ")
    if not text:
        return "", ""
    if text.rstrip().endswith(ELLIPSES) and not text.lstrip().startswith("+++"):
        stem = _squash(_strip_ellipsis(text))
        if not body_text or _squash(body_text).startswith(stem) or len(_squash(body_text)) < len(stem):
            return "", text
    return text, ""


def rebase_url(url: str, base_url: str) -> str:
    """Keep the path and query of `url` (absolute or relative) but the scheme and host of
    `base_url`: the live site's next links drop `/global` and name the live host, and a stand-in
    on 127.0.0.1 must still be asked."""
    base = urlsplit(base_url)
    target = urlsplit(urljoin(base_url.rstrip("/") + "/", url.strip()))
    return urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))


def feed_url(base_url: str, kind: str = "rss2", topic: str | None = None, page: int = 1) -> str:
    """`{base}/global/rss2[/topic/803][?page=N]`."""
    url = f"{base_url.rstrip('/')}/global/{kind}" + (f"/topic/{topic}" if topic else "")
    return url + (f"?page={page}" if page > 1 else "")


def page_number(url: str) -> int:
    try:
        return int(parse_qs(urlsplit(url).query).get("page", ["1"])[0])
    except ValueError:
        return 1


def teaser_feed_url(rss2_url: str) -> str:
    """The plain (teaser) feed page that matches an rss2 page: `/rss2` -> `/rss`."""
    parts = urlsplit(rss2_url)
    path = re.sub(r"/rss2(?=/|$)", "/rss", parts.path, count=1)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def detail_url(base_url: str, article_id: str, link: str = "") -> str:
    if link and "/article/detail/" in link:
        return rebase_url(link, base_url)
    query = urlencode({"language": "en"})
    return f"{base_url.rstrip('/')}/global/article/detail/{article_id}?{query}"


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


# ---------------------------------------------------------------------------------------------
# Fetching: cache, retries, robots.txt, politeness
# ---------------------------------------------------------------------------------------------
@dataclass
class Settings:
    base_url: str = DEFAULT_BASE_URL
    out: Path = RAW_DIR
    max_articles: int = 500
    since: date | None = None
    topics: list[str] = field(default_factory=lambda: list(TOPICS))
    delay: float = 1.0
    offline: bool = False
    refresh: bool = False
    details: str = "fallback"  # or "always"
    teasers: bool = True
    timeout: float = 15.0
    retries: int = 4
    backoff: float = 0.5
    max_wait: float = 60.0
    max_403: int = 3
    min_body_chars: int = 0
    flush_every: int = 25
    max_pages: int = 500
    languages: list[str] = field(default_factory=list)  # empty: any

    def to_dict(self) -> dict:
        out = asdict(self)
        out["out"] = str(self.out)
        out["since"] = self.since.isoformat() if self.since else None
        return out


@dataclass
class Stats:
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
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
        self.failed_urls.append({"url": url, "reason": reason})
        log.warning("giving up on %s: %s", url, reason)


class SiteUnreachable(RuntimeError):
    """The site does not answer at all."""


class Blocked(RuntimeError):
    """The site answered 403 too many times in a row."""


class CountingRetry(Retry):
    """urllib3 Retry that reports every retry (and its cause) to a callback."""

    on_retry: Callable[[str, str], None] | None = None

    def new(self, **kw):
        new = super().new(**kw)
        new.on_retry, new.min_backoff = self.on_retry, self.min_backoff
        return new

    min_backoff: float = 0.0

    def get_backoff_time(self) -> float:
        """Exponential backoff, but never less than the polite pause between requests."""
        backoff = super().get_backoff_time()
        return max(backoff, min(self.min_backoff, self.backoff_max)) if self.history else backoff

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if response is not None and response.status:
            cause = "http_429" if response.status == 429 else f"http_{response.status // 100}xx"
        elif isinstance(error, ReadTimeoutError):
            cause = "timeouts"
        else:
            cause = "connection_errors"
        new = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when used up
        if self.on_retry:
            self.on_retry(cause, url or "")
        return new


def make_session(cache_dir: Path, settings: Settings, on_retry: Callable[[str, str], None]) -> requests_cache.CachedSession:
    """A requests session with an on-disk SQLite cache (200s only, never expiring) and retries
    on 429/5xx/timeouts/connection errors with exponential backoff honouring Retry-After."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    session = requests_cache.CachedSession(
        str(cache_dir / "http_cache"), backend="sqlite", expire_after=requests_cache.NEVER_EXPIRE,
        allowable_codes=(200,), allowable_methods=("GET",), cache_control=False,
    )
    retry = CountingRetry(
        total=settings.retries, connect=min(2, settings.retries), read=settings.retries,
        status=settings.retries, other=0, status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}), backoff_factor=settings.backoff,
        backoff_max=settings.max_wait, backoff_jitter=settings.backoff * 0.25,
        respect_retry_after_header=True, retry_after_max=settings.max_wait,
        raise_on_status=False, raise_on_redirect=False,
    )
    retry.on_retry, retry.min_backoff = on_retry, settings.delay
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Language": "en-US,en;q=0.8"})
    return session


@dataclass
class Fetched:
    url: str
    status: int | None = None
    content: bytes = b""
    from_cache: bool = False
    fetched_at: str = ""
    error: str | None = None
    skipped: str | None = None  # "robots" or "offline": not asked at all

    @property
    def ok(self) -> bool:
        return self.status == 200


def _unreachable(exc: BaseException) -> bool:
    """True when the error says nobody answers at that address (refused, unknown host, connect
    timeout), as opposed to a server that answered too slowly."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (NewConnectionError, ConnectTimeoutError, requests.exceptions.ConnectTimeout)):
            return True
        if isinstance(exc, ReadTimeoutError):
            return False
        nxt = getattr(exc, "reason", None)
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc = nxt or exc.__cause__ or exc.__context__
    return False


class Fetcher:
    """GET with cache, robots.txt, a polite pause between network requests and bounded retries.
    Never raises for one bad page (the answer says what went wrong); raises SiteUnreachable when
    nothing answers and Blocked after repeated 403s."""

    def __init__(self, settings: Settings, stats: Stats, session: requests.Session | None = None):
        self.settings = settings
        self.stats = stats
        self.session = session or make_session(settings.out / "cache", settings, self._on_retry)
        self.delay = settings.delay
        self.robots: Protego | None = None
        self._last_network = 0.0
        self._ever_answered = False
        self._forbidden_in_row = 0
        self._unreachable_in_row = 0

    def _on_retry(self, cause: str, url: str) -> None:
        self.stats.retries += 1
        self.stats.faults[cause] += 1
        level = logging.DEBUG if cause == "connection_errors" else logging.INFO
        log.log(level, "retrying %s after %s", url, cause.replace("_", " "))

    def cached(self, url: str) -> bool:
        return not self.settings.refresh and self.session.cache.contains(url=url)

    def forget(self, url: str) -> None:
        """Drop a response from the cache (it could not be used; a re-run should ask again)."""
        self.session.cache.delete(urls=[url])

    def load_robots(self) -> None:
        url = f"{self.settings.base_url.rstrip('/')}/robots.txt"
        got = self.get(url, check_robots=False, fresh=not self.settings.offline)  # current rules, and a
        # first request that tells at once whether the site answers at all
        if got.ok:
            self.robots = Protego.parse(got.content.decode("utf-8", "replace"))
            crawl_delay = self.robots.crawl_delay(USER_AGENT)
            if crawl_delay and crawl_delay > self.delay:
                log.info("robots.txt asks for %.1f s between requests", crawl_delay)
                self.delay = float(crawl_delay)
        elif got.status and 400 <= got.status < 500:
            log.info("no robots.txt (HTTP %s): everything allowed", got.status)
        elif not self.settings.offline:
            log.warning("could not read robots.txt (%s); going on", got.error or got.status)

    def allowed(self, url: str) -> bool:
        return self.robots is None or self.robots.can_fetch(url, USER_AGENT)

    def _pause(self) -> None:
        if self.delay <= 0 or not self._last_network:
            return
        wait = self.delay * (1 + random.uniform(0, 0.5)) - (time.monotonic() - self._last_network)
        if wait > 0:
            time.sleep(wait)

    def get(self, url: str, *, check_robots: bool = True, fresh: bool = False) -> Fetched:
        if check_robots and not self.allowed(url):
            self.stats.faults["robots_disallowed"] += 1
            log.warning("robots.txt disallows %s: skipped", url)
            return Fetched(url, error="disallowed by robots.txt", skipped="robots")
        in_cache = not fresh and self.cached(url)
        if self.settings.offline and not in_cache:
            self.stats.faults["not_in_cache"] += 1
            log.debug("offline and not cached: %s", url)
            return Fetched(url, error="not in the cache (offline)", skipped="offline")
        if not in_cache:
            self._pause()
        self.stats.requests += 1
        try:
            response = self.session.get(
                url, timeout=self.settings.timeout,
                force_refresh=fresh or self.settings.refresh, only_if_cached=self.settings.offline,
            )
        except requests.RequestException as exc:
            self.stats.network_requests += 1
            self._last_network = time.monotonic()
            if _unreachable(exc):
                self._unreachable_in_row += 1
                if not self._ever_answered or self._unreachable_in_row >= 3:
                    raise SiteUnreachable(str(exc)) from None
            reason = f"{_short(exc) if _short(exc) != 'no answer' else type(exc).__name__} (tried {self.settings.retries + 1} times)"
            self.stats.fail(url, reason)
            return Fetched(url, error=reason)
        from_cache = bool(getattr(response, "from_cache", False))
        if from_cache:
            self.stats.cache_hits += 1
        else:
            self.stats.network_requests += 1
            self._last_network = time.monotonic()
        self._ever_answered = True
        self._unreachable_in_row = 0
        created = getattr(response, "created_at", None)
        key = getattr(response, "cache_key", None)
        if not from_cache and key and hasattr(self.session, "cache"):
            stored = self.session.cache.get_response(key)  # the copy that later runs replay
            created = stored.created_at if stored is not None else created
        created = created or datetime.now(timezone.utc)
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        got = Fetched(url, response.status_code, response.content, from_cache, iso(created))
        if response.status_code == 403:
            self.stats.faults["http_403"] += 1
            self._forbidden_in_row += 1
            if self._forbidden_in_row >= self.settings.max_403:
                raise Blocked(f"{self._forbidden_in_row} answers in a row were 403 Forbidden (last: {url})")
        else:
            self._forbidden_in_row = 0
        if response.status_code != 200:
            got.error = f"HTTP {response.status_code}"
            if response.status_code in RETRY_STATUSES:
                self.stats.fail(url, f"HTTP {response.status_code} after {self.settings.retries} retries")
            elif response.status_code != 404:
                self.stats.fail(url, f"HTTP {response.status_code}")
        return got


# ---------------------------------------------------------------------------------------------
# The crawl
# ---------------------------------------------------------------------------------------------
class Crawler:
    """Pages through the feeds, builds one record per new article, keeps them unique by id."""

    def __init__(self, settings: Settings, fetcher: Fetcher, stats: Stats,
                 on_article: Callable[[dict], None] | None = None):
        self.settings = settings
        self.fetcher = fetcher
        self.stats = stats
        self.on_article = on_article
        self.articles: dict[str, dict] = {}
        self._published: dict[str, datetime | None] = {}
        self._given_up: set[str] = set()
        self._since = (datetime.combine(settings.since, datetime.min.time(), tzinfo=MUNICH)
                       if settings.since else None)
        self._unflushed = 0
        self.progress: tqdm | None = None

    # -- state ------------------------------------------------------------------------------
    def full(self) -> bool:
        return bool(self.settings.max_articles) and len(self.articles) >= self.settings.max_articles

    def horizon(self) -> datetime | None:
        """Items older than this are not wanted: --since, or once full the oldest article held."""
        limits = [self._since] if self._since else []
        if self.full():
            dates = [d for d in self._published.values() if d]
            if dates:
                limits.append(min(dates))
        return max(limits) if limits else None

    def flush(self) -> None:
        if self.articles:
            write_jsonl(self.settings.out / "articles.jsonl", self.articles.values())
        self._unflushed = 0

    # -- feeds ------------------------------------------------------------------------------
    def run(self) -> None:
        self.fetcher.load_robots()
        self.crawl_feed(None)
        for topic in self.settings.topics:
            self.crawl_feed(topic)

    def crawl_feed(self, topic: str | None) -> None:
        label = "global" if topic is None else f"topic {topic} ({TOPICS.get(topic, '?')})"
        summary = {"feed": label, "pages": 0, "new_articles": 0, "ended": ""}
        self.stats.feeds.append(summary)
        page, url, misses = 1, feed_url(self.settings.base_url, "rss2", topic), 0
        seen_here: set[str] = set()
        while True:
            if topic is None and self.full():
                summary["ended"] = "max-articles reached"
                break
            if page > self.settings.max_pages:
                summary["ended"] = f"max-pages ({self.settings.max_pages}) reached"
                break
            result = self.read_feed_page(url, page, topic, label)
            if isinstance(result, str):  # the feed ended
                summary["ended"] = result
                break
            if result is None:  # page lost: try the next one by number, a few times
                misses += 1
                if misses >= 3:
                    if self.settings.offline:
                        summary["ended"] = "end of the cached pages"
                    else:
                        summary["ended"] = "three pages in a row failed"
                        log.warning("%s feed: three pages in a row failed; moving on", label)
                    break
                page += 1
                url = feed_url(self.settings.base_url, "rss2", topic, page)
                continue
            misses = 0
            summary["pages"] += 1
            ids = [item.id for item in result.items if item.id]
            if not result.items:
                summary["ended"] = "empty page"
                break
            if ids and all(i in seen_here for i in ids):
                summary["ended"] = "page repeats earlier items"
                log.warning("%s feed page %d repeats earlier items; stopping this feed", label, page)
                break
            seen_here.update(ids)
            new, reached_old = self.take_items(result, url, topic)
            summary["new_articles"] += new
            if reached_old:
                summary["ended"] = "reached items older than wanted"
                break
            if result.next_url:
                url = rebase_url(result.next_url, self.settings.base_url)
                page = page_number(url) if page_number(url) > page else page + 1
            elif result.malformed:
                page += 1
                url = feed_url(self.settings.base_url, "rss2", topic, page)
            else:
                summary["ended"] = "no next link"
                break
        log.info("%s feed: %d pages, %d new articles, ended: %s",
                 label, summary["pages"], summary["new_articles"], summary["ended"])

    def read_feed_page(self, url: str, page: int, topic: str | None, label: str) -> FeedPage | str | None:
        """One parsed feed page; a string when the feed has ended there; None when it failed."""
        got = self.fetcher.get(url)
        canonical = feed_url(self.settings.base_url, "rss2", topic, page)
        if got.status == 404 and url != canonical:  # a next link without /global that this host lacks
            log.info("%s answered 404; trying %s", url, canonical)
            url, got = canonical, self.fetcher.get(canonical)
        if got.status == 404:
            self.stats.faults["feeds_not_found" if page == 1 else "pages_not_found"] += 1
            return "not found (404)" if page == 1 else "page not found (404)"
        if got.skipped == "offline" and page == 1:
            return "not in the cache"
        if got.skipped == "robots":
            return "disallowed by robots.txt"
        if not got.ok:
            return None
        for attempt in (1, 2):
            try:
                parsed = parse_feed(got.content)
            except NotAFeedError as exc:
                self.fetcher.forget(url)
                self.stats.faults["non_xml_pages"] += 1
                log.info("%s feed page %d is not XML (%s): taken as the end of the feed", label, page, exc)
                return "not XML (past the last page)" if page > 1 else "not XML"
            except MalformedFeedError as exc:
                parsed, problem = None, str(exc)
            else:
                problem = parsed.malformed
            if parsed is not None:
                parsed.fetched_at = got.fetched_at
            if problem is None:
                return parsed
            self.stats.faults["malformed_xml"] += 1
            self.fetcher.forget(url)
            if attempt == 1 and not self.settings.offline:
                log.warning("%s feed page %d: %s; asking once more", label, page, problem)
                got = self.fetcher.get(url, fresh=True)
                if not got.ok:
                    return None
                continue
            if parsed is not None:
                log.warning("%s feed page %d: %s; using the %d items read leniently (bodies from detail pages)",
                            label, page, problem, len(parsed.items))
                return parsed
            self.stats.fail(url, problem)
            return None
        return None

    def take_items(self, page: FeedPage, page_url: str, topic: str | None) -> tuple[int, bool]:
        """Add the page's new articles; returns (how many were new, whether the page reached
        items older than wanted: feeds are newest first, so later pages hold none we want)."""
        fresh: list[FeedItem] = []
        horizon = self.horizon()
        reached_old = False
        for item in page.items:
            if horizon and item.published and item.published < horizon:
                reached_old = True
            if not item.id:
                self.stats.faults["items_without_id"] += 1
                log.warning("feed item %r on %s has no article id in guid or link: skipped",
                            item.title[:60], page_url)
                continue
            if self.settings.languages and id_language(item.id) not in self.settings.languages:
                self.stats.faults["skipped_language"] += 1
                continue
            if item.id in self.articles:
                record = self.articles[item.id]
                if topic and topic not in record["topics"]:
                    record["topics"].append(topic)
                    self._unflushed += 1
                self.stats.faults["duplicates_merged"] += 1
                continue
            if item.id in self._given_up or any(f.id == item.id for f in fresh):
                continue
            if horizon and item.published and item.published < horizon:
                continue
            fresh.append(item)
        room = (self.settings.max_articles - len(self.articles)) if self.settings.max_articles else len(fresh)
        fresh = fresh[:max(0, room)]
        teasers = self.read_teasers(page_url) if fresh and self.settings.teasers else {}
        added = 0
        for item in fresh:
            record = self.build_record(item, teasers.get(item.id, ""), topic, page.malformed, page.fetched_at)
            if record is None:
                continue
            self.add(record, item.published)
            added += 1
        return added, reached_old

    def read_teasers(self, rss2_url: str) -> dict[str, str]:
        """id -> description of the plain (teaser) feed page matching this rss2 page."""
        url = teaser_feed_url(rss2_url)
        got = self.fetcher.get(url)
        if not got.ok:
            self.stats.faults["teaser_pages_missing"] += 1
            return {}
        try:
            parsed = parse_feed(got.content)
        except FeedError as exc:
            self.stats.faults["teaser_pages_missing"] += 1
            log.info("teaser page %s unusable (%s)", url, exc)
            self.fetcher.forget(url)
            return {}
        return {item.id: item.body_html or "" for item in parsed.items if item.id}

    def build_record(self, item: FeedItem, plain: str, topic: str | None,
                     page_malformed: str | None, fetched_at: str) -> dict | None:
        """One article record from a feed item; reads the detail page when the feed body looks
        missing or cut short (or always with --details always). The detail text replaces the
        feed text when it is longer, or whenever the feed page was malformed."""
        text = html_to_text(item.body_html)
        teaser, lead = teaser_from_plain(plain, text)
        reason = truncation_reason(text, html=item.body_html, lead=lead, teaser=teaser,
                                   min_chars=self.settings.min_body_chars)
        if page_malformed and not reason:
            reason = "came from a malformed feed page"
        if reason:
            self.stats.faults["empty_bodies" if reason == "empty" else "suspect_bodies"] += 1
            log.info("%s: feed body %s; reading the detail page", item.id, reason)
        detail = self.read_detail(item) if reason or self.settings.details == "always" else None
        source, category, title, published = "rss2", "", item.title, item.published
        if detail:
            category, teaser = detail["category"], detail["teaser"]
            if detail["title"] and (page_malformed or not title):
                title = detail["title"]
            if published is None and detail["published"]:
                published = datetime.fromisoformat(detail["published"])
            longer = len(_squash(detail["text"])) > len(_squash(text))
            if reason and detail["text"] and (longer or page_malformed):
                text, source = detail["text"], "detail"
                self.stats.faults["detail_fallbacks"] += 1
            elif reason and text:
                log.info("%s: the detail page has no more text; the feed body was whole", item.id)
        if reason and source != "detail" and not (detail and detail["text"]):
            if not text.strip():
                self.stats.faults["articles_without_body"] += 1
                self._given_up.add(item.id)
                log.warning("%s: no body in the feed nor on the detail page: skipped", item.id)
                return None
            self.stats.faults["suspect_bodies_kept"] += 1
            log.warning("%s: detail page unavailable; keeping the feed body as it is", item.id)
        return {
            "id": item.id,
            "url": item.url or detail_url(self.settings.base_url, item.id),
            "title": title.strip(),
            "published": iso(published),
            "teaser": teaser,
            "category": category,
            "topics": [topic] if topic else [],
            "text": text,
            "source": source,
            "fetched_at": detail["fetched_at"] if source == "detail" else fetched_at,
        }

    def read_detail(self, item: FeedItem) -> dict | None:
        url = detail_url(self.settings.base_url, item.id, item.url)
        got = self.fetcher.get(url)
        if got.status == 404:
            self.stats.fail(url, "HTTP 404")
        if not got.ok:
            return None
        fields = parse_detail_page(got.content)
        fields["fetched_at"] = got.fetched_at
        if not fields["text"]:
            self.stats.faults["detail_pages_without_text"] += 1
            log.warning("%s: detail page %s has no div#article-text", item.id, url)
        return fields

    def add(self, record: dict, published: datetime | None) -> None:
        self.articles[record["id"]] = record
        self._published[record["id"]] = published
        self._unflushed += 1
        if self.progress is not None:
            self.progress.update(1)
        if self.on_article:
            self.on_article(record)
        if self._unflushed >= self.settings.flush_every:
            self.flush()
            write_report(self.settings, self.stats, self, status="running")


# ---------------------------------------------------------------------------------------------
# Report and command line
# ---------------------------------------------------------------------------------------------
def write_report(settings: Settings, stats: Stats, crawler: Crawler | None, *, status: str,
                 stopped_reason: str | None = None) -> dict:
    articles = list(crawler.articles.values()) if crawler else []
    report = {
        "status": status,
        "stopped_reason": stopped_reason,
        "started_at": stats.started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - stats.started, 2),
        "articles": len(articles),
        "by_source": dict(Counter(a["source"] for a in articles)),
        "with_teaser": sum(1 for a in articles if a["teaser"]),
        "in_several_topics": sum(1 for a in articles if len(a["topics"]) > 1),
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
    write_json(settings.out / "scrape_report.json", report)
    return report


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults, but not for on/off flags or empty values; keep the epilog's line breaks."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default in (None, ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="01_scrape.py",
        description="Collect BMW Group PressClub articles from its full-text RSS feeds into\n"
                    "data/raw/articles.jsonl (one article a line, unique by id), with a response\n"
                    "cache so that a killed run resumes and --offline replays.",
        epilog="offline example (a stand-in server on this machine):\n"
               "  python tests/standin_server.py --corpus ../shared/corpus/pressclub_articles.jsonl --port 8765 &\n"
               "  python 01_scrape.py --base-url http://127.0.0.1:8765 --delay 0\n"
               "exit status: 0 done, 1 site unreachable or nothing collected, 2 bad arguments,\n"
               "3 stopped after repeated 403, 130 interrupted (outputs so far are kept)",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help="site to read: the live PressClub or a stand-in such as http://127.0.0.1:8765")
    parser.add_argument("--max-articles", type=int, default=500, help="stop after this many unique articles (0: no limit)")
    parser.add_argument("--since", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                        help="skip articles published before this day and stop paging there")
    parser.add_argument("--topics", default="all",
                        help="topic feeds to read after the global feed, for the articles' topic lists: "
                             f"'all', 'none', or ids/names separated by commas ({', '.join(f'{k}={v}' for k, v in TOPICS.items())})")
    parser.add_argument("--delay", type=float, default=1.0,
                        help="seconds between network requests, plus up to 50%% jitter (cache hits do not wait)")
    parser.add_argument("--out", type=Path, default=RAW_DIR, help="output folder (articles.jsonl, scrape_report.json, cache/)")
    parser.add_argument("--offline", action="store_true", help="use only the response cache; no network at all")
    parser.add_argument("--refresh", action="store_true", help="ignore the cache and download everything again (the cache is updated)")
    parser.add_argument("--details", choices=["fallback", "always"], default="fallback",
                        help="read an article's detail page only when its feed body is missing or cut short, "
                             "or always (adds category and teaser for every article; one more request each)")
    parser.add_argument("--no-teasers", dest="teasers", action="store_false",
                        help="do not read the plain /rss feed pages for the '+++' teasers")
    parser.add_argument("--languages", default="", help="keep only ids with these language suffixes, e.g. EN,EN_US (default: any language)")
    parser.add_argument("--min-body-chars", type=int, default=0,
                        help="treat a feed body shorter than this as cut short and read the detail page (0: off)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for an answer")
    parser.add_argument("--retries", type=int, default=4, help="retries of a request after 429/5xx/timeouts/connection errors")
    parser.add_argument("--backoff", type=float, default=0.5,
                        help="backoff factor: waits of about 0, 2b, 4b, 8b seconds between retries (never less than --delay)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="longest wait before a retry, Retry-After included")
    parser.add_argument("--max-403", type=int, default=3, help="stop the crawl after this many 403 answers in a row")
    parser.add_argument("--flush-every", type=int, default=25, help="rewrite articles.jsonl after this many new articles")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        base_url=args.base_url.rstrip("/"), out=args.out, max_articles=args.max_articles,
        since=args.since, topics=parse_topics(args.topics), delay=max(0.0, args.delay),
        offline=args.offline, refresh=args.refresh, details=args.details, teasers=args.teasers,
        timeout=args.timeout, retries=max(0, args.retries), backoff=max(0.0, args.backoff),
        max_wait=max(0.0, args.max_wait), max_403=max(1, args.max_403),
        min_body_chars=max(0, args.min_body_chars), flush_every=max(1, args.flush_every),
        languages=[x.strip().upper() for x in args.languages.split(",") if x.strip()],
    )


def scrape(settings: Settings, on_article: Callable[[dict], None] | None = None,
           session: requests.Session | None = None) -> int:
    """Run the crawl and write the outputs; returns the process exit code.
    0 done, 1 site unreachable or nothing collected, 3 stopped by repeated 403, 130 interrupted."""
    settings.out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    fetcher = Fetcher(settings, stats, session)
    crawler = Crawler(settings, fetcher, stats, on_article)
    log.info("reading %s%s into %s", settings.base_url, " (offline: cache only)" if settings.offline else "", settings.out)
    status, reason, code = "complete", None, 0
    try:
        with logging_redirect_tqdm(), tqdm(total=settings.max_articles or None, unit="article",
                                           desc="articles", disable=None, file=sys.stderr) as bar:
            crawler.progress = bar
            crawler.run()
    except SiteUnreachable as exc:
        status, reason, code = "unreachable", str(exc), 1
        write_report(settings, stats, crawler, status=status, stopped_reason=reason)
        log.debug("unreachable: %s", exc)
        print(f"error: cannot reach {settings.base_url} ({_short(exc)}). Check --base-url "
              f"(for a local stand-in: python tests/standin_server.py --corpus FILE --port 8765), "
              f"or use --offline to replay the response cache in {settings.out / 'cache'}.", file=sys.stderr)
        if crawler.articles:
            crawler.flush()
        return code
    except Blocked as exc:
        status, reason, code = "blocked", str(exc), 3
        log.error("stopping: %s", exc)
    except KeyboardInterrupt:
        status, reason, code = "interrupted", "interrupted", 130
        log.warning("interrupted: keeping the %d articles collected so far; run again to finish "
                    "(the cache makes it quick)", len(crawler.articles))
    crawler.flush()
    report = write_report(settings, stats, crawler, status=status, stopped_reason=reason)
    log.info(
        "%d articles (%s) in %.1f s: %d requests (%d network, %d cache hits), %d retries, %d failures; "
        "report: %s", report["articles"],
        ", ".join(f"{k} {v}" for k, v in report["by_source"].items()) or "none", report["seconds"],
        report["requests"], report["network_requests"], report["cache_hits"], report["retries"],
        report["failures"], settings.out / "scrape_report.json",
    )
    faults = {k: v for k, v in report["faults"].items() if v and k != "duplicates_merged"}
    if faults:
        log.info("faults met: %s", ", ".join(f"{k}={v}" for k, v in faults.items()))
    if code == 0 and not crawler.articles:
        print("error: no articles collected"
              + (" (the cache holds none: run once without --offline)" if settings.offline else "")
              + f"; see {settings.out / 'scrape_report.json'}", file=sys.stderr)
        code = 1
    return code


def _short(exc: BaseException) -> str:
    text = str(exc)
    for hint in ("Connection refused", "Name or service not known", "nodename nor servname",
                 "timed out", "No route to host", "Temporary failure in name resolution",
                 "Connection reset", "Connection aborted", "Remote end closed connection"):
        if hint.lower() in text.lower():
            return hint.lower()
    return "no answer"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    logging.getLogger("urllib3").setLevel(logging.ERROR if not args.verbose else logging.DEBUG)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        build_parser().error(str(exc))
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends the run like Ctrl-C: outputs kept
    try:
        return scrape(settings)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
