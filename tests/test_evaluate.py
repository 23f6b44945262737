"""05_evaluate.py: the perplexity metric, option scoring, the Q&A set, the cloze set and a CLI run on tiny models."""
import json
import logging
import math
import os
import random
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bmwlm.modeling import load_model, load_tokenizer, pack_documents, remove_block, tokenize_texts
from conftest import ROOT, load_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ev = load_script("05_evaluate")

QA_FILE = ROOT / "data" / "qa" / "bmw_qa.jsonl"

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


# ---------------------------------------------------------------- perplexity metric


def test_perplexity_metric_of_uniform_predictions_is_the_vocabulary_size():
    metric = ev.load_perplexity_metric()
    V = 50
    out = metric.compute(nll=[255 * math.log(V), 9 * math.log(V)], tokens=[255, 9])
    assert out["perplexity"] == pytest.approx(V)
    assert out["tokens"] == 264


def test_perplexity_metric_weights_windows_by_tokens_not_by_window():
    metric = ev.load_perplexity_metric()
    out = metric.compute(nll=[10.0, 2.0], tokens=[4, 1])
    assert out["loss"] == pytest.approx(12.0 / 5)          # token-weighted, not (2.5 + 2.0) / 2
    assert out["perplexity"] == pytest.approx(math.exp(2.4))
    with pytest.raises(ValueError):
        metric.compute(nll=[0.0], tokens=[0])


