"""Stage 02 on bad input: damaged lines, records without id or date, too few articles, other
languages, conflicting copies of one id, a huge article, an unfinished scrape, a failing write.

Each case is named after what 02 must do with it. The article texts are made up for these tests
(tests/fixtures/clean/languages.json and the boilerplate below)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bmwlm.clean.language import LanguageDetector
from bmwlm.clean.pipeline import preprocess
from bmwlm.clean.raw import read_articles
from bmwlm.clean.records import body_of
from bmwlm.clean.rules import clean_text
from bmwlm.clean.split import TooFewArticles
from bmwlm.clean.text import truncate_at_paragraph
from conftest import ROOT

SCRIPT = ROOT / "02_preprocess.py"
LANG = json.loads((Path(__file__).parent / "fixtures" / "clean" / "languages.json").read_text(encoding="utf-8"))
OUTPUTS = ("train.jsonl", "validation.jsonl", "preprocess_report.json", "README.md")  # README.md: the dataset card
T0 = datetime(2031, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=1)))
# Press-office furniture that cleaning removes completely (made-up names and numbers).
BOILERPLATE = "\n\n".join([
    "If you have any questions, please contact:",
    "BMW Group Corporate Communications",
    "Petra Example, Spokesperson Production Network",
    "Telephone: +49-89-382-00000",
    "Email: petra.example@example-press.com",
    "Internet: www.press.bmwgroup.com",
])


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


def article(n: int, text, *, days: int | None = None, lang: str = "EN", **fields) -> dict:
    """A raw record as 01_scrape.py writes it; `fields` override any key."""
    record = {
        "id": f"T{8000000 + n:07d}{lang}",
        "url": f"https://www.press.bmwgroup.com/global/article/detail/T{8000000 + n:07d}{lang}",
        "title": f"Plant news number {n}",
        "published": (T0 + timedelta(days=n if days is None else days)).isoformat(),
        "teaser": "",
        "category": "Press Release",
        "topics": ["803"],
        "text": text,
        "source": "rss2",
        "fetched_at": "2031-06-01T00:00:00+00:00",
    }
    return record | fields


def english() -> list[dict]:
    return [article(i, body) for i, body in enumerate(LANG["en"])]


def line(record) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


def run_02(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def old_outputs(out: Path) -> dict[str, str]:
    """Outputs of an earlier run, to show that a refused run leaves them as they were."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (out / name).write_text(f"an earlier run's {name}\n", encoding="utf-8")
    return snapshot(out)


def snapshot(out: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.iterdir())}


def ids(records: list[dict]) -> set[str]:
    return {r["id"] for r in records}


# ---------------------------------------------------------------------------------------------
# Damaged lines
# ---------------------------------------------------------------------------------------------

