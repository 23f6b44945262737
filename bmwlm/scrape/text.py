"""Bytes to text: decoding a page, HTML to plain text, and the cap on an article's length.

Decoding follows the page's own word, as a browser does: a byte-order mark, else the charset of
the Content-Type header, else the document's declaration (`<?xml encoding=…?>`, `<meta charset>`).
Bytes that are invalid in that encoding are replaced by U+FFFD one run at a time and counted; the
rest of the page is decoded as declared. Only a page that declares nothing is guessed at: UTF-8
when most of its non-ASCII bytes form valid UTF-8 (a few bad bytes in a UTF-8 page stay a few bad
bytes), else what charset-normalizer detects.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from email.message import Message

import charset_normalizer
from bs4 import BeautifulSoup

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_XML_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")
_META_CHARSET = re.compile(rb"<meta[^>]+?charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.IGNORECASE)
_ESCAPED = re.compile("[\udc80-\udcff]+")  # invalid bytes, as surrogateescape leaves them
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]+")


@dataclass
class Decoded:
    text: str
    encoding: str
    bad_bytes: int = 0  # bytes invalid in `encoding`, each run replaced by one U+FFFD
    how: str = "declared"  # "bom", "declared" or "detected"


def declared_encoding(data: bytes, content_type: str = "") -> str | None:
    """The encoding a page names for itself: its Content-Type charset, else its XML declaration
    or `<meta charset>`; None when it names none (or names one Python does not know)."""
    candidates = []
    if content_type:
        message = Message()
        message["content-type"] = content_type
        candidates.append(message.get_param("charset"))
    head = data[:4096]
    for pattern in (_XML_DECLARATION, _META_CHARSET):
        match = pattern.search(head)
        if match:
            candidates.append(match.group(1).decode("ascii"))
    for name in candidates:
        if isinstance(name, str) and name.strip():
            try:
                return codecs.lookup(name.strip()).name
            except LookupError:
                continue
    return None


def decode_document(data: bytes, content_type: str = "") -> Decoded:
    """Text of a downloaded page (see the module docstring for the rules)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return _decode(data, name, "bom")
    declared = declared_encoding(data, content_type)
    if declared:
        return _decode(data, declared, "declared")
    return _decode(data, _guess_encoding(data), "detected")


def _guess_encoding(data: bytes) -> str:
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    valid = len(_UTF8_MULTIBYTE.findall(data))
    bad = len(_ESCAPED.findall(data.decode("utf-8", "surrogateescape")))
    if valid >= bad:
        return "utf-8"
    best = charset_normalizer.from_bytes(data).best()
    return best.encoding if best is not None else "utf-8"


def _decode(data: bytes, encoding: str, how: str) -> Decoded:
    if encoding.startswith("utf-8") and data.startswith(codecs.BOM_UTF8):
        data, encoding = data[len(codecs.BOM_UTF8):], "utf-8"
    try:
        text = data.decode(encoding, "surrogateescape")
    except UnicodeDecodeError:  # an invalid ASCII-range byte (UTF-16/32): cannot be escaped
        text = data.decode(encoding, "replace")
        return Decoded(text, encoding, text.count("\ufffd"), how)
    bad = sum(len(run) for run in _ESCAPED.findall(text))
    if bad:
        text = _ESCAPED.sub("\ufffd", text)
    return Decoded(text, encoding, bad, how)


# ---- HTML to text --------------------------------------------------------------------------
DROP_TAGS = ("script", "style", "noscript", "template", "img", "picture", "source", "svg", "video",
             "audio", "iframe", "object", "embed", "figure", "table", "button", "form", "input",
             "select", "textarea", "head", "title", "meta", "link")
BLOCK_TAGS = ("p", "div", "section", "article", "main", "header", "footer", "aside", "nav",
              "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd",
              "blockquote", "pre", "address", "hr", "body", "html")
_PARA = "\u2029"  # paragraph separator: marks block boundaries while we flatten the tree
_LINE = "\u2028"  # line separator: marks <br>
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
NBSP = re.compile(r"[\u00a0\u202f\u2007]")


def html_to_text(html: str | None) -> str:
    """Plain text of an HTML fragment: markup, images, scripts and tables removed, entities
    decoded, non-breaking spaces turned into spaces, whitespace collapsed the way a browser
    does, `<br>` kept as a line break, block elements (p, div, li, h*) as paragraphs joined by
    one blank line. Nothing else is cleaned."""
    if not html:
        return ""
    if "<" not in html and "&" not in html:  # plain text already
        return _SPACES.sub(" ", NBSP.sub(" ", html)).strip()
    soup = BeautifulSoup(html, "lxml")
    for tag in soup.find_all(DROP_TAGS):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with(_LINE)
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_before(_PARA)
        tag.append(_PARA)
    text = _SPACES.sub(" ", NBSP.sub(" ", soup.get_text()))
    paragraphs = []
    for chunk in text.split(_PARA):
        lines = [line.strip() for line in chunk.split(_LINE)]
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def squash(text: str) -> str:
    """Whitespace collapsed: for comparing and measuring bodies."""
    return " ".join(text.split())


def cap_text(text: str, max_chars: int) -> tuple[str, str | None]:
    """`text` cut to at most `max_chars` at the last paragraph break that fits; returns the text
    and what was done: None (short enough, or no cap), "truncated", or "dropped" (the first
    paragraph alone is too long: not an article, and cutting it mid-sentence would not make one)."""
    if not max_chars or len(text) <= max_chars:
        return text, None
    cut = text.rfind("\n\n", 0, max_chars + 1)
    if cut <= 0:
        return "", "dropped"
    return text[:cut].rstrip(), "truncated"
