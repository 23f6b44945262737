"""Cleaning rules for press contacts: contact blocks (a marker such as "In case of queries, please
contact:" through the names, roles, phone numbers and addresses after it), the "BMW Group Corporate
Communications" signature glued to a paragraph, and sentences that give an e-mail address or a phone
number.

Each rule takes an article's paragraphs and returns (paragraphs, matches); `bmwlm.clean.rules`
lists them, in the order they run."""
from __future__ import annotations

import re

from bmwlm.clean.patterns import EMAIL_RE, PRESS_DOMAIN_RE, URL_RE, find_phone_numbers
from bmwlm.clean.text import drop_sentences, has_content, map_paragraphs

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


_BLOCK_KINDS = frozenset({"marker", "detail", "org", "role"})


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


def remove_comms_signature(paras):
    def one(p):
        p, a = _SIGNATURE_START_RE.subn("", p)
        p, b = _SIGNATURE_END_RE.subn("", p)
        return p, a + b
    return map_paragraphs(paras, one)



def remove_emails(paras):
    return map_paragraphs(
        paras, lambda p: drop_sentences(p, lambda s: bool(EMAIL_RE.search(s))) if "@" in p else (p, 0)
    )


def remove_phone_numbers(paras):
    return map_paragraphs(
        paras, lambda p: drop_sentences(p, lambda s: bool(find_phone_numbers(s))) if find_phone_numbers(p) else (p, 0)
    )
