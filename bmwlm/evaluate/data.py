"""What one evaluation runs on: the validation and train articles, the Q&A set re-tagged against these
splits (with the frequency-prior guesser's answers), and the cloze set built from the validation articles."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bmwlm.config import PREPROCESS
from bmwlm.evaluate.cloze import build_cloze_items, document_text
from bmwlm.evaluate.qa import ChoiceItem, answer_positions, frequency_prior_hits, read_qa_rows, tag_qa_items
from bmwlm.io import MissingInputError, read_jsonl, require

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    validation_ids: list[str]
    validation_texts: list[str]
    train_ids: list[str] | None  # None when the train split is missing or empty
    train_texts: list[str] | None
    train_articles: int | None  # None when the train split is missing
    qa_items: list[ChoiceItem]
    qa_seen_changed: list[str]  # items whose file tag disagrees with the search of this train split
    cloze_items: list[ChoiceItem]
    frequency_prior: list[bool] | None  # per Q&A item: does the frequency-prior guesser pick the answer

    @property
    def qa_seen_source(self) -> str:
        return "train split search" if self.train_texts is not None else "qa_file"

    def summary(self) -> dict:
        """The `EvalSettings` fields that describe the data."""
        return {
            "validation_articles": len(self.validation_texts),
            "train_articles": self.train_articles,
            "qa_items": len(self.qa_items),
            "qa_answer_positions": answer_positions(self.qa_items),
            "qa_split_source": {src: sum(it.split_source == src for it in self.qa_items)
                                for src in ("processed", "qa_file")},
            "qa_splits": {s: sum(it.split == s for it in self.qa_items) for s in ("train", "validation")},
            "qa_seen": {"seen": sum(it.seen_in_train is True for it in self.qa_items),
                        "unseen": sum(it.seen_in_train is False for it in self.qa_items)},
            "qa_seen_source": self.qa_seen_source,
            "qa_seen_changed": self.qa_seen_changed,
            "cloze_items": len(self.cloze_items),
            "cloze_articles": len({it.source_id for it in self.cloze_items}),
            "cloze_answer_positions": answer_positions(self.cloze_items) if self.cloze_items else None,
        }


def load_eval_data(validation_file: Path, train_file: Path, qa_file: Path, cloze_max: int, seed: int) -> EvalData:
    """Read the splits and the Q&A set, re-tag each question (split, seen in train), build the cloze set.

    A missing or empty validation split or Q&A set raises (naming the file and what makes it); a
    missing train split costs the train-slice perplexity and the frequency-prior baseline, and the
    Q&A file's own seen tags are used.
    """
    validation = read_jsonl(require(validation_file, str(PREPROCESS)))
    if not validation:
        raise MissingInputError(f"{validation_file} holds no articles; re-run {PREPROCESS}")
    rows = read_qa_rows(qa_file)
    train = None
    if Path(train_file).exists():
        train = read_jsonl(train_file)
    else:
        log.warning("missing %s (made by %s): no train-slice loss, no frequency-prior baseline", train_file,
                    PREPROCESS)
    train_texts = [document_text(a) for a in train] if train else None
    qa, changed = tag_qa_items(rows, train_texts, {a["id"] for a in train or []}, {a["id"] for a in validation})
    if changed:
        log.warning("Q&A: %d items' seen_in_train tag disagrees with this train split (%s); using the search",
                    len(changed), ", ".join(changed[:10]))
    cloze = build_cloze_items(validation, cloze_max, seed) if cloze_max > 0 else []
    data = EvalData(validation_ids=[str(a.get("id")) for a in validation],
                    validation_texts=[document_text(a) for a in validation],
                    train_ids=[str(a.get("id")) for a in train] if train else None, train_texts=train_texts,
                    train_articles=len(train) if train is not None else None, qa_items=qa, qa_seen_changed=changed,
                    cloze_items=cloze,
                    frequency_prior=frequency_prior_hits(qa, train_texts) if train_texts else None)
    s = data.summary()
    log.info("data: %d validation and %d train articles; %d Q&A items (answer positions %s; %s); %d cloze items "
             "from %d articles", len(validation), len(train or []), len(qa), s["qa_answer_positions"], s["qa_seen"],
             len(cloze), s["cloze_articles"])
    return data
