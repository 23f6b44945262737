"""Fetching one URL: from the response cache, or politely and within bounds from the site.

Manners: robots.txt (protego), the project's User-Agent, a pause of `delay` seconds plus up to
50 % jitter between network requests (cache hits do not wait), a stop after `max_403` answers of
403 in a row.
Bounds: only the site of `--base-url` is asked, redirects included (`urls.Site`); each attempt
must deliver the whole response within `timeout` seconds (`limits.deadline`) and at most
`max_response_bytes` after decompression (`limits.read_capped`); the crawl's `Clock` caps
everything, waits included.
Retries: urllib3's `Retry` decides how often and how long to wait (exponential backoff,
Retry-After honoured up to `max_wait`, never less than the polite pause): up to `retries` times
after 429/5xx or a broken answer, at most twice after no answer in time. The loop around it is
ours because each attempt has its own deadline and size cap, which urllib3's adapter-level retries
cannot give. After `max_unanswered` URLs in a row got no answer in time (or at once when nothing
listens at the address and the site never answered), the site is taken as unreachable.
Cache: requests-cache's SQLite store under `out/cache/`: only complete 200 answers that passed
the bounds are saved, under the URL that was asked (after redirects), and kept forever.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urljoin

import requests
import requests_cache
from protego import Protego
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError
from urllib3.exceptions import ProtocolError
from urllib3.util.retry import Retry

from bmwlm.config import USER_AGENT
from bmwlm.scrape.limits import Clock, DeadlineExceeded, TooLarge, deadline, read_capped
from bmwlm.scrape.parse import iso
from bmwlm.scrape.report import Stats
from bmwlm.scrape.settings import Settings
from bmwlm.scrape.urls import Site

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_REDIRECTS = 5
MAX_NO_ANSWER_RETRIES = 2


@dataclass
class Fetched:
    url: str
    status: int | None = None
    content: bytes = b""
    content_type: str = ""
    from_cache: bool = False
    fetched_at: str = ""
    error: str | None = None
    skipped: str | None = None  # not asked, or a redirect not followed: "robots", "offline", "refused"

    @property
    def ok(self) -> bool:
        return self.status == 200


class SiteUnreachable(RuntimeError):
    """The site does not answer at all."""


class Blocked(RuntimeError):
    """The site answered 403 too many times in a row."""


class _NoAnswer(Exception):
    """No complete answer within the deadline, or nobody listening."""

    def __init__(self, reason: str, *, nobody_listening: bool = False, timed_out: bool = False):
        super().__init__(reason)
        self.nobody_listening, self.timed_out = nobody_listening, timed_out


class _BrokenAnswer(Exception):
    """The answer started but broke off (connection reset, bad chunking or compression)."""


class _Refused(Exception):
    """A redirect that leaves the site, goes round too often, or is disallowed: not retried."""

    def __init__(self, reason: str, fault: str):
        super().__init__(reason)
        self.fault = fault


@dataclass
class _Answer:
    response: requests.Response
    content: bytes

    @property
    def status(self) -> int:
        return self.response.status_code


def _nobody_listening(exc: BaseException) -> bool:
    """True when the error says nothing listens at that address (refused, unknown host)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (NewConnectionError, NameResolutionError)):
            return True
        nxt = getattr(exc, "reason", None)
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc = nxt or exc.__cause__ or exc.__context__
    return False


def short_reason(exc: BaseException) -> str:
    """A few words for a network error."""
    text = str(exc).lower()
    for hint in ("Connection refused", "Name or service not known", "nodename nor servname",
                 "timed out", "No route to host", "Temporary failure in name resolution",
                 "Connection reset", "Connection aborted", "Remote end closed connection"):
        if hint.lower() in text:
            return hint.lower()
    return type(exc).__name__


