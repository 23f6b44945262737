"""Stage 05 (bmwlm.evaluate, 05_evaluate.py): the perplexity metric, option scoring, the Q&A set, the
cloze set, a real run of the script on tiny models, and the real 06 report built from its output.
(tests/test_evaluate_controls.py: per-article losses, the scoring controls, precision, answers, speed.)"""
import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bmwlm import qaset
from bmwlm.config import MODEL_KEYS, QA_FILE
from bmwlm.evaluate import choice, cloze, models, perplexity, qa, runner
from bmwlm.evaluate.data import load_eval_data
from bmwlm.evaluate.generation import GENERATION_PROMPTS, REPETITION_PENALTY
from bmwlm.evaluate.qa import ChoiceItem
from bmwlm.modeling import load_model, load_tokenizer, remove_block
from bmwlm.records.evaluation import Generation, Metrics, QAPrediction
from bmwlm.records.prune import BlockImportance, BlockScore, RemovalResult
from bmwlm.records.training import RunSummary
from bmwlm.windows import predicted_tokens, text_windows
from conftest import ROOT

ARTICLES = [
    {"id": "V1", "title": "Plant Debrecen starts production",
     "text": "Plant Debrecen starts production\n\nThe new plant in Hungary began building cars in October 2025. "
             "At the moment around 1,500 people work at the site near the city. "
             "The plant was opened by board member Milan Nedeljkovic in a ceremony."},
    {"id": "V2", "title": "Sales grow in Europe",
     "text": "Sales grow in Europe\n\nDeliveries of electric cars rose by 12 percent in the third quarter. "
             "In the period from July to September the company sold 245,000 vehicles. "
             "The result was welcomed by chief executive Oliver Zipse on Tuesday."},
    {"id": "V3", "title": "Racing team wins at Daytona",
     "text": "Racing team wins at Daytona\n\nThe team celebrated its first victory in the race in January 2019. "
             "Over the long weekend in Florida the car completed 780 laps. "
             "The fastest lap of the race was set by works driver Dries Vanthoor."},
    {"id": "V4", "title": "Motorcycle record",
     "text": "Motorcycle record\n\nThe motorcycle division sold more than 210,000 bikes in the record year. "
             "Compared with last season demand in Germany rose by 7 percent overall. "
             "The numbers were presented in Munich by team manager Sven Blusch."},
    {"id": "V5", "title": "Art car tour",
     "text": "Art car tour\n\nThe exhibition will show the cars in the museum until the summer of 2026. "
             "On the opening weekend of the show about 45,000 visitors came. "
             "The opening was attended by the artist Julie Mehretu and guests."},
    {"id": "V6", "title": "Golf tournament",
     "text": "Golf tournament\n\nThe tournament was first played near the city back in 1989 already. "
             "During the four rounds this year more than 58,000 spectators came. "
             "After a flawless final round the trophy was lifted by Daniel Brown."},
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one torch thread


def run_script(script: str, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=timeout)


# ---------------------------------------------------------------- perplexity


def test_perplexity_metric_of_uniform_predictions_is_the_vocabulary_size():
    metric = perplexity.load_perplexity_metric()
    V = 50
    out = metric.compute(nll=[255 * math.log(V), 9 * math.log(V)], tokens=[255, 9])
    assert out["perplexity"] == pytest.approx(V)
    assert out["tokens"] == 264


def test_perplexity_metric_weights_windows_by_tokens_not_by_window():
    metric = perplexity.load_perplexity_metric()
    out = metric.compute(nll=[10.0, 2.0], tokens=[4, 1])
    assert out["loss"] == pytest.approx(12.0 / 5)          # token-weighted, not (2.5 + 2.0) / 2
    assert out["perplexity"] == pytest.approx(math.exp(2.4))
    with pytest.raises(ValueError):
        metric.compute(nll=[0.0], tokens=[0])


class UniformLM(torch.nn.Module):
    """Predicts every token with probability 1/V (no cache: the scorer appends the options instead)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_perplexity_of_a_uniform_model_over_packed_articles_is_the_vocabulary_size(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    texts = [a["text"] for a in ARTICLES]
    res = perplexity.score_articles(UniformLM(len(tok)), tok, texts, [a["id"] for a in ARTICLES], 16, bf16=False,
                                    n_resamples=100)
    assert res.perplexity == pytest.approx(len(tok), rel=1e-5)
    assert res.ci95 == pytest.approx([len(tok), len(tok)], rel=1e-5)  # every article has the same loss per token
    windows = text_windows(tok, texts, 16)
    assert res.tokens == predicted_tokens(windows) and res.windows == len(windows) and res.articles == 6
    assert res.precision == "float32" and res.tokens_per_s > 0


def test_one_metric_module_serves_several_models_each_counted_from_zero(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    metric = perplexity.load_perplexity_metric()
    texts, ids = [ARTICLES[0]["text"]], ["V1"]
    V = len(tok)
    first = perplexity.score_articles(UniformLM(V), tok, texts, ids, 8, bf16=False, metric=metric, n_resamples=10)
    second = perplexity.score_articles(UniformLM(2 * V), tok, texts, ids, 8, bf16=False, metric=metric, n_resamples=10)
    assert first.tokens == second.tokens == predicted_tokens(text_windows(tok, texts, 8))
    assert second.perplexity == pytest.approx(2 * V, rel=1e-5)


# ---------------------------------------------------------------- option scoring


def test_option_scores_equal_the_log_probs_of_the_option_tokens_after_the_prompt(tiny_gpt2_dir):
    model, tok = load_model(tiny_gpt2_dir).eval(), load_tokenizer(tiny_gpt2_dir)
    prompt, options = qa.qa_prompt("Where is the new plant in Hungary?"), ["Debrecen", "Leipzig", "Munich", "Steyr Plant"]
    scores = choice.score_options(model, tok, prompt, options)
    ctx = tok(prompt, add_special_tokens=False)["input_ids"]
    for opt, s in zip(options, scores):
        cont = tok(" " + opt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
        expected = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
        assert s["tokens"] == len(cont)
        assert s["sum"] == pytest.approx(expected, abs=1e-4)
        assert s["mean"] == pytest.approx(expected / len(cont), abs=1e-4)


def test_batched_item_scoring_matches_one_item_at_a_time(tiny_llama_dir):
    model, tok = load_model(tiny_llama_dir).eval(), load_tokenizer(tiny_llama_dir)
    items = [ChoiceItem("q1", "Who?", ["Anna", "Ben Smith Jones", "C", "Dora"], "A"),
             ChoiceItem("q2", "Which year did it start?", ["1975", "2019", "2002", "1990"], "B")]
    own, neutral = choice.score_items(model, tok, items, bf16=False)
    for it, got, prior in zip(items, own, neutral):
        single = choice.score_options(model, tok, qa.qa_prompt(it.question), it.options)
        assert [g["sum"] for g in got] == pytest.approx([s["sum"] for s in single], abs=1e-4)
        alone = choice.score_options(model, tok, choice.NEUTRAL_PROMPT, it.options)
        assert [g["sum"] for g in prior] == pytest.approx([s["sum"] for s in alone], abs=1e-4)


class PreferTokensLM(UniformLM):
    """Puts extra probability on a set of token ids: options made of them score higher."""

    def __init__(self, vocab: int, favoured):
        super().__init__(vocab)
        self.favoured = torch.tensor(sorted(favoured))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favoured] = 5.0
        return SimpleNamespace(logits=logits)


def _qa_items(n=12) -> list[ChoiceItem]:
    items = []
    for i in range(n):
        pos = i % 4
        options = [f"option{i}x{j}" for j in range(3)]
        options.insert(pos, f"right{i}")
        items.append(ChoiceItem(f"q{i}", f"Question number {i}?", options, "ABCD"[pos],
                                split="train" if i % 3 else "validation", seen_in_train=i % 3 == 0,
                                answer_type="person", key_terms=["number"]))
    return items


def test_a_model_that_prefers_the_right_answers_scores_100_percent(tiny_gpt2_dir):
    tok = load_tokenizer(tiny_gpt2_dir)
    items = _qa_items()

    def token_ids(option):
        return set(tok(" " + option, add_special_tokens=False)["input_ids"])
    right = set().union(*(token_ids(it.options[it.answer_index]) for it in items))
    wrong = set().union(*(token_ids(o) for it in items for k, o in enumerate(it.options) if k != it.answer_index))
    model = PreferTokensLM(len(tok), right - wrong)
    own, neutral = choice.score_items(model, tok, items, bf16=False)
    summary, records = choice.evaluate_choices(items, own, neutral, set_name="qa", model_key="base",
                                               precision="float32")
    assert summary.accuracy == 1.0 and all(r.correct["normalised"] for r in records)
    assert summary.methods["prior_only"].accuracy.value == 1.0  # the preference needs no question
    norm = summary.methods["normalised"]
    assert (norm.seen.n, norm.unseen.n) == (4, 8) and norm.accuracy.unit == "item"
    assert summary.uniform_guess == 0.25


def test_accuracy_is_zero_for_a_reversed_scorer_and_near_chance_for_a_random_one():
    items = _qa_items(400)

    def scores(fn):
        return [[{"sum": fn(it, k), "mean": fn(it, k), "tokens": 1} for k in range(4)] for it in items]
    reversed_scores = scores(lambda it, k: -1.0 if k == it.answer_index else 0.0)
    reversed_, _ = choice.evaluate_choices(items, reversed_scores, reversed_scores, set_name="qa", model_key="m",
                                           precision="float32")
    assert reversed_.accuracy == 0.0
    rng = random.Random(1)
    random_scores = scores(lambda it, k: rng.random())
    rand, _ = choice.evaluate_choices(items, random_scores, random_scores, set_name="qa", model_key="m",
                                      precision="float32")
    lo, hi = rand.methods["normalised"].accuracy.ci95
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0
    assert choice.accuracy_interval([]) is None


def test_questions_are_retagged_by_their_article_split_and_a_search_of_this_train_split():
    row = {"question": "Which crane at the harbour lifts 300 tonnes?", "options": ["Alpha", "Beta", "Gamma", "Delta"],
           "answer": "A", "key_terms": ["crane"], "answer_type": "other"}
    rows = [{**row, "id": "a", "source_id": "T1", "split": "validation", "seen_in_train": False},
            {**row, "id": "b", "source_id": "T2", "split": "train", "seen_in_train": False},
            {**row, "id": "c", "source_id": "T9", "split": "validation", "seen_in_train": True}]
    train = ["The new crane Alpha lifts 300 tonnes."]
    items, changed = qa.tag_qa_items(rows, train, train_ids={"T1"}, validation_ids={"T2"})
    assert [(o.split, o.split_source) for o in items] == [
        ("train", "processed"), ("validation", "processed"), ("validation", "qa_file")]
    assert [o.seen_in_train for o in items] == [True, True, True] and changed == ["a", "b"]
    kept, none_changed = qa.tag_qa_items(rows, None, train_ids=set(), validation_ids=set())
    assert [o.seen_in_train for o in kept] == [False, False, True] and none_changed == []  # no train split


# ---------------------------------------------------------------- the hand-written Q&A set


def test_the_qa_file_loads_through_the_one_checker_with_its_tags():
    items = qa.load_qa_items(QA_FILE)
    assert [it.id for it in items] == [r["id"] for r in qaset.load_qa(QA_FILE)]
    counts = qa.answer_positions(items)
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    for it in items:
        assert it.answer in "ABCD" and it.split in ("train", "validation") and it.key_terms
        assert isinstance(it.seen_in_train, bool) and it.answer_type in qaset.ANSWER_TYPES
    tags = Counter(it.seen_in_train for it in items)
    assert tags[True] >= 12 and tags[False] >= 40  # questions on seen and on unseen facts


def test_qa_sources_exist_in_the_shared_corpus_and_validation_questions_are_about_the_newest_articles(shared_corpus):
    corpus = [json.loads(line) for line in shared_corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    newest = {a["id"] for a in sorted(corpus, key=lambda a: a["date"])[-50:]}
    ids = {a["id"] for a in corpus}
    for it in qa.load_qa_items(QA_FILE):
        assert it.source_id in ids, it.id
        assert (it.source_id in newest) == (it.split == "validation"), it.id


def test_a_malformed_qa_file_is_rejected_with_its_line_number(tmp_path):
    bad = tmp_path / "qa.jsonl"
    good = {"id": "x", "question": "Which q?", "options": ["a", "b", "c", "d"], "answer": "A", "source_id": "S",
            "key_terms": ["q"]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "y", "options": ["a", "a", "b", "c"]}) + "\n")
    with pytest.raises(qa.QAFormatError, match="line 2 .*must be distinct"):
        qa.load_qa_items(bad)
    bad.write_text(json.dumps({**good, "answer": "E"}) + "\n")
    with pytest.raises(qa.QAFormatError, match="line 1 .*'answer' must be one of"):
        qa.load_qa_items(bad)


# ---------------------------------------------------------------- cloze set


def test_cloze_items_are_deterministic_by_seed():
    a = cloze.build_cloze_items(ARTICLES, n=12, seed=3)
    assert a == cloze.build_cloze_items(ARTICLES, n=12, seed=3)
    assert a != cloze.build_cloze_items(ARTICLES, n=12, seed=4)
    assert a == cloze.build_cloze_items(list(reversed(ARTICLES)), n=12, seed=3)  # input order does not matter


def test_cloze_answer_is_the_hidden_span_of_the_original_sentence_and_distractors_differ():
    items = cloze.build_cloze_items(ARTICLES, n=12, seed=0)
    assert 8 <= len(items) <= 12
    by_id = {a["id"]: a for a in ARTICLES}
    for it in items:
        answer = it.options[it.answer_index]
        assert it.sentence in by_id[it.source_id]["text"]
        assert it.sentence.startswith(it.question + " " + answer)     # prefix + gap is the sentence
        assert it.prompt.endswith(it.question) and answer not in it.prompt
        assert len(set(o.casefold() for o in it.options)) == 4
        for o in it.options:
            if o != answer:
                assert o not in it.sentence
        assert it.split == "validation" and it.span_type in cloze.SPAN_PATTERNS
    counts = qa.answer_positions(items)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_cloze_distractors_are_of_the_same_kind_as_the_answer():
    items = cloze.build_cloze_items(ARTICLES, n=12, seed=1)
    assert len({it.span_type for it in items}) >= 3
    for it in items:
        assert all(cloze.SPAN_PATTERNS[it.span_type].fullmatch(o) for o in it.options), it


# ---------------------------------------------------------------- the real 05 on tiny models, then the real 06


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _run_summary(variant: str, base_model: str, model_dir: Path, block_size: int = 64) -> RunSummary:
    model = load_model(model_dir)
    params, blocks = sum(p.numel() for p in model.parameters()), model.config.num_hidden_layers
    return RunSummary(
        variant=variant, base_model=base_model, base_model_path=base_model, config={"block_size": block_size},
        overrides={}, seed=42, versions={}, cpu_model="test", threads=1, precision="float32", compiled=False,
        loss="model loss", parameters=params, blocks=blocks, train_blocks=10, validation_blocks=2,
        validation_blocks_total=2, validation_subset="all", steps=3, epochs=1.0, tokens_seen=768,
        train_seconds=12.5, eval_seconds=1.0, wall_seconds=15.0, tokens_per_s=61.4, matmul_gflops=1.0,
        share_of_peak=0.01, initial_eval_loss=10.9, final_eval_loss=10.7, final_train_loss=10.6,
        resumed_from_step=None, train_file="train.jsonl", validation_file="validation.jsonl",
        finished_at="2026-04-20T14:03:11+00:00")


def _block_importance(base: Path, output_dir: Path, removed: int) -> BlockImportance:
    return BlockImportance(
        base_model=str(base), base_model_path=str(base), method="loss_increase", eval_tokens=256, baseline_loss=10.8,
        scores=[BlockScore(block=b, loss_without=10.9, delta_loss=0.1, cosine_similarity=0.9, importance=0.1)
                for b in range(4)],
        selection="manual", removed_block=removed,
        naive_comparison={"chosen": RemovalResult(block=removed, loss=10.9), "last": RemovalResult(block=3, loss=11.0),
                          "middle": RemovalResult(block=2, loss=10.9)},
        output_dir=str(output_dir), parameters_before=100, parameters_after=90, blocks_before=4, blocks_after=3,
        seconds=1.0)


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, tiny_llama_dir):
    """Splits, an 8-question Q&A file, a "fine-tuned" full model with its run.json, 04's record and its
    smaller model; no pruned run (so that model is reported unavailable)."""
    d = tmp_path_factory.mktemp("eval_inputs")
    validation = _write_jsonl(d / "validation.jsonl", ARTICLES[:4])
    seen = {"id": "TR9", "title": "Numbers", "text": "Numbers\n\nThe number to remember is right1, then right3."}
    train = _write_jsonl(d / "train.jsonl", [{**a, "id": f"TR{i}"} for i, a in enumerate(ARTICLES)] + [seen])
    qa_rows = [{"id": it.id, "question": it.question, "options": it.options, "answer": it.answer,
                "source_id": "V1" if i % 2 else "TR3", "split": "train", "key_terms": ["number"],
                "answer_type": "person", "seen_in_train": False} for i, it in enumerate(_qa_items(8))]
    qa_file = _write_jsonl(d / "qa.jsonl", qa_rows)
    runs = d / "runs"
    shutil.copytree(tiny_llama_dir, runs / "full" / "model")
    _run_summary("full", str(tiny_llama_dir), tiny_llama_dir).save(runs / "full" / "run.json")
    remove_block(load_model(tiny_llama_dir), 2).save_pretrained(d / "minus")
    load_tokenizer(tiny_llama_dir).save_pretrained(d / "minus")
    prune_file = d / "prune" / "block_importance.json"
    _block_importance(tiny_llama_dir, d / "minus", removed=2).save(prune_file)
    return SimpleNamespace(dir=d, validation=validation, train=train, qa=qa_file, runs=runs, prune=prune_file,
                           base=tiny_llama_dir)


def _argv(inp, out, *extra):
    return ["--base-model", inp.base, "--runs-dir", inp.runs, "--prune-file", inp.prune,
            "--validation-file", inp.validation, "--train-file", inp.train, "--qa-file", inp.qa,
            "--out-dir", out, "--block-size", "32", "--max-new-tokens", "4", "--cloze-max", "8",
            "--bootstrap", "200", "--train-slice-tokens", "64", "--no-progress", "--threads", "1", "--questions", "4",
            "--answer-new-tokens", "4", "--cost-rounds", "2", "--cost-batch", "2", "--cost-new-tokens", "4",
            "--precision-check", "all", *extra]


@pytest.fixture(scope="module")
def evaluated(eval_inputs, tmp_path_factory):
    """The real 05_evaluate.py, run as a user runs it; returns its output folder and stderr."""
    out = tmp_path_factory.mktemp("eval")
    proc = run_script("05_evaluate.py", *_argv(eval_inputs, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(out=out, stderr=proc.stderr, metrics=Metrics.load(out / "metrics.json"))


def test_evaluate_measures_every_available_model_and_reports_the_missing_one(evaluated, eval_inputs):
    metrics = evaluated.metrics
    assert tuple(metrics.models) == MODEL_KEYS
    assert metrics.settings.block_size == 32 and metrics.settings.removed_block == 2
    assert metrics.settings.precision["qa_and_cloze"] == "float32" and metrics.settings.precision["perplexity"]
    pruned = metrics.models["pruned"]
    assert pruned.available is False and "03_train.py --variant pruned" in pruned.error
    assert "03_train.py --variant pruned" in evaluated.stderr

    tok = load_tokenizer(eval_inputs.base)
    windows = text_windows(tok, [a["text"] for a in ARTICLES[:4]], 32)
    for key, blocks in (("base", 4), ("base_minus_block", 3), ("full", 4)):
        m = metrics.entry(key)
        assert m is not None and m.error is None and m.blocks == blocks
        assert m.parameters > 0 and m.size_mb > 0
        v = m.validation
        assert v.perplexity == pytest.approx(math.exp(v.loss)) and v.tokens_per_s > 0
        assert (v.tokens, v.windows) == (predicted_tokens(windows), len(windows))  # every validation token, once
        assert sum(v.per_article.tokens) == v.tokens and v.articles == 4 and v.ci95[0] <= v.perplexity <= v.ci95[1]
        assert v.separators.separator_tokens <= 4 and v.precision == "bf16 autocast"
        assert m.train_slice.tokens >= 64 and "whole articles" in m.train_slice.selection
        assert m.qa.n == 8 and m.qa.uniform_guess == 0.25 and m.qa.precision == "float32"
        for method in ("normalised", "calibrated", "prior_only"):
            acc = m.qa.methods[method]
            assert 0 <= acc.accuracy.ci95[0] <= acc.accuracy.value <= acc.accuracy.ci95[1] <= 1
            assert (acc.seen.n, acc.unseen.n) == (2, 6)  # right1 and right3 are in the train split: re-tagged
        assert m.cloze.n > 0 and m.cloze.uniform_guess is None and m.cloze.methods["normalised"].accuracy.unit == "article"
        assert m.precision_check.items == 8 + m.cloze.n and m.precision_check.perplexity_windows > 0
        assert m.generation.answers["plain"].questions == 4 and not m.generation.answers["chat"].available
    assert metrics.settings.qa_seen == {"seen": 2, "unseen": 6} and len(metrics.settings.qa_seen_changed) == 2
    assert metrics.frequency_prior.accuracy.n == 8
    assert metrics.entry("full").training.train_seconds == 12.5
    assert metrics.entry("full").training.block_size == 64
    assert metrics.entry("base").training is None
    assert metrics.entry("base_minus_block").pruning.removed_block == 2
    assert metrics.cost.models == ["base", "base_minus_block"] and metrics.cost.rounds == 2
    pairs = {(c.a, c.b) for c in metrics.comparisons if c.family == "perplexity"}
    assert pairs == {("full", "base"), ("base_minus_block", "base")}  # pruned is unavailable
    assert {c.family for c in metrics.comparisons} == {"perplexity", "gap", "qa", "cloze", "baseline", "speed"}
    assert all(c.sentence and (c.detectable == (c.ci95[0] > 0 or c.ci95[1] < 0)) for c in metrics.comparisons)


def test_evaluate_writes_a_generation_and_a_prediction_per_model_item_and_decoding(evaluated):
    gens = [Generation.from_dict(json.loads(x)) for x in (evaluated.out / "generations.jsonl").read_text().splitlines()]
    openings = [g for g in gens if g.kind == "opening"]
    assert len(openings) == 3 * len(GENERATION_PROMPTS) * 2
    assert {g.decoding for g in openings} == {"greedy", "sampled"}
    assert all(g.settings["repetition_penalty"] == REPETITION_PENALTY and g.new_tokens <= 4 for g in gens)
    questions = [g for g in gens if g.kind == "question"]
    assert len(questions) == 3 * 4 and {g.style for g in questions} == {"plain"}  # no chat template: not asked
    assert all(g.prompt.startswith("Question: ") and g.contains_answer is not None for g in questions)
    preds = [QAPrediction.from_dict(json.loads(x))
             for x in (evaluated.out / "qa_predictions.jsonl").read_text().splitlines()]
    assert {p.set for p in preds} == {"qa", "cloze"}
    assert Counter(p.model for p in preds if p.set == "qa") == {"base": 8, "base_minus_block": 8, "full": 8}
    assert all(p.split_source in ("processed", "qa_file") for p in preds if p.set == "qa")
    assert all(p.span_type in cloze.SPAN_PATTERNS for p in preds if p.set == "cloze")
    for p in preds:  # every option's score under every method, and the pick each method makes from them
        assert set(p.option_scores) == set(p.predicted) == set(choice.METHODS)
        for method, scores in p.option_scores.items():
            assert len(scores) == 4 and p.predicted[method] == "ABCD"[choice.pick(scores)]
        assert p.option_scores["calibrated"] == pytest.approx(
            [a - b for a, b in zip(p.option_loglik_sum, p.option_loglik_sum_neutral)], abs=2e-5)


def test_the_real_report_shows_the_numbers_the_real_evaluation_wrote(evaluated, eval_inputs, tmp_path):
    report_dir = tmp_path / "report"
    proc = run_script("06_report.py", "--eval-dir", evaluated.out, "--runs-dir", eval_inputs.runs,
                      "--prune-dir", eval_inputs.prune.parent, "--processed-dir", tmp_path / "none",
                      "--raw-dir", tmp_path / "none", "--out-dir", report_dir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    metrics = evaluated.metrics
    table = md.split("## Metrics per model", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1]: [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| `")}
    assert list(rows) == list(MODEL_KEYS)
    for key in ("base", "base_minus_block", "full"):
        m = metrics.entry(key)
        v, t = m.validation, m.train_slice
        assert rows[key][5] == f"{v.perplexity:.2f} [{v.ci95[0]:.2f}, {v.ci95[1]:.2f}]"
        assert rows[key][6].startswith(f"{t.perplexity:.2f} [")
        assert rows[key][7].startswith(f"{100 * m.qa.accuracy:.1f}% ") and f"(n={m.qa.n})" in rows[key][7]
    assert set(rows["pruned"][1:]) == {"n/a"}
    assert rows["full"][10] == "12 s" and rows["base"][10] == "–"
    tradeoffs = md.split("## Trade-offs", 1)[1].split("\n## ", 1)[0]
    for c in metrics.comparisons:
        if (c.family, c.metric) == ("perplexity", "validation perplexity"):
            assert c.sentence in tradeoffs  # the sentence 05 wrote from its test, not a new comparison
    claims = [line[4:] for line in tradeoffs.splitlines() if line.startswith("  - ")]
    assert claims and all(any(claim.lower().endswith(c.sentence.lower()) for c in metrics.comparisons)
                          for claim in claims)  # every comparative sentence is one 05 wrote from a test
    section = md.split("## Paired comparisons", 1)[1].split("\n## ", 1)[0]
    rows_ = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| a − b")]
    assert len(rows_) == len(metrics.comparisons)  # one table row per comparison 05 made
    preds = [json.loads(x) for x in (evaluated.out / "qa_predictions.jsonl").read_text().splitlines()]
    right = sum(p["correct"]["normalised"] for p in preds if p["set"] == "qa" and p["model"] == "full")
    assert f"full {right}/8" in md.split("## Q&A answers item by item", 1)[1]
    assert md.split("## Generations: press-release openings", 1)[1].count("### Prompt") == len(GENERATION_PROMPTS)
    assert "not available: the tokenizer has no chat template" in md.split("## Generated answers", 1)[1]
    for png in ("perplexity.png", "qa_accuracy.png", "block_importance.png", "comparisons.png"):
        assert f"]({png})" in md and (report_dir / png).read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- the same measurements again, and failures


def _options(**changes) -> runner.EvalOptions:
    return replace(runner.EvalOptions(
        block_size=32, batch_size=8, score_batch_size=16, train_slice_tokens=64, bootstrap=200, seed=0,
        max_new_tokens=4, answer_new_tokens=4, questions=2, perplexity_bf16=False, choice_bf16=False,
        precision_check="none", precision_windows=2, progress=False), **changes)


def test_evaluating_a_model_twice_gives_the_same_scores_and_completions(eval_inputs):
    data = load_eval_data(eval_inputs.validation, eval_inputs.train, eval_inputs.qa, cloze_max=4, seed=0)
    spec = models.resolve_model_specs(str(eval_inputs.base), eval_inputs.runs, eval_inputs.prune, ["base"])["base"]
    metric = perplexity.load_perplexity_metric()
    (e1, g1, p1), (e2, g2, p2) = (runner.evaluate_model(spec, data, _options(), metric) for _ in range(2))
    assert replace(e1.qa, seconds=None) == replace(e2.qa, seconds=None)
    assert e1.validation.loss == e2.validation.loss and e1.validation.per_article == e2.validation.per_article
    assert [g.completion for g in g1] == [g.completion for g in g2] and [asdict(p) for p in p1] == [asdict(p) for p in p2]


def test_unrequested_and_missing_models_are_unavailable_with_the_stage_that_makes_them(eval_inputs, tmp_path):
    specs = models.resolve_model_specs(str(eval_inputs.base), eval_inputs.runs, eval_inputs.prune, ["base", "pruned"])
    assert specs["base"].error is None and "--models" in specs["full"].error
    assert "--models" in specs["base_minus_block"].error and specs["base_minus_block"].removed_block == 2
    assert "03_train.py --variant pruned (make train-pruned)" in specs["pruned"].error
    entry = models.empty_entry(specs["full"])
    assert entry.available is False and entry.training.train_seconds == 12.5  # the run's totals are still shown
    no_prune = models.resolve_model_specs(str(eval_inputs.base), eval_inputs.runs, tmp_path / "none.json", MODEL_KEYS)
    assert "04_prune_layer.py (make prune)" in no_prune["base_minus_block"].error
    moved = tmp_path / "block_importance.json"
    _block_importance(eval_inputs.base, tmp_path / "gone", removed=2).save(moved)
    gone = models.resolve_model_specs(str(eval_inputs.base), eval_inputs.runs, moved, MODEL_KEYS)["base_minus_block"]
    assert "is missing; run 04_prune_layer.py" in gone.error
