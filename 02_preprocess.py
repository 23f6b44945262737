"""Stage 02: clean the scraped articles, drop short and duplicate ones, split train/validation.

Reads   data/raw/articles.jsonl (written by 01_scrape.py): one raw article a line, `text` holding the
        body as plain-text paragraphs separated by a blank line, nothing cleaned yet.
Writes  data/processed/train.jsonl and data/processed/validation.jsonl, one article a line:
        `id`, `published`, `title`, `text` (the title, a blank line, then the cleaned body paragraphs
        separated by blank lines), `category`, `topics`, `url`, `n_chars`;
        data/processed/preprocess_report.json: what every cleaning rule removed, which articles were
        dropped and why, per-split article/character/token counts and date ranges, the settings.

Why: PressClub bodies end in the same press-office furniture in every article (contact blocks with
names and phone numbers, the "With its four brands ..." company paragraph, CO2/consumption lines
and disclaimers, press-site links). A small model fine-tuned on that learns to recite it, and
identical tails make unrelated articles look alike to the evaluation. Cleaning is a list of named
rules, each a small function, so the report can say what every rule removed. Articles are split
by article and by date: the newest ones (about 10%) are the validation set, so the evaluation asks
about news the model has not been trained on, and no validation article has a near-duplicate in
train.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import random
import re
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

from bmwlm.config import ARTICLES_FILE, DEFAULT_MODEL, PROCESSED_DIR, PRODUCED_BY
from bmwlm.io import MissingInputError, read_jsonl, require, setup_logging, write_json, write_jsonl

log = logging.getLogger("preprocess")

TRAIN_NAME = "train.jsonl"
VALIDATION_NAME = "validation.jsonl"
REPORT_NAME = "preprocess_report.json"
SHINGLE_SIZE = 5
DEDUP_POLICY = (
    "within a group of exact or near duplicates keep the article with the longest cleaned body; "
    "ties go to the newest, then the larger id"
)

# --------------------------------------------------------------------------------------------
# Unicode and whitespace
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Patterns shared by several rules
# --------------------------------------------------------------------------------------------

URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"]+[^\s<>\".,;:!?)\]]", re.I)
BARE_DOMAIN_RE = re.compile(
    r"\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|de|net|org|eu|info|co\.uk|be|nl|at|ch)\b(?:/\S*)?", re.I
)
PRESS_DOMAIN_RE = re.compile(r"press\.bmw|pressclub|mediapool\.bmwgroup|bmwgroup-?classic-downloads", re.I)
EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# International numbers (+49 89 382-12345, +49-(0)176-601-51240, +27 71 666 2472) and labelled
# national ones (Tel. 089 382-12345). At least 8 digits and never followed by %, so "+2.4%" is safe.
_PHONE_CANDIDATE_RE = re.compile(
    r"\+\s?\d[\d\s./()-]{6,}\d(?!\s*%)"
    r"|(?<=:)\s*\(?0[\d\s./()-]{6,}\d"
    r"|\b(?:Tel(?:ephone|efon)?|Phone|Mobile?|Mobil|Cell(?:\s*phone)?|Fax)\.?\s*:?\s*\(?0[\d\s./()-]{6,}\d",
    re.I,
)


def find_phone_numbers(text: str) -> list[str]:
    return [m.group(0) for m in _PHONE_CANDIDATE_RE.finditer(text) if sum(c.isdigit() for c in m.group(0)) >= 8]


# Consumption figures: a number with a consumption unit, or the unit alone (table labels "(l/100 km)").
_NUM = r"\d[\d.,]*(?:\s*(?:[-–]|to|bis)\s*\d[\d.,]*)?"
CONSUMPTION_UNIT_RE = re.compile(
    r"(?:\b(?:l|ltr|litres?|liters?|kWh|kg\s*H2|g)\s*/\s*(?:100\s*)?(?:km|mi(?:les)?)\b"
    r"|\b\d[\d.,]*\s*mpg\b)",
    re.I,
)
CONSUMPTION_FIGURE_RE = re.compile(
    rf"{_NUM}\s*(?:l|ltr|litres?|liters?|kWh|kg\s*H2|g)\s*/\s*(?:100\s*)?(?:km|mi(?:les)?)\b|{_NUM}\s*mpg\b",
    re.I,
)
CO2_CLASS_RE = re.compile(r"\bCO2[\s-]*(?:class(?:es|ification)?|Klassen?)(?:\(\w+\))?\b", re.I)
GERMAN_CONSUMPTION_RE = re.compile(
    r"\bEnergieverbrauch\b|\bCO2[\s-]*Emissionen\b|\bStromverbrauch\b|\bKraftstoffverbrauch\b", re.I
)
ENVKV_RE = re.compile(r"\bEnVKV\b", re.I)
# "energy consumption combined: 16,8 kWh/100 km", "CO2 emissions combined: 0 g/km", "CO2 class: A",
# "electric range: 679 km (WLTP)" — a label, a colon, a value.
CONSUMPTION_LABEL_RE = re.compile(
    r"\b(?:consumption|emissions?|emissioned|combined|weighted|kombiniert|Energieverbrauch|Emissionen|"
    r"(?:electric\s+)?range|Reichweite|CO2[\s-]*(?:class(?:es|ification)?|Klassen?)(?:\(\w+\))?)\b"
    r"[^:;]{0,60}:\s*[\d(\[A-G]",
    re.I,
)


def has_consumption_signal(text: str) -> bool:
    return bool(
        CONSUMPTION_UNIT_RE.search(text) or CO2_CLASS_RE.search(text)
        or GERMAN_CONSUMPTION_RE.search(text) or ENVKV_RE.search(text)
    )


# --------------------------------------------------------------------------------------------
# Small text helpers shared by the rules
# --------------------------------------------------------------------------------------------

_ABBREVIATIONS = {
    "dr", "prof", "mr", "mrs", "ms", "st", "no", "nr", "approx", "ca", "incl", "vs", "inc", "ltd",
    "co", "jr", "sr", "int", "fig", "dept", "corp", "mt", "resp", "etc", "e.g", "i.e", "z.b", "bzw",
}
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


_TIDY_SUBS = [
    (re.compile(r"\(\s*[,;:]?\s*\)|\[\s*\]"), ""),  # brackets emptied by a rule
    (re.compile(r"\s+([,.;:!?])"), r"\1"),
    (re.compile(r"([,;:])(?:\s*[,;:])+"), r"\1"),
    (re.compile(r"^[\s,;:.]+(?=\w|\")"), ""),
    (re.compile(r"[\s,;:–—-]+$"), ""),
    (re.compile(r"\s{2,}"), " "),
]


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


# --------------------------------------------------------------------------------------------
# The cleaning rules. Each takes the article's paragraphs and returns (paragraphs, matches);
# `clean_text` runs them in the order below and measures what each one removed.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    apply: Callable[[list[str]], tuple[list[str], int]]


RULES: list[Rule] = []


def rule(name: str, description: str):
    def register(fn):
        RULES.append(Rule(name, description, fn))
        return fn
    return register


def _map_paragraphs(paras: list[str], fn: Callable[[str], tuple[str, int]]) -> tuple[list[str], int]:
    out, total = [], 0
    for p in paras:
        new, n = fn(p)
        out.append(new)
        total += n
    return out, total


def _sub_counting(pattern: re.Pattern, repl, paras: list[str]) -> tuple[list[str], int]:
    return _map_paragraphs(paras, lambda p: pattern.subn(repl, p))


# --- separators ---------------------------------------------------------------------------


@rule("separator_lines", "lines with no letter or digit (rules of underscores, stray asterisks, bullets)")
def remove_separator_lines(paras):
    kept = [p for p in paras if has_content(p)]
    return kept, len(paras) - len(kept)


# --- page furniture ------------------------------------------------------------------------

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


@rule("page_furniture", '"Article Media Material.", "Downloads.", "This article in other PressClubs" '
      "(and the list of PressClubs after it), download buttons, PDF page headers, \"Check against delivery\"")
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


@rule("media_ids", "PressClub image/media ids such as P90123456 (with file suffixes)")
def remove_media_ids(paras):
    return _sub_counting(MEDIA_ID_RE, "", paras)


# --- contact blocks ------------------------------------------------------------------------

_CONTACT_VERB = r"(?:please\s+)?(?:contact|get in touch with|call|reach|write to|wenden Sie sich(?: bitte)? an)"
# "In case of queries, please contact:", "If you have any questions, please contact:",
# "In the event of enquiries please contact:", "For further information please contact",
# "For media inquiries, please contact:", "Bei Rückfragen wenden Sie sich bitte an:" ...
_STRONG_MARKER = (
    r"(?:in\s+case\s+of|in\s+the\s+event\s+of|if\s+you\s+have\s+any|should\s+you\s+have\s+any|"
    r"for|with|bei)\s+(?:any\s+|further\s+|more\s+|additional\s+|(?:press|media)\s+)*"
    r"(?:queries|questions|enquiries|inquiries|information|details|rückfragen|fragen)\b"
    rf"[^.:\n]{{0,60}}?\b{_CONTACT_VERB}\b\s*:?"
    r"|(?:press|media)\s+(?:contacts?|enquiries|inquiries|queries)\s*:"
    r"|(?:pressekontakt|ansprechpartner(?:in|innen)?)\s*:"
    r"|(?:bitte\s+)?wenden\s+Sie\s+sich\s+(?:bitte\s+)?(?:bei\s+(?:Rückfragen|Fragen)\s+)?an\s*:"
)
# A line that *is* a marker, even without "please contact": "Press contact", "Contacts:",
# "In case of queries:", "Media enquiries", "Kontakt".
_MARKER_LINE_RE = re.compile(
    rf"^(?:{_STRONG_MARKER})"
    r"|^(?:(?:your\s+)?(?:press|media)\s+)?(?:contacts?|enquiries|inquiries)"
    r"(?:\s+(?:for|at)\s+(?:the\s+)?(?:press|media))?\s*:?$"
    r"|^(?:pressekontakt|kontakt|ansprechpartner(?:in|innen)?)\s*:?$"
    r"|^(?:in\s+case\s+of|in\s+the\s+event\s+of|if\s+you\s+have\s+any)\s+(?:further\s+)?"
    r"(?:queries|questions|enquiries|inquiries)\s*:?$"
    r"|^(?:press|media)\s+contacts?\b",
    re.I,
)
_INLINE_MARKER_RE = re.compile(rf"(?:(?<=[.!?\"')])\s+)(?:{_STRONG_MARKER})", re.I)
_DETAIL_LABEL_RE = re.compile(
    r"^(?:Tel(?:ephone|efon)?|Phone|Mobile?|Mobil|Cell(?:\s*phone)?|Fax|E-?mail|Mail|Internet|"
    r"(?:Media\s+|Press\s+)?Web(?:site)?|Homepage|Online|Instagram|Facebook|LinkedIn|YouTube|X|Twitter|TikTok)"
    r"\s*\.?\s*:",
    re.I,
)
_ORG_LINE_RE = re.compile(
    r"^(?:(?:BMW\s+Group|BMW\s+AG|BMW\s+Motorrad|BMW\s+M\s+GmbH|BMW|MINI|Rolls-Royce(?:\s+Motor\s+Cars)?)[\s,]+)?"
    r"(?:Corporate\s+Communications?|Unternehmenskommunikation|Presse-?\s+und\s+Öffentlichkeitsarbeit|"
    r"Press\s+(?:and|&)\s+Public\s+Relations|Pressestelle|Press\s+Office|Media\s+Relations|Communications)$",
    re.I,
)
_ROLE_RE = re.compile(
    r"\b(?:Head|Spokes(?:man|woman|person)|Press|Communications?|Kommunikation|Manager|Director|Officer|"
    r"Leiter(?:in)?|(?:Presse)?[Ss]precher(?:in)?|Referent(?:in)?|(?:Vice\s+)?President|Assistant|"
    r"Coordinator|Specialist|Team\s?[Ll]ead(?:er)?|Teamlead|Member of the Board|Public Relations|"
    r"Media Relations|Consultant|Advisor|Representative)\b",
    re.I,
)
_NAME_LINE_RE = re.compile(
    r"^(?:(?:Dr|Prof|Mr|Mrs|Ms)\.?\s+)*[A-ZÄÖÜ][\w'.-]*"
    r"(?:\s+(?:(?:von|van|der|den|de|di|da|du|zu|la|le|del)\s+)*(?:(?:Dr|Prof)\.?\s+)?[A-ZÄÖÜ][\w'.-]*){1,4}$"
)


def _is_short_line(p: str, limit: int = 160) -> bool:
    """Short, no sentence inside (a full stop followed by a word, except after Dr./Prof.)."""
    if len(p) > limit or p.endswith((":", "?")) or p.startswith("+++"):
        return False
    stripped = re.sub(r"\b(?:Dr|Prof|Mr|Mrs|Ms|St)\.\s", "", p)
    return not re.search(r"[.!?]\s+\S", stripped)


def _is_url_only(p: str) -> bool:
    return bool(URL_RE.search(p)) and not has_content(URL_RE.sub("", p))


def _is_bare_contact_line(p: str) -> bool:
    """A phone number or e-mail address with a few words around it ("Contact desk: Tel. +44 ..."),
    not a sentence that happens to contain one."""
    numbers = find_phone_numbers(p)
    if not numbers and not EMAIL_RE.search(p):
        return False
    rest = EMAIL_RE.sub(" ", p)
    for number in numbers:
        rest = rest.replace(number, " ")
    return len(re.findall(r"[^\W\d_]+", rest)) <= 6 and not p.rstrip().endswith(":")


def _contact_kind(p: str) -> str:
    """marker | detail | org | role | name | other."""
    if _MARKER_LINE_RE.match(p) and len(p) <= 300:
        return "marker"
    if len(p) <= 200 and (
        _DETAIL_LABEL_RE.match(p) or (_is_url_only(p) and PRESS_DOMAIN_RE.search(p)) or _is_bare_contact_line(p)
    ):
        return "detail"
    if not _is_short_line(p):
        return "other"
    if _ORG_LINE_RE.match(p):
        return "org"
    if _ROLE_RE.search(p):
        return "role"
    if _NAME_LINE_RE.match(p):
        return "name"
    return "other"


_BLOCK_KINDS = {"marker", "detail", "org", "role"}


@rule("contact_block", 'press contact blocks: a marker ("In case of queries, please contact:", "If you have any '
      'questions, please contact:", "In the event of enquiries", "For further information please contact", '
      '"Press contact", ...) or a stand-alone "Corporate Communications" / phone / e-mail / "Internet:" line, '
      "plus the names, roles, phone numbers, e-mail and web addresses around it; stops at the first line "
      "that reads like text")
def remove_contact_blocks(paras):
    kinds = [_contact_kind(p) for p in paras]
    n = len(paras)
    drop = [False] * n
    out_text = list(paras)
    matches = 0

    def continues(j: int) -> bool:
        if kinds[j] in _BLOCK_KINDS:
            return True
        # a bare name ("Dr Jane Example") only inside a block: the next line must be contact-like too
        return kinds[j] == "name" and j + 1 < n and kinds[j + 1] in _BLOCK_KINDS

    i = 0
    while i < n:
        start = None
        if kinds[i] in ("marker", "detail", "org"):
            start = i
        else:
            m = _INLINE_MARKER_RE.search(paras[i])
            if m:  # "... at the plant." In the event of enquiries please contact: ..."
                out_text[i] = paras[i][:m.start()].rstrip()
                matches += 1
                j = i + 1
                while j < n and continues(j):
                    drop[j] = True
                    j += 1
                i = j
                continue
        if start is None:
            i += 1
            continue
        matches += 1
        lo = start
        if kinds[start] in ("detail", "org"):
            # the person's name and role usually come just before their phone number
            while lo - 1 >= 0 and not drop[lo - 1] and kinds[lo - 1] in ("role", "name", "org") and start - lo < 6:
                if kinds[lo - 1] == "name" and kinds[lo] not in _BLOCK_KINDS:
                    break
                lo -= 1
        j = start + 1
        while j < n and continues(j):
            j += 1
        for k in range(lo, j):
            drop[k] = True
        i = j
    kept = [t for t, d in zip(out_text, drop) if not d]
    return kept, matches


_SIGNATURE = r"(?:BMW\s+(?:Group|Motorrad|AG)|MINI|Rolls-Royce\s+Motor\s+Cars)\s+Corporate\s+Communications"
_SIGNATURE_START_RE = re.compile(rf"^{_SIGNATURE}\s+(?=[A-Z\"])")
_SIGNATURE_END_RE = re.compile(rf"(?<=[.!?\"'])\s+{_SIGNATURE}\.?$")


@rule("comms_signature", '"BMW Group Corporate Communications" glued to the start or end of a text paragraph')
def remove_comms_signature(paras):
    def one(p):
        p, a = _SIGNATURE_START_RE.subn("", p)
        p, b = _SIGNATURE_END_RE.subn("", p)
        return p, a + b
    return _map_paragraphs(paras, one)


# --- the company paragraphs ----------------------------------------------------------------

_S_END = r"\.(?=\s|$)"  # a full stop that ends a sentence (not the one in "2.45")
_S_END_DE = r"(?<!Mio)(?<!Mrd)(?<!\d)\.(?=\s|$)"  # German: not "2,45 Mio. Automobile", "31. Dezember"
COMPANY_SPAN_RES = [
    # "The BMW Group" heading + "With its four brands ..., the BMW Group is the world's leading premium
    # manufacturer ..." + "The BMW Group production network ..."
    re.compile(
        r"(?:\bThe BMW Group:?\s+)?\bWith its (?:\w+ )?brands\b,?[^.]{0,120}?\bthe BMW Group is (?:the|one of the)"
        rf" world's leading (?:premium )?(?:manufacturer|provider)s?\b.*?{_S_END}"
        rf"(?:\s*The BMW Group(?:'s)? production network\b.*?{_S_END})?"
    ),
    re.compile(
        r"(?:(?<=^)|(?<=[.!?]\s))The BMW Group is the world's leading (?:premium )?manufacturer of automobiles and"
        rf" motor(?:cycles|bikes)\b.*?{_S_END}(?:\s*The BMW Group(?:'s)? production network\b.*?{_S_END})?"
    ),
    # "In <year>, the BMW Group sold ... motorcycles worldwide. The profit before tax ... the BMW Group
    # had a workforce of ... employees."
    re.compile(
        r"\bIn (?:the (?:financial )?year )?\d{4},? the BMW Group sold\b.*?\bmotor(?:cycles|bikes)(?: worldwide)?"
        rf"{_S_END}\s*The profit before tax\b.*?{_S_END}(?:\s*[^.]{{0,60}}\bworkforce of\b.*?{_S_END})?"
    ),
    # "The (economic) success of the BMW Group ... long-term thinking and responsible action", and the
    # sentence on sustainability after it
    re.compile(
        r"\bThe (?:economic )?success of the BMW Group (?:has always been|has been|is) (?:based|built|founded) on"
        rf" long-term thinking and responsible action\b.*?{_S_END}"
        rf"(?:\s*(?=[^.]*?(?:[Ss]ustainab|supply chain))(?:Sustainability|The company)\b.*?{_S_END})?"
    ),
    # The same three paragraphs as the German pages word them.
    re.compile(
        r"\bDie BMW Group ist mit ihren (?:\w+ )?Marken\b[^.]{0,120}?\bweltweit führende\b.*?"
        rf"{_S_END_DE}(?:\s*Das (?:BMW Group[- ])?Produktionsnetzwerk\b.*?{_S_END_DE})?"
    ),
    re.compile(
        rf"\bIm Jahr \d{{4}},? (?:erzielte|verkaufte) die BMW Group\b.*?{_S_END_DE}\s*Das Ergebnis vor Steuern\b.*?"
        rf"{_S_END_DE}(?:\s*(?:Zum|Ende|Am)\b[^\n]{{0,120}}?\bMitarbeiter(?:innen)?(?: und Mitarbeiter)?\.)?"
    ),
    re.compile(
        r"\bSeit jeher sind langfristiges Denken und verantwortungsvolles Handeln\b[^.]{0,80}?\bBMW Group"
        rf"{_S_END}(?:\s*Nachhaltigkeit\b.*?{_S_END})?"
    ),
]
_COMPANY_HEADING_RE = re.compile(r"^(?:About )?(?:the |die )?BMW Group\s*[:.]?$", re.I)


@rule("company_boilerplate", 'the company paragraphs: "The BMW Group" heading, "With its four brands ... the BMW '
      'Group is the world\'s leading premium manufacturer ...", the sales/profit/workforce paragraph and '
      '"The (economic) success of the BMW Group ... long-term thinking and responsible action ..."')
def remove_company_boilerplate(paras):
    out, matches = [], 0
    for p in paras:
        if _COMPANY_HEADING_RE.match(p):
            matches += 1
            continue
        if "BMW Group" in p:
            for pattern in COMPANY_SPAN_RES:
                p, n = pattern.subn(" ", p)
                matches += n
        out.append(p.strip())
    return out, matches


# --- consumption / CO2 ---------------------------------------------------------------------

_CO2_SUMMARY_RE = re.compile(r"^\W{0,3}CO2[\s-]*Emissions?\s*(?:&|and)\s*Consumption\b", re.I)
_CO2_INFO_START_RE = re.compile(
    r"^CO2[\s-]*emission(?:s)?\s+information\b|\bThe following applies to (?:the )?consumption figures\b"
    r"|^(?:CO2-Emissionsangaben|Verbrauchs- und Emissionsangaben)\b",
    re.I,
)
_CO2_INFO_CONT_RE = re.compile(
    r"consumption|CO2|emission|WLTP|NEDC|EnVKV|type approval|dat\.de|DAT\b|Leitfaden|guideline|"
    r"Verbrauch|Typgenehmigung",
    re.I,
)


@rule("co2_summary", '"CO2 Emissions & Consumption: ..." lines (the page\'s co2_summary box) and the long '
      '"CO2 emission information. The following applies to consumption figures ..." disclaimer')
def remove_co2_summary(paras):
    out, matches, in_info = [], 0, False
    for p in paras:
        if _CO2_SUMMARY_RE.match(p):
            matches += 1
            in_info = False
            continue
        if _CO2_INFO_START_RE.match(p) or (_CO2_INFO_START_RE.search(p) and has_consumption_signal(p)):
            matches += 1
            in_info = True
            continue
        if in_info and _CO2_INFO_CONT_RE.search(p) and len(p) < 1500:
            continue
        in_info = False
        out.append(p)
    return out, matches


_CONSUMPTION_HEADING_RE = re.compile(
    r"^\**\s*(?:(?:fuel|energy|power|electricity|electric power)\s+)?consumption(?:\s*(?:and|/|&)\s*"
    r"(?:CO2[\s-]*)?emissions?)?\s+(?:data|figures|information|values)\b.{0,60}$"
    r"|^\**\s*(?:(?:fuel|energy|power|electricity|electric power)\s+)?consumption\s*/\s*emissions?\s+"
    r"(?:data|figures)\b.{0,60}$"
    r"|^\**\s*(?:Verbrauchs-?\s*und\s+Emissions(?:werte|angaben)|Verbrauchswerte)\b.{0,60}$",
    re.I,
)
_CONSUMPTION_TABLE_LABEL_RE = re.compile(
    r"^(?:(?:fuel|energy|power|electricity|electric power)\s+consumption|CO2[\s-]*emissions?|CO2[\s-]*class(?:es)?"
    r"|electric range)\b.{0,60}$",
    re.I,
)


@rule("consumption_heading", 'headings and table labels of consumption data: "*Consumption/emission data:", '
      '"Fuel consumption and CO2 emission figures:", "Power consumption WLTP (kWh/100 km)"')
def remove_consumption_headings(paras):
    out, matches = [], 0
    for p in paras:
        if _CONSUMPTION_HEADING_RE.match(p) or (
            _CONSUMPTION_TABLE_LABEL_RE.match(p)
            and (has_consumption_signal(p) or re.search(r"\b(?:WLTP|NEDC)\b", p))
        ):
            matches += 1
            continue
        out.append(p)
    return out, matches


def _balanced_groups(text: str, open_ch: str = "(", close_ch: str = ")") -> list[tuple[int, int]]:
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


def _is_consumption_group(group: str) -> bool:
    return bool(
        CONSUMPTION_FIGURE_RE.search(group) or CO2_CLASS_RE.search(group) or GERMAN_CONSUMPTION_RE.search(group)
    )


def strip_consumption_parentheticals(p: str) -> tuple[str, int]:
    """"the new BMW iX9 (power consumption combined: 18.2 kWh/100 km; CO2 class: A) arrives" -> "the new
    BMW iX9 arrives"; nested brackets inside the group go with it."""
    groups = [g for g in _balanced_groups(p) if _is_consumption_group(p[g[0]:g[1]])]
    for start, end in reversed(groups):
        p = p[:start].rstrip() + p[end:]
    return p, len(groups)


