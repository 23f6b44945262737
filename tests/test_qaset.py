"""bmwlm.qaset and data/qa/bmw_qa.jsonl: the Q&A file's size, tags, positions and controls."""
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from bmwlm import qaset
from bmwlm.config import QA_FILE
from bmwlm.io import read_jsonl

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "qa"


@pytest.fixture(scope="module")
def qa_items():
    return qaset.load_qa(QA_FILE)


@pytest.fixture(scope="module")
def toy_items():
    return qaset.load_qa(FIXTURES / "qa.jsonl")


@pytest.fixture(scope="module")
def toy_train_text():
    return "\n\n".join(qaset.load_texts(FIXTURES / "train.jsonl"))


def _item(**overrides):
    item = {"id": "x-1", "question": "Which crane at the harbour can lift 300 tonnes?",
            "options": ["Alpha", "Beta", "Gamma", "Delta"], "answer": "A", "source_id": "S1",
            "key_terms": ["crane"]}
    return {**item, **overrides}


# ---------------------------------------------------------------- the committed Q&A file


def test_qa_file_has_at_least_96_items_and_at_least_40_unseen(qa_items):
    assert len(qa_items) >= 96
    assert all(isinstance(it.get("seen_in_train"), bool) for it in qa_items)
    assert sum(not it["seen_in_train"] for it in qa_items) >= 40


def test_answer_positions_are_balanced_within_one_of_a_quarter(qa_items):
    counts = qaset.position_counts(qa_items)
    assert all(abs(c - len(qa_items) / 4) <= 1 for c in counts.values()), counts
    assert qaset.positions_balanced(qa_items)


