"""A stand-in for the BMW Group PressClub, served from a JSONL file of articles, for offline runs.

It answers the URLs that `01_scrape.py` reads, shaped the way `../shared/pressclub.md` describes the
live site:

- `/global/rss2[/topic/{id}]` (full body as entity-escaped HTML) and `/global/rss[/topic/{id}]`
  (teaser only), newest first, `per_page` items a page, `?page=N`; the channel's `rel="next"` link
  drops `/global` like the real site, so `/rss2…` and `/rss…` are served too; past the last page
  the answer is an HTML page (200, not XML);
- `/global/article/detail/{ID}[/{slug}]` (`?language=en` accepted): `div.article-detail` with `h1`,
  `h2.teaser`, `div.article-info h5 span.date|span.category`, `div#article-text`,
  `div.text.co2_summary`, `button.readmore`, inside page chrome; the date is `dd.mm.yyyy` when
  `Accept-Language` starts with `en-US`, else Java-style (`Fri Nov 21 10:00:00 CET 2025`);
- `/robots.txt` (configurable `Disallow` lines, lists a sitemap).

Input records use the shared corpus format: `id`, `title`, `date` ("YYYY-MM-DD HH:MM", Munich time),
`summary`, `body` (list of paragraphs), `type`, `topics`, `tags`. `synthetic_articles(n)` makes
invented ones for tests.

Faults for tests are set on `Faults` (pass `faults=` or change `server.faults` while it runs); every
request is counted per target in `server.requests`.

In a test::

    with StandinServer(synthetic_articles(60), faults=Faults(status={"/global/rss2": [503]})) as srv:
        run_scraper("--base-url", srv.base_url, ...)
        assert srv.requests["/global/rss2"] == 2

From the shell (serves until Ctrl-C)::

    python tests/standin_server.py --corpus ../shared/corpus/pressclub_articles.jsonl --port 8765
"""
from __future__ import annotations

import argparse
import html
import json
import random
import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape
from zoneinfo import ZoneInfo

MUNICH = ZoneInfo("Europe/Berlin")
TOPICS = {
    "803": "corporate", "4099": "brands", "4100": "bmw", "5127": "mini", "5236": "technology",
    "5249": "people", "5254": "heritage", "4098": "motorshows", "6629": "motorrad", "6728": "bmw-i",
    "7309": "bmw-m", "10837": "sports",
}
RSS_NS = (
    'xmlns:content="http://purl.org/rss/1.0/modules/content/"\n'
    '  xmlns:wfw="http://wellformedweb.org/CommentAPI/"\n'
    '  xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
    '  xmlns:atom="http://www.w3.org/2005/Atom"'
)
FEED_RE = re.compile(r"^(?:/global)?/(rss2|rss)(?:/topic/([^/]+))?/?$")
DETAIL_RE = re.compile(r"^/global/article/detail/([^/]+)(?:/[^/]*)?/?$")


@dataclass
class Faults:
    """What the server does wrong, keyed by request target ("/global/rss2?page=2") or by path alone.

    Counted faults are used up one answer at a time, then the normal answer follows.
    """

    status: dict[str, list[int]] = field(default_factory=dict)  # e.g. {"/global/rss2": [429, 429]}
    retry_after: str | None = "1"  # Retry-After header sent with 429 and 503
    slow: dict[str, int] = field(default_factory=dict)  # target -> number of slow answers
    slow_seconds: float = 3.0
    malformed: dict[str, int] = field(default_factory=dict)  # feed target -> number of broken-XML answers
    no_id: set[str] = field(default_factory=set)  # article ids whose feed items have no guid and no link
    empty_body: set[str] = field(default_factory=set)  # article ids with an empty rss2 description
    truncated_body: set[str] = field(default_factory=set)  # article ids whose rss2 body is cut off with "..."
    cut_html_body: set[str] = field(default_factory=set)  # article ids whose rss2 body stops mid-markup
    forbid_all: bool = False  # 403 for everything except robots.txt
    always_next: bool = False  # the last page still links a next page (which is then an HTML page)
    robots_disallow: list[str] = field(default_factory=list)

    def take(self, table: dict[str, int] | dict[str, list[int]], target: str, path: str):
        """Use up one fault from `table` for this request; returns the status / True, or None."""
        for key in (target, path):
            entry = table.get(key)
            if isinstance(entry, list) and entry:
                return entry.pop(0)
            if isinstance(entry, int) and not isinstance(entry, bool) and entry > 0:
                table[key] = entry - 1
                return True
        return None