def _segments(sentence: str) -> list[str]:
    return [s for s in re.split(r"(?<=;)\s*", sentence) if s.strip()]


def _is_labelled_consumption(segment: str) -> bool:
    return bool(
        (CONSUMPTION_LABEL_RE.search(segment) and has_consumption_signal(segment))
        or CO2_CLASS_RE.search(segment) or GERMAN_CONSUMPTION_RE.search(segment)
    )


def _drop_labelled_segments(p: str) -> tuple[str, int]:
    kept_sentences, removed = [], 0
    for sentence in split_sentences(p):
        segments = _segments(sentence)
        kept = [s for s in segments if not _is_labelled_consumption(s)]
        removed += len(segments) - len(kept)
        if kept:
            kept_sentences.append(" ".join(kept))
    return " ".join(kept_sentences), removed


@rule("consumption_data", "consumption/CO2 data lines in English and German (\"BMW iX1 eDrive20: energy consumption "
      "combined: ... kWh/100 km (WLTP); CO2 emissions combined: 0 g/km; CO2 class: A\", \"Energieverbrauch "
      "kombiniert ...\"): the whole paragraph when little else is left, otherwise the labelled figures and the "
      "bracketed figures inside a sentence")
def remove_consumption_data(paras):
    out, matches = [], 0
    for p in paras:
        if not has_consumption_signal(p):
            out.append(p)
            continue
        residue, n_groups = strip_consumption_parentheticals(p)
        residue, n_segments = _drop_labelled_segments(residue)
        if n_groups + n_segments == 0:
            out.append(p)
            continue
        matches += n_groups + n_segments
        residue = tidy(residue)
        if len(re.findall(r"[^\W\d_]{2,}", residue)) < 8 or len(residue) < 0.25 * len(p):
            continue  # a data line with a model name or two left: drop it all
        out.append(residue)
    return out, matches


