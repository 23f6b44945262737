"""Tests for stage 01 (`bmwlm.scrape`, `01_scrape.py`): the parsers on hand-written snippets, then
whole crawls against the stand-in server (tests/standin_server.py) with one fault at a time, all
without pauses. The hostile-web cases are in test_scrape_hostile.py."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bmwlm.scrape import limits, parse, records, text, urls
from bmwlm.scrape.settings import parse_topics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scrape_helpers import ARTICLES, ROOT, SCRIPT, crawl, expected_text, ids  # noqa: E402
from standin_server import Faults, StandinServer  # noqa: E402


@pytest.fixture
def server():
    with StandinServer(ARTICLES, per_page=10) as srv:
        yield srv


# ---- hand-written fixtures (invented articles) -------------------------------------------------
def rss(items: str, next_href: str | None = "https://www.press.bmwgroup.com/rss2/topic/803?page=2") -> str:
    nxt = f'<atom:link href="{next_href}" rel="next" type="application/rss+xml"/>' if next_href else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">
  <channel>
    <title>PressClub test</title>
    <atom:link href="https://www.press.bmwgroup.com/rss2/topic/803?page=1" rel="self" type="application/rss+xml" />
    {nxt}
    <link>https://www.press.bmwgroup.com</link>
    <description>Test feed.</description>
{items}
  </channel>
</rss>
"""


ITEM_FULL = """
    <item>
      <title>The new BMW X9 Concept: a study in light   </title>
      <guid isPermaLink="false">www.press.bmwgroup.com/T0999001EN</guid>
      <link>https://www.press.bmwgroup.com/global/article/detail/T0999001EN?language=en</link>
      <pubDate>Tue, 14 Oct 2025 09:30:05 +0200</pubDate>
      <description>&lt;img src="https://mediapool.bmwgroup.com/cache/P9/202510/P90000001/x9.jpg" /&gt;
&lt;p&gt;&lt;strong&gt;Munich. &lt;/strong&gt;The BMW X9 Concept shows R&amp;amp;D&amp;rsquo;s ideas &amp;ndash; in &amp;lt;glass&amp;gt;.&lt;/p&gt;
&lt;p&gt;&amp;nbsp;&lt;/p&gt;
&lt;table&gt;&lt;tr&gt;&lt;td&gt;Output&lt;/td&gt;&lt;td&gt;400 kW&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;
&lt;p&gt;It seats&amp;nbsp;four. &lt;a href="/x"&gt;More&lt;/a&gt; online.&lt;/p&gt;&lt;script&gt;track()&lt;/script&gt;</description>
    </item>"""

ITEM_US = """
    <item>
      <title>MINI opens a store in Austin</title>
      <guid isPermaLink="false">www.press.bmwgroup.com/T0012345EN_US</guid>
      <pubDate>Mon, 13 Jan 2025 18:00:00 +0100</pubDate>
      <description>&lt;p&gt;Austin. Opening day.&lt;/p&gt;</description>
    </item>"""

ITEM_NO_ID = """
    <item>
      <title>An item the CMS lost track of</title>
      <pubDate>Mon, 13 Jan 2025 10:00:00 +0100</pubDate>
      <description>&lt;p&gt;Text.&lt;/p&gt;</description>
    </item>"""

ITEM_NO_DESCRIPTION = """
    <item>
      <title>Photos only</title>
      <link>https://www.press.bmwgroup.com/global/article/detail/T0999003EN?language=en</link>
      <pubDate>Sun, 12 Jan 2025 10:00:00 +0100</pubDate>
    </item>"""


def detail_html(date: str, teaser: str | None = "+++ A bold study +++ Four seats +++") -> str:
    teaser_html = f'<h2 class="teaser">{teaser}</h2>' if teaser is not None else ""
    return f"""<!DOCTYPE html><html><head><title>X9</title><script>var a = 1;</script></head>
<body><nav><a href="/global/article">Articles</a></nav>
<div class="article-detail">
  <div class="article-info"><h5><span class="date">{date}</span> | <span class="category">Press Kit</span></h5></div>
  <h1>The new BMW X9 Concept </h1>
  {teaser_html}
  <div id="article-text">
    <p><strong>Munich. </strong>The concept&nbsp;car.</p>
    <div>Second paragraph &amp; more.</div>
    <p>&nbsp;</p>
    <p>Contact:<br/>Press office</p>
    <div class="text co2_summary"><p>Stromverbrauch kombiniert: 20 kWh/100 km</p></div>
    <button class="readmore">Show entire text</button>
  </div>
</div>
<footer>Imprint</footer><script>track()</script></body></html>"""


