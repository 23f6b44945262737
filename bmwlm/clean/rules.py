"""The cleaning rules, in the order they run, and `clean_text`, which applies them to one article.

Order matters: a contact block must go while its phone line still marks it (before `phone_numbers`),
sentences that only point to a link must go before `urls` shortens the link they point to, and the
consumption rules run from the most specific (a whole co2_summary line) to the least (one sentence).
To add a rule, write it in the module of its family and put it in `RULES` where it belongs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from bmwlm.clean import company, consumption, contacts, furniture, links
from bmwlm.clean.records import normalize_title
from bmwlm.clean.text import has_content, normalize_unicode, split_paragraphs, tidy


@dataclass(frozen=True)
class Rule:
    name: str
    apply: Callable[[list[str]], tuple[list[str], int]]  # paragraphs -> (paragraphs, matches)
    description: str  # what it removes, as the report says it


RULES: tuple[Rule, ...] = (
    Rule("separator_lines", furniture.remove_separator_lines,
         "lines with no letter or digit (rules of underscores, stray asterisks, bullets)"),
    Rule("page_furniture", furniture.remove_page_furniture,
         '"Article Media Material.", "Downloads.", "This article in other PressClubs" (and the list of PressClubs '
         'after it), download buttons, PDF page headers, "Check against delivery"'),
    Rule("media_ids", furniture.remove_media_ids,
         "PressClub image/media ids such as P90123456 (with file suffixes)"),
    Rule("contact_block", contacts.remove_contact_blocks,
         'press contact blocks: a marker ("In case of queries, please contact:", "If you have any questions, please '
         'contact:", "In the event of enquiries", "For further information please contact", "Press contact", ...) '
         'or a stand-alone "Corporate Communications" / phone / e-mail / "Internet:" line, plus the names, roles, '
         "phone numbers, e-mail and web addresses around it; stops at the first line that reads like text"),
    Rule("comms_signature", contacts.remove_comms_signature,
         '"BMW Group Corporate Communications" glued to the start or end of a text paragraph'),
    Rule("company_boilerplate", company.remove_company_boilerplate,
         'the company paragraphs: "The BMW Group" heading, "With its four brands ... the BMW Group is the world\'s '
         'leading premium manufacturer ...", the sales/profit/workforce paragraph and "The (economic) success of '
         'the BMW Group ... long-term thinking and responsible action ..."'),
    Rule("co2_summary", consumption.remove_co2_summary,
         '"CO2 Emissions & Consumption: ..." lines (the page\'s co2_summary box) and the long "CO2 emission '
         'information. The following applies to consumption figures ..." disclaimer'),
    Rule("consumption_heading", consumption.remove_consumption_headings,
         'headings and table labels of consumption data: "*Consumption/emission data:", "Fuel consumption and CO2 '
         'emission figures:", "Power consumption WLTP (kWh/100 km)"'),
    Rule("consumption_data", consumption.remove_consumption_data,
         'consumption/CO2 data lines in English and German ("BMW iX1 eDrive20: energy consumption combined: ... '
         'kWh/100 km (WLTP); CO2 emissions combined: 0 g/km; CO2 class: A", "Energieverbrauch kombiniert ..."): '
         "the whole paragraph when little else is left, otherwise the labelled figures and the bracketed figures "
         "inside a sentence"),
    Rule("consumption_sentence", consumption.remove_consumption_sentences,
         'prose sentences that still quote a consumption figure ("a consumption of just 15.1 kWh/100 km (WLTP) '
         'demonstrate ..."): dropped whole so no grammar is broken; costs a little real text'),
    Rule("consumption_disclaimer", consumption.remove_consumption_disclaimers,
         'consumption/emission disclaimers: "All model variants ... refer to the German market", "... German '
         'Passenger Car Energy Labelling Regulation (EnVKV)", "consumption data ... is not available", "... are '
         'provisional" (the paragraph when it is mostly disclaimer, else the sentence)'),
    Rule("footnote_asterisks", consumption.remove_footnote_asterisks,
         'asterisks pointing at consumption footnotes: "BMW iX3*" -> "BMW iX3", "BMW X5 xDrive50e**"'),
    Rule("social_media", links.remove_social_media,
         'social-media follow lines: "... can be followed on Instagram at @handle", "Instagram: @handle", '
         '"Facebook: www.facebook.com/..."'),
    Rule("link_pointer", links.remove_link_pointers,
         'sentences that only point to a web page: "For more information, please visit: https://...", "You will '
         'find press material ... at www.press.bmwgroup.com", "Further information ... can be found here." (link '
         'lost in the text), and lines that are a label plus a link ("Link Deep Dive: https://...")'),
    Rule("urls", links.remove_urls,
         'links left inside sentences: press-site links removed, other links shortened to the bare host '
         '("(https://lifestyle.example.com/shop)" -> "(lifestyle.example.com)") so the sentence still reads'),
    Rule("email_addresses", contacts.remove_emails,
         "sentences giving an e-mail address (they only tell the reader whom to write to)"),
    Rule("phone_numbers", contacts.remove_phone_numbers,
         "sentences giving a phone number (+49 ..., other international formats, labelled national numbers)"),
)
RULE_NAMES = tuple(r.name for r in RULES)


def apply_rule(rule: Rule, paras: list[str]) -> tuple[list[str], dict]:
    """Run one rule; returns (paragraphs, {"matches", "paragraphs", "chars"} it removed). Paragraphs
    the rule changed are tidied, and those left without a letter or digit dropped."""
    before_chars, before_n = sum(map(len, paras)), len(paras)
    new, matches = rule.apply(list(paras))
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


def clean_text(text: str, title: str | None = None, rules: Sequence[Rule] = RULES) -> tuple[str, dict]:
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
    for rule in rules:
        paras, stats["rules"][rule.name] = apply_rule(rule, paras)
    if title and paras and paras[0].casefold() == normalize_title(title).casefold():
        paras = paras[1:]
    cleaned = "\n\n".join(paras)
    stats["chars_out"] = len(cleaned)
    stats["paragraphs_out"] = len(paras)
    return cleaned, stats
