"""Duplicates: the same id more than once, the same cleaned body (a hash), and near duplicates (word
5-gram Jaccard similarity, computed exactly over an inverted shingle index: a few thousand articles
need no MinHash).

In every case the copy with the longest cleaned body is kept."""
from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from typing import Sequence

from bmwlm.clean.records import body_of, parse_published

SHINGLE_SIZE = 5
DEDUP_POLICY = (
    "within a group of exact or near duplicates keep the article with the longest cleaned body; "
    "ties go to the newest, then the larger id"
)


def one_per_id(items: Sequence[tuple]) -> tuple[list[tuple], dict]:
    """One copy per id. `items` are (raw record, cleaned body, ...) in file order; the copy with the
    longest cleaned body is kept (the first of equals), in file order. Returns (kept, report): every
    extra copy counted, and among them the conflicts, copies whose cleaned body differs from the
    kept one (a feed's truncated body beside the detail page's, an article edited between fetches)."""
    best: dict[str, int] = {}
    for i, (raw, body, *_) in enumerate(items):
        j = best.get(raw["id"])
        if j is None or len(body) > len(items[j][1]):
            best[raw["id"]] = i
    kept = set(best.values())
    extra, conflicts = [], []
    for i, (raw, body, *_) in enumerate(items):
        if i in kept:
            continue
        kept_body = items[best[raw["id"]]][1]
        extra.append(raw["id"])
        if body != kept_body:
            conflicts.append({"id": raw["id"], "kept_chars": len(kept_body), "dropped_chars": len(body)})
    report = {"count": len(extra), "ids": extra, "conflicting": {"count": len(conflicts), "articles": conflicts}}
    return [items[i] for i in sorted(kept)], report


def text_hash(text: str) -> str:
    return hashlib.sha1(re.sub(r"\s+", " ", text).strip().casefold().encode("utf-8")).hexdigest()


def shingles(text: str, k: int = SHINGLE_SIZE) -> frozenset[int]:
    """Word k-grams of the lower-cased text, each stored as a 64-bit hash (the whole text if it has
    fewer than k words). Hashes keep memory and set operations small; a collision between two
    different 5-grams is negligible at 64 bits. The hash is stable across processes (Python's own
    `hash` of strings is salted per process), so a re-run finds exactly the same duplicates."""
    words = re.findall(r"\w+", text.casefold())
    if len(words) < k:
        return frozenset([_stable_hash(words)]) if words else frozenset()
    return frozenset(map(_stable_hash, zip(*(words[i:] for i in range(k)))))


