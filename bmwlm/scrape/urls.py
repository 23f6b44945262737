"""The URLs the crawler asks for, and the one site it may ask.

`Site` pins the crawl to the host of `--base-url`: a redirect, a feed's next link or an item's link
may lead only there (over http or https). Links that name the live PressClub keep their path and
query but are put on `--base-url`, because the live feeds name their own host even when a mirror
or the stand-in serves them; a link to any other host is refused by the caller, logged and
counted.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

LIVE_HOST = "www.press.bmwgroup.com"
DEFAULT_PORTS = MappingProxyType({"http": 80, "https": 443})


class Site:
    """The host of `base_url` and its http/https twin: the only place the crawler goes."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme, self.netloc = parts.scheme, parts.netloc
        self.host, self.port = parts.hostname.lower(), parts.port

    def allows(self, url: str) -> bool:
        """True for a URL on this site: same host name; same port, or, when `base_url` names no
        port, the default port of the URL's own scheme (so http://host and https://host are twins)."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or (parts.hostname or "").lower() != self.host:
            return False
        try:
            port = parts.port
        except ValueError:  # a port that is not a number
            return False
        if self.port is None:
            return port in (None, DEFAULT_PORTS[parts.scheme])
        return (port or DEFAULT_PORTS[parts.scheme]) == self.port

    def rebase(self, link: str) -> str | None:
        """A link found in a feed or page, as a URL on `base_url` (path and query kept); None when
        it points to another host (neither this site nor the live PressClub)."""
        absolute = urljoin(self.base_url + "/", link.strip())
        parts = urlsplit(absolute)
        live = parts.scheme in DEFAULT_PORTS and (parts.hostname or "").lower() == LIVE_HOST
        if not (live or self.allows(absolute)):
            return None
        return urlunsplit((self.scheme, self.netloc, parts.path, parts.query, ""))

    def feed_url(self, kind: str = "rss2", topic: str | None = None, page: int = 1) -> str:
        """`{base}/global/rss2[/topic/803][?page=N]`."""
        url = f"{self.base_url}/global/{kind}" + (f"/topic/{topic}" if topic else "")
        return url + (f"?page={page}" if page > 1 else "")

    def detail_url(self, article_id: str, link: str = "") -> str:
        """The article's detail page: its feed link when that is a detail link on this site, else
        `{base}/global/article/detail/{ID}?language=en`."""
        if link and "/article/detail/" in link:
            rebased = self.rebase(link)
            if rebased:
                return rebased
        return f"{self.base_url}/global/article/detail/{article_id}?{urlencode({'language': 'en'})}"

    @property
    def robots_url(self) -> str:
        return f"{self.base_url}/robots.txt"


def page_number(url: str) -> int:
    """The `?page=N` of a feed URL (1 when absent or unreadable)."""
    try:
        return int(parse_qs(urlsplit(url).query).get("page", ["1"])[0])
    except ValueError:
        return 1


def teaser_feed_url(rss2_url: str) -> str:
    """The plain (teaser) feed page that matches an rss2 page: `/rss2` -> `/rss`."""
    parts = urlsplit(rss2_url)
    path = re.sub(r"/rss2(?=/|$)", "/rss", parts.path, count=1)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
