"""Stage 02: clean the scraped articles, drop short, foreign-language and duplicate ones, split train/validation.

Reads   data/raw/articles.jsonl (written by 01_scrape.py): one raw article a line, `text` holding the
        body as plain-text paragraphs separated by a blank line, nothing cleaned yet; and
        data/raw/scrape_report.json beside it, to refuse a collection whose scrape did not finish.
Writes  data/processed/train.jsonl and data/processed/validation.jsonl, one article a line:
        `id`, `published`, `title`, `text` (the title, a blank line, then the cleaned body paragraphs
        separated by blank lines), `category`, `topics`, `url`, `n_chars`;
        data/processed/preprocess_report.json: what every cleaning rule removed, which articles were
        dropped and why, per-split article/character/token counts, date ranges and largest article,
        the settings; data/processed/README.md: the dataset card (source, dates, counts, rules, split,
        the publisher's terms), generated from that report, which also lets
        `datasets.load_dataset("data/processed")` find the splits. The four files are replaced
        together or not at all.

Why: PressClub bodies end in the same press-office furniture in every article (contact blocks with
names and phone numbers, the "With its four brands ..." company paragraph, CO2/consumption lines
and disclaimers, press-site links). A small model fine-tuned on that learns to recite it, and
identical tails make unrelated articles look alike to the evaluation. Cleaning is an ordered list of
named rules (bmwlm/clean/rules.py), so the report can say what every rule removed. Articles are split
by article and by date: the newest ones (about 10%) are the validation set, so the evaluation asks
about news the model has not been trained on, and no validation article has a near-duplicate in
train. Bad input (damaged lines, records without id or date, other languages, one huge article, an
unfinished scrape, too little left to split) is counted or refused with a one-line message, never
passed on silently.
"""
from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from bmwlm.clean.dedup import SHINGLE_SIZE
from bmwlm.clean.language import UnknownLanguage, parse_languages
from bmwlm.clean.pipeline import DEFAULT_LANGUAGES, DEFAULT_MAX_CHARS, preprocess
from bmwlm.cards import CARD_NAME, dataset_facts, render_dataset_card
from bmwlm.clean.raw import IncompleteCollection, check_collection, read_articles, read_scrape_report
from bmwlm.clean.report import load_token_counter, summary_lines
from bmwlm.clean.rules import RULE_NAMES
from bmwlm.clean.split import SPLIT_METHODS, TooFewArticles
from bmwlm.config import ARTICLES_FILE, DEFAULT_MODEL, PROCESSED_DIR, SCRAPE
from bmwlm.io import (
    MissingInputError, json_text, jsonl_text, remove_stale_temp_files, require, setup_logging, write_together,
)

log = logging.getLogger("preprocess")

TRAIN_NAME = "train.jsonl"
VALIDATION_NAME = "validation.jsonl"
REPORT_NAME = "preprocess_report.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Clean the scraped PressClub articles (contact blocks, company boilerplate, CO2/consumption "
                    "lines, links, phone numbers), drop short, foreign-language and duplicate articles, and split "
                    "them by date into train and validation.",
    )
    p.add_argument("--in", dest="inp", type=Path, default=ARTICLES_FILE,
                   help="raw articles from 01_scrape.py (JSONL); its scrape_report.json is read from the same "
                        "folder (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=PROCESSED_DIR,
                   help=f"where {TRAIN_NAME}, {VALIDATION_NAME} and {REPORT_NAME} are written (default: %(default)s)")
    p.add_argument("--split", choices=SPLIT_METHODS, default="chronological",
                   help="chronological: the newest articles are validation; random: a seeded random choice "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed for --split random (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of articles in validation (default: %(default)s)")
    p.add_argument("--min-chars", type=int, default=400,
                   help="drop articles whose cleaned body is shorter than this many characters (default: %(default)s)")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                   help="truncate a cleaned body longer than this at a paragraph boundary, so no single article "
                        "dominates the corpus (default: %(default)s)")
    p.add_argument("--languages", nargs="+", default=list(DEFAULT_LANGUAGES), metavar="CODE",
                   help="keep articles in these languages (ISO 639 codes, e.g. en de), or 'all' to keep every "
                        f"language without detecting (default: {' '.join(DEFAULT_LANGUAGES)})")
    p.add_argument("--near-dup-threshold", type=float, default=0.8,
                   help=f"word {SHINGLE_SIZE}-gram Jaccard similarity at or above which two articles are "
                        "near-duplicates (default: %(default)s)")
    p.add_argument("--tokenizer", default=DEFAULT_MODEL,
                   help="tokenizer (model name or directory) for the token counts in the report; 'none' to skip "
                        "(default: %(default)s)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="clean the collection even if scrape_report.json says its last scrape did not finish")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    if not 0 < args.near_dup_threshold <= 1:
        p.error("--near-dup-threshold must be in (0, 1]")
    if args.min_chars < 0 or args.max_chars <= args.min_chars:
        p.error("--max-chars must be greater than --min-chars, and --min-chars not negative")
    try:
        args.languages = parse_languages(args.languages)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        inp = require(args.inp, SCRAPE)
        scrape = check_collection(inp, args.allow_incomplete)
        raw = read_articles(inp)
        log.info("read %d records from %s", raw.total, inp)
        count_tokens = load_token_counter(args.tokenizer)
        train, validation, report = preprocess(
            raw,
            min_chars=args.min_chars,
            max_chars=args.max_chars,
            near_dup_threshold=args.near_dup_threshold,
            val_fraction=args.val_fraction,
            split=args.split,
            seed=args.seed,
            languages=args.languages,
            count_tokens=count_tokens,
        )
    except (MissingInputError, IncompleteCollection, UnknownLanguage) as exc:
        raise SystemExit(f"error: {exc}") from None
    except TooFewArticles as exc:
        raise SystemExit(f"error: {exc}; nothing written") from None
    report["scrape"] = scrape
    report["settings"] = {
        "input": str(inp),
        "out_dir": str(args.out_dir),
        "split": args.split,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "min_chars": args.min_chars,
        "max_chars": args.max_chars,
        "languages": list(args.languages) if args.languages is not None else "all",
        "near_dup_threshold": args.near_dup_threshold,
        "shingle_words": SHINGLE_SIZE,
        "tokenizer": None if count_tokens is None else args.tokenizer,
        "allow_incomplete": args.allow_incomplete,
        "rules": list(RULE_NAMES),
    }
    report["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    out = args.out_dir
    remove_stale_temp_files(out, (TRAIN_NAME, VALIDATION_NAME, REPORT_NAME, CARD_NAME))
    card = render_dataset_card(dataset_facts(report, read_scrape_report(inp)))
    try:  # all four or none: a reader never sees new splits beside an old report or card
        write_together({
            out / TRAIN_NAME: jsonl_text(train),
            out / VALIDATION_NAME: jsonl_text(validation),
            out / REPORT_NAME: json_text(report),
            out / CARD_NAME: card,
        })
    except OSError as exc:
        raise SystemExit(f"error: could not write the outputs to {out}: {exc}") from None
    for line in summary_lines(report):
        log.info(line)
    log.info("wrote %s, %s and %s", out / TRAIN_NAME, out / VALIDATION_NAME, out / REPORT_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
