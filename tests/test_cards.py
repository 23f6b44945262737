"""Model and dataset cards: Hub-format metadata generated from the run's own records."""
from __future__ import annotations

import json

import datasets
from huggingface_hub import DatasetCard, ModelCard

from bmwlm import cards


def _facts(**kw) -> cards.ModelFacts:
    base = dict(title="SmolLM2-135M fine-tuned on BMW press releases (full)", summary="A test model.",
                how_made=["Recipe: 240 steps."], base_model="smollm2-135m",
                results=[cards.Result("perplexity", 14.7, "validation split", "validation perplexity"),
                         cards.Result("accuracy", 0.38, "BMW Q&A set", "Q&A accuracy")])
    base.update(kw)
    return cards.ModelFacts(**base)


def test_model_card_metadata_is_in_the_hub_format_with_the_measured_results(tmp_path):
    path = cards.write_model_card(tmp_path, _facts())
    card = ModelCard.load(path)
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0" and meta["language"] == "en"
    assert meta["datasets"] == [cards.DATASET_ID]
    values = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert values == {"perplexity": 14.7, "accuracy": 0.38}
    for section in ("## How it was made", "## Results", "## Intended use", "## Limits", "## Training data"):
        assert section in card.text
    assert "| validation perplexity | validation split | 14.7 |" in card.text


def test_every_result_keeps_its_own_data_set_when_the_card_is_read_back():
    from types import SimpleNamespace

    acc = lambda v, n: SimpleNamespace(accuracy=v, n=n)  # noqa: E731  (a ChoiceScore's two fields cards read)
    entry = SimpleNamespace(validation=SimpleNamespace(perplexity=40.42), qa=acc(0.23, 100), cloze=acc(0.58, 138))
    results = [cards.Result("loss", 3.61, "calibration sample", "loss without the block", dataset_split="train"),
               *cards.eval_results(entry)]
    card = ModelCard(cards.render_model_card(_facts(results=results)))
    back = {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert back == {("calibration sample", "train", "loss"): 3.61, ("validation split", "validation", "perplexity"): 40.42,
                    ("BMW Q&A set", None, "accuracy"): 0.23, ("BMW cloze set", None, "accuracy"): 0.58}


def test_a_local_directory_is_not_named_as_a_hub_base_model(tmp_path):
    text = cards.render_model_card(_facts(base_model=str(tmp_path), results=[]))
    assert "base_model" not in ModelCard(text).data.to_dict()
    assert "Not measured yet" in text


def _report(tmp_path) -> dict:
    rows = {"train": [{"id": "T1", "published": "2025-01-02T10:00:00+01:00", "title": "A", "text": "A\n\nbody"}],
            "validation": [{"id": "T2", "published": "2025-02-02T10:00:00+01:00", "title": "B", "text": "B\n\nbody"}]}
    for name, records in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    split = lambda r: {"articles": 1, "tokens": 1234, "published_min": r["published"], "published_max": r["published"]}  # noqa: E731
    return {"articles": {"in": 3, "out": 2}, "dropped": {"too_short": {"count": 1}, "dedup_policy": "longest"},
            "splits": {name: split(records[0]) for name, records in rows.items()},
            "settings": {"split": "chronological", "val_fraction": 0.1, "rules": ["contact_block", "urls"],
                         "languages": ["en"]}}


def test_dataset_card_states_source_counts_split_rules_and_terms(tmp_path):
    report = _report(tmp_path)
    scrape = {"articles": 3, "finished_at": "2026-11-25T13:42:48+00:00"}
    path = cards.write_dataset_card(tmp_path, cards.dataset_facts(report, scrape))
    card = DatasetCard.load(path)
    assert card.data.to_dict()["license"] == "other"
    text = card.text
    assert cards.SOURCE_SITE in text and "2026-11-25" in text
    assert "| train | 1 | 1,234 | 2025-01-02 … 2025-01-02 |" in text
    assert "newest 10%" in text and "`contact_block`, `urls`" in text
    assert "too short: 1" in text and "publisher's terms" in text


def test_the_dataset_card_lets_load_dataset_find_the_splits(tmp_path):
    cards.write_dataset_card(tmp_path, cards.dataset_facts(_report(tmp_path), None))
    (tmp_path / "preprocess_report.json").write_text("{}")  # must not be taken for data
    ds = datasets.load_dataset(str(tmp_path))
    assert set(ds) == {"train", "validation"}
    assert ds["train"][0]["id"] == "T1" and ds["validation"][0]["id"] == "T2"
