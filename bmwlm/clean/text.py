"""Text primitives of the cleaner: unicode normalisation, paragraphs, sentences, and the small
helpers that rules use to remove a span and tidy what is left."""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

from bmwlm.clean.patterns import URL_RE

# NFKC would turn these into "TM", "2", "3", "1⁄2": keep them as they are.
_NFKC_KEEP = "™²³¹½¼¾"
_NFKC_KEEP_RE = re.compile(f"([{_NFKC_KEEP}])")
_CHAR_MAP = str.maketrans(
    {
        "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'",
        "“": '"', "”": '"', "„": '"', "‟": '"', "″": '"', "«": '"', "»": '"',
        "‐": "-", "‑": "-", "‒": "-", "−": "-",  # hyphens and minus; en/em dashes stay
        "\u00ad": None, "\u200b": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None,
        "\u2028": "\n", "\u2029": "\n", "\r": "\n",
    }
)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalize_unicode(text: str) -> str:
    """NFKC (keeping ™ ² ³ and vulgar fractions), typographic quotes to ASCII, odd hyphens to "-",
    invisible characters dropped, non-breaking and other spaces to " ". Keeps € and – / —.
    Newlines are kept (they carry the paragraph structure); see `split_paragraphs`."""
    text = text.replace("\r\n", "\n")
    parts = _NFKC_KEEP_RE.split(text)
    text = "".join(p if p in _NFKC_KEEP else unicodedata.normalize("NFKC", p) for p in parts)
    text = text.translate(_CHAR_MAP)
    return _CONTROL_RE.sub("", text)


def split_paragraphs(text: str) -> list[str]:
    """One unit per non-empty line, whitespace inside collapsed to single spaces.

    Paragraphs arrive separated by blank lines; a single newline (a `<br>` in the page) also ends
    a unit, so a contact block delivered as one paragraph of lines is still seen line by line."""
    units = (re.sub(r"\s+", " ", line).strip() for line in text.split("\n"))
    return [u for u in units if u]


_ABBREVIATIONS = frozenset({
    "dr", "prof", "mr", "mrs", "ms", "st", "no", "nr", "approx", "ca", "incl", "vs", "inc", "ltd",
    "co", "jr", "sr", "int", "fig", "dept", "corp", "mt", "resp", "etc", "e.g", "i.e", "z.b", "bzw",
})
_SENT_END_RE = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9*+])")
_URL_THEN_CAPITAL_RE = re.compile(r"(?i:https?://|www\.)\S+\s+(?=[A-Z\"])")
_GLUED_SENTENCE_RE = re.compile(r"(?<=[a-z]{3}[.!?])(?=[A-Z][a-z])")  # "applications.Candidates can"


def split_sentences(paragraph: str) -> list[str]:
    """Split on . ! ? followed by space and a capital/digit (not after Dr., Prof., e.g. or initials),
    and after a link followed by a capitalised word ("... www.example.com Next sentence")."""
    ends = []
    for m in _SENT_END_RE.finditer(paragraph):
        last = paragraph[paragraph.rfind(" ", 0, m.start()) + 1:m.start()].lower().rstrip(".")
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        ends.append(m.end())
    ends += [m.end() for m in _URL_THEN_CAPITAL_RE.finditer(paragraph)]
    urls = [m.span() for m in URL_RE.finditer(paragraph)]
    ends += [m.end() for m in _GLUED_SENTENCE_RE.finditer(paragraph)
             if not any(a <= m.start() < b for a, b in urls)]
    sentences, start = [], 0
    for end in sorted(set(ends)):
        if end <= start:
            continue
        sentences.append(paragraph[start:end].strip())
        start = end
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


_TIDY_SUBS = (
    (re.compile(r"\(\s*[,;:]?\s*\)|\[\s*\]"), ""),  # brackets emptied by a rule
    (re.compile(r"\s+([,.;:!?])"), r"\1"),
    (re.compile(r"([,;:])(?:\s*[,;:])+"), r"\1"),
    (re.compile(r"^[\s,;:.]+(?=\w|\")"), ""),
    (re.compile(r"[\s,;:–—-]+$"), ""),
    (re.compile(r"\s{2,}"), " "),
)


def tidy(paragraph: str) -> str:
    """Clean up what removing a span leaves behind: empty brackets, space before punctuation,
    doubled separators, dangling separators at either end."""
    for pattern, repl in _TIDY_SUBS:
        paragraph = pattern.sub(repl, paragraph)
    return paragraph.strip()


def has_content(paragraph: str) -> bool:
    return bool(re.search(r"[^\W_]", paragraph))


def drop_sentences(paragraph: str, predicate: Callable[[str], bool]) -> tuple[str, int]:
    """Remove the sentences for which `predicate` is true; returns (paragraph, sentences removed)."""
    sentences = split_sentences(paragraph)
    kept = [s for s in sentences if not predicate(s)]
    if len(kept) == len(sentences):
        return paragraph, 0
    return " ".join(kept), len(sentences) - len(kept)


def map_paragraphs(paras: list[str], fn: Callable[[str], tuple[str, int]]) -> tuple[list[str], int]:
    """Apply a per-paragraph rule `fn(p) -> (p, matches)`; returns (paragraphs, total matches)."""
    out, total = [], 0
    for p in paras:
        new, n = fn(p)
        out.append(new)
        total += n
    return out, total


def sub_counting(pattern: re.Pattern, repl, paras: list[str]) -> tuple[list[str], int]:
    return map_paragraphs(paras, lambda p: pattern.subn(repl, p))


def balanced_groups(text: str, open_ch: str = "(", close_ch: str = ")") -> list[tuple[int, int]]:
    """Top-level bracket groups as (start, end) slices, nested groups included in their parent."""
    groups, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == open_ch:
            if depth == 0:
                start = i
            depth += 1
        elif ch == close_ch and depth:
            depth -= 1
            if depth == 0:
                groups.append((start, i + 1))
    return groups


def truncate_at_paragraph(body: str, max_chars: int) -> str:
    """`body` (paragraphs joined by a blank line) cut to at most `max_chars`: whole paragraphs while
    they fit; when not even the first one fits, that paragraph up to its last sentence end (or, in
    a text without one, its last space) within the limit."""
    if len(body) <= max_chars:
        return body
    cut = body.rfind("\n\n", 0, max_chars + 1)
    if cut > 0:
        return body[:cut]
    head = body[:max_chars + 1]
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if end > 0:
        return head[:end + 1]
    space = head.rfind(" ")
    return head[:space].rstrip() if space > 0 else body[:max_chars]