GOOD = [line(a) for a in english()]
DAMAGED = {  # case: (lines of the file, line number of the damage, what the warning says)
    "truncated_last_line": (GOOD + [line(article(9, LANG["en"][0]))[:90]], 4, "truncated"),
    "non_json_line": (GOOD[:1] + ["<html><body>Service unavailable</body></html>\n"] + GOOD[1:], 2, "not valid JSON"),
    "null": (GOOD[:2] + ["null\n"] + GOOD[2:], 3, "null"),
    "list": (GOOD[:1] + ['["T8000009EN", "a list, not a record"]\n'] + GOOD[1:], 2, "array"),
    "text_not_a_string": (GOOD[:1] + ["\n"] + GOOD[1:] + [line(article(9, 12345))], 5, "text is 12345"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_line_is_skipped_with_a_warning_naming_file_and_line_and_counted(case, tmp_path, detector, caplog):
    lines, lineno, why = DAMAGED[case]
    path = write_lines(tmp_path / "articles.jsonl", lines)
    with caplog.at_level(logging.WARNING):
        raw = read_articles(path)
    train, validation, report = preprocess(raw, detector=detector, progress=False)
    damaged = report["dropped"]["damaged_line"]
    assert damaged["count"] == 1
    assert damaged["lines"][0].startswith(f"{path}:{lineno}: ") and why in damaged["lines"][0]
    assert f"{path}:{lineno}: " in caplog.text
    assert ids(train + validation) == ids(english())
    assert report["articles"]["in"] == 4


def test_line_numbers_stay_right_after_blank_and_damaged_lines(tmp_path):
    lines = [GOOD[0], "\n", "{\"id\": \"T8000007EN\", \n", GOOD[1], line(article(8, None)), GOOD[2],
             line(article(9, ["a", "list"]))]
    path = write_lines(tmp_path / "articles.jsonl", lines)
    raw = read_articles(path)
    assert [p.split(": ", 1)[0] for p in raw.damaged] == [f"{path}:3", f"{path}:5", f"{path}:7"]
    assert "text is null" in raw.damaged[1] and 'text is ["a", "list"]' in raw.damaged[2]
    assert ids(raw.records) == ids(english())


def test_cli_skips_every_kind_of_damaged_line_and_reports_them(tmp_path):
    lines = [*GOOD, "not json at all\n", "null\n", "[1, 2]\n", line(article(9, 12345)), line(article(10, "x"))[:40]]
    path = write_lines(tmp_path / "articles.jsonl", lines)
    out = tmp_path / "processed"
    proc = run_02("--in", path, "--out-dir", out, "--tokenizer", "none")
    assert proc.returncode == 0, proc.stderr
    for lineno in (4, 5, 6, 7, 8):
        assert f"articles.jsonl:{lineno}: " in proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["dropped"]["damaged_line"]["count"] == 5
    assert report["articles"]["out"] == 3


# ---------------------------------------------------------------------------------------------
# Records without an id or a date
# ---------------------------------------------------------------------------------------------


def test_records_without_an_id_are_dropped_and_counted_never_as_duplicate_ids(detector):
    body = LANG["en"][0] + "\n\nA fourth paragraph makes this copy different from every other one."
    records = english() + [article(5, body), article(6, body, id=None), article(7, body, id=""), article(8, body, id=42)]
    del records[3]["id"]
    train, validation, report = preprocess(records, detector=detector, progress=False)
    assert report["dropped"]["missing_id"] == {"count": 4, "where": ["record 4", "record 5", "record 6", "record 7"]}
    assert report["dropped"]["duplicate_id"]["count"] == 0
    assert ids(train + validation) == ids(english())


@pytest.mark.parametrize("published", ["yesterday", "", "2031-13-45T10:00:00+01:00", 20310302, None, "missing"])
def test_undated_articles_are_dropped_and_counted_never_sorted_into_a_split(published, detector):
    undated = article(9, LANG["en"][1] + "\n\nThe plant also opened a canteen for the night shift.",
                      published=published)
    if published == "missing":
        del undated["published"]
    train, validation, report = preprocess(english() + [undated], detector=detector, progress=False)
    assert undated["id"] not in ids(train + validation)
    dropped = report["dropped"]["unparseable_date"]
    assert dropped["count"] == 1 and dropped["articles"][0]["id"] == undated["id"]


# ---------------------------------------------------------------------------------------------
# Too few articles to split
# ---------------------------------------------------------------------------------------------

TOO_FEW = {
    "empty_file": [],
    "only_boilerplate": [line(article(i, BOILERPLATE)) for i in range(3)],
    "one_article": GOOD[:1],
}


@pytest.mark.parametrize("case", TOO_FEW)
def test_too_few_articles_stop_with_one_line_exit_1_and_write_nothing(case, tmp_path):
    path = write_lines(tmp_path / "articles.jsonl", TOO_FEW[case])
    out = tmp_path / "processed"
    before = old_outputs(out)
    proc = run_02("--in", path, "--out-dir", out, "--tokenizer", "none")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "need at least 2" in proc.stderr and "nothing written" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before


def test_preprocess_raises_too_few_articles_naming_what_was_dropped(detector):
    with pytest.raises(TooFewArticles, match=r"1 article left.*1 too short"):
        preprocess([article(0, LANG["en"][0]), article(1, "Too short.")], detector=detector, progress=False)


# ---------------------------------------------------------------------------------------------
# Languages
# ---------------------------------------------------------------------------------------------


def test_detector_tells_english_german_and_french_apart(detector):
    assert [detector.detect(clean_text(t)[0]) for lang in ("en", "de", "fr") for t in LANG[lang]] == \
        ["en"] * len(LANG["en"]) + ["de"] * len(LANG["de"]) + ["fr"] * len(LANG["fr"])


def _with_newest_german() -> list[dict]:
    german = [article(20 + i, body, lang="DE") for i, body in enumerate(LANG["de"])]  # the newest
    return english() + german


def test_german_articles_among_the_newest_are_dropped_and_validation_stays_english(detector):
    records = _with_newest_german()
    train, validation, report = preprocess(records, detector=detector, progress=False)
    assert ids(train + validation) == ids(english())
    assert ids(validation) == {english()[-1]["id"]}
    assert report["dropped"]["other_language"]["by_language"] == {"de": 2}
    assert report["language"]["detected"] == {"en": 3, "de": 2}
    # the same input without the language filter: the whole validation split would be German
    _, unfiltered, _ = preprocess(records, languages=None, progress=False)
    assert all(r["id"].endswith("DE") for r in unfiltered)


def test_languages_option_keeps_the_languages_asked_for(tmp_path):
    path = write_lines(tmp_path / "articles.jsonl", [line(a) for a in _with_newest_german()])
    proc = run_02("--in", path, "--out-dir", tmp_path / "out", "--tokenizer", "none", "--languages", "en", "de")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert report["articles"]["out"] == 5 and report["dropped"]["other_language"]["count"] == 0
    assert report["settings"]["languages"] == ["de", "en"]


# ---------------------------------------------------------------------------------------------
# Conflicting copies of one id
# ---------------------------------------------------------------------------------------------


def test_same_id_with_different_bodies_keeps_the_longest_clean_body_and_counts_each_conflict(detector):
    a, b, c = english()
    first_paragraph = a["text"].split("\n\n")[0]
    feed_copy = a | {"text": first_paragraph}  # a feed body cut after its lead
    padded_copy = a | {"text": "\n\n".join([first_paragraph, BOILERPLATE, BOILERPLATE])}  # longer raw, shorter clean
    assert len(padded_copy["text"]) > len(a["text"])
    records = [feed_copy, b, padded_copy, a, c, b]
    train, validation, report = preprocess(records, min_chars=100, detector=detector, progress=False)
    kept = {r["id"]: r for r in train + validation}
    assert body_of(kept[a["id"]]) == clean_text(a["text"])[0]
    duplicates = report["dropped"]["duplicate_id"]
    assert duplicates["count"] == 3 and sorted(duplicates["ids"]) == sorted([a["id"], a["id"], b["id"]])
    assert duplicates["conflicting"]["count"] == 2  # both short copies of a; b's second copy is identical
    assert report["articles"]["unique_ids"] == 3


# ---------------------------------------------------------------------------------------------
# A huge article
# ---------------------------------------------------------------------------------------------

SECTION = ("The hall was extended by another bay this week. Cranes lifted the roof trusses into place while "
           "the production lines next door kept running, and the electricians began laying cable trays.")


def test_a_huge_article_is_truncated_at_a_paragraph_boundary_and_its_share_reported(detector):
    huge_body = "\n\n".join(f"Day {i}. {SECTION}" for i in range(6000))  # about 1.2 million characters
    huge = article(7, huge_body, days=-1)
    train, validation, report = preprocess(english() + [huge], detector=detector, progress=False)
    [kept] = [r for r in train if r["id"] == huge["id"]]
    body, full = body_of(kept), clean_text(huge_body)[0]
    assert len(body) <= 50_000 < len(full)
    assert full.startswith(body + "\n\n")
    assert report["truncated"] == {"count": 1, "max_chars": 50_000, "articles": [
        {"id": huge["id"], "raw_chars": len(huge_body), "chars_after": len(body)}]}
    largest = report["splits"]["train"]["largest_article"]
    assert largest["id"] == huge["id"]
    assert largest["share"] == round(kept["n_chars"] / report["splits"]["train"]["chars"], 4)


def test_max_chars_sets_the_cap(detector):
    long_body = "\n\n".join(f"Day {i}. {SECTION}" for i in range(60))
    train, validation, report = preprocess(english() + [article(7, long_body, days=-1)], max_chars=2_000,
                                           detector=detector, progress=False)
    assert max(len(body_of(r)) for r in train + validation) <= 2_000
    assert report["truncated"]["count"] == 1


def test_truncation_without_a_paragraph_break_ends_at_a_sentence():
    one_paragraph = " ".join([SECTION] * 50)
    cut = truncate_at_paragraph(one_paragraph, 1_000)
    assert 1_000 - len(SECTION) < len(cut) <= 1_000
    assert one_paragraph.startswith(cut + " ") and cut.endswith(".")


# ---------------------------------------------------------------------------------------------
# An unfinished scrape
# ---------------------------------------------------------------------------------------------


def _collection(tmp_path: Path, status) -> Path:
    path = write_lines(tmp_path / "articles.jsonl", GOOD)
    if status != "no report":
        report = {"articles": 3} if status == "no status" else {"status": status, "articles": 3}
        (tmp_path / "scrape_report.json").write_text(json.dumps(report), encoding="utf-8")
    return path


@pytest.mark.parametrize("status", ["running", "interrupted", "unreachable", "time_limit", "no status"])
def test_a_collection_whose_scrape_did_not_finish_is_refused(status, tmp_path):
    path = _collection(tmp_path, status)
    out = tmp_path / "processed"
    before = old_outputs(out)
    proc = run_02("--in", path, "--out-dir", out, "--tokenizer", "none")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "did not finish" in proc.stderr and "--allow-incomplete" in proc.stderr and "01_scrape.py" in proc.stderr
    assert snapshot(out) == before


def test_allow_incomplete_cleans_an_unfinished_collection_and_records_it(tmp_path):
    path = _collection(tmp_path, "interrupted")
    proc = run_02("--in", path, "--out-dir", tmp_path / "out", "--tokenizer", "none", "--allow-incomplete")
    assert proc.returncode == 0, proc.stderr
    assert "did not finish" in proc.stderr
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert report["scrape"]["status"] == "interrupted" and report["scrape"]["allow_incomplete"] is True
    assert report["articles"]["out"] == 3


@pytest.mark.parametrize("status", ["complete", "no report"])
def test_a_finished_or_hand_made_collection_is_cleaned(status, tmp_path):
    proc = run_02("--in", _collection(tmp_path, status), "--out-dir", tmp_path / "out", "--tokenizer", "none")
    assert proc.returncode == 0, proc.stderr
    assert ("cannot tell whether its scrape finished" in proc.stderr) == (status == "no report")
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert report["scrape"]["status"] == (None if status == "no report" else "complete")


# ---------------------------------------------------------------------------------------------
# Outputs: all or none
# ---------------------------------------------------------------------------------------------


def _run_02_with_full_disk_at(name: str | None, *args) -> subprocess.CompletedProcess:
    """Run the script with the disk "full" when the temporary file for output `name` is created."""
    code = textwrap.dedent(f"""
        import errno, runpy, sys, tempfile
        real_mkstemp = tempfile.mkstemp
        def mkstemp(*args, prefix=None, **kwargs):
            if {name!r} and (prefix or "").startswith(".{name}."):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_mkstemp(*args, prefix=prefix, **kwargs)
        tempfile.mkstemp = mkstemp
        sys.argv = [{str(SCRIPT)!r}, *{[str(a) for a in args]!r}]
        runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("failing", ["validation.jsonl", "preprocess_report.json", "README.md"])
def test_outputs_are_replaced_together_or_not_at_all_when_a_write_fails(failing, tmp_path):
    path = write_lines(tmp_path / "articles.jsonl", GOOD)
    out = tmp_path / "processed"
    before = old_outputs(out)
    proc = _run_02_with_full_disk_at(failing, "--in", path, "--out-dir", out, "--tokenizer", "none")
    assert proc.returncode == 1
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before  # no new file beside an old one, no temporary file left
    # the same run with room on the disk replaces all four
    proc = _run_02_with_full_disk_at(None, "--in", path, "--out-dir", out, "--tokenizer", "none")
    assert proc.returncode == 0, proc.stderr
    after = snapshot(out)
    assert set(after) == set(OUTPUTS) and all(after[n] != before[n] for n in OUTPUTS)
