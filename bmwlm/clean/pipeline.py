"""From usable raw records to train and validation records and the report, in this order:

1. clean every body with the rules (`bmwlm.clean.rules`); a raw body over `RAW_FACTOR * max_chars`
   is first cut at a paragraph boundary, so one runaway body cannot stall the stage;
2. one copy per id: the longest cleaned body wins, conflicts counted;
3. drop bodies shorter than `min_chars`;
4. drop articles not in `languages`;
5. truncate bodies longer than `max_chars` at a paragraph boundary, so no article dominates;
6. drop exact and near duplicates;
7. stop (TooFewArticles) when fewer articles are left than a split needs;
8. split by date (or at random), and check that nothing leaks from validation into train.

Every drop is counted, per reason, in the report.
"""
from __future__ import annotations

import time
from collections import Counter
from importlib.metadata import version
from typing import Iterable, Sequence

from tqdm import tqdm

from bmwlm.clean import language
from bmwlm.clean.dedup import DEDUP_POLICY, deduplicate, one_per_id
from bmwlm.clean.raw import RawArticles, sort_out
from bmwlm.clean.records import build_record, title_of
from bmwlm.clean.report import RuleTotals, TokenCounter, dropped_counts, split_summary
from bmwlm.clean.rules import clean_text
from bmwlm.clean.split import TooFewArticles, check_split, require_enough, split_articles
from bmwlm.clean.text import truncate_at_paragraph

DEFAULT_LANGUAGES = ("en",)
DEFAULT_MAX_CHARS = 50_000  # well above any real press release or kit; a runaway body cannot dominate
RAW_FACTOR = 4  # raw text cleaned per article, in units of max_chars: cleaning removes far less than 3/4


def preprocess(
    raw: RawArticles | Iterable[dict],
    *,
    min_chars: int = 400,
    max_chars: int = DEFAULT_MAX_CHARS,
    near_dup_threshold: float = 0.8,
    val_fraction: float = 0.1,
    split: str = "chronological",
    seed: int = 42,
    languages: Sequence[str] | None = DEFAULT_LANGUAGES,
    detector: language.LanguageDetector | None = None,
    count_tokens: TokenCounter | None = None,
    progress: bool = True,
) -> tuple[list[dict], list[dict], dict]:
    """Clean, filter, deduplicate and split; returns (train, validation, report).

    `raw` is what `bmwlm.clean.raw.read_articles` read, or plain records (then sorted out here).
    `languages=None` keeps every language; `detector` defaults to a new `LanguageDetector`.
    Raises TooFewArticles when the articles left cannot fill the split."""
    if not isinstance(raw, RawArticles):
        raw = sort_out(raw)
    if languages is not None:
        detector = detector or language.LanguageDetector()
        detector.check(languages)
    timings = {}
    t0 = time.perf_counter()
    cleaned = []
    for r in tqdm(raw.records, desc="cleaning", unit="article", disable=not progress):
        text = truncate_at_paragraph(r["text"], RAW_FACTOR * max_chars)
        cleaned.append((r, *clean_text(text, title=title_of(r))))
    unique, duplicate_ids = one_per_id(cleaned)

    totals, too_short, candidates = RuleTotals(), [], []
    for r, body, stats in unique:
        totals.add(stats)
        if len(body) < min_chars:
            too_short.append({"id": r["id"], "chars": len(body)})
        else:
            candidates.append((r, body))
    timings["clean_s"] = round(time.perf_counter() - t0, 3)

    t1 = time.perf_counter()
    detected, off_language = Counter(), []
    if languages is not None:
        kept = []
        for r, body in candidates:
            lang = detector.detect(body)
            detected[lang] += 1
            if lang in languages:
                kept.append((r, body))
            else:
                off_language.append({"id": r["id"], "language": lang})
        candidates = kept
    timings["language_s"] = round(time.perf_counter() - t1, 3)

    records, truncated = [], []
    for r, body in candidates:
        if len(body) > max_chars or len(r["text"]) > RAW_FACTOR * max_chars:
            body = truncate_at_paragraph(body, max_chars)
            truncated.append({"id": r["id"], "raw_chars": len(r["text"]), "chars_after": len(body)})
        records.append(build_record(r, body))

    t2 = time.perf_counter()
    kept_records, exact, near = deduplicate(records, near_dup_threshold)
    timings["dedup_s"] = round(time.perf_counter() - t2, 3)

    dropped = {
        "damaged_line": {"count": len(raw.damaged), "lines": raw.damaged},
        "missing_id": {"count": len(raw.missing_id), "where": raw.missing_id},
        "unparseable_date": {"count": len(raw.unparseable_date), "articles": raw.unparseable_date},
        "duplicate_id": duplicate_ids,
        "too_short": {"count": len(too_short), "min_chars": min_chars, "articles": too_short},
        "other_language": {"count": len(off_language),
                           "by_language": dict(Counter(a["language"] for a in off_language)),
                           "articles": off_language},
        "exact_duplicate": {"count": len(exact), "pairs": exact},
        "near_duplicate": {"count": len(near), "threshold": near_dup_threshold, "pairs": near},
        "dedup_policy": DEDUP_POLICY,
    }
    try:
        require_enough(len(kept_records), val_fraction)
    except TooFewArticles as exc:
        raise TooFewArticles(f"{exc} (read {raw.total}; dropped: {dropped_counts(dropped)})") from None

    train, validation = split_articles(kept_records, val_fraction, split, seed)
    t3 = time.perf_counter()
    checks = check_split(train, validation, near_dup_threshold)
    timings["checks_s"] = round(time.perf_counter() - t3, 3)

    t4 = time.perf_counter()
    splits = {"train": split_summary(train, count_tokens), "validation": split_summary(validation, count_tokens)}
    timings["tokens_s"] = round(time.perf_counter() - t4, 3)
    timings["total_s"] = round(time.perf_counter() - t0, 3)

    report = {
        "articles": {
            "in": raw.total,
            "unique_ids": len(unique),
            "out": len(train) + len(validation),
            "train": len(train),
            "validation": len(validation),
        },
        "dropped": dropped,
        "language": {
            "detector": f"py3langid {version('py3langid')}" if languages is not None else None,
            "keep": list(languages) if languages is not None else "all",
            "sample_chars": language.SAMPLE_CHARS,
            "detected": dict(detected.most_common()),
        },
        "truncated": {"count": len(truncated), "max_chars": max_chars, "articles": truncated},
        "cleaning": totals.as_dict(),
        "splits": splits,
        "checks": checks,
        "timings": timings,
    }
    return train, validation, report