def load_articles(path: Path | str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def munich_time(article: dict) -> datetime:
    """The article's date as an aware Munich datetime; seconds made up from the id (stable)."""
    naive = datetime.strptime(article["date"], "%Y-%m-%d %H:%M")
    seconds = sum(map(ord, article["id"])) % 60
    return naive.replace(second=seconds, tzinfo=MUNICH)


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80] or "article"


def _html_text(text: str) -> str:
    """Escape text for HTML and spell a few characters as named entities, like a CMS does."""
    out = html.escape(text, quote=False)
    return out.replace("\u2019", "&rsquo;").replace("\u2013", "&ndash;").replace("\u00e9", "&eacute;")


def body_html(article: dict, index: int, *, cut: bool = False) -> str:
    """The rss2 description body: image, <p> paragraphs, &nbsp; spacers, a table now and then."""
    digits = f"{zlib.crc32(article['id'].encode()) % 1_000_000:06d}"
    parts = [
        f'<img src="https://mediapool.bmwgroup.com/cache/P9/{article["date"][:7].replace("-", "")}/'
        f'P90{digits}/{slugify(article["title"])[:40]}-600px.jpg" alt="" title="" />'
    ]
    paragraphs = list(article.get("body") or [])
    if cut and paragraphs:
        first = paragraphs[0]
        paragraphs = [first[: max(10, len(first) // 2)].rstrip() + "..."]
    for i, para in enumerate(paragraphs):
        if i == 0 and para.startswith("Munich. "):
            parts.append(f"<p><strong>Munich. </strong>{_html_text(para[len('Munich. '):])}</p>")
        else:
            parts.append(f"<p>{_html_text(para)}</p>")
        if i == 0 or i % 3 == 2:
            parts.append("<p>&nbsp;</p>")
        if i == 1 and index % 6 == 0:
            parts.append(
                '<table class="data"><tbody><tr><td><strong>Model</strong></td><td>Output</td></tr>'
                "<tr><td>Example xDrive</td><td>210 kW</td></tr></tbody></table>"
            )
    return "\n".join(parts)


def plain_description(article: dict) -> str:
    """The /rss description: the "+++" summary, or the lead cut off with "..."."""
    if article.get("summary"):
        return article["summary"]
    lead = " ".join(article.get("body") or [])
    if len(lead) <= 200:
        return lead
    return lead[:200].rsplit(" ", 1)[0] + "..."


def java_date(moment: datetime) -> str:
    """`Fri Nov 21 10:00:00 CET 2025`, as the site prints dates without Accept-Language: en-US."""
    return moment.strftime("%a %b %d %H:%M:%S ") + moment.tzname() + moment.strftime(" %Y")


class StandinServer:
    """Serve `articles` like the PressClub on 127.0.0.1 (port 0 = any free port) in a thread."""

    def __init__(
        self,
        articles: list[dict],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        per_page: int = 20,
        link_base: str | None = None,
    ):
        self.articles = sorted(articles, key=lambda a: (a["date"], a["id"]), reverse=True)
        self.by_id = {a["id"]: a for a in self.articles}
        self.index = {a["id"]: i for i, a in enumerate(self.articles)}
        self.faults = faults or Faults()
        self.per_page = per_page
        self.link_base = link_base  # put this host in feed links instead of our own (e.g. the live site)
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # set by stop(): handlers that hold a connection let go
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_jsonl(cls, path: Path | str, **kwargs) -> "StandinServer":
        return cls(load_articles(path), **kwargs)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def count(self, prefix: str = "") -> int:
        """Requests whose target starts with `prefix`."""
        return sum(n for target, n in self.requests.items() if target.startswith(prefix))

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()

    def start(self) -> "StandinServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def __enter__(self) -> "StandinServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- pages -------------------------------------------------------------------------------
    def _links_base(self, host_header: str | None) -> str:
        if self.link_base:
            return self.link_base.rstrip("/")
        return f"http://{host_header}" if host_header else self.base_url

    def feed(self, kind: str, topic: str | None, page: int, base: str, malformed: bool) -> str | None:
        """One feed page, or None when `page` is past the last page."""
        items = [a for a in self.articles if topic is None or topic in a.get("topics", [])]
        pages = max(1, -(-len(items) // self.per_page))
        if page < 1 or page > pages:
            return None
        chunk = items[(page - 1) * self.per_page: page * self.per_page]
        tail = f"/topic/{topic}" if topic else ""
        lines = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f"<rss version=\"2.0\"\n  {RSS_NS}\n>",
            "  <channel>",
            f"    <title>BMW Group PressClub Global{' - ' + TOPICS.get(topic, topic) if topic else ''}</title>",
            f'    <atom:link href="{base}/{kind}{tail}?page={page}" rel="self" type="application/rss+xml" />',
        ]
        if page < pages or self.faults.always_next:
            lines.append(
                f'      <atom:link href="{base}/{kind}{tail}?page={page + 1}" rel="next" type="application/rss+xml"/>'
            )
        lines += [
            f"    <link>{base}</link>",
            "    <description>PressClub Global - Latest News.</description>",
            "    <copyright>Copyright BMW AG</copyright>",
            f"    <pubDate>{format_datetime(datetime.now(MUNICH).replace(microsecond=0))}</pubDate>",
            "    <language>en</language>",
        ]
        for article in chunk:
            lines.append(self._item(article, kind, base))
        lines += ["  </channel>", "</rss>", ""]
        text = "\n".join(lines)
        if malformed:  # cut the document short and leave a bare ampersand: not well-formed XML
            text = text[: len(text) * 2 // 3].replace("<title>", "<title>R&D ", 1)
        return text

    def _item(self, article: dict, kind: str, base: str) -> str:
        aid = article["id"]
        index = self.index[aid]
        title = article["title"] + ("  " if index % 5 == 0 else "")
        if kind == "rss2":
            if aid in self.faults.empty_body:
                description = ""
            else:
                description = body_html(article, index, cut=aid in self.faults.truncated_body)
                if aid in self.faults.cut_html_body:  # cut inside a paragraph, no marker
                    description = description[: max(description.find("<p>") + 40, len(description) // 3)]
        else:
            description = plain_description(article)
        out = ["      <item>", f"        <title>{xml_escape(title)}</title>"]
        if aid not in self.faults.no_id:
            out.append(f'        <guid isPermaLink="false">www.press.bmwgroup.com/{aid}</guid>')
            out.append(f"        <link>{base}/global/article/detail/{aid}?language=en</link>")
        out.append(f"        <pubDate>{format_datetime(munich_time(article))}</pubDate>")
        out.append(f"        <description>{xml_escape(description)}</description>")
        out.append("      </item>")
        return "\n".join(out)

    def detail(self, article: dict, us_english: bool) -> str:
        moment = munich_time(article)
        date = moment.strftime("%d.%m.%Y") if us_english else java_date(moment)
        index = self.index[article["id"]]
        tag = "div" if index % 7 == 3 else "p"  # the site sometimes uses <div>s for paragraphs
        paragraphs = "\n".join(f"<{tag}>{_html_text(p)}</{tag}>" for p in article.get("body") or [])
        teaser = f'<h2 class="teaser">{_html_text(article["summary"])}</h2>' if article.get("summary") else ""
        co2 = (
            '<div class="text co2_summary"><p>Energieverbrauch kombiniert: 17,9 kWh/100 km; '
            "CO2-Emissionen kombiniert: 0 g/km; CO2-Klasse: A</p></div>"
            if index % 4 == 1 else ""
        )
        tags = "".join(f'<div class="tag">{html.escape(t)}</div>' for t in article.get("tags") or [])
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="index,follow">
<title>{html.escape(article["title"])}</title>
<script>window.dataLayer = window.dataLayer || []; dataLayer.push({{"page": "article"}});</script>
<style>.readmore {{ display: none; }}</style></head>
<body>
<header><nav class="main-nav"><ul><li><a href="/global/article">Articles</a></li>
<li><a href="/global/photo">Photos</a></li><li><a href="/global/video">Videos</a></li></ul></nav></header>
<main><div class="article-detail">
  <div class="article-info"><h5><span class="date">{date}</span> <span class="separator">|</span>
  <span class="category">{html.escape(article.get("type", ""))}</span></h5></div>
  <h1>{_html_text(article["title"])}</h1>
  {teaser}
  <div class="content"><div id="article-text" class="article-text">
{paragraphs}
  </div>
  <button class="readmore" type="button">Show entire text</button>
  {co2}
  </div>
  <div class="tagging-info">{tags}</div>
</div></main>
<footer><p>&copy; BMW AG 2026</p><a href="/global/imprint">Imprint</a></footer>
<script src="/js/app.js"></script><script>console.log("loaded")</script>
</body></html>
"""

    # ---- answers -----------------------------------------------------------------------------
    def intercept(self, handler, target: str, path: str) -> bool:
        """A hook for servers built on this one (tests/hostile_server.py): answer the request
        through `handler` yourself and return True, or return False for the normal answer."""
        return False

    def answer(self, target: str, headers) -> tuple[int, str, str, dict]:
        """(status, body, content type, extra headers) for one GET of `target` (path?query);
        `headers` are the request's (anything with a case-insensitive `.get`)."""
        parts = urlsplit(target)
        path = parts.path
        faults = self.faults
        base = self._links_base(headers.get("Host"))
        html_type = "text/html; charset=utf-8"
        if faults.take(faults.slow, target, path):
            time.sleep(faults.slow_seconds)
        status = faults.take(faults.status, target, path)
        if status is None and faults.forbid_all and path != "/robots.txt":
            status = 403
        if status:
            extra = {"Retry-After": faults.retry_after} if status in (429, 503) and faults.retry_after else {}
            return status, html_page(f"Error {status}", "Please try again later."), html_type, extra
        if path == "/robots.txt":
            return 200, self.robots(base), "text/plain; charset=utf-8", {}
        match = FEED_RE.match(path)
        if match:
            kind, topic = match.groups()
            try:
                page = int(parse_qs(parts.query).get("page", ["1"])[0])
            except ValueError:
                page = 1
            malformed = bool(faults.take(faults.malformed, target, path))
            text = self.feed(kind, topic, page, base, malformed)
            if text is None:  # like the live site: past the last page comes an HTML page
                return 200, html_page("BMW Group PressClub", "No further entries."), html_type, {}
            return 200, text, "application/rss+xml; charset=utf-8", {}
        match = DETAIL_RE.match(path)
        if match and match.group(1) in self.by_id:
            us_english = headers.get("Accept-Language", "").lower().startswith("en-us")
            return 200, self.detail(self.by_id[match.group(1)], us_english), html_type, {}
        if path in ("/", "/global", "/global/"):
            return 200, html_page("BMW Group PressClub Global", "Latest news."), html_type, {}
        return 404, html_page("Page not found", "The page does not exist."), html_type, {}

    def robots(self, base: str) -> str:
        lines = ["User-agent: *"]
        lines += [f"Disallow: {p}" for p in self.faults.robots_disallow] or ["Allow: /"]
        lines += ["", f"Sitemap: {base}/sitemap.xml", ""]
        return "\n".join(lines)


def html_page(title: str, message: str) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body><header><nav>PressClub</nav>"
        f"</header><main><h1>{title}</h1><p>{message}</p></main></body></html>\n"
    )


def _make_handler(app: StandinServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

        def log_message(self, fmt, *args):  # keep test output quiet
            pass

        def do_GET(self):  # noqa: N802 (http.server naming)
            try:
                self._handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def send(self, status: int, body: str | bytes, ctype: str, headers: dict | None = None):
            data = body.encode("utf-8") if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            with app._lock:
                app.log.append((self.path, status))

        def _handle(self):
            parts = urlsplit(self.path)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            with app._lock:
                app.requests[target] += 1
            if not app.intercept(self, target, parts.path):
                self.send(*app.answer(target, self.headers))

    return Handler


# ---- invented articles for tests ---------------------------------------------------------------
_MODELS = ["BMW iX5 Hydrogen", "MINI Aceman E", "BMW M2 CS", "BMW R 1300 GS", "BMW i4 eDrive40",
           "Rolls-Royce Spectre", "BMW X3 30e xDrive", "MINI Cooper SE", "BMW M5 Touring", "BMW 1 Series"]
_PLACES = ["Munich", "Dingolfing", "Leipzig", "Regensburg", "Spartanburg", "Debrecen", "Shenyang", "Oxford"]
_SENTENCES = [
    "The {model} will be built at plant {place} from the autumn onwards.",
    "Series production starts after a pilot phase of several months.",
    "Customers can configure the {model} online & at their local dealer.",
    "The new drivetrain delivers up to {kw} kW – around {pct} per cent more than before.",
    "“We are proud of the team’s work,” said the head of the {place} plant.",
    "Charging from 10 to 80 per cent takes less than {mins} minutes.",
    "The vehicle’s software receives updates over the air.",
    "Prices start at {price} euros in Germany; market launch follows in {month}.",
    "Recycled materials make up {pct} per cent of the interior trim.",
    "The test fleet covered more than {km} kilometres in <b>extreme</b> climates.",
]
_TEASERS = [
    "+++ {model} enters series production +++ Plant {place} invests {price} million euros +++",
    "+++ World premiere of the {model} +++ More range, faster charging +++",
    "+++ Record deliveries in the first half year +++ {model} in high demand +++",
]


def synthetic_articles(n: int, *, seed: int = 0, start: str = "2025-06-30 10:00") -> list[dict]:
    """`n` invented BMW-like articles in the corpus format, newest first, with overlapping topics."""
    rng = random.Random(seed)
    moment = datetime.strptime(start, "%Y-%m-%d %H:%M")
    topic_ids = ["803", "4100", "5127", "5236", "7309", "6629"]
    out = []
    for i in range(n):
        fill = {
            "model": rng.choice(_MODELS), "place": rng.choice(_PLACES), "kw": rng.randint(100, 500),
            "pct": rng.randint(5, 60), "mins": rng.randint(18, 40), "price": rng.randint(30, 900) * 100,
            "month": rng.choice(["March", "June", "September"]), "km": rng.randint(10, 900) * 1000,
        }
        paragraphs = []
        for p in range(rng.randint(2, 7)):
            sentences = " ".join(s.format(**fill) for s in rng.sample(_SENTENCES, rng.randint(1, 4)))
            paragraphs.append(("Munich. " if p == 0 and i % 2 == 0 else "") + sentences)
        topics = rng.sample(topic_ids, 2 if i % 4 == 0 else 1)
        out.append({
            "id": f"T{457000 - i * 3:07d}EN",
            "title": f"{fill['model']}: news from {fill['place']} ({i + 1})",
            "date": moment.strftime("%Y-%m-%d %H:%M"),
            "summary": rng.choice(_TEASERS).format(**fill) if i % 3 else "",
            "body": paragraphs,
            "type": rng.choice(["Press Release", "Press Release", "Press Kit", "Speech", "Fact & Figures"]),
            "topics": topics,
            "tags": [fill["model"].split()[0], fill["place"]],
        })
        moment -= timedelta(hours=rng.choice([7, 19, 26, 31]), minutes=rng.choice([0, 15, 30]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve PressClub-shaped feeds and pages for offline runs.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, help="JSONL of articles in the shared corpus format")
    source.add_argument("--synthetic", type=int, metavar="N", help="serve N invented articles instead")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument("--per-page", type=int, default=20, help="feed items a page (default 20)")
    parser.add_argument("--disallow", action="append", default=[], metavar="PATH",
                        help="add a Disallow line to robots.txt (repeatable)")
    args = parser.parse_args(argv)
    articles = load_articles(args.corpus) if args.corpus else synthetic_articles(args.synthetic)
    server = StandinServer(articles, host=args.host, port=args.port, per_page=args.per_page,
                           faults=Faults(robots_disallow=args.disallow))
    print(f"serving {len(articles)} articles at {server.base_url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