class UniformLM(torch.nn.Module):
    """Predicts every token with probability 1/V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_perplexity_of_a_uniform_model_over_packed_windows_is_the_vocabulary_size():
    V = 37
    blocks = pack_documents([[1, 2, 3] * 7, [4, 5] * 9, [6] * 5], block_size=16, eos_id=0, keep_tail=True)
    res = ev.perplexity_of_blocks(UniformLM(V), blocks, batch_size=2, bf16=False)
    assert res["perplexity"] == pytest.approx(V, rel=1e-5)
    stream = 21 + 18 + 5 + 3
    assert res["tokens"] == stream - len(blocks)  # every token but the first of each window is predicted once
    assert res["windows"] == len(blocks) and res["tokens_per_s"] > 0


def test_validation_windows_are_packed_like_training_and_keep_the_tail(tiny_gpt2_dir):
    tok = load_tokenizer(tiny_gpt2_dir)
    texts = [a["text"] for a in ARTICLES]
    blocks = ev.documents_to_blocks(tok, texts, block_size=32)
    assert blocks == pack_documents(tokenize_texts(tok, texts), 32, tok.eos_token_id, keep_tail=True)
    assert sum(len(b) for b in blocks) == sum(len(d) + 1 for d in tokenize_texts(tok, texts))
    sliced = ev.first_tokens(blocks, 40)
    assert sum(len(b) - 1 for b in sliced) == 40


# ---------------------------------------------------------------- option scoring


def test_option_scores_equal_the_log_probs_of_the_option_tokens_after_the_prompt(tiny_gpt2_dir):
    model, tok = load_model(tiny_gpt2_dir).eval(), load_tokenizer(tiny_gpt2_dir)
    prompt, options = ev.qa_prompt("Where is the new plant in Hungary?"), ["Debrecen", "Leipzig", "Munich", "Steyr Plant"]
    scores = ev.score_options(model, tok, prompt, options)
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
    items = [{"id": "q1", "question": "Who?", "options": ["Anna", "Ben Smith Jones", "C", "Dora"], "answer": "A"},
             {"id": "q2", "question": "Which year did it start?", "options": ["1975", "2019", "2002", "1990"], "answer": "B"}]
    batched = ev.score_items(model, tok, items, batch_size=3, bf16=False)
    for it, got in zip(items, batched):
        single = ev.score_options(model, tok, ev.qa_prompt(it["question"]), it["options"])
        assert [g["sum"] for g in got] == pytest.approx([s["sum"] for s in single], abs=1e-4)


class PreferTokensLM(UniformLM):
    """Puts extra probability on a set of token ids: options made of them score higher."""

    def __init__(self, vocab: int, favoured):
        super().__init__(vocab)
        self.favoured = torch.tensor(sorted(favoured))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favoured] = 5.0
        return SimpleNamespace(logits=logits)


def _qa_items(n=12):
    items = []
    for i in range(n):
        pos = i % 4
        options = [f"option{i}x{j}" for j in range(3)]
        options.insert(pos, f"right{i}")
        items.append({"id": f"q{i}", "question": f"Question number {i}?", "options": options,
                      "answer": "ABCD"[pos], "split": "train" if i % 3 else "validation"})
    return items


def test_a_model_that_prefers_the_right_answers_scores_100_percent(tiny_gpt2_dir):
    tok = load_tokenizer(tiny_gpt2_dir)
    items = _qa_items()
    def token_ids(option):
        return set(tok(" " + option, add_special_tokens=False)["input_ids"])
    right = set().union(*(token_ids(it["options"]["ABCD".index(it["answer"])]) for it in items))
    wrong = set().union(*(token_ids(o) for it in items for k, o in enumerate(it["options"]) if "ABCD"[k] != it["answer"]))
    model = PreferTokensLM(len(tok), right - wrong)
    scores = ev.score_items(model, tok, items, bf16=False)
    summary, records = ev.evaluate_choices(items, scores, set_name="qa", model_key="base", by_split=True)
    assert summary["accuracy"] == 1.0 and all(r["correct"] for r in records)
    assert summary["by_split"]["train"]["n"] + summary["by_split"]["validation"]["n"] == len(items)
    assert summary["chance"] == 0.25


def test_accuracy_is_zero_for_a_reversed_scorer_and_near_chance_for_a_random_one():
    items = _qa_items(400)
    def scores(fn):
        return [[{"sum": fn(it, k), "mean": fn(it, k), "tokens": 1} for k in range(4)] for it in items]
    reversed_, _ = ev.evaluate_choices(items, scores(lambda it, k: -1.0 if "ABCD"[k] == it["answer"] else 0.0),
                                       set_name="qa", model_key="m")
    assert reversed_["accuracy"] == 0.0
    rng = random.Random(1)
    rand, _ = ev.evaluate_choices(items, scores(lambda it, k: rng.random()), set_name="qa", model_key="m")
    assert rand["ci95"][0] <= 0.25 <= rand["ci95"][1]


def test_bootstrap_interval_contains_the_accuracy_and_stays_in_0_1():
    correct = [True] * 13 + [False] * 31
    lo, hi = ev.bootstrap_ci(correct, n_resamples=2000, seed=0)
    acc = 13 / 44
    assert 0.0 <= lo < acc < hi <= 1.0
    assert ev.bootstrap_ci(correct, 2000, 0) == [lo, hi]          # fixed seed, same interval
    assert ev.bootstrap_ci([True] * 5, 100, 0) == [1.0, 1.0]
    assert ev.qa_accuracy([])["accuracy"] is None


def test_questions_are_tagged_by_the_split_their_article_is_actually_in():
    items = [{"id": "a", "source_id": "T1", "split": "validation"},
             {"id": "b", "source_id": "T2", "split": "train"},
             {"id": "c", "source_id": "T9", "split": "validation"}]
    out = ev.assign_splits(items, train_ids={"T1"}, validation_ids={"T2"})
    assert [(o["split"], o["split_source"]) for o in out] == [
        ("train", "processed"), ("validation", "processed"), ("validation", "qa_file")]


# ---------------------------------------------------------------- the hand-written Q&A set


def test_qa_set_has_at_least_40_well_formed_items_with_balanced_answer_positions():
    items = ev.load_qa_items(QA_FILE)
    assert len(items) >= 40
    ok, counts = ev.check_position_balance(items)
    assert ok, counts
    for it in items:
        assert len(it["options"]) == 4 and len(set(it["options"])) == 4
        assert it["answer"] in "ABCD" and it["split"] in ("train", "validation")
        assert it["id"].startswith("qa-") and it["source_id"]
    assert len({it["id"] for it in items}) == len(items)
    splits = Counter(it["split"] for it in items)
    assert 12 <= splits["validation"] <= 16


def test_qa_sources_exist_in_the_shared_corpus_and_validation_questions_are_about_the_newest_articles(shared_corpus):
    corpus = [json.loads(line) for line in shared_corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    newest = {a["id"] for a in sorted(corpus, key=lambda a: a["date"])[-50:]}
    ids = {a["id"] for a in corpus}
    for it in ev.load_qa_items(QA_FILE):
        assert it["source_id"] in ids, it["id"]
        assert (it["source_id"] in newest) == (it["split"] == "validation"), it["id"]


def test_a_malformed_qa_file_is_rejected_with_its_line_number(tmp_path):
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "q?", "options": ["a", "a", "b", "c"], "answer": "A"}) + "\n")
    with pytest.raises(ev.QAFormatError, match="line 1"):
        ev.load_qa_items(bad)


# ---------------------------------------------------------------- cloze set


def test_cloze_items_are_deterministic_by_seed():
    a = ev.build_cloze_items(ARTICLES, n=12, seed=3)
    assert a == ev.build_cloze_items(ARTICLES, n=12, seed=3)
    assert a != ev.build_cloze_items(ARTICLES, n=12, seed=4)
    assert a == ev.build_cloze_items(list(reversed(ARTICLES)), n=12, seed=3)  # input order does not matter


def test_cloze_answer_is_the_hidden_span_of_the_original_sentence_and_distractors_differ():
    items = ev.build_cloze_items(ARTICLES, n=12, seed=0)
    assert 8 <= len(items) <= 12
    by_id = {a["id"]: a for a in ARTICLES}
    for it in items:
        answer = it["options"]["ABCD".index(it["answer"])]
        assert it["sentence"] in by_id[it["source_id"]]["text"]
        assert it["sentence"].startswith(it["question"] + " " + answer)     # prefix + gap is the sentence
        assert it["prompt"].endswith(it["question"]) and answer not in it["prompt"]
        assert len(set(o.casefold() for o in it["options"])) == 4
        for o in it["options"]:
            if o != answer:
                assert o not in it["sentence"]
        assert it["split"] == "validation" and it["span_type"] in ("year", "number", "percent", "name")
    assert ev.check_position_balance(items)[0]


def test_cloze_distractors_are_of_the_same_kind_as_the_answer():
    patterns = {"year": ev._YEAR, "percent": ev._PERCENT, "number": ev._NUMBER, "name": ev._NAME}
    items = ev.build_cloze_items(ARTICLES, n=12, seed=1)
    assert len({it["span_type"] for it in items}) >= 3
    for it in items:
        assert all(patterns[it["span_type"]].fullmatch(o) for o in it["options"]), it


# ---------------------------------------------------------------- CLI on tiny models


def _write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, tiny_llama_dir):
    d = tmp_path_factory.mktemp("eval_inputs")
    validation = _write_jsonl(d / "validation.jsonl", ARTICLES[:4])
    train = _write_jsonl(d / "train.jsonl", [{**a, "id": f"TR{i}"} for i, a in enumerate(ARTICLES)])
    qa = []
    for i, it in enumerate(_qa_items(8)):
        qa.append({**it, "source_id": "V1" if i % 2 else "TR3", "split": "train"})
    qa_file = _write_jsonl(d / "qa.jsonl", qa)
    runs = d / "runs"
    shutil.copytree(tiny_llama_dir, runs / "full" / "model")        # "fine-tuned" full model; no pruned run
    (runs / "full" / "run.json").write_text(json.dumps({"train_seconds": 12.5, "tokens_per_s": 800.0, "steps": 3,
                                                        "config": {"block_size": 64}}))
    model = remove_block(load_model(tiny_llama_dir), 2)
    model.save_pretrained(d / "minus")
    load_tokenizer(tiny_llama_dir).save_pretrained(d / "minus")
    prune_file = d / "prune" / "block_importance.json"
    prune_file.parent.mkdir()
    prune_file.write_text(json.dumps({"removed_block": 2, "output_dir": str(d / "minus")}))
    return SimpleNamespace(dir=d, validation=validation, train=train, qa=qa_file, runs=runs, prune=prune_file,
                           base=tiny_llama_dir)


def _argv(inp, out, *extra):
    return ["--base-model", str(inp.base), "--runs-dir", str(inp.runs), "--prune-file", str(inp.prune),
            "--validation-file", str(inp.validation), "--train-file", str(inp.train), "--qa-file", str(inp.qa),
            "--out-dir", str(out), "--block-size", "32", "--max-new-tokens", "4", "--cloze-max", "8",
            "--bootstrap", "200", "--train-slice-tokens", "64", "--no-progress", *extra]


def test_cli_writes_the_three_records_and_reports_a_missing_model(eval_inputs, tmp_path, caplog):
    out = tmp_path / "eval"
    with caplog.at_level(logging.INFO):
        assert ev.main(_argv(eval_inputs, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "base_minus_block", "full", "pruned"}
    assert metrics["settings"]["block_size"] == 32 and metrics["settings"]["removed_block"] == 2

    pruned = metrics["models"]["pruned"]
    assert pruned["available"] is False and "03_train.py --variant pruned" in pruned["error"]
    assert "03_train.py --variant pruned" in caplog.text

    for key, blocks in (("base", 4), ("base_minus_block", 3), ("full", 4)):
        m = metrics["models"][key]
        assert m["available"] is True and m["error"] is None and m["blocks"] == blocks
        assert m["parameters"] > 0 and m["size_mb"] > 0
        v = m["validation"]
        assert v["perplexity"] == pytest.approx(math.exp(v["loss"])) and v["tokens"] > 0 and v["tokens_per_s"] > 0
        assert m["train_slice"]["tokens"] == 64
        qa = m["qa"]
        assert qa["n"] == 8 and qa["chance"] == 0.25 and 0 <= qa["ci95"][0] <= qa["accuracy"] <= qa["ci95"][1] <= 1
        assert set(qa["by_split"]) == {"train", "validation"}
        assert qa["by_split"]["validation"]["n"] == 4   # V1 is in the validation file, whatever the QA file says
        assert m["cloze"]["n"] > 0 and "mean_loglik_correct" in m["cloze"]
        assert m["generation"]["new_tokens_per_s"] > 0
    # the metric module is reused across models: each model's count starts from zero
    assert len({metrics["models"][k]["validation"]["tokens"] for k in ("base", "base_minus_block", "full")}) == 1
    assert metrics["models"]["full"]["training"]["train_seconds"] == 12.5
    assert metrics["models"]["base"]["training"] is None
    assert "bf16_check" in metrics["models"]["base"]

    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 3 * len(ev.GENERATION_PROMPTS) * 2
    assert {g["decoding"] for g in gens} == {"greedy", "sampled"}
    for g in gens:
        assert set(g) >= {"model", "prompt_id", "prompt", "decoding", "settings", "completion", "new_tokens", "seconds"}
        assert g["settings"]["repetition_penalty"] == ev.REPETITION_PENALTY and g["new_tokens"] <= 4

    preds = [json.loads(x) for x in (out / "qa_predictions.jsonl").read_text().splitlines()]
    keys = {"model", "set", "item_id", "question", "options", "answer", "predicted", "correct", "option_scores",
            "source_id", "split"}
    assert all(set(p) >= keys for p in preds)
    assert {p["set"] for p in preds} == {"qa", "cloze"}
    assert Counter(p["model"] for p in preds if p["set"] == "qa") == {"base": 8, "base_minus_block": 8, "full": 8}


def test_cli_subset_is_deterministic_and_unrequested_models_are_listed_as_unavailable(eval_inputs, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert ev.main(_argv(eval_inputs, out, "--models", "base", "--fp32")) == 0
        runs.append((json.loads((out / "metrics.json").read_text()), (out / "generations.jsonl").read_text()))
    (m1, g1), (m2, g2) = runs
    assert m1["models"]["full"]["available"] is False and "--models" in m1["models"]["full"]["error"]
    assert m1["models"]["base"]["qa"] == {**m2["models"]["base"]["qa"], "seconds": m1["models"]["base"]["qa"]["seconds"]}
    assert [json.loads(x)["completion"] for x in g1.splitlines()] == [json.loads(x)["completion"] for x in g2.splitlines()]


def test_missing_validation_split_or_qa_file_stops_with_a_clear_error(eval_inputs, tmp_path, caplog):
    argv = _argv(eval_inputs, tmp_path / "out")
    with caplog.at_level(logging.ERROR):
        assert ev.main([*argv, "--validation-file", str(tmp_path / "nope.jsonl")]) == 2
    assert "02_preprocess.py" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert ev.main([*argv, "--qa-file", str(tmp_path / "nope_qa.jsonl")]) == 2
    assert "Q&A" in caplog.text
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_missing_prune_record_names_04_prune_layer(eval_inputs, tmp_path):
    specs = ev.resolve_model_specs(str(eval_inputs.base), eval_inputs.runs, tmp_path / "none.json",
                                   ev.MODEL_KEYS)
    assert "04_prune_layer.py" in specs["base_minus_block"].error
    assert specs["base"].error is None and specs["full"].error is None
