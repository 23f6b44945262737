"""Cleaning rules for consumption and CO2 data, in English and German: the co2_summary line, the long
"CO2 emission information" disclaimer, headings and table labels of consumption data, labelled and
bracketed figures, prose sentences quoting a figure, disclaimers about the German market or the
test procedure, and the asterisks on model names that point at them.

Each rule takes an article's paragraphs and returns (paragraphs, matches); `bmwlm.clean.rules`
lists them, in the order they run."""
from __future__ import annotations

import re

from bmwlm.clean.text import balanced_groups, drop_sentences, map_paragraphs, split_sentences, sub_counting, tidy

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


def _is_consumption_group(group: str) -> bool:
    return bool(
        CONSUMPTION_FIGURE_RE.search(group) or CO2_CLASS_RE.search(group) or GERMAN_CONSUMPTION_RE.search(group)
    )


def strip_consumption_parentheticals(p: str) -> tuple[str, int]:
    """"the new BMW iX9 (power consumption combined: 18.2 kWh/100 km; CO2 class: A) arrives" -> "the new
    BMW iX9 arrives"; nested brackets inside the group go with it."""
    groups = [g for g in balanced_groups(p) if _is_consumption_group(p[g[0]:g[1]])]
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


def remove_consumption_sentences(paras):
    def one(p):
        if not CONSUMPTION_UNIT_RE.search(p):
            return p, 0
        return drop_sentences(p, lambda s: bool(CONSUMPTION_UNIT_RE.search(s)))
    return map_paragraphs(paras, one)


_DISCLAIMER_SENTENCE_RES = (
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
)


_DISCLAIMER_HINT_RE = re.compile(r"consumption|emission|EnVKV|Label(?:l)?ing|NEDC|type approval", re.I)


def is_disclaimer_sentence(sentence: str) -> bool:
    return any(r.search(sentence) for r in _DISCLAIMER_SENTENCE_RES)


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


FOOTNOTE_RE = re.compile(r"(?<=[\w)\]\"'.])\*+(?:\s*,\s*\*+)*|^\*+\s*|(?<=[.!?:] )\*+\s*(?=[A-Z])")


def remove_footnote_asterisks(paras):
    return sub_counting(FOOTNOTE_RE, "", paras)
