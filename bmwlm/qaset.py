"""The hand-written BMW Q&A set (data/qa/bmw_qa.jsonl): validation, seen/unseen tags, controls.

One question a line:
  id, question, options (4 distinct strings), answer (A-D), source_id (the article it was written
  from), split (the split of that source article), answer_type (person, place, organisation,
  vehicle, number, year, date (a date or a time of day), other), key_terms (words of the question
  that pin the fact down), answer_aliases (optional: other spellings of the answer in the press
  releases, e.g. "13.5%"), seen_in_train (whether the answer fact appears in the training text;
  written by this module).

Why the controls: a question only measures knowledge gained from fine-tuning if (a) we know whether
its answer was in the training text at all, (b) the right option is not simply the string the
model saw most often, and (c) the right option is not always in the same place. This module checks
all three mechanically:

  python -m bmwlm.qaset --train-file data/processed/train.jsonl --check   # report, exit 1 on problems
  python -m bmwlm.qaset --train-file data/processed/train.jsonl --write   # re-tag and re-shuffle
"""
from __future__ import annotations

import argparse
import functools
import random
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Sequence

from bmwlm.config import QA_FILE, TRAIN_FILE
from bmwlm.io import BadRecordError, read_jsonl, require, write_jsonl

LETTERS = "ABCD"
ANSWER_TYPES = ("person", "place", "organisation", "vehicle", "number", "year", "date", "other")
SPLITS = ("train", "validation")
SHUFFLE_SEED = 20250  # the fixed seed of the committed answer positions
WINDOW_PARAGRAPHS = 3  # a passage: a paragraph and its two neighbours (event named in one, answer in the next)

_TYPOGRAPHY = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "-", "\u2011": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " "})


class QAFormatError(BadRecordError):
    """The Q&A file is malformed; the message names the line and the item. (A `BadRecordError`, so
    05 reports it like any other damaged input.)"""


# ---------------------------------------------------------------- reading and validating


def validate_item(item: dict, where: str = "item") -> None:
    """Raise QAFormatError naming `where` if one question is malformed.

    Checked: the required fields and their types, 4 options that stay distinct after
    normalisation (so "Mini" and "MINI" cannot both appear), an answer letter A-D, key terms that
    are words of the question (so the seen/unseen check searches for what is actually asked),
    and the optional fields' types.
    """
    if not isinstance(item, dict):
        raise QAFormatError(f"{where}: not a JSON object")
    for key in ("id", "question", "options", "answer", "source_id", "key_terms"):
        if key not in item:
            raise QAFormatError(f"{where}: missing field {key!r}")
    for key in ("id", "question", "source_id"):
        if not isinstance(item[key], str) or not item[key].strip():
            raise QAFormatError(f"{where}: field {key!r} must be a non-empty string")
    opts = item["options"]
    if not isinstance(opts, list) or len(opts) != 4 or not all(isinstance(o, str) and o.strip() for o in opts):
        raise QAFormatError(f"{where}: 'options' must be a list of 4 non-empty strings, got {opts!r}")
    if len({normalise(o) for o in opts}) != 4:
        raise QAFormatError(f"{where}: the 4 options must be distinct, got {opts!r}")
    if item["answer"] not in tuple(LETTERS):
        raise QAFormatError(f"{where}: 'answer' must be one of A, B, C, D, got {item['answer']!r}")
    terms = item["key_terms"]
    if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
        raise QAFormatError(f"{where}: 'key_terms' must be a non-empty list of strings, got {terms!r}")
    for term in terms:
        if not _find(normalise(term), normalise(item["question"]), whole_word=False):
            raise QAFormatError(f"{where}: key term {term!r} does not occur in the question")
    aliases = item.get("answer_aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise QAFormatError(f"{where}: 'answer_aliases' must be a list of strings, got {aliases!r}")
    if "seen_in_train" in item and not isinstance(item["seen_in_train"], bool):
        raise QAFormatError(f"{where}: 'seen_in_train' must be true or false, got {item['seen_in_train']!r}")
    if "answer_type" in item and item["answer_type"] not in ANSWER_TYPES:
        raise QAFormatError(f"{where}: 'answer_type' must be one of {ANSWER_TYPES}, got {item['answer_type']!r}")
    if "split" in item and item["split"] not in SPLITS:
        raise QAFormatError(f"{where}: 'split' must be one of {SPLITS}, got {item['split']!r}")


def validate_items(items: Sequence[dict], source: str = "Q&A set") -> None:
    """Validate every item (naming its line) and require unique ids; an empty set is an error."""
    if not items:
        raise QAFormatError(f"{source} holds no questions")
    seen: dict[str, int] = {}
    for n, item in enumerate(items, 1):
        where = f"{source}, line {n}" + (f" ({item.get('id')})" if isinstance(item, dict) and "id" in item else "")
        validate_item(item, where)
        if item["id"] in seen:
            raise QAFormatError(f"{where}: duplicate id {item['id']!r} (first on line {seen[item['id']]})")
        seen[item["id"]] = n


def load_qa(path: Path | str = QA_FILE) -> list[dict]:
    """Read and validate the Q&A file; any defect raises QAFormatError naming file and line."""
    try:
        items = read_jsonl(path)
    except ValueError as exc:  # json.JSONDecodeError or bmwlm.io.BadRecordError
        raise QAFormatError(f"{path}: not valid JSON lines ({exc})") from exc
    validate_items(items, str(path))
    return items


def load_texts(path: Path | str) -> list[str]:
    """The `text` of every article in a processed split (what the model is trained on)."""
    return [a.get("text") or "" for a in read_jsonl(path)]


# ---------------------------------------------------------------- matching text


def normalise(text: str) -> str:
    """Casefold, strip accents, unify quotes and dashes, collapse whitespace.

    So "Nedeljković" matches "Nedeljkovic" and "Coupé" matches "Coupe": the press releases spell
    the same name both ways.
    """
    text = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHY))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", text).casefold().strip()


