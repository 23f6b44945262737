"""Multiple-choice items (`ChoiceItem`) and the hand-written Q&A set as 05 uses it.

Every check of the Q&A file lives in one place, `bmwlm.qaset` (fields, four distinct options, the
answer letter, key terms, tags, answer positions); this module only turns its validated rows into
`ChoiceItem`s and re-tags them against the processed splits of this evaluation:

- `split`: the split the source article is really in (`split_source` "processed"), or the file's own
  value when the article is in neither split (`split_source` "qa_file", e.g. dropped as a duplicate);
- `seen_in_train`: whether the answer fact appears in *this* training text, by `qaset`'s search
  (the file's tag is kept only when there is no train split). Accuracy is reported by this tag, not
  by the split of the source article: a fact from a validation article may also be in a training one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from bmwlm import qaset
from bmwlm.io import MissingInputError
from bmwlm.qaset import LETTERS, QAFormatError  # noqa: F401  (re-exported: one definition of both)

UNIFORM_GUESS = 1 / len(LETTERS)  # a blind uniform guess; a real baseline only because positions are balanced


@dataclass
class ChoiceItem:
    """One four-option question: a hand-written Q&A item or an automatic cloze item."""

    id: str
    question: str
    options: list[str]
    answer: str  # "A".."D"
    source_id: str | None = None  # the article the fact comes from
    split: str | None = None  # the split of that article
    split_source: str | None = None  # Q&A: "processed" (looked up in the splits) or "qa_file"
    prompt: str | None = None  # cloze: the title and the sentence up to the gap; Q&A: built from `question`
    span_type: str | None = None  # cloze: what kind of span is hidden
    sentence: str | None = None  # cloze: the whole sentence
    seen_in_train: bool | None = None  # Q&A: the answer fact appears in the training text
    answer_type: str | None = None  # Q&A: person, place, ...
    key_terms: list[str] = field(default_factory=list)  # Q&A: words of the question that pin the fact down
    answer_aliases: list[str] = field(default_factory=list)  # Q&A: other spellings of the answer

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]

    @property
    def context(self) -> str:
        """The text each option continues."""
        return self.prompt or qa_prompt(self.question)


def qa_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def _item(row: dict, split_source: str | None = None) -> ChoiceItem:
    return ChoiceItem(id=row["id"], question=row["question"], options=list(row["options"]), answer=row["answer"],
                      source_id=row.get("source_id"), split=row.get("split"), split_source=split_source,
                      seen_in_train=row.get("seen_in_train"), answer_type=row.get("answer_type"),
                      key_terms=list(row.get("key_terms", [])), answer_aliases=list(row.get("answer_aliases", [])))


def read_qa_rows(path: Path | str) -> list[dict]:
    """The validated rows of the Q&A file (`qaset.load_qa`); a missing file names what it is."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"missing input {path}: the hand-written Q&A set, kept in the repository")
    return qaset.load_qa(path)


def load_qa_items(path: Path | str) -> list[ChoiceItem]:
    """The Q&A file as `ChoiceItem`s, with the file's own split and seen tags."""
    return [_item(row) for row in read_qa_rows(path)]


def tag_qa_items(rows: Sequence[dict], train_texts: Sequence[str] | None, train_ids: set[str],
                 validation_ids: set[str]) -> tuple[list[ChoiceItem], list[str]]:
    """Items re-tagged against this evaluation's splits (`qaset.tag_items`), and the ids whose
    `seen_in_train` in the file disagrees with the search of this train split.

    Without a train split (`train_texts` None) the file's seen tags are kept as written.
    """
    tagged = qaset.tag_items(rows, train_texts, train_ids, validation_ids) if train_texts is not None else rows
    changed = [r["id"] for r, t in zip(rows, tagged) if r.get("seen_in_train") != t.get("seen_in_train")]
    items = [_item(t, "processed" if t["source_id"] in train_ids | validation_ids else "qa_file") for t in tagged]
    return items, changed


def answer_positions(items: Iterable[ChoiceItem]) -> dict[str, int]:
    """How often the correct answer is A, B, C and D (`qaset.position_counts`)."""
    return qaset.position_counts([{"answer": it.answer} for it in items])


def frequency_prior_hits(items: Sequence[ChoiceItem], train_texts: Sequence[str]) -> list[bool]:
    """Per item, whether `qaset`'s frequency-prior guesser (the option most frequent in the training
    text, never reading the question) picks the answer."""
    rows = [{"id": it.id, "options": it.options, "answer": it.answer} for it in items]
    return qaset.frequency_prior_hits(rows, "\n\n".join(train_texts))