# ---- parsers -----------------------------------------------------------------------------------
def test_parse_feed_reads_items_next_link_and_escaped_body():
    page = parse.parse_feed(rss(ITEM_FULL + ITEM_US))
    assert page.next_url == "https://www.press.bmwgroup.com/rss2/topic/803?page=2"
    assert page.malformed is None
    first, us = page.items
    assert first.id == "T0999001EN" and us.id == "T0012345EN_US"
    assert first.title == "The new BMW X9 Concept: a study in light"
    assert first.published.isoformat() == "2025-10-14T09:30:05+02:00"
    assert text.html_to_text(first.body_html) == (
        "Munich. The BMW X9 Concept shows R&D\u2019s ideas \u2013 in <glass>.\n\nIt seats four. More online."
    )


def test_parse_feed_keeps_item_without_id_with_id_none_and_missing_description_as_none():
    page = parse.parse_feed(rss(ITEM_NO_ID + ITEM_NO_DESCRIPTION, next_href=None))
    assert [i.id for i in page.items] == [None, "T0999003EN"]
    assert page.items[1].body_html is None
    assert page.next_url is None


def test_parse_feed_reads_malformed_xml_leniently_and_flags_it():
    broken = rss(ITEM_FULL).replace("<title>PressClub test</title>", "<title>R&D news</title>")
    page = parse.parse_feed(broken)
    assert page.malformed
    assert [i.id for i in page.items] == ["T0999001EN"]


def test_parse_feed_raises_on_unrecoverable_xml_and_on_html_pages():
    with pytest.raises(parse.MalformedFeedError):
        parse.parse_feed("<?xml version='1.0'?>\n<<< not { xml")
    with pytest.raises(parse.NotAFeedError):
        parse.parse_feed("<!DOCTYPE html><html><body><h1>PressClub</h1><p>No entries.</p></body></html>")
    with pytest.raises(parse.NotAFeedError):
        parse.parse_feed(b"")


def test_html_to_text_drops_markup_images_scripts_tables_and_normalises_spaces():
    html = ('<img src="https://mediapool.bmwgroup.com/a.jpg"><p><strong>Munich. </strong>Line&nbsp;one\n  '
            'continues.</p><p>&nbsp;</p><table><tr><td>cell</td></tr></table><style>p{}</style>'
            '<ul><li>first</li><li>second</li></ul><p>Name<br>Phone &#43;49</p><script>x()</script>')
    assert text.html_to_text(html) == "Munich. Line one continues.\n\nfirst\n\nsecond\n\nName\nPhone +49"
    assert text.html_to_text("") == "" and text.html_to_text(None) == ""


def test_parse_detail_page_reads_en_us_date_teaser_category_and_text_without_co2_or_button():
    fields = parse.parse_detail_page(detail_html("14.08.2025"))
    assert fields["title"] == "The new BMW X9 Concept"
    assert fields["teaser"] == "+++ A bold study +++ Four seats +++"
    assert fields["category"] == "Press Kit"
    assert fields["published"] == "2025-08-14T00:00:00+02:00" and fields["date"] == "14.08.2025"
    assert fields["text"] == "Munich. The concept car.\n\nSecond paragraph & more.\n\nContact:\nPress office"


def test_parse_detail_page_reads_java_style_date_and_missing_teaser():
    fields = parse.parse_detail_page(detail_html("Fri Nov 21 10:00:00 CET 2025", teaser=None))
    assert fields["teaser"] == ""
    assert fields["published"] == "2025-11-21T10:00:00+01:00"
    summer = parse.parse_detail_date("Thu Jul 03 08:15:00 CEST 2025")
    assert summer.isoformat() == "2025-07-03T08:15:00+02:00"
    assert parse.parse_detail_date("yesterday") is None