@rule("consumption_sentence", "prose sentences that still quote a consumption figure (\"a consumption of just 15.1 "
      "kWh/100 km (WLTP) demonstrate ...\"): dropped whole so no grammar is broken; costs a little real text")
def remove_consumption_sentences(paras):
    def one(p):
        if not CONSUMPTION_UNIT_RE.search(p):
            return p, 0
        return drop_sentences(p, lambda s: bool(CONSUMPTION_UNIT_RE.search(s)))
    return _map_paragraphs(paras, one)


_DISCLAIMER_SENTENCE_RES = [
    re.compile(r"\b(?:Passenger Car|Pkw-?)\s*Energy\s+(?:Consumption\s+)?Label(?:l)?ing\b|\bEnVKV\b", re.I),
    re.compile(r"\b(?:consumption|emission)s?\b.{0,160}\b(?:refer|relate|correspond|apply|are for|are based)\b"
               r".{0,120}\b(?:German|Germany)\b", re.I),
    re.compile(r"\b(?:German|Germany)\b.{0,60}\bmarket\b.{0,120}\b(?:consumption|emission)", re.I),
    re.compile(r"\b(?:consumption|emission)s?\b[^.]{0,120}\b(?:is|are)\s+not\s+(?:yet\s+)?available\b", re.I),
    re.compile(r"\b(?:consumption|emissions?)\b.{0,80}\b(?:measured|determined|calculated)\s+(?:in\s+accordance\s+"
               r"with|according\s+to)\b.{0,80}\b(?:WLTP|NEDC|Regulation|procedure|type approval)\b", re.I),
    re.compile(r"\b(?:figures|values|data)\b.{0,40}\brefer to\b.{0,80}\b(?:basic configuration|German|Germany)\b",
               re.I),
    re.compile(r"\bofficial\b.{0,60}\b(?:fuel consumption|CO2 emissions)\b.{0,200}\b(?:handbook|guideline|"
               r"Leitfaden)\b", re.I),
    re.compile(r"\b(?:figures|data|information)\b.{0,160}\b(?:consumption|emissions?)\b.{0,160}\bprovisional\b", re.I),
    re.compile(r"^\W*All\b.{0,160}\b(?:consumption|emission)s?\b.{0,80}\b(?:relate|refer|correspond|apply)\b", re.I),
    re.compile(r"\bNEDC[-\s]equivalent\b|\bnew type approval\b", re.I),
]


