"""Stage 05's controls (bmwlm.evaluate): per-article losses and the separators, the three scoring
methods, intervals that resample the right unit, float32 vs bf16 flips, answers to questions in plain
and chat form, the interleaved speed measurement and the paired comparisons built from them."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from bmwlm.evaluate import choice, compare, cost, generation, perplexity, precision
from bmwlm.evaluate.qa import ChoiceItem, qa_prompt
from bmwlm.modeling import evaluate_nll, load_model, load_tokenizer, remove_block
from bmwlm.records.evaluation import ModelEntry, SplitScore
from bmwlm.windows import text_windows
from test_evaluate import ARTICLES

CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one torch thread


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_model(tiny_llama_dir).eval(), load_tokenizer(tiny_llama_dir)


def _items() -> list[ChoiceItem]:
    return [ChoiceItem("q1", "Which plant in Hungary started production?", ["Debrecen", "Leipzig", "Munich", "Steyr"],
                       "A", source_id="V1", seen_in_train=False, answer_type="place", key_terms=["Hungary"]),
            ChoiceItem("q2", "Who opened the plant?", ["Milan Nedeljkovic", "Oliver Zipse", "Dries Vanthoor",
                                                         "Julie Mehretu"], "A", source_id="V1", seen_in_train=True,
                       answer_type="person", key_terms=["plant"], answer_aliases=["Nedeljković"]),
            ChoiceItem("q3", "How many laps did the car complete?", ["780", "245", "1989", "58"], "A",
                       source_id="V3", seen_in_train=False, answer_type="number", key_terms=["laps"])]


# ---------------------------------------------------------------- perplexity per article


def test_per_article_nll_sums_equal_the_packed_token_weighted_loss(llama):
    model, tok = llama
    texts, ids = [a["text"] for a in ARTICLES], [a["id"] for a in ARTICLES]
    res = perplexity.score_articles(model, tok, texts, ids, 32, bf16=False, n_resamples=50)
    windows = text_windows(tok, texts, 32)
    packed_nll, packed_count = evaluate_nll(model, windows, bf16=False)
    a = res.per_article
    assert sum(a.tokens) == packed_count == res.tokens
    assert sum(a.nll) == pytest.approx(packed_nll, rel=1e-6)
    assert res.loss == pytest.approx(packed_nll / packed_count, rel=1e-6)
    assert a.article_ids == ids and all(t > 0 for t in a.tokens)


def test_each_token_and_the_separator_after_an_article_count_for_that_article(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    texts = [a["text"] for a in ARTICLES[:3]]
    packed = perplexity.pack_articles(tok, texts, 16)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # A fake loss: 1 nat for every token, 100 for a separator, 10 for an article's first token.
    nll = []
    for k, b in enumerate(packed.blocks):
        roles = packed.role[k * 16 + 1:k * 16 + len(b)]
        nll.append(np.where(roles == perplexity.SEPARATOR, 100.0, np.where(roles == perplexity.FIRST, 10.0, 1.0)))
    sums = perplexity.attribute(packed, nll, len(texts))
    stream = sum(n + 1 for n in lengths)
    starts = set(range(0, stream, 16))  # window starts are not predicted
    offset = 0
    for i, n in enumerate(lengths):
        own = set(range(offset, offset + n + 1))  # the article's tokens and its EOS
        sep_predicted = (offset + n) not in starts
        first_predicted = offset not in starts
        assert sums["tokens"][i] == len(own - starts)
        assert sums["separator_tokens"][i] == sep_predicted and sums["first_tokens"][i] == first_predicted
        assert sums["nll"][i] == len(own - starts) + 99 * sep_predicted + 9 * first_predicted
        offset += n + 1


def test_separator_share_and_perplexity_without_separators_follow_from_the_article_sums(llama):
    model, tok = llama
    texts, ids = [a["text"] for a in ARTICLES], [a["id"] for a in ARTICLES]
    res = perplexity.score_articles(model, tok, texts, ids, 32, bf16=False, n_resamples=50)
    a, sep = res.per_article, res.separators
    assert sep.separator_tokens == sum(a.separator_tokens) >= len(ARTICLES) - 1
    assert sep.share_of_loss == pytest.approx(sum(a.separator_nll) / sum(a.nll))
    expected = math.exp((sum(a.nll) - sum(a.separator_nll)) / (sum(a.tokens) - sum(a.separator_tokens)))
    assert sep.perplexity_without_separators.value == pytest.approx(expected)
    assert sep.perplexity_without_separators.unit == "article"


def test_train_slice_takes_whole_articles_spread_over_the_split(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    texts = [a["text"] for a in ARTICLES] * 4  # 24 articles
    picked = perplexity.train_slice(tok, texts, 150)
    assert picked == sorted(set(picked)) and len(picked) >= 2
    assert picked[0] > 0 and picked[-1] < len(texts) - 1 and picked[-1] - picked[0] >= len(texts) // 2
    assert perplexity.train_slice(tok, texts, 10**9) == list(range(len(texts)))


# ---------------------------------------------------------------- the three scoring methods


def test_the_prior_control_ignores_the_question(llama):
    model, tok = llama
    options = ["Debrecen", "Leipzig", "Munich", "Steyr"]
    a = ChoiceItem("a", "Where is the new plant in Hungary?", options, "A")
    b = ChoiceItem("b", "Which city hosts the art car exhibition?", options, "B")
    own, neutral = choice.score_items(model, tok, [a, b], bf16=False)
    prior_a, prior_b = (choice.method_scores(o, n)["prior_only"] for o, n in zip(own, neutral))
    assert prior_a == prior_b  # same options, different questions: the same scores
    assert [s["sum"] for s in own[0]] != pytest.approx([s["sum"] for s in own[1]], abs=1e-3)  # the question matters


def test_calibrated_score_is_the_question_loglik_minus_the_neutral_loglik(llama):
    model, tok = llama
    item = _items()[1]
    own, neutral = choice.score_items(model, tok, [item], bf16=False)
    scores = choice.method_scores(own[0], neutral[0])
    with_question = choice.score_options(model, tok, qa_prompt(item.question), item.options)
    without = choice.score_options(model, tok, choice.NEUTRAL_PROMPT, item.options)
    assert scores["calibrated"] == pytest.approx([q["sum"] - n["sum"] for q, n in zip(with_question, without)],
                                                 abs=1e-4)
    assert scores["normalised"] == pytest.approx([q["sum"] / q["tokens"] for q in with_question], abs=1e-4)
    assert scores["prior_only"] == pytest.approx([n["sum"] / n["tokens"] for n in without], abs=1e-4)


def _fake_scores(values):
    return [[{"sum": v, "mean": v, "tokens": 1} for v in row] for row in values]


def test_cloze_intervals_resample_articles_and_qa_intervals_items():
    items = [ChoiceItem(f"c{i}", "gap", ["a", "b", "c", "d"], "A", source_id=f"A{i // 3}") for i in range(12)]
    scores = _fake_scores([[1, 0, 0, 0] if (i // 3) % 2 else [0, 1, 0, 0] for i in range(12)])
    cloze, _ = choice.evaluate_choices(items, scores, scores, set_name="cloze", model_key="m", precision="float32")
    qa, _ = choice.evaluate_choices(items, scores, scores, set_name="qa", model_key="m", precision="float32")
    c, q = cloze.methods["normalised"].accuracy, qa.methods["normalised"].accuracy
    assert (c.unit, c.units, c.n) == ("article", 4, 12) and (q.unit, q.units) == ("item", 12)
    assert c.value == q.value == 0.5
    assert c.ci95[1] - c.ci95[0] > q.ci95[1] - q.ci95[0]  # whole articles right or wrong: a wider interval
    assert cloze.uniform_guess is None and qa.uniform_guess == 0.25


# ---------------------------------------------------------------- float32 vs bf16


def test_scoring_in_float32_and_bf16_picks_the_same_options_or_records_the_flips(llama):
    model, tok = llama
    items = _items()
    fp32, _ = choice.score_items(model, tok, items, bf16=False, neutral=False)
    check = precision.precision_check(model, tok, {"qa": (items, fp32)}, text_windows(tok, [ARTICLES[0]["text"]], 32))
    bf16, _ = choice.score_items(model, tok, items, bf16=True, neutral=False)
    flipped = [it.id for it, a, b in zip(items, fp32, bf16)
               if choice.pick([s["mean"] for s in a]) != choice.pick([s["mean"] for s in b])]
    assert [f.item_id for f in check.flips] == flipped  # every flip recorded, nothing else
    assert check.same_prediction == len(items) - len(flipped) and check.items == len(items)
    assert check.median_abs_diff_loglik < 0.5 and check.perplexity_float32 > 0 and check.perplexity_bf16 > 0


def test_a_near_tie_that_swaps_under_bf16_is_listed_as_a_flip():
    items = _items()[:2]
    fp32 = _fake_scores([[-1.000, -1.001, -3, -4], [-1, -2, -3, -4]])
    bf16 = _fake_scores([[-1.002, -1.001, -3, -4], [-1, -2, -3, -4]])
    n, same, flips, max_diff, median = precision.compare_picks({"qa": (items, fp32, bf16)})
    assert (n, same) == (2, 1) and max_diff == pytest.approx(0.002)
    assert [(f.item_id, f.float32, f.bf16) for f in flips] == [("q1", "A", "B")]
    assert flips[0].margin_float32 == pytest.approx(0.001)


# ---------------------------------------------------------------- answers to questions


def test_questions_are_asked_as_plain_text_and_through_the_chat_template(tiny_llama_dir, tmp_path):
    chat_dir = tmp_path / "chat"
    shutil.copytree(tiny_llama_dir, chat_dir)
    tok = load_tokenizer(chat_dir)
    tok.chat_template = CHAT_TEMPLATE
    model = load_model(chat_dir).eval()
    items = _items()[:2]
    records, quality = generation.answer_questions(model, tok, items, "base", max_new_tokens=5, n_resamples=50)
    assert [(r.style, r.item_id) for r in records] == [("plain", "q1"), ("plain", "q2"), ("chat", "q1"), ("chat", "q2")]
    assert records[0].prompt == qa_prompt(items[0].question)
    assert records[2].prompt == f"<|user|>{items[0].question}\n<|assistant|>"
    assert all(q.available and q.questions == 2 and q.contains_answer.n == 2 for q in quality.values())
    assert all(r.kind == "question" and r.contains_answer is not None and r.new_tokens <= 5 for r in records)

    plain_tok = load_tokenizer(tiny_llama_dir)  # no chat template
    records, quality = generation.answer_questions(model, plain_tok, items, "base", max_new_tokens=3, n_resamples=50)
    assert {r.style for r in records} == {"plain"}
    assert not quality["chat"].available and quality["chat"].note == generation.NO_TEMPLATE


def test_answer_measures_find_the_answer_or_an_alias_and_stay_on_topic():
    item = _items()[1]
    hit = generation.answer_measures(item, " It was opened by Milan Nedeljković.\n\nQuestion: Who else?")
    assert hit["contains_answer"] and hit["on_topic"]
    alias = generation.answer_measures(item, " nedeljkovic did.")
    assert alias["contains_answer"]
    later = generation.answer_measures(item, " Nobody.\nQuestion: Who opened it? Answer: Milan Nedeljkovic")
    assert not later["contains_answer"]  # an answer invented after a new "Question:" does not count
    wrong = generation.answer_measures(item, " Oliver Zipse opened it.")
    assert not wrong["contains_answer"] and wrong["on_topic"]  # a candidate of the right kind
    off = generation.answer_measures(item, " the the the the the")
    assert not off["on_topic"] and off["distinct_2"] == pytest.approx(0.25)
    assert generation.distinct_2("a b c d") == 1.0 and generation.distinct_2("word") is None


def test_questions_picked_are_half_seen_half_unseen_and_fixed():
    items = [ChoiceItem(f"qa-{i:03d}", "q", ["a", "b", "c", "d"], "A", seen_in_train=i % 2 == 0,
                        answer_type="person" if i % 5 else "number") for i in range(20)]
    picked = generation.pick_questions(items, 6)
    assert len(picked) == 6 and sum(it.seen_in_train for it in picked) == 3
    assert all(it.answer_type == "person" for it in picked) and picked == generation.pick_questions(items[::-1], 6)


# ---------------------------------------------------------------- speed, interleaved


def test_interleaved_cost_measurement_times_both_models_on_the_same_inputs(llama, tiny_llama_dir):
    model, tok = llama
    smaller = remove_block(load_model(tiny_llama_dir), 1).eval()
    windows = text_windows(tok, [a["text"] for a in ARTICLES], 16)
    result = cost.measure_cost({"base": model, "base_minus_block": smaller}, tok, windows, ["The new BMW"],
                               rounds=3, batch_size=2, new_tokens=6, n_resamples=50)
    assert result.models == ["base", "base_minus_block"] and result.train_batch == [2, 16]
    for c in result.per_model.values():
        assert len(c.train_step_rounds) == len(c.generation_rounds) == 3 and c.train_step_seconds.unit == "round"
        assert c.generation_tokens_per_s == pytest.approx(6 / c.generation_seconds_per_sequence.value, rel=1e-3)
    comps = compare.speed_comparisons(result, 50, 0)
    assert [(c.a, c.b, c.metric) for c in comps] == [("base_minus_block", "base", "training step time"),
                                                     ("base_minus_block", "base", "generation latency per sequence")]


def test_generation_timing_counts_every_position_even_after_eos(llama):
    model, tok = llama
    seconds = cost.generation_seconds(model, tok, "The new BMW", 5)
    assert seconds > 0  # generation_seconds raises if fewer than 5 positions were generated


# ---------------------------------------------------------------- paired comparisons


def _entry(per_article) -> ModelEntry:
    return ModelEntry(label="m", path=None, available=True, error=None,
                      validation=SplitScore(loss=0, perplexity=0, tokens=0, windows=0, per_article=per_article))


def test_perplexity_comparison_of_identical_models_finds_no_difference_and_of_a_better_one_a_direction(llama):
    model, tok = llama
    texts, ids = [a["text"] for a in ARTICLES], [a["id"] for a in ARTICLES]
    a = perplexity.score_articles(model, tok, texts, ids, 32, bf16=False, n_resamples=50).per_article
    better = type(a)(**{**a.to_dict(), "nll": [n - 0.5 * t for n, t in zip(a.nll, a.tokens)]})
    entries = {"base": _entry(a), "full": _entry(better), "base_minus_block": _entry(a)}
    comps = {(c.a, c.b, c.metric): c for c in compare.perplexity_comparisons(entries, 200, 0)}
    same = comps[("base_minus_block", "base", "validation perplexity")]
    assert same.difference == 0 and not same.detectable and same.sentence.startswith("no detectable difference")
    gain = comps[("full", "base", "validation perplexity")]
    assert gain.detectable and gain.ci95[1] < 0 and gain.sentence.startswith("full has lower validation perplexity")
    assert gain.ratio == pytest.approx(math.exp(-0.5), rel=1e-6)