def test_article_ids_dates_and_urls_are_read_tolerantly():
    assert parse.article_id_from("www.press.bmwgroup.com/T0457178EN") == "T0457178EN"
    assert parse.article_id_from(None, "https://x/global/article/detail/t0457178de/slug?language=de") == "T0457178DE"
    assert parse.article_id_from("urn:uuid:1234", "https://x/global/article") is None
    assert parse.parse_pubdate("Fri, 17 Apr 2026 16:20:14 +0200").isoformat() == "2026-04-17T16:20:14+02:00"
    assert parse.parse_pubdate("not a date") is None
    assert (urls.Site("http://127.0.0.1:8765").rebase("https://www.press.bmwgroup.com/rss2/topic/803?page=2")
            == "http://127.0.0.1:8765/rss2/topic/803?page=2")
    assert urls.teaser_feed_url("http://h/global/rss2/topic/803?page=3") == "http://h/global/rss/topic/803?page=3"
    assert parse_topics("mini, 803") == ["5127", "803"] and parse_topics("none") == []


def test_truncation_and_teaser_rules():
    body = "Munich. The plant opens today.\n\nIt employs 2,000 people."
    assert parse.truncation_reason("") == "empty"
    assert parse.truncation_reason("Munich. The plant opens...") == "ends with an ellipsis"
    assert parse.truncation_reason(body, html="<p>Munich. The plant opens today.</p><p>It employs 2,000 people.</p>") is None
    assert parse.truncation_reason("Munich. The pla", html="<p>Munich. The pla") == "cut off inside its HTML"
    assert parse.truncation_reason("Photos.", teaser="+++ Photos of the plant opening +++") is not None
    assert parse.truncation_reason("Munich.", lead="Munich. The plant opens today. It...") is not None
    assert parse.teaser_from_plain("+++ Plant opens +++", body) == ("+++ Plant opens +++", "")
    teaser, lead = parse.teaser_from_plain("Munich. The plant opens today. It...", body)
    assert teaser == "" and lead


def test_decoding_follows_the_declared_encoding_and_counts_only_the_bad_bytes():
    page = "<p>M\u00fcnchen, caf\u00e9, Stra\u00dfe</p>" * 20
    latin = text.decode_document(page.encode("latin-1"), "text/html; charset=ISO-8859-1")
    assert latin.text == page and latin.bad_bytes == 0 and latin.how == "declared"
    declared_in_xml = b'<?xml version="1.0" encoding="windows-1252"?><rss>' + "caf\u00e9".encode("cp1252") + b"</rss>"
    assert "caf\u00e9" in text.decode_document(declared_in_xml).text
    damaged = page.encode("utf-8").replace("caf\u00e9".encode(), b"caf\xff", 1)
    for content_type in ("text/html; charset=utf-8", ""):  # declared, or guessed as UTF-8
        decoded = text.decode_document(damaged, content_type)
        assert decoded.bad_bytes == 1 and decoded.text.count("\ufffd") == 1
        assert decoded.text.replace("caf\ufffd", "caf\u00e9", 1) == page  # everything else intact
    undeclared_cp1252 = ("Gr\u00fc\u00dfe aus M\u00fcnchen, sch\u00f6ne Stra\u00dfe. " * 30).encode("cp1252")
    guessed = text.decode_document(undeclared_cp1252)
    assert guessed.how == "detected" and "M\u00fcnchen" in guessed.text and guessed.bad_bytes == 0


def test_cap_text_cuts_at_a_paragraph_break_or_drops():
    body = "\n\n".join(f"Paragraph {i} " + "x" * 90 for i in range(10))  # ten of ~100 characters
    capped, action = text.cap_text(body, 350)
    assert action == "truncated" and len(capped) <= 350 and body.startswith(capped)
    assert capped.endswith("x") and capped.count("\n\n") == 2  # three whole paragraphs
    assert text.cap_text(body, 0) == (body, None) and text.cap_text(body, len(body)) == (body, None)
    assert text.cap_text("y" * 500, 100) == ("", "dropped")