_DISCLAIMER_HINT_RE = re.compile(r"consumption|emission|EnVKV|Label(?:l)?ing|NEDC|type approval", re.I)


def is_disclaimer_sentence(sentence: str) -> bool:
    return any(r.search(sentence) for r in _DISCLAIMER_SENTENCE_RES)


@rule("consumption_disclaimer", 'consumption/emission disclaimers: "All model variants ... refer to the German '
      'market", "... German Passenger Car Energy Labelling Regulation (EnVKV)", "consumption data ... is not '
      'available", "... are provisional" (the paragraph when it is mostly disclaimer, else the sentence)')
def remove_consumption_disclaimers(paras):
    out, matches = [], 0
    for p in paras:
        if not _DISCLAIMER_HINT_RE.search(p):
            out.append(p)
            continue
        sentences = split_sentences(p)
        flagged = [s for s in sentences if is_disclaimer_sentence(s)]
        if not flagged:
            out.append(p)
            continue
        matches += len(flagged)
        if sum(map(len, flagged)) >= 0.5 * len(p):
            continue
        out.append(" ".join(s for s in sentences if s not in flagged))
    return out, matches


_FOOTNOTE_RE = re.compile(r"(?<=[\w)\]\"'.])\*+(?:\s*,\s*\*+)*|^\*+\s*|(?<=[.!?:] )\*+\s*(?=[A-Z])")


