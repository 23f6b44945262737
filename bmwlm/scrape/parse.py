"""Reading what the PressClub sends: feed pages, detail pages, article ids and dates, and the
signs that a feed body was cut short. Pure functions over text or bytes; no network."""
from __future__ import annotations

import io
import re
import xml.sax
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

import feedparser
from bs4 import BeautifulSoup

from bmwlm.scrape.text import NBSP, decode_document, html_to_text, squash

MUNICH = ZoneInfo("Europe/Berlin")
ID_RE = re.compile(r"(?<![A-Za-z0-9])(T\d{7,}[A-Z]{2}(?:_[A-Z]{2})?)(?![A-Za-z0-9])", re.IGNORECASE)
ELLIPSES = ("...", "\u2026", "[...]", "[\u2026]")
UTF8_FEED_TYPE = "application/rss+xml; charset=utf-8"


# ---- ids and dates -------------------------------------------------------------------------
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
_TZ_ABBREVIATIONS = MappingProxyType({"CET": 1, "CEST": 2, "MEZ": 1, "MESZ": 2, "UTC": 0, "GMT": 0, "Z": 0})


def parse_detail_date(value: str | None) -> datetime | None:
    """A detail page's date: `14.08.2025` (sent for Accept-Language: en-US; read as Munich
    midnight) or Java style `Fri Nov 21 10:00:00 CET 2025`. None when unparseable."""
    if not value or not value.strip():
        return None
    value = " ".join(value.split())
    try:
        return datetime.strptime(value, "%d.%m.%Y").replace(tzinfo=MUNICH)
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


# ---- feed pages ----------------------------------------------------------------------------
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
    bad_bytes: int = 0  # bytes invalid in the page's encoding (replaced by U+FFFD)
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


def parse_feed(document: str | bytes, content_type: str = "") -> FeedPage:
    """Items and the `rel="next"` link of one RSS page (feedparser: tolerant of broken XML).

    Bytes are decoded by `text.decode_document` (declared encoding; bad bytes replaced and
    counted in `bad_bytes`), never re-guessed by feedparser. Raises NotAFeedError for an HTML or
    empty answer, MalformedFeedError for XML too broken to recover. A page read leniently comes
    back with `malformed` set."""
    bad_bytes = 0
    if isinstance(document, bytes):
        decoded = decode_document(document, content_type)
        document, bad_bytes = decoded.text, decoded.bad_bytes
    text = document or ""
    if not text.strip():
        raise NotAFeedError("empty answer")
    if _looks_like_html(text[:2000]):
        raise NotAFeedError("an HTML page, not a feed")
    # feedparser gets the text we decoded, re-encoded as UTF-8 and labelled so: it must not guess.
    parsed = feedparser.parse(io.BytesIO(text.encode("utf-8")), response_headers={"content-type": UTF8_FEED_TYPE},
                              sanitize_html=False, resolve_relative_uris=False)
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
    return FeedPage(items=items, next_url=next_url, malformed=f"{problem}" if broken else None,
                    bad_bytes=bad_bytes)


# ---- detail pages --------------------------------------------------------------------------
def parse_detail_page(document: str | bytes, content_type: str = "") -> dict:
    """The fields of an article detail page: title (h1), teaser (h2.teaser or ""), date (the
    span.date text as shown), published (that date as ISO 8601 with offset, "" if unreadable;
    both date styles), category (span.category or ""), text (div#article-text without the CO2
    summary and the "Show entire text" button), bad_bytes (as in `parse_feed`)."""
    bad_bytes = 0
    if isinstance(document, bytes):
        decoded = decode_document(document, content_type)
        document, bad_bytes = decoded.text, decoded.bad_bytes
    soup = BeautifulSoup(document, "lxml")
    root = soup.select_one("div.article-detail") or soup

    def text_of(selector: str) -> str:
        node = root.select_one(selector) or soup.select_one(selector)
        return " ".join(NBSP.sub(" ", node.get_text(" ")).split()) if node else ""

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
        "bad_bytes": bad_bytes,
    }


# ---- is a feed body whole? -----------------------------------------------------------------
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
    for name, other in (("lead", strip_ellipsis(lead)), ("teaser", teaser)):
        if other and len(squash(text)) < len(squash(other)):
            return f"shorter than the feed's {name}"
    return None


def strip_ellipsis(text: str) -> str:
    text = text.rstrip()
    for mark in ELLIPSES:
        if text.endswith(mark):
            return text[: -len(mark)].rstrip()
    return text


def teaser_from_plain(description: str, body_text: str = "") -> tuple[str, str]:
    """Split a plain /rss description into (teaser, lead): the "+++" summary is a teaser; a lead
    cut off with "..." (the start of the body) is not, it only helps to spot cut bodies."""
    text = html_to_text(description).replace("\n\n", " ")
    if not text:
        return "", ""
    if text.rstrip().endswith(ELLIPSES) and not text.lstrip().startswith("+++"):
        stem = squash(strip_ellipsis(text))
        if not body_text or squash(body_text).startswith(stem) or len(squash(body_text)) < len(stem):
            return "", text
    return text, ""