def test_site_allows_only_its_host_and_the_https_twin():
    site = urls.Site("https://www.press.bmwgroup.com")
    assert site.allows("https://www.press.bmwgroup.com/global/rss2")
    assert site.allows("http://www.press.bmwgroup.com/global/rss2")  # the twin
    assert site.allows("https://WWW.press.bmwgroup.com:443/x")
    assert not site.allows("https://www.press.bmwgroup.com:8443/x")
    assert not site.allows("https://evil.example/global/rss2")
    assert not site.allows("https://press.bmwgroup.com.evil.example/x")
    assert not site.allows("ftp://www.press.bmwgroup.com/x")
    local = urls.Site("http://127.0.0.1:8765")
    assert local.allows("https://127.0.0.1:8765/a") and not local.allows("http://127.0.0.1:8766/a")
    assert not local.allows("http://127.0.0.2:8765/a")
    assert local.rebase("/rss2?page=2") == "http://127.0.0.1:8765/rss2?page=2"
    assert local.rebase("http://127.0.0.2:8765/rss2?page=2") is None
    assert local.detail_url("T0000001EN", "http://127.0.0.2:1/global/article/detail/T0000001EN") == \
        "http://127.0.0.1:8765/global/article/detail/T0000001EN?language=en"


def test_merge_keeps_the_clean_body_then_the_detail_pages_then_the_longest():
    base = {"id": "T0000001EN", "topics": ["803"], "teaser": "", "category": "", "source": "rss2"}
    short = {**base, "text": "One.\n\nTwo."}
    longer = {**base, "text": "One.\n\nTwo.\n\nThree.", "topics": ["4100"], "teaser": "+++ T +++"}
    cut = {**base, "text": "One.\n\nTwo.\n\nThree and more of it..."}
    damaged = {**base, "text": "One.\n\nTwo.\n\nThr\ufffde and a lot more text here."}
    detail = {**base, "text": "One.\n\nTwo!", "source": "detail"}
    kept, conflict = records.merge(short, longer)
    assert conflict and kept["text"] == longer["text"]
    assert kept["topics"] == ["4100", "803"] and kept["teaser"] == "+++ T +++"
    assert records.merge(short, cut)[0]["text"] == short["text"]  # a cut body is not clean
    assert records.merge(short, damaged)[0]["text"] == short["text"]  # nor one with U+FFFD
    assert records.merge(longer, detail)[0]["source"] == "detail"
    same, conflict = records.merge(short, {**short, "text": " One.\n\n  Two. ", "topics": ["5127"]})
    assert not conflict and same["text"] == short["text"] and same["topics"] == ["803", "5127"]


def test_deadline_interrupts_a_blocked_wait_and_the_clock_never_oversleeps():
    started = time.monotonic()
    with pytest.raises(limits.DeadlineExceeded):
        with limits.deadline(0.2):
            time.sleep(5)
    assert time.monotonic() - started < 1
    clock = limits.Clock(0.3)
    with pytest.raises(limits.TimeLimitReached):
        clock.sleep(5)
    assert time.monotonic() - started < 2 and limits.Clock(0).remaining() == float("inf")


# ---- crawls against the stand-in ---------------------------------------------------------------
def test_pages_through_the_global_feed_to_the_end(tmp_path):
    with StandinServer(ARTICLES, per_page=10, link_base="https://www.press.bmwgroup.com") as srv:
        articles, report = crawl(srv, tmp_path)
    assert ids(articles) == [a["id"] for a in srv.articles]  # all 45, newest first, links rebased
    assert report["feeds"][0]["pages"] == 5 and report["feeds"][0]["ended"] == "no next link"
    first = articles[0]
    source = srv.by_id[first["id"]]
    assert first["text"] == expected_text(source)
    assert first["title"] == source["title"] and first["teaser"] == source["summary"]
    assert first["source"] == "rss2" and first["published"].startswith(source["date"].replace(" ", "T"))
    assert set(first) == set(records.FIELDS)
    assert srv.count("/global/article/detail") == 0  # whole bodies: no detail page needed
    assert report["status"] == "complete" and report["failures"] == 0
    assert report["articles"] == report["new_articles"] == report["collected_this_run"] == 45