@rule("footnote_asterisks",
      'asterisks pointing at consumption footnotes: "BMW iX3*" -> "BMW iX3", "BMW X5 xDrive50e**"')
def remove_footnote_asterisks(paras):
    return _sub_counting(_FOOTNOTE_RE, "", paras)


# --- social media, links, e-mail, phone ----------------------------------------------------

_SOCIAL_NETWORK = r"(?:Instagram|Facebook|LinkedIn|YouTube|TikTok|Twitter|Threads|Pinterest|WeChat|Weibo|X)"
_SOCIAL_LINE_RE = re.compile(rf"^(?:{_SOCIAL_NETWORK}\s*:\s*\S+\s*)+$", re.I)
_SOCIAL_SENTENCE_RE = re.compile(
    rf"\b(?i:follow(?:ed|s)?|find us|join us|subscribe)\b.{{0,200}}\b{_SOCIAL_NETWORK}\b"
    rf"|\b{_SOCIAL_NETWORK}\b.{{0,40}}(?:at|:)\s*(?<![\w.])@\w+"
    rf"|\b(?i:more information|further information|find out more|updates)\b.{{0,100}}\b{_SOCIAL_NETWORK}"
    r" (?:account|channel|page)\b"
    r"|\b(?i:information|details|updates)\b.{0,100}\b(?:via|at|on)\s+(?<![\w.])@\w+",
)


@rule("social_media", 'social-media follow lines: "... can be followed on Instagram at @handle", "Instagram: @handle", '
      '"Facebook: www.facebook.com/..."')
