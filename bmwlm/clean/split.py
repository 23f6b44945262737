"""Split whole articles into train and validation, and prove the split does not leak.

Chronological by default: the newest articles are validation, so the evaluation asks about news the
model was not trained on (press releases come in clusters; a random held-out article usually has
siblings in train). A split needs at least one article on each side."""
from __future__ import annotations

import random
from typing import Sequence

from bmwlm.clean.dedup import cross_near_duplicates
from bmwlm.clean.records import body_of, parse_published

SPLIT_METHODS = ("chronological", "random")


class TooFewArticles(ValueError):
    """Too few articles are left for a train and a validation split."""


class SplitLeak(AssertionError):
    """An article is in both splits, or a validation article has a near-duplicate in train."""


def n_validation(n: int, val_fraction: float) -> int:
    """round(n * val_fraction) articles, but at least one and never all of them (n >= 2)."""
    if n < 2 or val_fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * val_fraction)))


def require_enough(n: int, val_fraction: float) -> None:
    """Raise TooFewArticles unless `n` articles give a non-empty train split and, when
    `val_fraction` > 0, a non-empty validation split."""
    needed = 2 if val_fraction > 0 else 1
    if n < needed:
        what = "a train and a validation split need" if needed == 2 else "a train split needs"
        raise TooFewArticles(f"{n} article{'' if n == 1 else 's'} left after cleaning; {what} at least {needed}")


def split_articles(
    records: Sequence[dict], val_fraction: float = 0.1, method: str = "chronological", seed: int = 42
) -> tuple[list[dict], list[dict]]:
    """Split whole articles into (train, validation), each sorted by date.

    chronological: the newest round(n * val_fraction) articles (by `published`, ties by id) are
    validation. random: a seeded shuffle picks them. At least one article on each side when n >= 2."""
    by_date = sorted(records, key=lambda r: (parse_published(r["published"]), r["id"]))
    n_val = n_validation(len(by_date), val_fraction)
    if method == "chronological":
        val_ids = {r["id"] for r in by_date[len(by_date) - n_val:]} if n_val else set()
    elif method == "random":
        ids = sorted(r["id"] for r in by_date)
        random.Random(seed).shuffle(ids)
        val_ids = set(ids[:n_val])
    else:
        raise ValueError(f"unknown split method {method!r}")
    train = [r for r in by_date if r["id"] not in val_ids]
    validation = [r for r in by_date if r["id"] in val_ids]
    return train, validation


def check_split(train: Sequence[dict], validation: Sequence[dict], threshold: float) -> dict:
    """No id in both splits and no validation article with a near-duplicate (Jaccard >= threshold)
    in train; returns the (empty) findings for the report, raises SplitLeak otherwise."""
    overlap_ids = sorted({r["id"] for r in train} & {r["id"] for r in validation})
    leaks = cross_near_duplicates(
        [(r["id"], body_of(r)) for r in validation], [(r["id"], body_of(r)) for r in train], threshold
    )
    cross_dups = [{"validation_id": q, "train_id": c, "jaccard": j} for q, c, j in leaks]
    if overlap_ids or cross_dups:
        raise SplitLeak(f"split leak: ids in both splits {overlap_ids}, near-duplicates {cross_dups}")
    return {"ids_in_both_splits": overlap_ids, "validation_near_duplicates_in_train": cross_dups}