def test_topic_feeds_overlap_is_deduplicated_and_topics_merged(tmp_path, server):
    articles, report = crawl(server, tmp_path, topics=parse_topics("all"))
    assert len(articles) == len(set(ids(articles))) == len(ARTICLES)
    for record in articles:
        assert sorted(record["topics"]) == sorted(server.by_id[record["id"]]["topics"])
    assert report["in_several_topics"] > 0 and report["faults"]["duplicates_merged"] > len(ARTICLES)
    assert report["faults"]["conflicting_duplicates"] == 0  # the same bodies in every feed


def test_max_articles_and_since_stop_paging_early(tmp_path, server):
    articles, _ = crawl(server, tmp_path / "max", max_articles=15)
    assert len(articles) == 15 and server.count("/rss2?page=3") == 0
    server.reset_counts()
    since = ARTICLES[24]["date"][:10]
    articles, _ = crawl(server, tmp_path / "since", since=parse.datetime.fromisoformat(since).date())
    assert articles and all(a["published"][:10] >= since for a in articles)
    assert {a["id"] for a in ARTICLES if a["date"][:10] >= since} == set(ids(articles))
    assert server.count("/rss2?page=4") == 0  # page 3 already reached older items


def test_429_with_retry_after_is_waited_for_and_retried(tmp_path, server):
    server.faults = Faults(status={"/global/rss2": [429]}, retry_after="1")
    started = time.monotonic()
    articles, report = crawl(server, tmp_path)
    assert time.monotonic() - started >= 1.0
    assert len(articles) == len(ARTICLES)
    assert server.requests["/global/rss2"] == 2
    assert report["faults"]["http_429"] == 1 and report["retries"] == 1 and report["failures"] == 0


def test_retry_after_is_capped_by_max_wait(tmp_path, server):
    server.faults = Faults(status={"/global/rss2": [429]}, retry_after="3600")
    started = time.monotonic()
    articles, _ = crawl(server, tmp_path, max_wait=0.2)
    assert time.monotonic() - started < 10 and len(articles) == len(ARTICLES)


def test_5xx_answers_are_retried(tmp_path, server):
    server.faults = Faults(status={"/rss2?page=2": [503, 500, 502]}, retry_after=None)
    articles, report = crawl(server, tmp_path)
    assert len(articles) == len(ARTICLES)
    assert server.requests["/rss2?page=2"] == 4
    assert report["faults"]["http_5xx"] == 3 and report["retries"] == 3 and report["failures"] == 0


def test_a_page_that_keeps_failing_is_given_up_recorded_and_skipped(tmp_path, server, caplog):
    server.faults = Faults(status={"/rss2?page=2": [503] * 20}, retry_after=None)
    articles, report = crawl(server, tmp_path, retries=2)
    assert server.requests["/rss2?page=2"] == 3  # one try and two retries, then give up
    assert report["failures"] == 1 and report["failed_urls"][0]["url"].endswith("/rss2?page=2")
    lost = {a["id"] for a in server.articles[10:20]}
    assert set(ids(articles)) == {a["id"] for a in ARTICLES} - lost  # went on with page 3 by number
    assert "giving up on" in caplog.text


def test_three_failed_pages_in_a_row_make_the_run_partial_not_complete(tmp_path, server):
    server.faults = Faults(status={path: [503] * 9 for path in ("/rss2?page=2", "/global/rss2?page=3",
                                                                 "/global/rss2?page=4")}, retry_after=None)
    articles, report = crawl(server, tmp_path, retries=1, expect="partial")
    assert len(articles) == 10 and report["status"] == "partial"
    assert "three pages in a row failed" in report["stopped_reason"]


def test_a_timeout_is_retried(tmp_path, server):
    server.faults = Faults(slow={"/rss2?page=3": 1}, slow_seconds=1.5)
    articles, report = crawl(server, tmp_path, timeout=0.4)
    assert len(articles) == len(ARTICLES)
    assert report["faults"]["timeouts"] == 1 and report["failures"] == 0


