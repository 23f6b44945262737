"""Cleaning rules for page furniture: separator lines, "Article Media Material." / "Downloads." lines,
the "This article in other PressClubs" list, PDF page headers, "Check against delivery", media ids.

Each rule takes an article's paragraphs and returns (paragraphs, matches); `bmwlm.clean.rules`
lists them, in the order they run."""
from __future__ import annotations

import re

from bmwlm.clean.text import has_content, sub_counting


def remove_separator_lines(paras):
    kept = [p for p in paras if has_content(p)]
    return kept, len(paras) - len(kept)


_FURNITURE_LINE_RE = re.compile(
    r"^(?:Article\s+(?:Media\s+Material|Offline\s+Attachments|Attachments|Links)|Media\s+Material|"
    r"Downloads?|Show entire text|Show less|Read more|Back to (?:overview|top)|Print(?: article)?)\s*\.?$"
    r"|^(?:Download|Zip|PDF|JPG|JPEG|MP4)\b.{0,60}\(\d[\d.,]*\s*[KMG]B\)\.?$",
    re.I,
)
_OTHER_PRESSCLUBS_RE = re.compile(r"^This article in other PressClubs\b", re.I)
_PDF_HEADER_RE = re.compile(
    r"\s*Media information\s+Date\s+.{0,40}?\s+Topic\s+.{0,200}?\s+Page\s+\d+"
    r"(?:\s+(?:BMW (?:Group|Motorrad|AG)|MINI|Rolls-Royce Motor Cars)\s+Corporate Communications)?\s*",
    re.I,
)
_CHECK_DELIVERY_RE = re.compile(r"[-–]?\s*Check against (?:the )?delivery\s*[-–!.]*\s*", re.I)
MEDIA_ID_RE = re.compile(r"\(?\bP9\d{7}(?:[-_][\w.-]*)?\b\)?")


def remove_page_furniture(paras):
    out, matches, skipping = [], 0, False
    for p in paras:
        if _OTHER_PRESSCLUBS_RE.match(p):
            skipping, matches = True, matches + 1
            continue
        if skipping and len(p) <= 60 and not re.search(r"[.!?]\s", p):
            continue  # the PressClub names listed under the heading
        skipping = False
        if _FURNITURE_LINE_RE.match(p):
            matches += 1
            continue
        p, n1 = _PDF_HEADER_RE.subn(" ", p)
        p, n2 = _CHECK_DELIVERY_RE.subn("", p)
        out.append(p.strip())
        matches += n1 + n2
    return out, matches


def remove_media_ids(paras):
    return sub_counting(MEDIA_ID_RE, "", paras)
