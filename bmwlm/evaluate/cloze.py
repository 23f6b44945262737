"""The automatic cloze set: fill-in-the-gap questions built from the validation articles.

Hand-written questions age and a fresh scrape brings new articles, so a second multiple-choice set
is generated from whatever the validation split holds: in a sentence a number, year, percentage or
name is hidden and must be told apart from three values of the same kind taken from other articles.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

from bmwlm.evaluate.qa import LETTERS, ChoiceItem

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“‘(]?[A-Z0-9])")
PERCENT = re.compile(r"\b\d+(?:[.,]\d+)?(?:\s?%|\s(?:percent|per cent))")
YEAR = re.compile(r"\b(?:19[0-9]{2}|20[0-4][0-9])\b")
NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+(?:\.\d+)?\b|\b\d+\.\d+\b|\b\d{2,}\b")
NAME = re.compile(r"\b[A-Z][a-zà-öø-ÿ]+(?:[ -][A-Z][a-zà-öø-ÿ]+){1,2}\b")
SPAN_PATTERNS = {"percent": PERCENT, "year": YEAR, "number": NUMBER, "name": NAME}
_NAME_STOPWORDS = {
    "The", "This", "That", "These", "Those", "In", "On", "At", "For", "With", "From", "By", "As", "And",
    "But", "Or", "It", "Its", "Our", "We", "He", "She", "They", "His", "Her", "Their", "After", "Since",
    "During", "When", "While", "Both", "All", "New", "Today", "Also", "Last", "Next", "First",
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
}
# Title-case words that mark a role, a unit or a generic phrase rather than a person, place or team.
_NAME_GENERIC = {
    "President", "Vice", "Director", "Head", "Manager", "Board", "Council", "Center", "Centre", "Award",
    "Awards", "Lead", "Project", "Chairman", "Officer", "Member", "Edition", "Collection", "Best",
    "Executive", "Producer", "Competence", "Control", "Performance", "Stories", "Capsule", "Audiences",
    "Plant", "Group", "Department", "Division", "Management", "Sales", "Marketing", "Development",
    "Production", "Press", "Release", "Media", "Information", "Communications", "Consumption",
}
MIN_PREFIX_CHARS = 25


def document_text(article: dict) -> str:
    """The text a model is trained and scored on: the processed article's `text`."""
    return article.get("text") or ""


def split_sentences(text: str) -> list[str]:
    """Sentences of a text (paragraphs on newlines, sentences on . ! ? followed by a capital)."""
    out = []
    for para in re.split(r"\n+", text):
        para = para.strip()
        if para:
            out.extend(s.strip() for s in _SENTENCE_END.split(para) if s.strip())
    return out


def _free(spans: list[tuple[int, int, str]], s: int, e: int) -> bool:
    return all(e <= a or s >= b for a, b, _ in spans)