def test_answer_positions_are_not_a_fixed_cycle(qa_items):
    letters = [it["answer"] for it in qa_items]
    assert not qaset.is_fixed_cycle(letters)
    assert qaset.is_fixed_cycle(list("ABCD") * (len(letters) // 4))  # the check itself can fire


def test_committed_positions_are_the_seeded_shuffle(qa_items):
    assert qaset.shuffle_positions(qa_items, qaset.SHUFFLE_SEED) == qa_items


def test_every_seen_tag_agrees_with_a_search_of_the_real_train_split(qa_items, processed_corpus):
    train_texts = qaset.load_texts(processed_corpus / "train.jsonl")
    wrong = [it["id"] for it in qa_items if it["seen_in_train"] != qaset.answer_seen_in_train(it, train_texts)]
    assert not wrong, f"tags that disagree with the train split: {wrong}"


def test_answers_and_key_terms_occur_in_their_source_article_and_unseen_items_come_from_validation(
        qa_items, processed_corpus):
    splits = {name: {a["id"]: a["text"] for a in read_jsonl(processed_corpus / f"{name}.jsonl")}
              for name in ("train", "validation")}
    for it in qa_items:
        split = next(name for name, articles in splits.items() if it["source_id"] in articles)
        assert it["split"] == split, it["id"]
        source = qaset.normalise(splits[split][it["source_id"]])
        forms = [qaset.answer_text(it), *it.get("answer_aliases", [])]
        assert any(qaset.count_occurrences(f, source) for f in forms), f"{it['id']}: answer not in its source"
        assert all(qaset.normalise(t) in source for t in it["key_terms"]), f"{it['id']}: key term not in source"
        if not it["seen_in_train"]:
            assert split == "validation", f"{it['id']}: unseen but written from a training article"


def test_frequency_prior_guesser_is_near_chance_on_the_real_set(qa_items, processed_corpus):
    train_text = "\n\n".join(qaset.load_texts(processed_corpus / "train.jsonl"))
    result = qaset.frequency_prior_accuracy(qa_items, train_text)
    for group in ("overall", "seen", "unseen"):
        assert abs(result[group]["accuracy"] - 0.25) <= 0.10, result


# ---------------------------------------------------------------- the frequency prior (toy fixture)


def test_frequency_prior_guesser_picks_the_most_frequent_option(toy_items, toy_train_text):
    item = toy_items[0]  # Alpha occurs 5 times, Beta and Delta twice, Epsilon once
    assert qaset.option_frequencies(item, toy_train_text) == [2, 5, 2, 1]
    assert qaset.frequency_prior_guess(item, toy_train_text) == "B"
    for shift in range(1, 4):  # the guess follows the option, wherever it stands
        opts = item["options"][shift:] + item["options"][:shift]
        guess = qaset.frequency_prior_guess({**item, "options": opts}, toy_train_text)
        assert opts[qaset.LETTERS.index(guess)] == "Alpha"


def test_frequency_prior_guesser_breaks_ties_by_the_earliest_letter(toy_train_text):
    item = _item(options=["Epsilon", "Delta", "Beta", "Mira Holm"])  # counts 1, 2, 2, 0
    assert qaset.frequency_prior_guess(item, toy_train_text) == "B"


def test_frequency_prior_accuracy_is_reported_overall_and_by_seen_tag(toy_items, toy_train_text):
    result = qaset.frequency_prior_accuracy(toy_items, toy_train_text)
    assert result["overall"] == {"n": 4, "correct": 1, "accuracy": 0.25}
    assert result["seen"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert result["unseen"] == {"n": 2, "correct": 0, "accuracy": 0.0}


# ---------------------------------------------------------------- the seen/unseen rule (toy fixture)


def test_answer_counts_as_seen_only_with_the_key_terms_in_the_same_passage():
    texts = qaset.load_texts(FIXTURES / "train.jsonl")
    lighthouse = _item(question="Who led the restoration of the lighthouse?", key_terms=["lighthouse"],
                       options=["Jon Berg", "Mira Holm", "Ana Lind", "Alpha"])
    assert not qaset.answer_seen_in_train(lighthouse, texts)  # same article, five paragraphs apart
    volunteers = {**lighthouse, "question": "Who led the volunteers?", "key_terms": ["volunteers"]}
    assert qaset.answer_seen_in_train(volunteers, texts)
    bridge = _item(question="Who opened the bridge?", key_terms=["bridge"],
                   options=["Ana Lind", "Jon Berg", "Mira Holm", "Alpha"])
    assert not qaset.answer_seen_in_train(bridge, texts)  # only in the validation fixture


def test_seen_check_ignores_accents_and_accepts_aliases():
    texts = qaset.load_texts(FIXTURES / "train.jsonl")
    director = _item(question="Who directed the regatta?", key_terms=["regatta"],
                     options=["José Nuñez", "Mira Holm", "Ana Lind", "Jon Berg"])
    assert qaset.answer_seen_in_train(director, texts)  # the text spells it "Jose Nunez"
    capacity = _item(options=["300 t", "100 t", "200 t", "400 t"], key_terms=["crane"])
    assert not qaset.answer_seen_in_train(capacity, texts)
    assert qaset.answer_seen_in_train({**capacity, "answer_aliases": ["300 tonnes"]}, texts)


def test_fixture_tags_agree_with_the_rule():
    texts = qaset.load_texts(FIXTURES / "train.jsonl")
    tags = {it["id"]: qaset.answer_seen_in_train(it, texts) for it in qaset.load_qa(FIXTURES / "qa.jsonl")}
    assert tags == {"toy-1": True, "toy-2": False, "toy-3": False, "toy-4": True}


# ---------------------------------------------------------------- the shuffle


def test_shuffle_balances_positions_keeps_answers_and_does_not_sort_numbers():
    items = [_item(id=f"n-{i:02d}", options=[str(10 * i + k) for k in range(4)]) for i in range(30)]
    out = qaset.shuffle_positions(items, seed=7)
    assert qaset.positions_balanced(out) and not qaset.is_fixed_cycle([it["answer"] for it in out])
    assert [qaset.answer_text(it) for it in out] == [qaset.answer_text(it) for it in items]
    assert [sorted(it["options"]) for it in out] == [sorted(it["options"]) for it in items]
    assert sum(it["options"] == sorted(it["options"], key=int) for it in out) < 10
    assert qaset.shuffle_positions(out, seed=7) == out  # a fixed point: re-running changes nothing
    assert qaset.shuffle_positions(items, seed=8) != out


def test_balanced_letters_use_each_letter_floor_or_ceil_of_a_quarter():
    import random

    for n in (1, 4, 7, 98):
        counts = Counter(qaset.balanced_letters(n, random.Random(0)))
        assert sum(counts.values()) == n and max(counts.values()) - min(counts.get(x, 0) for x in "ABCD") <= 1


# ---------------------------------------------------------------- validation and the command line


@pytest.mark.parametrize("overrides, message", [
    ({"options": ["Alpha", "Beta", "Gamma"]}, "'options' must be a list of 4"),
    ({"options": ["Alpha", "alpha", "Gamma", "Delta"]}, "must be distinct"),
    ({"answer": "E"}, "'answer' must be one of A, B, C, D"),
    ({"key_terms": ["lighthouse"]}, "key term 'lighthouse' does not occur in the question"),
    ({"seen_in_train": "yes"}, "'seen_in_train' must be true or false"),
    ({"answer_type": "colour"}, "'answer_type' must be one of"),
])
def test_a_malformed_item_is_rejected_with_its_line_and_reason(overrides, message):
    items = [_item(), _item(id="x-2", **overrides)]
    with pytest.raises(qaset.QAFormatError, match="line 2 \\(x-2\\)") as err:
        qaset.validate_items(items, "qa.jsonl")
    assert message in str(err.value)


def test_missing_fields_duplicate_ids_and_bad_json_are_rejected(tmp_path):
    with pytest.raises(qaset.QAFormatError, match="line 1 .*missing field 'key_terms'"):
        qaset.validate_items([{k: v for k, v in _item().items() if k != "key_terms"}])
    with pytest.raises(qaset.QAFormatError, match="line 2 .*duplicate id 'x-1' \\(first on line 1\\)"):
        qaset.validate_items([_item(), _item()])
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps(_item()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(qaset.QAFormatError, match="not valid JSON"):
        qaset.load_qa(bad)


def test_check_reports_a_wrong_tag_and_write_repairs_it(tmp_path, capsys):
    work = tmp_path / "processed"
    shutil.copytree(FIXTURES, work)
    items = read_jsonl(work / "qa.jsonl")
    items[1]["seen_in_train"] = True
    (work / "qa.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    args = ["--qa-file", str(work / "qa.jsonl"), "--train-file", str(work / "train.jsonl")]

    assert qaset.main([*args, "--check"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: toy-2: seen_in_train is True, the train split says False" in out
    assert "frequency-prior guesser: overall 1/4" in out and "answer positions" in out

    assert qaset.main([*args, "--write"]) == 0
    assert qaset.main([*args, "--check"]) == 0
    assert [it["seen_in_train"] for it in qaset.load_qa(work / "qa.jsonl")] == [True, False, False, True]