def test_malformed_xml_page_is_asked_again_then_read(tmp_path, server, caplog):
    server.faults = Faults(malformed={"/rss2?page=2": 1})
    articles, report = crawl(server, tmp_path)
    assert len(articles) == len(ARTICLES) and report["faults"]["malformed_xml"] == 1
    assert server.requests["/rss2?page=2"] == 2
    assert "malformed XML" in caplog.text or "not well-formed" in caplog.text


def test_persistently_malformed_page_is_used_leniently_without_traceback(tmp_path, server):
    server.faults = Faults(malformed={"/rss2?page=2": 99})
    articles, report = crawl(server, tmp_path)
    assert report["faults"]["malformed_xml"] == 2 and report["status"] == "complete"
    got = set(ids(articles))
    assert {a["id"] for a in server.articles[:10] + server.articles[20:]} <= got  # other pages intact
    rescued = [a for a in articles if a["id"] in {x["id"] for x in server.articles[10:20]}]
    assert rescued and all(a["source"] == "detail" for a in rescued)  # bodies re-read from detail pages
    assert all(a["text"] == expected_text(server.by_id[a["id"]]) for a in rescued)


def test_item_without_id_is_skipped_and_counted(tmp_path, server, caplog):
    lost = server.articles[3]["id"]
    server.faults = Faults(no_id={lost})
    articles, report = crawl(server, tmp_path)
    assert lost not in ids(articles) and len(articles) == len(ARTICLES) - 1
    assert report["faults"]["items_without_id"] == 1
    assert "has no article id" in caplog.text


def test_non_xml_page_past_the_last_page_ends_the_feed(tmp_path, server, caplog):
    caplog.set_level(logging.INFO, logger="bmwlm.scrape")
    server.faults = Faults(always_next=True)
    articles, report = crawl(server, tmp_path)
    assert len(articles) == len(ARTICLES)
    assert server.requests["/rss2?page=6"] == 1 and report["faults"]["non_xml_pages"] == 1
    assert report["feeds"][0]["ended"].startswith("not XML") and report["failures"] == 0
    assert "not XML" in caplog.text


def test_empty_or_cut_feed_body_falls_back_to_the_detail_page(tmp_path, server):
    empty, cut, cut_html = server.articles[2]["id"], server.articles[14]["id"], server.articles[30]["id"]
    server.faults = Faults(empty_body={empty}, truncated_body={cut}, cut_html_body={cut_html})
    articles, report = crawl(server, tmp_path)
    by_id = {a["id"]: a for a in articles}
    for aid in (empty, cut, cut_html):
        assert by_id[aid]["source"] == "detail"
        assert by_id[aid]["text"] == expected_text(server.by_id[aid])
        assert by_id[aid]["category"] == server.by_id[aid]["type"]
        assert server.count(f"/global/article/detail/{aid}") == 1
    assert report["faults"]["empty_bodies"] == 1 and report["faults"]["suspect_bodies"] == 2
    assert report["faults"]["detail_fallbacks"] == 3 and report["by_source"] == {"rss2": 42, "detail": 3}


def test_one_403_is_recorded_and_the_crawl_goes_on(tmp_path, server):
    server.faults = Faults(status={"/rss2?page=4": [403]})
    articles, report = crawl(server, tmp_path)
    assert report["faults"]["http_403"] == 1 and report["failed_urls"][0]["reason"] == "HTTP 403"
    assert len(articles) == len(ARTICLES) - 10


def test_repeated_403_stops_the_crawl_with_a_clear_message(tmp_path, server, caplog):
    server.faults = Faults(forbid_all=True)
    _, report = crawl(server, tmp_path, topics=parse_topics("all"), expect="blocked")
    assert report["status"] == "blocked" and "403" in report["stopped_reason"]
    assert server.total_requests == 1 + 3  # robots.txt, then three 403s
    assert "stopping" in caplog.text


def test_robots_txt_disallow_is_honoured(tmp_path, server):
    server.faults = Faults(robots_disallow=["/global/rss2/topic/", "/global/article/detail/"],
                           empty_body={server.articles[0]["id"]})
    articles, report = crawl(server, tmp_path, topics=["803", "4100"])
    assert server.count("/global/rss2/topic/") == 0 and server.count("/global/article/detail/") == 0
    assert report["faults"]["robots_disallowed"] == 3  # two topic feeds and one detail page
    assert len(articles) == len(ARTICLES) - 1  # the empty one could not be completed


