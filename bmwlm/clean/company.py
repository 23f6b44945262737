"""Cleaning rule for the company paragraphs: the "The BMW Group" heading, "With its four brands ...
the BMW Group is the world's leading premium manufacturer ...", the sales/profit/workforce paragraph
and "The (economic) success of the BMW Group ... long-term thinking and responsible action", in
English and German; a sentence that merely mentions the BMW Group stays."""
from __future__ import annotations

import re

_S_END = r"\.(?=\s|$)"  # a full stop that ends a sentence (not the one in "2.45")
_S_END_DE = r"(?<!Mio)(?<!Mrd)(?<!\d)\.(?=\s|$)"  # German: not "2,45 Mio. Automobile", "31. Dezember"
COMPANY_SPAN_RES = (
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
)
_COMPANY_HEADING_RE = re.compile(r"^(?:About )?(?:the |die )?BMW Group\s*[:.]?$", re.I)


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
