"""The crawl: page through the full-text feeds, build one record per article, and put it into the
collection (in memory; `run.scrape` decides when to save).

- The rss2 feeds carry the whole body, 20 articles a request, so detail pages are read only when
  a feed body is missing or cut short (or always with `details="always"`). Feeds are newest
  first, so `since` and `max_articles` end the paging early.
- The channel's `rel="next"` link is followed on `--base-url` (`urls.Site.rebase`: the live site's
  next link drops `/global` and names the live host); a next link to another host is refused and
  the next page is asked for by number instead.
- Topic feeds (`topics`) overlap the global feed; they tell which topics an article belongs to,
  and add the few articles the global feed did not reach. An article met again is merged by id;
  a different body is a conflict, settled by `records.merge` and counted.
- Each body is capped at `max_article_chars` at a paragraph break (`text.cap_text`).
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Generator, Iterator

from bmwlm.scrape.fetch import Fetcher
from bmwlm.scrape.parse import (MUNICH, FeedError, FeedItem, FeedPage, MalformedFeedError, NotAFeedError,
                                id_language, iso, parse_detail_page, parse_feed, teaser_from_plain,
                                truncation_reason)
from bmwlm.scrape.report import Stats
from bmwlm.scrape.settings import TOPICS, Settings
from bmwlm.scrape.store import Collection
from bmwlm.scrape.text import cap_text, html_to_text, squash
from bmwlm.scrape.urls import page_number, teaser_feed_url

log = logging.getLogger(__name__)

PAGES_FAILED = "three pages in a row failed"


class Crawler:
    """Walks robots.txt, the global feed, then the topic feeds. `crawl()` yields each new record
    as it is added to the collection (and None after each feed page): the caller saves and
    reports when it chooses; nothing here writes a file."""

    def __init__(self, settings: Settings, fetcher: Fetcher, stats: Stats, collection: Collection):
        self.settings, self.fetcher, self.stats, self.collection = settings, fetcher, stats, collection
        self.site = fetcher.site
        self._published: dict[str, datetime | None] = {}
        self._feed_html: dict[str, str | None] = {}  # id -> the feed body first seen
        self._given_up: set[str] = set()
        self._since = (datetime.combine(settings.since, datetime.min.time(), tzinfo=MUNICH)
                       if settings.since else None)
        self.global_feed_end = ""

    # ---- state ----------------------------------------------------------------------------
    def full(self) -> bool:
        return bool(self.settings.max_articles) and len(self.collection.run) >= self.settings.max_articles

    def horizon(self) -> datetime | None:
        """Items older than this are not wanted: --since, or once full the oldest article held."""
        limits = [self._since] if self._since else []
        if self.full():
            dates = [d for d in self._published.values() if d]
            if dates:
                limits.append(min(dates))
        return max(limits) if limits else None

    def incomplete_reason(self) -> str | None:
        """Why the collection may lack articles although the crawl ran to its end, or None."""
        if self.global_feed_end == PAGES_FAILED and not self.settings.offline:
            return f"the global feed ended because {PAGES_FAILED}; later pages were never read"
        return None

    # ---- feeds ----------------------------------------------------------------------------
    def crawl(self) -> Iterator[dict | None]:
        self.fetcher.load_robots()
        yield from self.crawl_feed(None)
        for topic in self.settings.topics:
            yield from self.crawl_feed(topic)

    def crawl_feed(self, topic: str | None) -> Iterator[dict | None]:
        label = "global" if topic is None else f"topic {topic} ({TOPICS.get(topic, '?')})"
        summary = {"feed": label, "pages": 0, "new_articles": 0, "ended": ""}
        self.stats.feeds.append(summary)
        page, url, misses = 1, self.site.feed_url("rss2", topic), 0
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
                    summary["ended"] = "end of the cached pages" if self.settings.offline else PAGES_FAILED
                    if not self.settings.offline:
                        log.warning("%s feed: %s; moving on", label, PAGES_FAILED)
                    break
                page += 1
                url = self.site.feed_url("rss2", topic, page)
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
            new, reached_old = yield from self.take_items(result, url, topic)
            summary["new_articles"] += new
            yield None
            if reached_old:
                summary["ended"] = "reached items older than wanted"
                break
            next_url = self.site.rebase(result.next_url) if result.next_url else None
            if result.next_url and next_url is None:
                self.stats.faults["off_site_refused"] += 1
                log.warning("%s feed page %d: next link %s points to another host: refused; "
                            "asking for page %d on %s instead", label, page, result.next_url, page + 1,
                            self.site.base_url)
            if next_url:
                url = next_url
                page = page_number(url) if page_number(url) > page else page + 1
            elif result.malformed or result.next_url:
                page += 1
                url = self.site.feed_url("rss2", topic, page)
            else:
                summary["ended"] = "no next link"
                break
        if topic is None:
            self.global_feed_end = summary["ended"]
        log.info("%s feed: %d pages, %d new articles, ended: %s",
                 label, summary["pages"], summary["new_articles"], summary["ended"])

    def read_feed_page(self, url: str, page: int, topic: str | None, label: str) -> FeedPage | str | None:
        """One parsed feed page; a string when the feed has ended there; None when it failed."""
        got = self.fetcher.get(url)
        canonical = self.site.feed_url("rss2", topic, page)
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
                parsed = parse_feed(got.content, got.content_type)
            except NotAFeedError as exc:
                self.fetcher.forget(url)
                self.stats.faults["non_xml_pages"] += 1
                log.info("%s feed page %d is not XML (%s): taken as the end of the feed", label, page, exc)
                return "not XML (past the last page)" if page > 1 else "not XML"
            except MalformedFeedError as exc:
                parsed, problem = None, str(exc)
            else:
                problem = parsed.malformed
                parsed.fetched_at = got.fetched_at
                self._count_bad_bytes(url, parsed.bad_bytes)
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

    # ---- items ----------------------------------------------------------------------------
    def take_items(self, page: FeedPage, page_url: str,
                   topic: str | None) -> Generator[dict, None, tuple[int, bool]]:
        """Add the page's new articles, yielding each; returns (how many were new, whether the
        page reached items older than wanted: feeds are newest first, so later pages hold none
        we want). Articles met again are merged afterwards."""
        fresh: dict[str, FeedItem] = {}
        again: list[FeedItem] = []
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
            if item.id in self.collection or item.id in fresh:
                again.append(item)
                continue
            if item.id in self._given_up or (horizon and item.published and item.published < horizon):
                continue
            fresh[item.id] = item
        room = (self.settings.max_articles - len(self.collection.run)) if self.settings.max_articles else len(fresh)
        chosen = list(fresh.values())[:max(0, room)]
        teasers = self.read_teasers(page_url) if chosen and self.settings.teasers else {}
        added = 0
        for item in chosen:
            record = self.build_record(item, teasers.get(item.id, ""), topic, page)
            if record is None:
                continue
            self.collection.add(record)
            self._published[item.id] = item.published
            added += 1
            yield record
        for item in again:
            self.met_again(item, topic, page)
        return added, reached_old

    def met_again(self, item: FeedItem, topic: str | None, page: FeedPage) -> None:
        """An article already collected in this run: note its topic; if its body differs from the
        one first seen, keep the better one (`records.merge`) and count the conflict."""
        self.stats.faults["duplicates_merged"] += 1
        record = self.collection.get(item.id)
        if record is None:  # its first sighting was not kept (no room, no body)
            return
        if topic:
            self.collection.add_topic(item.id, topic)
        if item.body_html == self._feed_html.get(item.id):
            return
        text = html_to_text(item.body_html)
        if not text.strip() or squash(text) == squash(record["text"]) \
                or squash(text) == squash(html_to_text(self._feed_html.get(item.id))):
            return
        text, _ = cap_text(text, self.settings.max_article_chars)
        candidate = {**record, "title": item.title or record["title"], "text": text, "source": "rss2",
                     "topics": [topic] if topic else [], "fetched_at": page.fetched_at}
        if text and self.collection.offer(candidate):
            kept_new = squash(self.collection.get(item.id)["text"]) == squash(text)
            log.info("%s: met again with a different body (%d characters, first seen %d); kept the %s one",
                     item.id, len(squash(text)), len(squash(record["text"])), "new" if kept_new else "first")

    def read_teasers(self, rss2_url: str) -> dict[str, str]:
        """id -> description of the plain (teaser) feed page matching this rss2 page."""
        url = teaser_feed_url(rss2_url)
        got = self.fetcher.get(url)
        if not got.ok:
            self.stats.faults["teaser_pages_missing"] += 1
            return {}
        try:
            parsed = parse_feed(got.content, got.content_type)
        except FeedError as exc:
            self.stats.faults["teaser_pages_missing"] += 1
            log.info("teaser page %s unusable (%s)", url, exc)
            self.fetcher.forget(url)
            return {}
        self._count_bad_bytes(url, parsed.bad_bytes)
        return {item.id: item.body_html or "" for item in parsed.items if item.id}

    def build_record(self, item: FeedItem, plain: str, topic: str | None, page: FeedPage) -> dict | None:
        """One article record from a feed item; reads the detail page when the feed body looks
        missing or cut short (or always with --details always). The detail text replaces the
        feed text when it is longer, or whenever the feed page was malformed."""
        self._feed_html[item.id] = item.body_html
        text = html_to_text(item.body_html)
        teaser, lead = teaser_from_plain(plain, text)
        reason = truncation_reason(text, html=item.body_html, lead=lead, teaser=teaser,
                                   min_chars=self.settings.min_body_chars)
        if page.malformed and not reason:
            reason = "came from a malformed feed page"
        if reason:
            self.stats.faults["empty_bodies" if reason == "empty" else "suspect_bodies"] += 1
            log.info("%s: feed body %s; reading the detail page", item.id, reason)
        detail = self.read_detail(item) if reason or self.settings.details == "always" else None
        source, category, title, published = "rss2", "", item.title, item.published
        if detail:
            category, teaser = detail["category"], detail["teaser"]
            if detail["title"] and (page.malformed or not title):
                title = detail["title"]
            if published is None and detail["published"]:
                published = datetime.fromisoformat(detail["published"])
            longer = len(squash(detail["text"])) > len(squash(text))
            if reason and detail["text"] and (longer or page.malformed):
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
        text = self._capped(item.id, text)
        if text is None:
            return None
        return {
            "id": item.id,
            "url": self._item_url(item),
            "title": title.strip(),
            "published": iso(published),
            "teaser": teaser,
            "category": category,
            "topics": [topic] if topic else [],
            "text": text,
            "source": source,
            "fetched_at": detail["fetched_at"] if source == "detail" else page.fetched_at,
        }

    def read_detail(self, item: FeedItem) -> dict | None:
        url = self.site.detail_url(item.id, item.url)
        got = self.fetcher.get(url)
        if got.status == 404:
            self.stats.fail(url, "HTTP 404")
        if not got.ok:
            return None
        fields = parse_detail_page(got.content, got.content_type)
        fields["fetched_at"] = got.fetched_at
        self._count_bad_bytes(url, fields["bad_bytes"])
        if not fields["text"]:
            self.stats.faults["detail_pages_without_text"] += 1
            log.warning("%s: detail page %s has no div#article-text", item.id, url)
        return fields

    # ---- small rules ----------------------------------------------------------------------
    def _capped(self, article_id: str, text: str) -> str | None:
        capped, action = cap_text(text, self.settings.max_article_chars)
        if action == "dropped":
            self.stats.faults["articles_dropped_too_long"] += 1
            self._given_up.add(article_id)
            log.warning("%s: body of %d characters has no paragraph break within the first %d "
                        "(--max-article-chars): dropped", article_id, len(text), self.settings.max_article_chars)
            return None
        if action == "truncated":
            self.stats.faults["articles_truncated"] += 1
            log.warning("%s: body of %d characters cut to %d at a paragraph break (--max-article-chars %d)",
                        article_id, len(text), len(capped), self.settings.max_article_chars)
        return capped

    def _item_url(self, item: FeedItem) -> str:
        """The item's link as the feed gives it when it is on this site (or names the live
        PressClub); else the detail page's URL on --base-url."""
        if item.url and self.site.rebase(item.url):
            return item.url
        if item.url:
            self.stats.faults["off_site_links"] += 1
            log.warning("%s: its link %s points to another host: not used", item.id, item.url)
        return self.site.detail_url(item.id)

    def _count_bad_bytes(self, url: str, bad_bytes: int) -> None:
        if bad_bytes:
            self.stats.faults["bad_bytes_replaced"] += bad_bytes
            self.stats.faults["pages_with_bad_bytes"] += 1
            log.warning("%s: %d byte(s) invalid in the page's encoding, replaced by U+FFFD; "
                        "the rest of the page is read as declared", url, bad_bytes)
