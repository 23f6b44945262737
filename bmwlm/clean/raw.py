"""Reading the raw collection that 01 wrote, and deciding what of it can be cleaned.

A damaged line (cut off by a killed writer, not JSON, `null`, a list, a record whose `text` is not
a string) is skipped with a warning naming the file and line. A record without an `id` or without a
parseable `published` date is set aside with its reason: it can be neither deduplicated nor placed
in a chronological split. Nothing is dropped without being counted.

01 records in `scrape_report.json` whether its last run finished ("status": "complete"); a collection
whose scrape was interrupted may be a fraction of the real one, so 02 refuses it unless told otherwise.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from bmwlm.clean.records import parse_published
from bmwlm.config import SCRAPE, SCRAPE_REPORT_FILE
from bmwlm.io import read_json, read_jsonl_lenient

log = logging.getLogger(__name__)

COMPLETE = "complete"  # scrape_report.json "status" of a crawl that finished by its own stopping rules
_SHOWN = 5  # locations named in one summary warning


@dataclass
class RawArticles:
    """The usable records of a raw collection, and what was set aside and why."""

    records: list[dict] = field(default_factory=list)  # a string id, a parseable date, a string text
    damaged: list[str] = field(default_factory=list)  # "FILE:LINE: why ...; skipped", one per line
    missing_id: list[str] = field(default_factory=list)  # where each one was ("FILE:LINE")
    unparseable_date: list[dict] = field(default_factory=list)  # {"id", "published", "where"}

    @property
    def total(self) -> int:
        """Every non-empty line (or record) that came in."""
        return len(self.records) + len(self.damaged) + len(self.missing_id) + len(self.unparseable_date)


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def sort_out(records: Iterable, where: Sequence[str] | None = None) -> RawArticles:
    """Split records into usable ones and those set aside; `where` names each record's place
    ("FILE:LINE"), by default "record N"."""
    records = list(records)
    where = list(where) if where is not None else [f"record {i}" for i in range(1, len(records) + 1)]
    out = RawArticles()
    for record, place in zip(records, where):
        if not isinstance(record, dict):
            out.damaged.append(f"{place}: a JSON {_shown(record)}, not an object; skipped")
        elif not isinstance(record.get("text"), str):
            why = "no text" if "text" not in record else f"text is {_shown(record['text'])}, not a string"
            out.damaged.append(f"{place}: {why}; skipped")
        elif not isinstance(record.get("id"), str) or not record["id"].strip():
            out.missing_id.append(place)
        else:
            try:
                parse_published(record.get("published"))
            except ValueError:
                out.unparseable_date.append({"id": record["id"], "published": record.get("published"), "where": place})
                continue
            out.records.append(record)
    for problem in out.damaged:
        log.warning(problem)
    if out.missing_id:
        log.warning("%d record(s) without an id set aside: %s", len(out.missing_id), ", ".join(out.missing_id[:_SHOWN]))
    if out.unparseable_date:
        log.warning("%d record(s) without a parseable published date set aside: %s", len(out.unparseable_date),
                    ", ".join(f"{u['id']} at {u['where']}" for u in out.unparseable_date[:_SHOWN]))
    return out


def read_articles(path: Path | str) -> RawArticles:
    """Read a raw articles.jsonl leniently (see the module docstring)."""
    path = Path(path)
    numbered, problems = read_jsonl_lenient(path, with_lines=True)  # logs one warning per damaged line
    out = sort_out([record for _, record in numbered], [f"{path}:{n}" for n, _ in numbered])
    out.damaged[:0] = problems
    return out


class IncompleteCollection(RuntimeError):
    """The last scrape of this collection did not finish."""


def scrape_report_for(articles: Path | str) -> Path:
    """The scrape report that describes an articles file: the one beside it."""
    return Path(articles).parent / SCRAPE_REPORT_FILE.name


def scrape_status(report: Path) -> str | None:
    """The status the last scrape recorded; None when there is no report (a hand-made collection)."""
    if not report.exists():
        return None
    try:
        data = read_json(report)
    except (OSError, ValueError):
        return "unreadable"
    status = data.get("status") if isinstance(data, dict) else None
    return status if isinstance(status, str) else "not recorded"


def read_scrape_report(articles: Path | str) -> dict | None:
    """The scrape report beside an articles file, or None when it is absent or unreadable."""
    try:
        data = read_json(scrape_report_for(articles))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_collection(articles: Path | str, allow_incomplete: bool = False) -> dict:
    """Refuse (IncompleteCollection) a collection whose last scrape did not finish, unless
    `allow_incomplete`; warn when no scrape report says. Returns what the report records."""
    report = scrape_report_for(articles)
    status = scrape_status(report)
    if status is None:
        log.warning("no %s beside %s: cannot tell whether its scrape finished; cleaning it as it is",
                    report.name, articles)
    elif status != COMPLETE and not allow_incomplete:
        raise IncompleteCollection(
            f"the last scrape of {articles} did not finish (status {status!r} in {report}); run {SCRAPE} "
            "again to complete it, or pass --allow-incomplete to clean what it holds")
    elif status != COMPLETE:
        log.warning("the last scrape did not finish (status %r in %s); cleaning it anyway (--allow-incomplete)",
                    status, report)
    return {"scrape_report": str(report) if status is not None else None, "status": status,
            "allow_incomplete": allow_incomplete}