def find_spans(sentence: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every hideable span: percent, year, number, name (no overlaps)."""
    spans: list[tuple[int, int, str]] = []
    for pattern, kind in ((PERCENT, "percent"), (YEAR, "year"), (NUMBER, "number")):
        for m in pattern.finditer(sentence):
            if _free(spans, m.start(), m.end()):
                spans.append((m.start(), m.end(), kind))
    for m in NAME.finditer(sentence):
        start, text = m.start(), m.group()
        # Drop a leading word that only is capitalised because it starts the sentence ("Artist Julie
        # Mehretu" -> "Julie Mehretu") or is a function word ("In Munich").
        while text and (start == 0 or text.split(" ")[0] in _NAME_STOPWORDS) and " " in text:
            cut = text.index(" ") + 1
            start, text = start + cut, text[cut:]
        words = re.split(r"[ -]", text)
        if (start > 0 and len(words) >= 2 and not any(w in _NAME_STOPWORDS or w in _NAME_GENERIC for w in words)
                and _free(spans, start, start + len(text))):
            spans.append((start, start + len(text), "name"))
    return sorted(spans)


def _shape(span: str, kind: str) -> tuple:
    """A finer type so distractors look alike: digit count and separators, or the number of words."""
    if kind in ("number", "percent"):
        digits = sum(c.isdigit() for c in span)
        return kind, "," in span, "." in span, min(digits, 7)
    if kind == "name":
        return kind, len(re.split(r"[ -]", span))
    return (kind,)


def _candidates(articles: Sequence[dict],
                rng: random.Random) -> tuple[dict[str, dict[str, set[str]]], list[list[dict]]]:
    """Every hideable span by kind (span -> article ids), and per article (in id order) one gap per
    usable sentence."""
    arts = sorted((a for a in articles if document_text(a)), key=lambda a: str(a.get("id")))
    pool: dict[str, dict[str, set[str]]] = {}  # kind -> span -> article ids
    candidates: dict[str, list[dict]] = {}
    for art in arts:
        aid, title = str(art.get("id")), (art.get("title") or "").strip()
        for sentence in split_sentences(document_text(art)):
            if sentence == title or not 8 <= len(sentence.split()) <= 60:
                continue
            spans = find_spans(sentence)
            for s, e, kind in spans:
                pool.setdefault(kind, {}).setdefault(sentence[s:e], set()).add(aid)
            usable = []
            for s, e, kind in spans:
                span, prefix = sentence[s:e], sentence[:s].rstrip()
                if s < MIN_PREFIX_CHARS or sentence[s - 1] != " ":
                    continue
                if span.casefold() in (title + " " + prefix).casefold():
                    continue
                usable.append({"source_id": aid, "title": title, "sentence": sentence, "prefix": prefix,
                               "span": span, "kind": kind})
            if usable:
                candidates.setdefault(aid, []).append(rng.choice(usable))
    return pool, [candidates[aid] for aid in sorted(candidates)]


def build_cloze_items(articles: Sequence[dict], n: int, seed: int = 0, max_per_article: int = 3) -> list[ChoiceItem]:
    """Fill-in-the-gap items from articles, deterministic for a given seed.

    In a sentence a span (a year, a number, a percentage or a capitalised multi-word name) is hidden;
    the prompt is the article title plus the sentence up to the gap, the options are the true span
    and 3 distractors of the same kind (same shape where possible) from *other* articles. The span
    must follow a space (so " {option}" continues the prompt naturally) and must not already appear
    in the prompt (no copying). Answer positions cycle A, B, C, D, so they are balanced.
    """
    rng = random.Random(seed)
    pool, per_article = _candidates(articles, rng)
    chosen: list[dict] = []
    for cands in per_article:
        chosen.extend(rng.sample(cands, min(max_per_article, len(cands))))
    rng.shuffle(chosen)

    items: list[ChoiceItem] = []
    for cand in chosen:
        if len(items) >= n:
            break
        kind, span = cand["kind"], cand["span"]
        others = sorted(
            s for s, ids in pool.get(kind, {}).items()
            if ids - {cand["source_id"]} and s.casefold() != span.casefold()
            and s.casefold() not in cand["sentence"].casefold()
        )
        same_shape = [s for s in others if _shape(s, kind) == _shape(span, kind)]
        pick_from = same_shape if len(same_shape) >= 3 else others
        distinct = list(dict.fromkeys(pick_from))
        if len(distinct) < 3:
            continue
        distractors = rng.sample(distinct, 3)
        pos = len(items) % len(LETTERS)
        items.append(ChoiceItem(
            id=f"cloze-{len(items) + 1:03d}",
            question=cand["prefix"],
            prompt=f"{cand['title']}\n\n{cand['prefix']}" if cand["title"] else cand["prefix"],
            options=distractors[:pos] + [span] + distractors[pos:],
            answer=LETTERS[pos],
            source_id=cand["source_id"],
            split="validation",
            span_type=kind,
            sentence=cand["sentence"],
        ))
    return items
