"""Patterns that several cleaning families share: links, press-site domains, e-mail addresses, phone numbers."""
from __future__ import annotations

import re

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
