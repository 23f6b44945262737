"""Stage 01 against a hostile web (issue 9): servers on 127.0.0.1 that redirect away, never answer,
trickle, send bad bytes, huge bodies or compression bombs; a second host on 127.0.0.2; runs that
are interrupted or killed. Every test has a hard time bound."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import requests_cache

from bmwlm.scrape import store
from bmwlm.scrape.run import scrape
from bmwlm.scrape.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_server import (HostileServer, SilentListener, corrupt, gzip_bomb, huge, never_answer,  # noqa: E402
                            redirect, trickle)
from scrape_helpers import ARTICLES, FAST, ROOT, SCRIPT, crawl, expected_text, ids, read_output  # noqa: E402
from standin_server import StandinServer, synthetic_articles  # noqa: E402
PAGE_3 = {a["id"] for a in sorted(ARTICLES, key=lambda a: a["date"], reverse=True)[20:30]}


def run_script(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return result, time.monotonic() - started


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- 1: stay on the site you were pointed at ---------------------------------------------------
def test_a_redirect_to_another_host_is_refused_logged_and_counted(tmp_path, caplog):
    elsewhere = synthetic_articles(3, seed=7, start="2025-07-30 10:00")
    for article in elsewhere:
        article["id"] = article["id"].replace("T0", "T9")
    with StandinServer(elsewhere, host="127.0.0.2") as other, HostileServer(ARTICLES, per_page=10) as srv:
        srv.rules["/global/rss2"] = redirect(f"{other.base_url}/global/rss2")
        started = time.monotonic()
        articles, report = crawl(srv, tmp_path)
        assert time.monotonic() - started < 10
        assert other.total_requests == 0  # not even its robots.txt
    assert set(ids(articles)) == {a["id"] for a in srv.articles[10:]}  # page 1 lost, the rest read by number
    assert report["faults"]["off_site_refused"] == 1
    assert "another host" in report["failed_urls"][0]["reason"] and "another host" in caplog.text


def test_a_redirect_within_the_site_is_followed_and_cached_under_the_url_asked(tmp_path):
    with HostileServer(ARTICLES, per_page=10) as srv:
        srv.rules["/global/rss2"] = redirect(f"{srv.base_url}/rss2")
        articles, report = crawl(srv, tmp_path)
        assert len(articles) == len(ARTICLES) and report["faults"]["off_site_refused"] == 0
        srv.reset_counts()
        articles, report = crawl(srv, tmp_path, offline=True)
    assert len(articles) == len(ARTICLES) and srv.total_requests == 0


def test_links_to_another_host_in_feeds_are_refused_and_the_crawl_stays_home(tmp_path):
    with StandinServer(ARTICLES[:5], host="127.0.0.2") as other:
        cut = ARTICLES[12]["id"]
        with StandinServer(ARTICLES, per_page=10, link_base=other.base_url) as srv:
            srv.faults.empty_body = {cut}  # its body must come from a detail page: on our host
            started = time.monotonic()
            articles, report = crawl(srv, tmp_path)
            assert time.monotonic() - started < 10
            assert srv.count(f"/global/article/detail/{cut}") == 1
        assert other.total_requests == 0
    assert len(articles) == len(ARTICLES)  # next links refused; pages asked for by number instead
    assert all(a["url"].startswith(srv.base_url) for a in articles)
    assert report["faults"]["off_site_refused"] == 4 and report["faults"]["off_site_links"] == len(ARTICLES)


# ---- 2 and 3: bounded time ---------------------------------------------------------------------
def test_a_site_that_never_answers_stops_soon_with_cannot_reach(tmp_path):
    with SilentListener() as silent:
        result, elapsed = run_script("--base-url", silent.base_url, "--out", str(tmp_path), "--timeout", "0.3",
                                     "--delay", "0", "--backoff", "0.01", timeout=30)
    assert elapsed < 12  # three URLs, each tried three times for at most 0.3 s
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "cannot reach" in errors[0]
    assert "--base-url" in errors[0] and "--offline" in errors[0]
    assert json.loads((tmp_path / "scrape_report.json").read_text())["status"] == "unreachable"


def test_a_trickling_site_is_cut_off_by_the_whole_response_deadline(tmp_path):
    with HostileServer(ARTICLES, per_page=10, rules={"*": trickle(0.05)}) as srv:
        started = time.monotonic()
        _, report = crawl(srv, tmp_path, timeout=0.25, expect="unreachable")
        elapsed = time.monotonic() - started
    assert elapsed < 8  # each byte came well within 0.25 s: only a whole-response deadline stops this
    assert "no complete answer within 0.25 s" in report["stopped_reason"]
    assert report["faults"]["timeouts"] == 9  # 3 URLs x (1 try + 2 retries)


def test_one_page_that_never_answers_costs_three_deadlines_and_the_crawl_goes_on(tmp_path):
    with HostileServer(ARTICLES, per_page=10, rules={"/rss2?page=3": never_answer}) as srv:
        started = time.monotonic()
        articles, report = crawl(srv, tmp_path, timeout=0.3)
        assert time.monotonic() - started < 6
        assert srv.requests["/rss2?page=3"] == 3
    assert set(ids(articles)) == {a["id"] for a in ARTICLES} - PAGE_3
    assert report["failures"] == 1 and report["faults"]["timeouts"] == 3 and report["status"] == "complete"


def test_the_whole_crawl_stops_at_its_time_limit_and_keeps_what_it_collected(tmp_path):
    with StandinServer(ARTICLES, per_page=10) as srv:
        started = time.monotonic()
        articles, report = crawl(srv, tmp_path, delay=0.25, time_limit=1.5, expect="time_limit")
        assert time.monotonic() - started < 4  # the crawl alone would take about 3.5 s
    assert 0 < len(articles) < len(ARTICLES) and report["articles"] == len(articles)
    assert "--time-limit" in report["stopped_reason"]


def test_timeout_help_and_defaults_are_stated_once(tmp_path):
    result, _ = run_script("--help", timeout=30)
    assert result.returncode == 0
    assert "whole response" in result.stdout and "(default: None)" not in result.stdout
    blocks = re.split(r"\n  (?=-)", result.stdout.split("options:", 1)[1].split("offline example")[0])
    options = [b for b in blocks if b.strip().startswith("-")]
    assert len(options) >= 23
    for block in options:
        flag_part, _, help_part = block.partition("  ")
        assert help_part.strip(), f"no help for {flag_part}"
        assert block.count("default") <= 1, block
    for option in ("--time-limit", "--max-response-mb", "--max-article-chars", "--timeout"):
        assert any(b.startswith(option) and "(default: " in b for b in options), option


# ---- 4: encodings ------------------------------------------------------------------------------
def test_one_invalid_byte_costs_only_that_byte(tmp_path):
    articles = synthetic_articles(12)
    for i, article in enumerate(articles):
        article["body"][0] = f"München, café, Straße ({i}). " + article["body"][0]
    bad = articles[4]
    marker = "München, café, Straße (4)".replace("café", "caf&amp;eacute;").encode()  # as the feed spells it

    def one_bad_byte(body: bytes) -> bytes:
        assert marker in body
        return body.replace(marker, marker.replace("ü".encode(), b"\xfc"), 1)  # Latin-1 inside UTF-8

    with HostileServer(articles, per_page=20, rules={"/global/rss2": corrupt(one_bad_byte)}) as srv:
        got, report = crawl(srv, tmp_path)
    by_id = {a["id"]: a for a in got}
    assert len(got) == len(articles)
    for article in articles:
        text = by_id[article["id"]]["text"]
        if article is bad:
            assert text == expected_text(article).replace("München", "M\ufffdnchen", 1)
        else:
            assert text == expected_text(article)  # "München", "café": no cp1250 mojibake
    assert report["faults"]["bad_bytes_replaced"] == 1 and report["faults"]["pages_with_bad_bytes"] == 1


# ---- 5 and 6: bounded size ---------------------------------------------------------------------
def test_an_overlong_article_is_cut_at_a_paragraph_break_and_one_without_breaks_is_dropped(tmp_path):
    articles = synthetic_articles(6)
    long_one, monster = articles[1], articles[3]
    long_one["body"] = [f"Paragraph {i}: " + "word " * 200 for i in range(100)]  # about 100,000 characters
    monster["body"] = ["word " * 8000]  # 40,000 characters, one paragraph
    with StandinServer(articles, per_page=10) as srv:
        got, report = crawl(srv, tmp_path, max_article_chars=20_000)
    by_id = {a["id"]: a for a in got}
    assert monster["id"] not in by_id and len(got) == 5
    text = by_id[long_one["id"]]["text"]
    assert 19_000 < len(text) <= 20_000 and expected_text(long_one).startswith(text)
    assert text.endswith("word")  # a whole paragraph, not a cut word
    assert report["faults"]["articles_truncated"] == 1 and report["faults"]["articles_dropped_too_long"] == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_a_huge_answer_is_refused_while_streaming(tmp_path, chunked):
    with HostileServer(ARTICLES, per_page=10, rules={"/rss2?page=2": huge(50_000_000, chunked=chunked)}) as srv:
        started = time.monotonic()
        articles, report = crawl(srv, tmp_path, max_response_bytes=1_000_000)
        assert time.monotonic() - started < 8
    assert report["faults"]["too_large"] == 1 and len(articles) == len(ARTICLES) - 10
    assert "too large" in report["failed_urls"][0]["reason"]


def test_a_compression_bomb_is_refused_without_filling_memory_or_the_cache(tmp_path):
    with HostileServer(ARTICLES, per_page=10, rules={"/rss2?page=2": gzip_bomb(300_000_000)}) as srv:
        started = time.monotonic()
        tracemalloc.start()
        try:
            articles, report = crawl(srv, tmp_path, max_response_bytes=1_000_000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert time.monotonic() - started < 15
        bomb_url = f"{srv.base_url}/rss2?page=2"
    assert peak < 40_000_000  # the bomb inflates to 300 MB
    assert report["faults"]["too_large"] == 1 and len(articles) == len(ARTICLES) - 10
    cache = requests_cache.SQLiteCache(tmp_path / "cache" / "http_cache")
    assert not cache.contains(url=bomb_url) and cache.contains(url=f"{srv.base_url}/global/rss2?page=3")
    cache.close()
    assert (tmp_path / "cache" / "http_cache.sqlite").stat().st_size < 5_000_000


# ---- 7 and 12: never shrink; conflicting duplicates --------------------------------------------
def test_an_interrupted_refresh_keeps_every_article_the_collection_had(tmp_path):
    with StandinServer(ARTICLES, per_page=10) as srv:
        before, _ = crawl(srv, tmp_path)

        def stop(record):
            raise KeyboardInterrupt

        after, report = crawl(srv, tmp_path, refresh=True, on_article=stop, expect="interrupted")
    assert ids(after) == ids(before) and report["status"] == "interrupted"
    assert report["articles"] == report["articles_before"] == len(ARTICLES)


def test_a_rerun_merges_into_the_collection_and_keeps_articles_the_site_no_longer_lists(tmp_path):
    gone = {**synthetic_articles(1, seed=3, start="2024-01-05 09:00")[0], "id": "T0100001EN"}
    with StandinServer([gone, *ARTICLES], per_page=10) as srv:
        crawl(srv, tmp_path)
    with StandinServer(ARTICLES, per_page=10) as srv:
        articles, report = crawl(srv, tmp_path, refresh=True, max_articles=20)
    assert "T0100001EN" in ids(articles) and len(articles) == len(ARTICLES) + 1
    assert report["articles_before"] == len(ARTICLES) + 1 and report["collected_this_run"] == 20
    assert report["new_articles"] == 0 and report["status"] == "complete"


@pytest.mark.parametrize("per_page", [10, 30])  # the three copies on three pages, or on one
def test_the_same_id_with_different_bodies_keeps_the_longest_clean_body_and_counts_it(tmp_path, per_page):
    articles = synthetic_articles(25)
    short = articles[5]
    longer = {**short, "date": articles[15]["date"], "body": short["body"] + ["An added closing paragraph."]}
    cut = {**short, "date": articles[20]["date"], "body": [short["body"][0][:30] + "..."]}
    with StandinServer([*articles, longer, cut], per_page=per_page) as srv:
        got, report = crawl(srv, tmp_path)
    record = next(a for a in got if a["id"] == short["id"])
    assert record["text"] == expected_text(longer)  # longest clean body; the cut copy is not clean
    assert len(got) == 25 and report["faults"]["conflicting_duplicates"] == 2
    assert report["faults"]["duplicates_merged"] == 2


def test_a_changed_body_on_refresh_is_settled_by_the_same_rule_and_counted(tmp_path):
    with StandinServer(ARTICLES, per_page=10) as srv:
        before, _ = crawl(srv, tmp_path)
    target = before[7]
    richer = {**target, "text": target["text"] + "\n\nA paragraph the site has since removed."}
    lines = [json.dumps(richer if r["id"] == target["id"] else r) for r in before]
    (tmp_path / "articles.jsonl").write_text("\n".join(lines) + "\n")
    with StandinServer(ARTICLES, per_page=10) as srv:
        after, report = crawl(srv, tmp_path, refresh=True)
    assert next(a for a in after if a["id"] == target["id"])["text"] == richer["text"]
    assert report["faults"]["conflicting_duplicates"] == 1 and len(after) == len(before)


def test_unreadable_lines_of_the_collection_are_reported_by_line_number(tmp_path, caplog):
    with StandinServer(ARTICLES, per_page=10) as srv:
        before, _ = crawl(srv, tmp_path)
        with open(tmp_path / "articles.jsonl", "a") as handle:
            handle.write('{"id": "T0000009EN", "text": "cut off\n[1, 2]\n')
        after, report = crawl(srv, tmp_path)
    assert ids(after) == ids(before) and report["unreadable_lines_before"] == 2
    assert f"line {len(before) + 1}: not JSON" in caplog.text and f"line {len(before) + 2}" in caplog.text


# ---- 15: temp files and the folder lock --------------------------------------------------------
def test_temp_files_left_by_killed_writes_are_removed_at_start(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / ".articles.jsonl.k1ll3d.tmp", tmp_path / ".scrape_report.json.x9.tmp"]
    for path in stale:
        path.write_text("half a file")
    keep = tmp_path / "notes.tmp"
    keep.write_text("not ours")
    with StandinServer(ARTICLES, per_page=10) as srv:
        _, report = crawl(srv, tmp_path)
    assert not any(p.exists() for p in stale) and keep.exists()
    assert report["faults"]["stale_temp_files_removed"] == 2


def test_a_second_crawl_into_the_same_folder_is_refused(tmp_path):
    with store.exclusive(tmp_path):
        with pytest.raises(store.Busy, match="another 01_scrape.py"):
            scrape(Settings(base_url="http://127.0.0.1:9", out=tmp_path, **FAST))
    assert not (tmp_path / "scrape_report.json").exists()


# ---- 7: SIGINT and SIGKILL at several moments of a --refresh run --------------------------------
MOMENTS = [(signal.SIGINT, 1), (signal.SIGKILL, 3), (signal.SIGTERM, 6), (signal.SIGINT, 9), (signal.SIGKILL, 11),
           (signal.SIGKILL, 15)]


def test_sigint_sigterm_and_sigkill_during_a_refresh_never_lower_the_article_count(tmp_path):
    out = tmp_path / "raw"
    with StandinServer(synthetic_articles(60), per_page=10) as srv:
        crawl(srv, out, topics=["803", "4100"])
        complete = set(ids(read_output(out)[0]))
        assert len(complete) == 60
        args = ["--base-url", srv.base_url, "--out", str(out), "--topics", "803,4100", "--flush-every", "1",
                "--backoff", "0.01", "--timeout", "2", "--refresh", "--delay", "0.04"]
        seen_status = set()
        for sig, after_requests in MOMENTS:
            srv.reset_counts()
            proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 30
            while srv.total_requests < after_requests and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=30)
            articles, report = read_output(out)  # every line parses: never half a file
            assert complete <= set(ids(articles)), (sig, after_requests)
            assert "Traceback" not in stderr
            if proc.returncode == 0:  # it finished before the signal came
                assert report["status"] == "complete"
            elif sig in (signal.SIGINT, signal.SIGTERM):
                assert proc.returncode == 130 and report["status"] == "interrupted"
            else:
                assert proc.returncode == -signal.SIGKILL and report["status"] == "running"
            seen_status.add(report["status"])
        assert {"interrupted", "running"} <= seen_status  # the signals did land mid-run
        articles, report = crawl(srv, out, topics=["803", "4100"])
    assert set(ids(articles)) == complete and report["status"] == "complete"
    assert not list(out.glob(".*.tmp"))