def remove_social_media(paras):
    out, matches = [], 0
    for p in paras:
        if _SOCIAL_LINE_RE.match(p):
            matches += 1
            continue
        if not re.search(rf"@|\b{_SOCIAL_NETWORK}\b", p):
            out.append(p)
            continue
        p, n = drop_sentences(p, lambda s: bool(_SOCIAL_SENTENCE_RE.search(s)))
        matches += n
        out.append(p)
    return out, matches


# A sentence whose job is to send the reader to a link. Strong: says nothing else. Weak: may carry
# a fact too ("... reviewed by TÜV and is now available online at: URL"), so it goes only when short.
_STRONG_POINTER_RE = re.compile(
    r"\b(?:for (?:more|further|additional) (?:information|details)|further (?:information|details)|"
    r"more (?:information|details)|all (?:details|results?)|find out more|(?:can|may) be (?:found|downloaded)|"
    r"you (?:will|can|may) find|please (?:visit|see|refer|find|go)|visit\s*:|see\s*:|go to\s*:|"
    r"press (?:material|photos?|kit)|media guide|(?:at|via) the following link|weitere informationen)",
    re.I,
)
_WEAK_POINTER_RE = re.compile(
    r"\b(?:visit(?:ing)?|see the|(?:available|accessible|bookable) (?:at|on|via|under|online|here|from)|"
    r"website|web ?page|webcast|live ?stream(?:ing|ed)?|streamed|link\b|tickets?\b|registration|register|"
    r"can be (?:watched|viewed|requested|purchased|booked|made))",
    re.I,
)
_DANGLING_POINTER_RE = re.compile(
    r"(?:\bhere|\bbelow|\bwebsite)\s*[.:!]?$|\b(?:at|on|under|via)\s*:$|^Here you can (?:see|watch|find|download)\b"
    r"|^(?:Further|More|Additional) (?:information|details)\b[^.]{0,80}:$",
    re.I,
)


_LINK_HINT_RE = re.compile(
    r"https?://|www\.|\.(?:com|de|net|org|eu|info|uk|be|nl|at|ch)\b|\bhere\b|\bbelow\b|website|:$", re.I
)


def is_link_pointer(sentence: str) -> bool:
    """A sentence that only points to a web page (with the link, or with the link lost: "... here.")."""
    has_url = bool(URL_RE.search(sentence))
    if has_url and (_STRONG_POINTER_RE.search(sentence) or PRESS_DOMAIN_RE.search(sentence)):
        return True
    if has_url and _WEAK_POINTER_RE.search(sentence):
        return len(URL_RE.sub("", sentence)) < 120
    if BARE_DOMAIN_RE.search(sentence) and _STRONG_POINTER_RE.search(sentence):
        return True
    if not _DANGLING_POINTER_RE.search(sentence) or re.search(r"[\"“”]", sentence):
        return False
    if _STRONG_POINTER_RE.search(sentence) or re.search(r"^Here\b|\bclick(?:ing)? here\b", sentence, re.I):
        return True
    return bool(_WEAK_POINTER_RE.search(sentence)) and len(sentence) < 100 and not sentence.endswith("website.")


@rule("link_pointer", 'sentences that only point to a web page: "For more information, please visit: https://...", '
      '"You will find press material ... at www.press.bmwgroup.com", "Further information ... can be found here." '
      '(link lost in the text), and lines that are a label plus a link ("Link Deep Dive: https://...")')
def remove_link_pointers(paras):
    out, matches = [], 0
    for p in paras:
        # "(www.example.com/tickets)", "(the opening hours can be found here: www.example.com)"
        for start, end in reversed(_balanced_groups(p)):
            group = p[start + 1:end - 1]
            if URL_RE.search(group) and (not has_content(URL_RE.sub("", group)) or is_link_pointer(group)):
                p = p[:start].rstrip() + p[end:]
                matches += 1
        if URL_RE.search(p):
            rest = tidy(URL_RE.sub("", p))
            if not has_content(rest) or (len(rest) <= 60 and (rest.endswith(":") or len(rest.split()) <= 4)):
                matches += 1
                continue  # "https://...", "Link Deep Dive Design: https://...", "English: ... German: ..."
        if not _LINK_HINT_RE.search(p):
            out.append(p)
            continue
        p, n = drop_sentences(p, is_link_pointer)
        matches += n
        out.append(p)
    return out, matches


def _replace_url(m: re.Match) -> str:
    url = m.group(0)
    if PRESS_DOMAIN_RE.search(url):
        return ""
    host = re.sub(r"^(?:https?://)?(?:www\.)?", "", url, flags=re.I).split("/")[0]
    return host


@rule("urls", "links left inside sentences: press-site links removed, other links shortened to the bare host "
      '("(https://lifestyle.example.com/shop)" -> "(lifestyle.example.com)") so the sentence still reads')
def remove_urls(paras):
    return _sub_counting(URL_RE, _replace_url, paras)


@rule("email_addresses", "sentences giving an e-mail address (they only tell the reader whom to write to)")
def remove_emails(paras):
    return _map_paragraphs(
        paras, lambda p: drop_sentences(p, lambda s: bool(EMAIL_RE.search(s))) if "@" in p else (p, 0)
    )


@rule("phone_numbers",
      "sentences giving a phone number (+49 ..., other international formats, labelled national numbers)")
def remove_phone_numbers(paras):
    return _map_paragraphs(
        paras, lambda p: drop_sentences(p, lambda s: bool(find_phone_numbers(s))) if find_phone_numbers(p) else (p, 0)
    )


# --------------------------------------------------------------------------------------------
# Cleaning an article
# --------------------------------------------------------------------------------------------

RULE_NAMES = [r.name for r in RULES]


def _apply_rule(r: Rule, paras: list[str]) -> tuple[list[str], dict]:
    before_chars, before_n = sum(map(len, paras)), len(paras)
    new, matches = r.apply(list(paras))
    if new != paras:
        old = set(paras)
        new = [p if p in old else tidy(p) for p in new]
        new = [p for p in new if has_content(p)]
    stat = {
        "matches": matches,
        "paragraphs": before_n - len(new),
        "chars": before_chars - sum(map(len, new)),
    }
    return new, stat