@functools.lru_cache(maxsize=4096)
def _normalised(text: str) -> str:
    """`normalise`, remembered: the whole training text is counted in once per option."""
    return normalise(text)


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _matches(term: str, text: str, whole_word: bool = True):
    """Start offsets of `term` in `text` that begin at a word boundary (and, for a whole word, end
    at one), non-overlapping. Plain str.find: a regex with a look-behind is ~100x slower here."""
    i = text.find(term)
    while i != -1:
        end = i + len(term)
        if (i == 0 or not _is_word_char(text[i - 1])) and \
                (not whole_word or end == len(text) or not _is_word_char(text[end])):
            yield i
            i = text.find(term, end)
        else:
            i = text.find(term, i + 1)


def _find(term: str, text: str, whole_word: bool = True) -> bool:
    return next(_matches(term, text, whole_word), None) is not None


@functools.lru_cache(maxsize=65536)
def count_occurrences(term: str, text: str) -> int:
    """Whole-word, non-overlapping occurrences of `term` in `text`, both normalised first."""
    return sum(1 for _ in _matches(_normalised(term), _normalised(text)))


def passages(text: str, size: int = WINDOW_PARAGRAPHS) -> list[str]:
    """Normalised windows of `size` consecutive paragraphs (blank-line separated) of one article.

    A fact is usually stated within a paragraph or two; an article-wide search would call a fact
    "seen" whenever a long article mentions the answer and the key terms in unrelated places.
    """
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paras) <= size:
        return [normalise(" ".join(paras))]
    return [normalise(" ".join(paras[i:i + size])) for i in range(len(paras) - size + 1)]


@functools.lru_cache(maxsize=4)
def _all_passages(texts: tuple[str, ...]) -> tuple[str, ...]:
    """Every passage of every article, computed once per training set."""
    return tuple(p for t in texts for p in passages(t))


def answer_text(item: dict) -> str:
    """The text of the correct option."""
    return item["options"][LETTERS.index(item["answer"])]


def answer_seen_in_train(item: dict, train_texts: Sequence[str]) -> bool:
    """Whether the item's answer fact appears anywhere in the training text.

    The rule (deterministic, no thresholds): the fact counts as seen when at least one passage
    (WINDOW_PARAGRAPHS consecutive paragraphs of one training article, see `passages`) contains
    the correct option or one of its `answer_aliases` as a whole word or phrase AND every one of
    the item's `key_terms` at the start of a word (so "recycl" finds "recycling"); all text is
    compared after `normalise`. Key terms are words of the question that identify what is asked
    (the event, the person, the place); validation enforces that they occur in the question.

    Co-occurrence is enough on purpose: a passage that names the answer with the key terms in
    another relation (last year's winner of the same event) also counts as seen. That keeps the
    unseen group clean, at the price of a few over-cautious "seen" tags.
    """
    answers = [normalise(a) for a in [answer_text(item), *item.get("answer_aliases", [])]]
    terms = [normalise(t) for t in item["key_terms"]]
    for passage in _all_passages(tuple(train_texts)):
        if any(_find(a, passage) for a in answers) and all(_find(t, passage, whole_word=False) for t in terms):
            return True
    return False


