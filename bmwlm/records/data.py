"""What 06 shows of 01's and 02's reports: a minimal typed view, not the whole report.

`scrape_report.json` and `preprocess_report.json` hold much more (per-rule counts, faults, settings,
timings); the report lists those generically. These classes name only the fields the report's data
summary reads, so a renamed field fails in `from_dict` instead of silently printing "n/a".
"""
from __future__ import annotations

from dataclasses import dataclass

from bmwlm.io import BadRecordError
from bmwlm.records.base import Record


@dataclass
class ScrapeReport(Record):
    """`data/raw/scrape_report.json` (01_scrape.py)."""

    status: str  # "complete", "running", "interrupted", ...
    articles: int  # articles in articles.jsonl
    by_source: dict[str, int]  # "rss2" / "detail" -> articles


@dataclass
class DropCount(Record):
    count: int


@dataclass
class CleaningTotals(Record):
    percent_chars_removed: float


@dataclass
class SplitSummary(Record):
    articles: int
    tokens: int | None  # None when 02 ran with --tokenizer none
    published_min: str | None  # ISO 8601; None for an empty split
    published_max: str | None


@dataclass
class PreprocessReport(Record):
    """`data/processed/preprocess_report.json` (02_preprocess.py)."""

    articles: dict[str, int]  # "in" (records read), "out" (kept: train + validation), ...
    # Why articles were dropped: every reason is an object with a `count` (and details the report
    # does not show); string entries (e.g. `dedup_policy`) are notes, not reasons.
    dropped: dict[str, DropCount | str]
    cleaning: CleaningTotals
    splits: dict[str, SplitSummary]  # "train", "validation"

    def __post_init__(self) -> None:
        missing = [k for k in ("in", "out") if k not in self.articles]
        if missing:
            raise BadRecordError(f"PreprocessReport: articles lacks {', '.join(missing)}")

    @property
    def articles_read(self) -> int:
        return self.articles["in"]

    @property
    def articles_kept(self) -> int:
        return self.articles["out"]

    def dropped_counts(self) -> dict[str, int]:
        """{"too short": 43, ...} for every drop reason, in the report's order."""
        return {why.replace("_", " "): d.count for why, d in self.dropped.items() if isinstance(d, DropCount)}