def clean_text(text: str, title: str | None = None) -> tuple[str, dict]:
    """Normalise and clean one raw article body; returns (cleaned body, stats).

    The body comes back as paragraphs joined by a blank line. `stats` holds the characters and
    paragraphs in and out and, per rule, {"matches", "paragraphs", "chars"} removed. If the body
    starts with the title again, that line is dropped too."""
    normalized = normalize_unicode(text or "")
    paras = split_paragraphs(normalized)
    stats = {
        "chars_in": len(text or ""),
        "paragraphs_in": len(paras),
        "rules": {},
    }
    for r in RULES:
        paras, stats["rules"][r.name] = _apply_rule(r, paras)
    if title and paras and paras[0].casefold() == normalize_title(title).casefold():
        paras = paras[1:]
    cleaned = "\n\n".join(paras)
    stats["chars_out"] = len(cleaned)
    stats["paragraphs_out"] = len(paras)
    return cleaned, stats


def normalize_title(title: str) -> str:
    """The title as it goes into the record: normalised, one line, no footnote asterisks."""
    return _FOOTNOTE_RE.sub("", re.sub(r"\s+", " ", normalize_unicode(title or ""))).strip()


def build_record(raw: dict, body: str) -> dict:
    """A processed record: the title as the first line of `text`, then a blank line, then the body."""
    title = normalize_title(raw.get("title", ""))
    text = f"{title}\n\n{body}" if title else body
    return {
        "id": raw["id"],
        "published": raw.get("published", ""),
        "title": title,
        "text": text,
        "category": raw.get("category", "") or "",
        "topics": list(raw.get("topics") or []),
        "url": raw.get("url", "") or "",
        "n_chars": len(text),
    }


def body_of(record: dict) -> str:
    """The cleaned body of a processed record (its text without the title line)."""
    text = record["text"]
    if record.get("title") and text.startswith(record["title"]):
        return text[len(record["title"]):].lstrip("\n")
    return text


# --------------------------------------------------------------------------------------------
# Duplicates
# --------------------------------------------------------------------------------------------


def text_hash(text: str) -> str:
    return hashlib.sha1(re.sub(r"\s+", " ", text).strip().casefold().encode("utf-8")).hexdigest()


def shingles(text: str, k: int = SHINGLE_SIZE) -> frozenset[int]:
    """Word k-grams of the lower-cased text, each stored as its hash (the whole text if it has
    fewer than k words). Hashes keep memory and set operations small; a collision between two
    different 5-grams is negligible at 64 bits."""
    words = re.findall(r"\w+", text.casefold())
    if len(words) < k:
        return frozenset([hash(tuple(words))]) if words else frozenset()
    return frozenset(map(hash, zip(*(words[i:] for i in range(k)))))


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


# --------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------


def parse_published(value: str) -> datetime:
    """ISO 8601 (with offset, or "Z") as an aware datetime; unparseable -> the distant past."""
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _n_validation(n: int, val_fraction: float) -> int:
    if n < 2 or val_fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * val_fraction)))


def split_articles(
    records: Sequence[dict], val_fraction: float = 0.1, method: str = "chronological", seed: int = 42
) -> tuple[list[dict], list[dict]]:
    """Split whole articles into (train, validation), each sorted by date.

    chronological: the newest round(n * val_fraction) articles (by `published`, ties by id) are
    validation. random: a seeded shuffle picks them. At least one article on each side when n >= 2."""
    by_date = sorted(records, key=lambda r: (parse_published(r.get("published", "")), r["id"]))
    n_val = _n_validation(len(by_date), val_fraction)
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


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


def load_token_counter(name: str | None) -> Callable[[list[str]], int] | None:
    """A function that counts tokens in a list of texts, or None for `--tokenizer none`."""
    if not name or str(name).lower() == "none":
        return None
    from bmwlm.modeling import load_tokenizer  # imported here: transformers is slow to import

    tokenizer = load_tokenizer(name)

    def count(texts: list[str]) -> int:
        total = 0
        for i in range(0, len(texts), 64):
            enc = tokenizer(texts[i:i + 64], add_special_tokens=False, verbose=False)
            total += sum(len(ids) for ids in enc["input_ids"])
        return total

    return count


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _empty_rule_totals() -> dict:
    return {r.name: {"description": r.description, "articles": 0, "matches": 0, "paragraphs": 0, "chars": 0}
            for r in RULES}


def _split_summary(records: list[dict], count_tokens) -> dict:
    dates = sorted((parse_published(r["published"]), r["published"]) for r in records)
    return {
        "articles": len(records),
        "chars": sum(r["n_chars"] for r in records),
        "tokens": count_tokens([r["text"] for r in records]) if count_tokens and records else None,
        "published_min": dates[0][1] if dates else None,
        "published_max": dates[-1][1] if dates else None,
    }


