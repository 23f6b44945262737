"""The tokens 04 scores on: a calibration sample of the **training** split, never the reporting split.

The block to remove is a choice, and a choice made on the validation split would leak into every
validation number the pipeline reports. So 04 chooses on windows of the training split:
- packed exactly like training (`bmwlm.windows`: EOS-separated `block_size` windows, tail dropped);
- `evenly_spaced` over the whole packed stream, not its first N tokens: the split is in date order, so
  its head is its oldest month, while evenly spaced windows span every month and topic of the split;
- a fixed, seedless rule, so the same train split always gives the same sample;
- as many windows as the token budget allows (a budget counts predicted tokens, `block_size - 1` a window).
`CalibrationSample` records which windows and which articles (ids, date range) the sample covers, so a
reader can check it shares nothing with the validation split (`check_disjoint`).

The validation windows (`validation_windows`) are used only after the choice, to report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bmwlm.io import BadRecordError, read_jsonl
from bmwlm.windows import evenly_spaced, pack_documents, tokenize_texts


class PruneInputError(ValueError):
    """A bad option value or an unusable input file: reported without a traceback."""


@dataclass
class Sample:
    windows: list[list[int]]
    window_indices: list[int]  # positions of the windows in the packed split
    windows_total: int  # windows the packed split has
    article_ids: list[str]  # articles with at least one token in the sample, in split order
    first_published: str | None
    last_published: str | None
    articles_total: int

    @property
    def predicted_tokens(self) -> int:
        return sum(len(w) - 1 for w in self.windows)


def read_texts(path: Path) -> list[dict]:
    """The records of a processed split that have text (id, published, text)."""
    records = [r for r in read_jsonl(path) if r.get("text")]
    if not records:
        raise PruneInputError(f"{path} holds no records with text")
    missing = [i for i, r in enumerate(records, 1) if "id" not in r]
    if missing:
        raise BadRecordError(f"{path}: record {missing[0]} has no id")
    return records


def _articles_in(records: Sequence[dict], docs: Sequence[Sequence[int]], block_size: int,
                 indices: Sequence[int]) -> list[str]:
    """Ids of the articles whose tokens (or closing EOS) fall in the windows at `indices`."""
    spans, start = [], 0
    for doc in docs:
        spans.append((start, start + len(doc) + 1))  # the document and its EOS
        start += len(doc) + 1
    hit = []
    for idx, (a, b) in enumerate(spans):
        if any(a < (i + 1) * block_size and b > i * block_size for i in indices):
            hit.append(idx)
    return [str(records[i]["id"]) for i in hit]


def calibration_sample(train_file: Path, tokenizer, block_size: int, max_tokens: int) -> Sample:
    """`max_tokens` predicted tokens of the training split in evenly spaced full windows (all windows
    when `max_tokens` <= 0 or the split has fewer)."""
    records = read_texts(train_file)
    docs = tokenize_texts(tokenizer, [r["text"] for r in records])
    packed = pack_documents(docs, block_size, tokenizer.eos_token_id, keep_tail=False)
    if not packed:
        raise PruneInputError(f"{train_file} gives no full window of {block_size} tokens")
    wanted = len(packed) if max_tokens <= 0 else max(1, math.ceil(max_tokens / (block_size - 1)))
    indices = evenly_spaced(list(range(len(packed))), wanted)
    ids = _articles_in(records, docs, block_size, indices)
    dates = sorted(r["published"] for r in records if str(r["id"]) in set(ids) and r.get("published"))
    return Sample(windows=[packed[i] for i in indices], window_indices=list(indices), windows_total=len(packed),
                  article_ids=ids, first_published=dates[0] if dates else None,
                  last_published=dates[-1] if dates else None, articles_total=len(records))


def validation_windows(path: Path, tokenizer, block_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """The validation texts packed like evaluation (EOS-separated windows, tail kept); all of them when
    `max_tokens` is None/0, else evenly spaced windows holding about `max_tokens` predicted tokens (the
    split is in date order: its first tokens would be its oldest weeks only). For reporting after the choice."""
    records = read_texts(path)
    docs = tokenize_texts(tokenizer, [r["text"] for r in records])
    packed = pack_documents(docs, block_size, tokenizer.eos_token_id, keep_tail=True)
    if not max_tokens:
        return packed
    return evenly_spaced(packed, max(1, math.ceil(max_tokens / (block_size - 1))))


def validation_ids(path: Path) -> set[str]:
    return {str(r["id"]) for r in read_jsonl(path) if "id" in r}


def check_disjoint(sample: Sample, validation_file: Path | None) -> int:
    """Refuse a calibration sample that shares an article with the validation split; returns the
    number of validation articles checked (0 when there is no validation file)."""
    if validation_file is None or not Path(validation_file).exists():
        return 0
    val = validation_ids(validation_file)
    shared = sorted(set(sample.article_ids) & val)
    if shared:
        raise PruneInputError(f"the calibration sample shares {len(shared)} article(s) with {validation_file} "
                              f"(e.g. {shared[0]}): pass the training split as --train-file")
    return len(val)