class Fetcher:
    """GET with cache, robots.txt, pinning, deadlines, size cap, a polite pause and bounded
    retries. Never raises for one bad page (the answer says what went wrong); raises
    SiteUnreachable when the site does not answer, Blocked after repeated 403s and
    limits.TimeLimitReached when the crawl's time is up."""

    def __init__(self, settings: Settings, stats: Stats, clock: Clock):
        self.settings, self.stats, self.clock = settings, stats, clock
        self.site = Site(settings.base_url)
        cache_dir = Path(settings.out) / "cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache = requests_cache.SQLiteCache(cache_dir / "http_cache")
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept-Language": "en-US,en;q=0.8"})
        self.delay = settings.delay
        self.robots: Protego | None = None
        self._last_network = 0.0
        self._ever_answered = False
        self._forbidden_in_row = 0
        self._unanswered_in_row = 0

    def close(self) -> None:
        self.session.close()
        self.cache.close()

    # ---- robots.txt and the cache ---------------------------------------------------------
    def load_robots(self) -> None:
        """Read robots.txt, always fresh when online: current rules, and a first request that tells
        at once whether the site answers at all."""
        got = self.get(self.site.robots_url, check_robots=False, fresh=not self.settings.offline)
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

    def _key(self, url: str) -> str:
        return self.cache.create_key(requests.Request("GET", url))

    def forget(self, url: str) -> None:
        """Drop a response from the cache (it could not be used; a re-run should ask again)."""
        self.cache.delete(self._key(url))

    # ---- one URL --------------------------------------------------------------------------
    def get(self, url: str, *, check_robots: bool = True, fresh: bool = False) -> Fetched:
        if not self.site.allows(url):
            return self._refuse(url, "off_site_refused", f"{url} is not on {self.site.base_url}: refused")
        if check_robots and not self.allowed(url):
            self.stats.faults["robots_disallowed"] += 1
            log.warning("robots.txt disallows %s: skipped", url)
            return Fetched(url, error="disallowed by robots.txt", skipped="robots")
        self.clock.check()
        if not fresh and not self.settings.refresh:
            response = self.cache.get_response(self._key(url))
            if response is not None:
                self.stats.requests += 1
                self.stats.cache_hits += 1
                return Fetched(url, response.status_code, response.content,
                               response.headers.get("Content-Type", ""), True, _created(response))
        if self.settings.offline:
            self.stats.faults["not_in_cache"] += 1
            log.debug("offline and not cached: %s", url)
            return Fetched(url, error="not in the cache (offline)", skipped="offline")
        self.stats.requests += 1
        self.stats.network_requests += 1
        return self._download(url)

    def _download(self, url: str) -> Fetched:
        settings = self.settings
        retry = Retry(total=settings.retries, connect=min(MAX_NO_ANSWER_RETRIES, settings.retries),
                      read=settings.retries, status=settings.retries, other=0,
                      status_forcelist=RETRY_STATUSES, backoff_factor=settings.backoff,
                      backoff_max=settings.max_wait, backoff_jitter=settings.backoff * 0.25,
                      respect_retry_after_header=True, retry_after_max=settings.max_wait)
        self._pause()  # retries wait in _wait_to_retry
        while True:
            self.clock.check()
            seconds = min(settings.timeout, self.clock.remaining())
            try:
                answer = self._attempt(url, seconds)
            except _Refused as exc:
                return self._refuse(url, exc.fault, str(exc))
            except TooLarge as exc:
                self.stats.faults["too_large"] += 1
                self.stats.fail(url, f"answer too large: {exc} (--max-response-mb)")
                return Fetched(url, error=f"too large: {exc}")
            except _NoAnswer as exc:
                self.clock.check()  # the deadline was the crawl's, not this answer's
                self.stats.faults["timeouts" if exc.timed_out else "connection_errors"] += 1
                if exc.nobody_listening and not self._ever_answered:
                    raise SiteUnreachable(str(exc)) from None
                try:
                    retry = retry.increment("GET", url, error=ConnectTimeoutError(str(exc)))
                except MaxRetryError:
                    return self._unanswered(url, str(exc))
                self._wait_to_retry(retry, url, str(exc))
                continue
            except _BrokenAnswer as exc:
                self.stats.faults["connection_errors"] += 1
                try:
                    retry = retry.increment("GET", url, error=ProtocolError(str(exc)))
                except MaxRetryError:
                    self.stats.fail(url, f"{exc} (tried {len(retry.history) + 1} times)")
                    return Fetched(url, error=str(exc))
                self._wait_to_retry(retry, url, str(exc))
                continue
            self._ever_answered, self._unanswered_in_row = True, 0
            status = answer.status
            self._count_forbidden(url, status)
            if status in RETRY_STATUSES:
                self.stats.faults["http_429" if status == 429 else "http_5xx"] += 1
                try:
                    retry = retry.increment("GET", url, response=answer.response.raw)
                except MaxRetryError:
                    self.stats.fail(url, f"HTTP {status} after {len(retry.history)} retries")
                    return Fetched(url, status, error=f"HTTP {status}")
                after = retry.get_retry_after(answer.response.raw) if status in Retry.RETRY_AFTER_STATUS_CODES else None
                self._wait_to_retry(retry, url, f"HTTP {status}", after)
                continue
            got = Fetched(url, status, answer.content, answer.response.headers.get("Content-Type", ""))
            if status == 200:
                got.fetched_at = self._save(url, answer.response)
            else:
                got.error = f"HTTP {status}"
                if status != 404:
                    self.stats.fail(url, got.error)
            return got

    def _attempt(self, url: str, seconds: float) -> _Answer:
        """One GET of `url`, redirects on this site followed, all of it within `seconds`."""
        response = None
        current = url
        try:
            with deadline(seconds):
                for _ in range(MAX_REDIRECTS + 1):
                    try:
                        response = self.session.get(current, stream=True, allow_redirects=False,
                                                    timeout=(seconds, seconds))
                    except (requests.ConnectTimeout, requests.ReadTimeout) as exc:
                        raise _NoAnswer(f"no answer within {seconds:g} s", timed_out=True) from exc
                    except requests.RequestException as exc:
                        raise _NoAnswer(short_reason(exc), nobody_listening=_nobody_listening(exc)) from exc
                    if not response.is_redirect:
                        try:
                            return _Answer(response, read_capped(response, self.settings.max_response_bytes))
                        except requests.RequestException as exc:
                            if isinstance(exc, requests.ReadTimeout) or "timed out" in str(exc).lower():
                                raise _NoAnswer(f"no complete answer within {seconds:g} s", timed_out=True) from exc
                            raise _BrokenAnswer(short_reason(exc)) from exc
                    target = urljoin(current, response.headers["Location"])
                    response.close()
                    response = None
                    if not self.site.allows(target):
                        raise _Refused(f"redirected to another host ({target}): refused", "off_site_refused")
                    if not self.allowed(target):
                        raise _Refused(f"redirected to {target}, which robots.txt disallows", "robots_disallowed")
                    current = target
                raise _Refused(f"more than {MAX_REDIRECTS} redirects", "too_many_redirects")
        except DeadlineExceeded as exc:
            raise _NoAnswer(str(exc), timed_out=True) from None
        finally:
            self._last_network = time.monotonic()
            if response is not None:
                response.close()

    # ---- bookkeeping ----------------------------------------------------------------------
    def _refuse(self, url: str, fault: str, reason: str) -> Fetched:
        self.stats.faults[fault] += 1
        self.stats.fail(url, reason)
        return Fetched(url, error=reason, skipped="refused")

    def _unanswered(self, url: str, reason: str) -> Fetched:
        self._unanswered_in_row += 1
        if self._unanswered_in_row >= self.settings.max_unanswered:
            raise SiteUnreachable(f"{reason}, for {self._unanswered_in_row} requests in a row (last: {url})")
        self.stats.fail(url, f"{reason} (no answer, tried {MAX_NO_ANSWER_RETRIES + 1} times at most)")
        return Fetched(url, error=reason)

    def _count_forbidden(self, url: str, status: int) -> None:
        if status != 403:
            self._forbidden_in_row = 0
            return
        self.stats.faults["http_403"] += 1
        self._forbidden_in_row += 1
        if self._forbidden_in_row >= self.settings.max_403:
            raise Blocked(f"{self._forbidden_in_row} answers in a row were 403 Forbidden (last: {url})")

    def _save(self, url: str, response: requests.Response) -> str:
        """Keep a complete 200 answer in the cache under the URL asked; returns its timestamp,
        the same one a later run replaying the cache will see."""
        cached = requests_cache.CachedResponse.from_response(response)
        self.cache.save_response(cached, cache_key=self._key(url))
        return _created(cached)

    def _pause(self) -> None:
        if self.delay > 0 and self._last_network:
            wait = self.delay * (1 + random.uniform(0, 0.5)) - (time.monotonic() - self._last_network)
            self.clock.sleep(wait)

    def _wait_to_retry(self, retry: Retry, url: str, cause: str, retry_after: float | None = None) -> None:
        self.stats.retries += 1
        wait = retry_after if retry_after is not None else retry.get_backoff_time()
        wait = max(wait, min(self.delay, self.settings.max_wait))
        log.info("retrying %s in %.1f s after %s", url, wait, cause)
        self.clock.sleep(wait)


def _created(response) -> str:
    created = getattr(response, "created_at", None) or datetime.now(timezone.utc)
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return iso(created)
