"""Cleaning rules for the web around an article: social-media follow lines, sentences that only point
to a web page, and the links left inside sentences (press-site links removed, others shortened to
their host so the sentence still reads).

Each rule takes an article's paragraphs and returns (paragraphs, matches); `bmwlm.clean.rules`
lists them, in the order they run."""
from __future__ import annotations

import re

from bmwlm.clean.patterns import BARE_DOMAIN_RE, PRESS_DOMAIN_RE, URL_RE
from bmwlm.clean.text import balanced_groups, drop_sentences, has_content, sub_counting, tidy

_SOCIAL_NETWORK = r"(?:Instagram|Facebook|LinkedIn|YouTube|TikTok|Twitter|Threads|Pinterest|WeChat|Weibo|X)"
_SOCIAL_LINE_RE = re.compile(rf"^(?:{_SOCIAL_NETWORK}\s*:\s*\S+\s*)+$", re.I)
_SOCIAL_SENTENCE_RE = re.compile(
    rf"\b(?i:follow(?:ed|s)?|find us|join us|subscribe)\b.{{0,200}}\b{_SOCIAL_NETWORK}\b"
    rf"|\b{_SOCIAL_NETWORK}\b.{{0,40}}(?:at|:)\s*(?<![\w.])@\w+"
    rf"|\b(?i:more information|further information|find out more|updates)\b.{{0,100}}\b{_SOCIAL_NETWORK}"
    r" (?:account|channel|page)\b"
    r"|\b(?i:information|details|updates)\b.{0,100}\b(?:via|at|on)\s+(?<![\w.])@\w+",
)


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


def remove_link_pointers(paras):
    out, matches = [], 0
    for p in paras:
        # "(www.example.com/tickets)", "(the opening hours can be found here: www.example.com)"
        for start, end in reversed(balanced_groups(p)):
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


def remove_urls(paras):
    return sub_counting(URL_RE, _replace_url, paras)