def preprocess(
    raw_records: Iterable[dict],
    *,
    min_chars: int = 400,
    near_dup_threshold: float = 0.8,
    val_fraction: float = 0.1,
    split: str = "chronological",
    seed: int = 42,
    count_tokens: Callable[[list[str]], int] | None = None,
    progress: bool = True,
) -> tuple[list[dict], list[dict], dict]:
    """Clean, filter, deduplicate and split; returns (train, validation, report)."""
    from tqdm import tqdm

    timings = {}
    t0 = time.perf_counter()
    raw_records = list(raw_records)
    seen, records, duplicate_ids = set(), [], []
    for r in raw_records:
        if r.get("id") in seen or not r.get("id"):
            duplicate_ids.append(r.get("id"))
            continue
        seen.add(r["id"])
        records.append(r)

    rule_totals = _empty_rule_totals()
    chars_in = chars_out = 0
    cleaned: list[dict] = []
    too_short: list[dict] = []
    for raw in tqdm(records, desc="cleaning", unit="article", disable=not progress):
        body, stats = clean_text(raw.get("text", ""), title=raw.get("title"))
        chars_in += stats["chars_in"]
        chars_out += stats["chars_out"]
        for name, s in stats["rules"].items():
            t = rule_totals[name]
            if s["matches"] or s["chars"]:
                t["articles"] += 1
            t["matches"] += s["matches"]
            t["paragraphs"] += s["paragraphs"]
            t["chars"] += s["chars"]
        if len(body) < min_chars:
            too_short.append({"id": raw["id"], "chars": len(body)})
            continue
        cleaned.append(build_record(raw, body))
    timings["clean_s"] = round(time.perf_counter() - t0, 3)

    # Duplicates: best first = longest body, then newest, then id; the first of a group is kept.
    t1 = time.perf_counter()
    ranked = sorted(
        cleaned,
        key=lambda r: (len(body_of(r)), parse_published(r["published"]), r["id"]),
        reverse=True,
    )
    first_by_hash: dict[str, str] = {}
    exact, unique = [], []
    for r in ranked:
        h = text_hash(body_of(r))
        if h in first_by_hash:
            exact.append({"id": r["id"], "duplicate_of": first_by_hash[h]})
            continue
        first_by_hash[h] = r["id"]
        unique.append(r)
    near = find_near_duplicates([(r["id"], body_of(r)) for r in unique], near_dup_threshold)
    near_list = [{"id": i, "duplicate_of": k, "jaccard": j} for i, (k, j) in near.items()]
    kept = [r for r in unique if r["id"] not in near]
    timings["dedup_s"] = round(time.perf_counter() - t1, 3)

    train, validation = split_articles(kept, val_fraction, split, seed)

    # Checks: no id on both sides, no validation article with a near-duplicate in train.
    t2 = time.perf_counter()
    overlap_ids = sorted({r["id"] for r in train} & {r["id"] for r in validation})
    leaks = cross_near_duplicates(
        [(r["id"], body_of(r)) for r in validation], [(r["id"], body_of(r)) for r in train], near_dup_threshold
    )
    cross_dups = [{"validation_id": q, "train_id": c, "jaccard": j} for q, c, j in leaks]
    timings["checks_s"] = round(time.perf_counter() - t2, 3)
    if overlap_ids or cross_dups:
        raise AssertionError(f"split leak: ids in both splits {overlap_ids}, near-duplicates {cross_dups}")

    t3 = time.perf_counter()
    splits = {"train": _split_summary(train, count_tokens), "validation": _split_summary(validation, count_tokens)}
    timings["tokens_s"] = round(time.perf_counter() - t3, 3)
    timings["total_s"] = round(time.perf_counter() - t0, 3)

    report = {
        "articles": {
            "in": len(raw_records),
            "unique_ids": len(records),
            "out": len(train) + len(validation),
            "train": len(train),
            "validation": len(validation),
        },
        "dropped": {
            "duplicate_id": {"count": len(duplicate_ids), "ids": duplicate_ids},
            "too_short": {"count": len(too_short), "min_chars": min_chars, "articles": too_short},
            "exact_duplicate": {"count": len(exact), "pairs": exact},
            "near_duplicate": {"count": len(near_list), "threshold": near_dup_threshold, "pairs": near_list},
            "dedup_policy": DEDUP_POLICY,
        },
        "cleaning": {
            "chars_in": chars_in,
            "chars_out": chars_out,
            "percent_chars_removed": round(100 * (chars_in - chars_out) / chars_in, 2) if chars_in else 0.0,
            "note": "chars_in counts the raw text, chars_out the cleaned bodies (before length and duplicate "
                    "filters); per rule: articles touched, matches (lines, spans or sentences), whole paragraphs "
                    "and characters removed",
            "rules": rule_totals,
        },
        "splits": splits,
        "checks": {
            "ids_in_both_splits": overlap_ids,
            "validation_near_duplicates_in_train": cross_dups,
        },
        "timings": timings,
    }
    return train, validation, report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Clean the scraped PressClub articles (contact blocks, company boilerplate, CO2/consumption "
                    "lines, links, phone numbers), drop short and duplicate articles, and split them by date "
                    "into train and validation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--in", dest="inp", type=Path, default=ARTICLES_FILE,
                   help="raw articles from 01_scrape.py (JSONL)")
    p.add_argument("--out-dir", type=Path, default=PROCESSED_DIR,
                   help=f"where {TRAIN_NAME}, {VALIDATION_NAME} and {REPORT_NAME} are written")
    p.add_argument("--split", choices=("chronological", "random"), default="chronological",
                   help="chronological: the newest articles are validation; random: a seeded random choice")
    p.add_argument("--seed", type=int, default=42, help="seed for --split random")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of articles in validation")
    p.add_argument("--min-chars", type=int, default=400,
                   help="drop articles whose cleaned body is shorter than this many characters")
    p.add_argument("--near-dup-threshold", type=float, default=0.8,
                   help=f"word {SHINGLE_SIZE}-gram Jaccard similarity at or above which two articles are "
                        "near-duplicates")
    p.add_argument("--tokenizer", default=DEFAULT_MODEL,
                   help="tokenizer (model name or directory) for the token counts in the report; 'none' to skip")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must be in [0, 1)")
    if not 0 < args.near_dup_threshold <= 1:
        p.error("--near-dup-threshold must be in (0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        inp = require(args.inp, PRODUCED_BY.get(ARTICLES_FILE, "01_scrape.py"))
    except MissingInputError as exc:
        raise SystemExit(f"error: {exc}") from None

    raw = read_jsonl(inp)
    log.info("read %d articles from %s", len(raw), inp)
    count_tokens = load_token_counter(args.tokenizer)
    train, validation, report = preprocess(
        raw,
        min_chars=args.min_chars,
        near_dup_threshold=args.near_dup_threshold,
        val_fraction=args.val_fraction,
        split=args.split,
        seed=args.seed,
        count_tokens=count_tokens,
    )
    report["settings"] = {
        "input": str(inp),
        "out_dir": str(args.out_dir),
        "split": args.split,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "min_chars": args.min_chars,
        "near_dup_threshold": args.near_dup_threshold,
        "shingle_words": SHINGLE_SIZE,
        "tokenizer": None if count_tokens is None else args.tokenizer,
        "rules": RULE_NAMES,
    }
    report["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    out = args.out_dir
    write_jsonl(out / TRAIN_NAME, train)
    write_jsonl(out / VALIDATION_NAME, validation)
    write_json(out / REPORT_NAME, report)

    a, c, d, s = report["articles"], report["cleaning"], report["dropped"], report["splits"]
    busiest = sorted(c["rules"].items(), key=lambda kv: -kv[1]["chars"])[:5]
    log.info("cleaning removed %.1f%% of characters; biggest rules: %s", c["percent_chars_removed"],
             ", ".join(f"{k} {v['chars']} chars in {v['articles']} articles" for k, v in busiest))
    log.info("dropped %d too short (< %d chars), %d exact and %d near duplicates (Jaccard >= %.2f)",
             d["too_short"]["count"], args.min_chars, d["exact_duplicate"]["count"],
             d["near_duplicate"]["count"], args.near_dup_threshold)
    for name in ("train", "validation"):
        tok = f", {s[name]['tokens']} tokens" if s[name]["tokens"] is not None else ""
        log.info("%s: %d articles, %d chars%s, %s .. %s", name, s[name]["articles"], s[name]["chars"], tok,
                 s[name]["published_min"], s[name]["published_max"])
    log.info("kept %d of %d articles; wrote %s, %s, %s in %.1f s", a["out"], a["in"], out / TRAIN_NAME,
             out / VALIDATION_NAME, out / REPORT_NAME, report["timings"]["total_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