def _stable_hash(words) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(words).encode("utf-8"), digest_size=8).digest(), "big")


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class ShingleIndex:
    """Finds, for a document, the indexed documents with Jaccard >= threshold, exactly but fast.

    Shingles found in more than max(20, n/50) of the n documents are "common" ("of the bmw
    group") and are not indexed: their posting lists would make the search quadratic. For a
    candidate sharing u uncommon shingles, |A & B| <= u + min(common(A), common(B)) and
    J <= |A & B| / max(|A|, |B|), so candidates that cannot reach the threshold are skipped before
    the exact Jaccard is computed. Two documents sharing no uncommon shingle at all reach the
    threshold only if common shingles make up >= threshold of each ("mostly common"); those are
    compared with each other directly."""

    def __init__(self, all_sets: Sequence[frozenset], threshold: float):
        df = Counter(sh for s in all_sets for sh in s)
        self.cap = max(20, len(all_sets) // 50)
        self.df = df
        self.threshold = threshold
        self.sets: dict[int, frozenset] = {}
        self.n_common: dict[int, int] = {}
        self.postings: dict[int, list[int]] = defaultdict(list)
        self.mostly_common: list[int] = []

    def _split(self, s: frozenset) -> tuple[list[int], int]:
        uncommon = [sh for sh in s if self.df[sh] <= self.cap]
        return uncommon, len(s) - len(uncommon)

    def add(self, key: int, s: frozenset) -> None:
        uncommon, n_common = self._split(s)
        self.sets[key], self.n_common[key] = s, n_common
        for sh in uncommon:
            self.postings[sh].append(key)
        if s and n_common >= self.threshold * len(s):
            self.mostly_common.append(key)

    def best_match(self, s: frozenset) -> tuple[int | None, float]:
        """The indexed document most similar to `s` among those that can reach the threshold."""
        uncommon, n_common = self._split(s)
        shared = Counter(j for sh in uncommon for j in self.postings.get(sh, ()))
        if s and n_common >= self.threshold * len(s):
            for j in self.mostly_common:
                shared.setdefault(j, 0)
        best_j, best_sim = None, 0.0
        for j, u in shared.items():
            other = self.sets[j]
            bound = (u + min(n_common, self.n_common[j])) / max(len(s), len(other))
            if bound < self.threshold or bound < best_sim:
                continue
            sim = jaccard(s, other)
            if sim > best_sim or (sim == best_sim and best_j is not None and j < best_j):
                best_j, best_sim = j, sim
        return best_j, best_sim


def find_near_duplicates(
    docs: Sequence[tuple[str, str]], threshold: float, k: int = SHINGLE_SIZE
) -> dict[str, tuple[str, float]]:
    """Greedy near-duplicate removal by exact word-shingle Jaccard.

    `docs` is (id, text) in order of preference (best first). A document is dropped when its
    Jaccard similarity with an already kept one is >= threshold (see `ShingleIndex`).
    Returns {dropped_id: (kept_id, jaccard)}."""
    sets = [shingles(text, k) for _, text in docs]
    index = ShingleIndex(sets, threshold)
    dropped: dict[str, tuple[str, float]] = {}
    for i, (doc_id, _) in enumerate(docs):
        j, sim = index.best_match(sets[i])
        if j is not None and sim >= threshold:
            dropped[doc_id] = (docs[j][0], round(sim, 4))
        else:
            index.add(i, sets[i])
    return dropped


def cross_near_duplicates(
    queries: Sequence[tuple[str, str]], corpus: Sequence[tuple[str, str]], threshold: float,
    k: int = SHINGLE_SIZE,
) -> list[tuple[str, str, float]]:
    """Every query document with a near-duplicate (Jaccard >= threshold) in the corpus:
    [(query_id, corpus_id, jaccard)]. Used to prove that no validation article leaks into train."""
    corpus_sets = [shingles(text, k) for _, text in corpus]
    query_sets = [shingles(text, k) for _, text in queries]
    index = ShingleIndex(corpus_sets + query_sets, threshold)
    for j, s in enumerate(corpus_sets):
        index.add(j, s)
    leaks = []
    for (qid, _), s in zip(queries, query_sets):
        j, sim = index.best_match(s)
        if j is not None and sim >= threshold:
            leaks.append((qid, corpus[j][0], round(sim, 4)))
    return leaks


def deduplicate(records: Sequence[dict], threshold: float) -> tuple[list[dict], list[dict], list[dict]]:
    """Drop exact, then near duplicates among processed records (see `DEDUP_POLICY`).

    Returns (kept, exact pairs {"id", "duplicate_of"}, near pairs {"id", "duplicate_of", "jaccard"});
    `kept` is in order of preference, best first."""
    ranked = sorted(records, key=lambda r: (len(body_of(r)), parse_published(r["published"]), r["id"]), reverse=True)
    first_by_hash: dict[str, str] = {}
    exact, unique = [], []
    for r in ranked:
        h = text_hash(body_of(r))
        if h in first_by_hash:
            exact.append({"id": r["id"], "duplicate_of": first_by_hash[h]})
            continue
        first_by_hash[h] = r["id"]
        unique.append(r)
    near = find_near_duplicates([(r["id"], body_of(r)) for r in unique], threshold)
    near_pairs = [{"id": i, "duplicate_of": k, "jaccard": j} for i, (k, j) in near.items()]
    return [r for r in unique if r["id"] not in near], exact, near_pairs