# ---------------------------------------------------------------- the frequency-prior control


def option_frequencies(item: dict, train_text: str) -> list[int]:
    """How often each option (as written, whole words, normalised) occurs in the training text."""
    return [count_occurrences(option, train_text) for option in item["options"]]


def frequency_prior_guess(item: dict, train_text: str) -> str:
    """The letter a guesser picks that never reads the question: the most frequent option.

    Ties go to the earliest letter. Because the answer positions are shuffled, a tie then carries
    no information about the answer, and the rule is deterministic.
    """
    counts = option_frequencies(item, train_text)
    return LETTERS[counts.index(max(counts))]


def frequency_prior_hits(items: Sequence[dict], train_text: str) -> list[bool]:
    """Per item, whether `frequency_prior_guess` picks the answer (05 bootstraps these)."""
    return [frequency_prior_guess(it, train_text) == it["answer"] for it in items]


def frequency_prior_accuracy(items: Sequence[dict], train_text: str) -> dict:
    """Accuracy of `frequency_prior_guess`: overall and for seen / unseen items (by their tag)."""
    hits = {it["id"]: hit for it, hit in zip(items, frequency_prior_hits(items, train_text))}
    groups = {"overall": list(items), "seen": [it for it in items if it.get("seen_in_train") is True],
              "unseen": [it for it in items if it.get("seen_in_train") is False]}
    out = {}
    for name, group in groups.items():
        correct = sum(hits[it["id"]] for it in group)
        out[name] = {"n": len(group), "correct": correct, "accuracy": correct / len(group) if group else None}
    return out


def answer_frequency_ranks(items: Sequence[dict], train_text: str) -> Counter:
    """How many answers are the 1st, 2nd, 3rd, 4th most frequent option (ties share the best rank).

    Near-uniform ranks mean neither "pick the most frequent" nor "pick the rarest" beats chance.
    """
    ranks = Counter()
    for it in items:
        counts = option_frequencies(it, train_text)
        ranks[1 + sum(c > counts[LETTERS.index(it["answer"])] for c in counts)] += 1
    return ranks


def rare_distractors(item: dict, train_text: str, ratio: float = 0.5) -> list[str]:
    """Distractors that occur less than `ratio` times as often as the answer in the training text:
    options a model could reject for being unfamiliar rather than for being wrong."""
    counts = option_frequencies(item, train_text)
    answer_count = counts[LETTERS.index(item["answer"])]
    return [o for o, c in zip(item["options"], counts) if o != answer_text(item) and c < ratio * answer_count]


# ---------------------------------------------------------------- answer positions


def position_counts(items: Sequence[dict]) -> dict[str, int]:
    """How many answers sit at each letter."""
    counts = Counter(it["answer"] for it in items)
    return {letter: counts.get(letter, 0) for letter in LETTERS}


def positions_balanced(items: Sequence[dict]) -> bool:
    """Whether every letter holds within +-1 of n/4 of the answers."""
    quarter = len(items) / 4
    return all(abs(c - quarter) <= 1 for c in position_counts(items).values())


def is_fixed_cycle(letters: Sequence[str], max_period: int = 4) -> bool:
    """Whether the answer letters repeat with a period of at most `max_period` (A-B-C-D-A-B-... or
    A-A-A-...): a pattern a reader, or a model scoring items in order, could exploit."""
    letters = list(letters)
    return any(all(letters[i] == letters[i + p] for i in range(len(letters) - p))
               for p in range(1, min(max_period, len(letters) - 1) + 1))


