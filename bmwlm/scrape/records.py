"""One article record (fields in ../shared/DESIGN.md "Records"), and the rule for two records that
share an id: the same article met twice in one crawl, or met again by a later crawl.

Which body is kept: a clean body (not empty, not ending in "...", no U+FFFD from undecodable
bytes) over one that is not; then the detail page's body over a feed's; then the longer. On a
tie the preferred record (the first sighting within a crawl, the newer crawl's against the
collection on disk) wins. Two bodies that differ are a conflict, counted by the caller.
"""
from __future__ import annotations

from datetime import datetime, timezone

from bmwlm.scrape.parse import ELLIPSES
from bmwlm.scrape.text import squash

FIELDS = ("id", "url", "title", "published", "teaser", "category", "topics", "text", "source", "fetched_at")
_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


def is_clean(text: str) -> bool:
    return bool(text.strip()) and "\ufffd" not in text and not text.rstrip().endswith(ELLIPSES)


def body_rank(record: dict) -> tuple[bool, bool, int]:
    text = record.get("text") or ""
    return is_clean(text), record.get("source") == "detail", len(squash(text))


def same_body(a: dict, b: dict) -> bool:
    return squash(a.get("text") or "") == squash(b.get("text") or "")


def merge(preferred: dict, other: dict) -> tuple[dict, bool]:
    """One record from two with the same id; returns (record, whether their bodies conflicted).

    The record with the better body (module docstring) is kept whole, with the topics of both
    and the other's teaser or category where it has none."""
    conflict = not same_body(preferred, other)
    winner, loser = preferred, other
    if conflict and body_rank(other) > body_rank(preferred):
        winner, loser = other, preferred
    record = dict(winner)
    record["topics"] = list(dict.fromkeys([*(winner.get("topics") or []), *(loser.get("topics") or [])]))
    for key in ("teaser", "category"):
        if not record.get(key) and loser.get(key):
            record[key] = loser[key]
    return record, conflict


def newest_first(records) -> list[dict]:
    """Records sorted by `published`, newest first (ties by id; undated last)."""
    def moment(record: dict) -> datetime:
        try:
            value = datetime.fromisoformat(record.get("published") or "")
        except (TypeError, ValueError):
            return _OLDEST
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    by_id = sorted(records, key=lambda r: r["id"], reverse=True)
    return sorted(by_id, key=moment, reverse=True)


def is_record(value) -> bool:
    """A usable article record: a JSON object with a string id and a string text."""
    return isinstance(value, dict) and isinstance(value.get("id"), str) and bool(value["id"]) \
        and isinstance(value.get("text", ""), str)
