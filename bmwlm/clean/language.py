"""The language of an article, so that a German or French release among the English ones (or a whole
validation split of them, when they are the newest) does not reach training.

py3langid: langid.py's naive Bayes model over byte n-grams, shipped inside the wheel (works offline;
numpy is its only dependency). The articles it sees are cleaned bodies of at least `--min-chars`
characters, long enough for any of the usual detectors; it reads the first `SAMPLE_CHARS` of each
(an article keeps its language), which keeps the cost per article small.
"""
from __future__ import annotations

import re
from typing import Sequence

from py3langid.langid import MODEL_FILE, LanguageIdentifier

SAMPLE_CHARS = 2000
UNDETERMINED = "und"  # ISO 639-2 "undetermined": a text without letters
ALL = "all"  # --languages all: keep every language, detect nothing


class UnknownLanguage(ValueError):
    """A language code the model does not know."""


class LanguageDetector:
    """detect(text) -> an ISO 639 code ("en", "de", ...), or "und" for a text without letters."""

    def __init__(self) -> None:
        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
        self.codes = frozenset(self._identifier.labels)

    def check(self, languages: Sequence[str]) -> None:
        """Raise UnknownLanguage naming any code the model does not know."""
        unknown = sorted(set(languages) - self.codes)
        if unknown:
            raise UnknownLanguage(f"unknown language code(s) {', '.join(unknown)}; use ISO 639 codes such as "
                             f"en, de, fr (the model knows {len(self.codes)})")

    def detect(self, text: str) -> str:
        sample = text[:SAMPLE_CHARS]
        if not re.search(r"[^\W\d_]", sample):
            return UNDETERMINED
        return self._identifier.classify(sample)[0]


def parse_languages(values: Sequence[str]) -> tuple[str, ...] | None:
    """`--languages en de` or `--languages en,de` -> ("de", "en"); `all` -> None (keep everything)."""
    codes = sorted({c.strip().lower() for v in values for c in v.split(",") if c.strip()})
    if not codes:
        raise ValueError("--languages needs at least one language code, or 'all'")
    if ALL in codes:
        return None
    return tuple(codes)