def balanced_letters(n: int, rng: random.Random) -> list[str]:
    """n answer letters, each used floor(n/4) or ceil(n/4) times, in random order."""
    letters = list(LETTERS) * (n // 4) + rng.sample(LETTERS, n % 4)
    rng.shuffle(letters)
    return letters


def shuffle_positions(items: Sequence[dict], seed: int = SHUFFLE_SEED) -> list[dict]:
    """Copies of the items with the answer moved to a balanced, seeded random letter and the
    distractors (numbers included) in a seeded random order.

    Depends only on the seed, the ids and each item's set of options, not on their current order,
    so re-running it on its own output changes nothing, and adding a question leaves the other
    questions' distractor order unchanged.
    """
    order = sorted(range(len(items)), key=lambda i: items[i]["id"])
    targets = dict(zip(order, balanced_letters(len(items), random.Random(seed))))
    out = []
    for i, it in enumerate(items):
        answer = answer_text(it)
        distractors = sorted(o for o in it["options"] if o != answer)
        random.Random(f"{seed}:{it['id']}").shuffle(distractors)
        k = LETTERS.index(targets[i])
        out.append({**it, "options": distractors[:k] + [answer] + distractors[k:], "answer": targets[i]})
    return out


# ---------------------------------------------------------------- tags and the command line


def tag_items(items: Sequence[dict], train_texts: Sequence[str], train_ids: set[str],
              validation_ids: set[str]) -> list[dict]:
    """Copies with `seen_in_train` from `answer_seen_in_train` and `split` from the source article
    (kept as written when the article is in neither split, e.g. dropped as a duplicate)."""
    out = []
    for it in items:
        split = "validation" if it["source_id"] in validation_ids else "train" if it["source_id"] in train_ids \
            else it.get("split")
        tagged = {**it, "seen_in_train": answer_seen_in_train(it, train_texts)}
        if split:
            tagged["split"] = split
        out.append(tagged)
    return out


def check_report(items: Sequence[dict], train_texts: Sequence[str], train_ids: set[str],
                 validation_ids: set[str], seed: int = SHUFFLE_SEED) -> tuple[list[str], list[str]]:
    """(problems, notes) of a Q&A set against the training text: tags or splits that disagree with
    the checks, and positions that are unbalanced, cyclic or not the seeded shuffle, are problems;
    the rest is information."""
    train_text = "\n\n".join(train_texts)
    tagged = tag_items(items, train_texts, train_ids, validation_ids)
    problems = [f"{it['id']}: seen_in_train is {it.get('seen_in_train')}, the train split says {t['seen_in_train']}"
                for it, t in zip(items, tagged) if it.get("seen_in_train") != t["seen_in_train"]]
    problems += [f"{it['id']}: split is {it.get('split')}, its source article {it['source_id']} is in {t['split']}"
                 for it, t in zip(items, tagged) if it.get("split") != t.get("split")]
    counts = position_counts(items)
    if not positions_balanced(items):
        problems.append(f"answer positions not within +-1 of n/4: {counts}")
    if is_fixed_cycle([it["answer"] for it in items]):
        problems.append("answer positions follow a fixed cycle")
    if shuffle_positions(items, seed) != list(items):
        problems.append(f"options are not in the order of the seeded shuffle (seed {seed}); run --write")
    prior = frequency_prior_accuracy(tagged, train_text)
    notes = [f"{len(items)} items: {sum(t['seen_in_train'] for t in tagged)} seen in train, "
             f"{sum(not t['seen_in_train'] for t in tagged)} unseen; "
             f"source splits {dict(Counter(t.get('split') for t in tagged))}",
             f"answer types {dict(Counter(it.get('answer_type') for it in items))}",
             f"answer positions {counts}",
             "frequency-prior guesser: " + ", ".join(
                 f"{k} {v['correct']}/{v['n']}" + (f" = {v['accuracy']:.3f}" if v["n"] else "")
                 for k, v in prior.items()) + " (chance 0.25)",
             f"answer's frequency rank among its options (1 = most frequent): "
             f"{dict(sorted(answer_frequency_ranks(items, train_text).items()))}"]
    rare = {it["id"]: r for it in items if (r := rare_distractors(it, train_text))}
    if rare:
        notes.append(f"{len(rare)} items have a distractor under half as frequent as the answer: {rare}")
    return problems, notes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--qa-file", type=Path, default=QA_FILE)
    p.add_argument("--train-file", type=Path, default=TRAIN_FILE, help="processed train split (02_preprocess.py)")
    p.add_argument("--validation-file", type=Path, default=None,
                   help="processed validation split (default: validation.jsonl beside --train-file)")
    p.add_argument("--seed", type=int, default=SHUFFLE_SEED, help="seed of the answer-position shuffle (--write)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="report disagreeing tags, positions, controls")
    mode.add_argument("--write", action="store_true", help="rewrite tags, splits and positions in --qa-file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    items = load_qa(args.qa_file)
    train = read_jsonl(require(args.train_file))
    validation_file = args.validation_file or args.train_file.with_name("validation.jsonl")
    validation = read_jsonl(validation_file) if validation_file.exists() else []
    train_texts = [a.get("text") or "" for a in train]
    train_ids, validation_ids = {a["id"] for a in train}, {a["id"] for a in validation}
    if args.write:
        items = shuffle_positions(tag_items(items, train_texts, train_ids, validation_ids), args.seed)
        write_jsonl(args.qa_file, items)
        print(f"wrote {len(items)} items to {args.qa_file}")
    problems, notes = check_report(items, train_texts, train_ids, validation_ids, args.seed)
    for line in notes:
        print(line)
    for line in problems:
        print("PROBLEM:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
