"""The processed record that 02 writes (one article a line of train.jsonl / validation.jsonl):
`id`, `published`, `title`, `text` (the title, a blank line, the cleaned body), `category`,
`topics`, `url`, `n_chars`; and how its date is read."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from bmwlm.clean.consumption import FOOTNOTE_RE
from bmwlm.clean.text import normalize_unicode


def normalize_title(title: str) -> str:
    """The title as it goes into the record: normalised, one line, no footnote asterisks."""
    return FOOTNOTE_RE.sub("", re.sub(r"\s+", " ", normalize_unicode(title or ""))).strip()


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def title_of(raw: dict) -> str:
    """A raw record's title as given ("" when missing or not a string)."""
    return _str(raw.get("title"))


def build_record(raw: dict, body: str) -> dict:
    """A processed record: the title as the first line of `text`, then a blank line, then the body."""
    title = normalize_title(title_of(raw))
    text = f"{title}\n\n{body}" if title else body
    topics = raw.get("topics")
    return {
        "id": raw["id"],
        "published": raw.get("published", ""),
        "title": title,
        "text": text,
        "category": _str(raw.get("category")),
        "topics": list(topics) if isinstance(topics, list) else [],
        "url": _str(raw.get("url")),
        "n_chars": len(text),
    }


def body_of(record: dict) -> str:
    """The cleaned body of a processed record (its text without the title line)."""
    text = record["text"]
    if record.get("title") and text.startswith(record["title"]):
        return text[len(record["title"]):].lstrip("\n")
    return text


def parse_published(value) -> datetime:
    """`published` (ISO 8601 with offset, or "Z"; a date without offset is taken as UTC) as an aware
    datetime. Raises ValueError for anything else, so an undated article is never sorted silently."""
    if not isinstance(value, str):
        raise ValueError(f"published is {type(value).__name__}, not an ISO 8601 string")
    dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