def test_offline_replays_the_cache_without_any_request(tmp_path, server):
    online, _ = crawl(server, tmp_path, topics=parse_topics("all"))
    server.reset_counts()
    offline, report = crawl(server, tmp_path, topics=parse_topics("all"), offline=True)
    assert server.total_requests == 0
    assert offline == online
    assert report["network_requests"] == 0 and report["cache_hits"] == report["requests"] > 0


def test_second_run_comes_from_the_cache_and_refresh_downloads_again(tmp_path, server):
    crawl(server, tmp_path)
    server.reset_counts()
    _, report = crawl(server, tmp_path)
    assert server.total_requests == server.requests["/robots.txt"] == 1  # robots.txt is always fresh
    assert report["cache_hits"] == report["requests"] - 1
    _, report = crawl(server, tmp_path, refresh=True)
    assert server.count("/global/rss2") + server.count("/rss2") == 5 and report["cache_hits"] == 0


def test_interrupted_run_resumes_to_the_same_articles_without_downloading_twice(tmp_path, server):
    full, _ = crawl(server, tmp_path / "whole", topics=parse_topics("all"))
    whole_run_requests = server.total_requests
    server.reset_counts()

    def stop_after(n):
        seen = []

        def hook(record):
            seen.append(record["id"])
            if len(seen) == n:
                raise KeyboardInterrupt

        return hook

    out = tmp_path / "resumed"
    _, report = crawl(server, out, topics=parse_topics("all"), on_article=stop_after(35), expect="interrupted")
    assert len((out / "articles.jsonl").read_text().splitlines()) == 35 == report["articles"]
    resumed, report = crawl(server, out, topics=parse_topics("all"))
    without_time = lambda records: [{k: v for k, v in r.items() if k != "fetched_at"} for r in records]  # noqa: E731
    assert without_time(resumed) == without_time(full)  # same articles, order, topics, texts
    assert server.total_requests == whole_run_requests + 1  # nothing downloaded twice but robots.txt
    assert report["cache_hits"] >= 8  # four rss2 pages and their teaser pages


def test_killed_process_leaves_valid_output_and_a_rerun_finishes_the_job(tmp_path, server):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(SCRIPT), "--base-url", server.base_url, "--out", str(out),
           "--topics", "none", "--delay", "0.2", "--flush-every", "5"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    articles_file = out / "articles.jsonl"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:  # kill it after three of the five pages
            if articles_file.exists() and len(articles_file.read_text().splitlines()) >= 30:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = [json.loads(line) for line in articles_file.read_text().splitlines()]  # never half a file
    assert 30 <= len(partial) < len(ARTICLES)
    assert json.loads((out / "scrape_report.json").read_text())["status"] == "running"
    resumed, report = crawl(server, out)
    assert ids(resumed) == [a["id"] for a in server.articles]
    assert report["cache_hits"] > report["network_requests"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_site_exits_nonzero_with_one_clear_message(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--base-url", f"http://127.0.0.1:{_free_port()}",
           "--out", str(tmp_path), "--delay", "0", "--backoff", "0.01"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "--base-url" in errors[0] and "--offline" in errors[0]
    assert not (tmp_path / "articles.jsonl").exists()
    assert json.loads((tmp_path / "scrape_report.json").read_text())["status"] == "unreachable"


def test_full_shared_corpus_through_the_standin(tmp_path, shared_corpus):
    with StandinServer.from_jsonl(shared_corpus) as srv:
        articles, report = crawl(srv, tmp_path, max_articles=500, topics=parse_topics("all"))
    corpus = {a["id"]: a for a in srv.articles}
    assert len(articles) == 500 and set(ids(articles)) == set(corpus)
    assert all(a["text"] == expected_text(corpus[a["id"]]) for a in articles)
    assert all(sorted(a["topics"]) == sorted(corpus[a["id"]]["topics"]) for a in articles)
    assert report["failures"] == 0 and report["status"] == "complete"
