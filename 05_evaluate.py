"""Stage 05: evaluate the base, base-minus-block, full and pruned models side by side.

Reads
  - the models: `base` (--base-model, default the packaged SmolLM2-135M), `base_minus_block` (the
    `output_dir` named in outputs/prune/block_importance.json, written by 04_prune_layer.py), and
    `full` / `pruned` (outputs/runs/<variant>/model, written by 03_train.py --variant full|pruned);
  - data/processed/validation.jsonl (held-out articles) and train.jsonl (02_preprocess.py);
  - data/qa/bmw_qa.jsonl (hand-written multiple-choice questions on PressClub facts).
Writes (outputs/eval/, format in docs/records.md)
  - metrics.json: per model perplexity, Q&A and cloze accuracy, generation speed and cost;
  - generations.jsonl: greedy and sampled completions of a few BMW prompts from every model;
  - qa_predictions.jsonl: every scored Q&A and cloze item, per model.

Why each measurement is made the way it is
  - Perplexity: the validation articles are tokenized, EOS-separated and cut into non-overlapping
    `block_size` windows with `pack_documents(keep_tail=True)`: exactly how training packs them, so
    this number and 03_train.py's eval_loss curves agree. Every window is scored on its own and the
    loss is token-weighted over all validation tokens (the final sum / count goes through the
    `evaluate` module in metrics/perplexity). A sliding window (stride < block_size) would give each
    token more context and lower perplexity slightly, at k times the cost, and would no longer match
    the training curves. The loss on a fixed slice of the training split (the first articles in
    file order, --train-slice-tokens tokens) shows over-fitting next to it.
  - Q&A and cloze: each option is scored by its log-likelihood as a continuation of the prompt
    ("Question: {q}\\nAnswer:" + " {option}"; for cloze the article title and the sentence up to the
    gap). The prediction is the option with the highest *mean* log-probability per option token
    (length-normalised, so a long name is not penalised for having more tokens); the summed
    log-likelihood is stored as well. Accuracy comes with a percentile-bootstrap 95% interval and the
    chance level (0.25). Each Q&A question is tagged train/validation by looking its article up in the
    actual processed splits (the file's own `split` field is only the fallback), so the accuracy on
    questions about unseen articles can be told apart from memorisation.
  - The cloze set is built automatically from the validation articles (a fresh scrape brings new
    articles, and hand-written questions age): a number, year, percentage or name is hidden in a
    sentence and must be told apart from three values of the same kind taken from other articles.
  - Scoring runs under bfloat16 autocast (weights stay float32; a few items are checked against
    float32). Generation runs in float32: autocast slows token-by-token decoding on CPU.
  - Threads: on a shared machine the default (--threads 0) takes only the cores the load average
    says are free; see `auto_threads` for the measurement behind it.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bmwlm.config import (
    BLOCK_IMPORTANCE_FILE, DEFAULT_MODEL, EVAL_DIR, QA_FILE, ROOT, RUNS_DIR, TRAIN_FILE,
    VALIDATION_FILE, TrainConfig,
)
from bmwlm.io import MissingInputError, read_json, read_jsonl, require, setup_logging, write_json, write_jsonl

log = logging.getLogger("05_evaluate")

MODEL_KEYS = ("base", "base_minus_block", "full", "pruned")
PERPLEXITY_METRIC_DIR = ROOT / "metrics" / "perplexity"
LETTERS = "ABCD"
CHANCE = 0.25
PREPROCESS_STAGE = "02_preprocess.py (make preprocess)"

GENERATION_PROMPTS = [
    ("ix3", "The new BMW iX3"),
    ("sales", "BMW Group sales in"),
    ("mini", "MINI"),
    ("motorsport", "BMW M Motorsport"),
    ("announcement", "Munich. The BMW Group today announced"),
    ("rolls_royce", "Rolls-Royce Motor Cars"),
]
REPETITION_PENALTY = 1.1
DECODINGS = {
    "greedy": {"do_sample": False, "repetition_penalty": REPETITION_PENALTY},
    "sampled": {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "repetition_penalty": REPETITION_PENALTY},
}
TRAINING_KEYS = (
    "train_seconds", "wall_seconds", "tokens_per_s", "tokens_seen", "steps", "threads",
    "initial_eval_loss", "final_eval_loss", "final_train_loss", "finished_at",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class BadInputError(ValueError):
    """An input file cannot be read as expected; the message names the file (and line)."""


class QAFormatError(BadInputError):
    """The Q&A file is malformed; the message names the line."""


# ---------------------------------------------------------------- data


def _read_jsonl_checked(path: Path, error=BadInputError) -> list[dict]:
    try:
        return read_jsonl(path)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON lines ({exc})") from exc


def load_articles(path: Path) -> list[dict]:
    return _read_jsonl_checked(require(path, PREPROCESS_STAGE))


def document_text(article: dict) -> str:
    """The text a model is trained and scored on: the processed article's `text`."""
    return article.get("text") or ""


def load_qa_items(path: Path) -> list[dict]:
    """Read and check the Q&A file: an id, a question, 4 distinct options and an answer A–D per line."""
    items = _read_jsonl_checked(require(path, "the hand-written Q&A set (data/qa/bmw_qa.jsonl)"), QAFormatError)
    if not items:
        raise QAFormatError(f"{path} holds no questions")
    seen = set()
    for n, it in enumerate(items, 1):
        where = f"{path}, line {n}"
        for key in ("id", "question", "options", "answer"):
            if key not in it:
                raise QAFormatError(f"{where}: missing key {key!r}")
        opts = it["options"]
        if not isinstance(opts, list) or len(opts) != 4 or len({str(o).strip().casefold() for o in opts}) != 4:
            raise QAFormatError(f"{where}: need 4 distinct options, got {opts!r}")
        if it["answer"] not in tuple(LETTERS):
            raise QAFormatError(f"{where}: answer must be one of A–D, got {it['answer']!r}")
        if it["id"] in seen:
            raise QAFormatError(f"{where}: duplicate id {it['id']!r}")
        seen.add(it["id"])
    return items


def check_position_balance(items: Sequence[dict], tolerance: int = 1) -> tuple[bool, dict[str, int]]:
    """Whether the correct answers are spread over A–D (max - min count <= tolerance), and the counts."""
    counts = {letter: 0 for letter in LETTERS}
    for it in items:
        counts[it["answer"]] += 1
    return max(counts.values()) - min(counts.values()) <= tolerance, counts


def assign_splits(items: Sequence[dict], train_ids: set[str], validation_ids: set[str]) -> list[dict]:
    """Tag each question with the split its source article is actually in.

    `split_source` says where the tag came from: "processed" (found in train/validation.jsonl) or
    "qa_file" (the id is in neither, e.g. dropped as a duplicate: the file's own `split` is kept).
    """
    out = []
    for it in items:
        sid = it.get("source_id")
        if sid in validation_ids:
            split, source = "validation", "processed"
        elif sid in train_ids:
            split, source = "train", "processed"
        else:
            split, source = it.get("split"), "qa_file"
        out.append({**it, "split": split, "split_source": source})
    return out


def qa_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


# ---------------------------------------------------------------- cloze set

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“‘(]?[A-Z0-9])")
_PERCENT = re.compile(r"\b\d+(?:[.,]\d+)?(?:\s?%|\s(?:percent|per cent))")
_YEAR = re.compile(r"\b(?:19[0-9]{2}|20[0-4][0-9])\b")
_NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+(?:\.\d+)?\b|\b\d+\.\d+\b|\b\d{2,}\b")
_NAME = re.compile(r"\b[A-Z][a-zà-öø-ÿ]+(?:[ -][A-Z][a-zà-öø-ÿ]+){1,2}\b")
_NAME_STOPWORDS = {
    "The", "This", "That", "These", "Those", "In", "On", "At", "For", "With", "From", "By", "As", "And",
    "But", "Or", "It", "Its", "Our", "We", "He", "She", "They", "His", "Her", "Their", "After", "Since",
    "During", "When", "While", "Both", "All", "New", "Today", "Also", "Last", "Next", "First",
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
}
# Title-case words that mark a role, a unit or a generic phrase rather than a person, place or team.
_NAME_GENERIC = {
    "President", "Vice", "Director", "Head", "Manager", "Board", "Council", "Center", "Centre", "Award",
    "Awards", "Lead", "Project", "Chairman", "Officer", "Member", "Edition", "Collection", "Best",
    "Executive", "Producer", "Competence", "Control", "Performance", "Stories", "Capsule", "Audiences",
    "Plant", "Group", "Department", "Division", "Management", "Sales", "Marketing", "Development",
    "Production", "Press", "Release", "Media", "Information", "Communications", "Consumption",
}
CLOZE_MIN_PREFIX_CHARS = 25


def split_sentences(text: str) -> list[str]:
    """Sentences of a text (paragraphs on newlines, sentences on . ! ? followed by a capital)."""
    out = []
    for para in re.split(r"\n+", text):
        para = para.strip()
        if para:
            out.extend(s.strip() for s in _SENTENCE_END.split(para) if s.strip())
    return out


def find_spans(sentence: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every hideable span: percent, year, number, name (no overlaps)."""
    spans: list[tuple[int, int, str]] = []

    def free(s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b, _ in spans)

    for pattern, kind in ((_PERCENT, "percent"), (_YEAR, "year"), (_NUMBER, "number")):
        for m in pattern.finditer(sentence):
            if free(m.start(), m.end()):
                spans.append((m.start(), m.end(), kind))
    for m in _NAME.finditer(sentence):
        start, text = m.start(), m.group()
        # Drop a leading word that only is capitalised because it starts the sentence ("Artist Julie
        # Mehretu" -> "Julie Mehretu") or is a function word ("In Munich").
        while text and (start == 0 or text.split(" ")[0] in _NAME_STOPWORDS) and " " in text:
            cut = text.index(" ") + 1
            start, text = start + cut, text[cut:]
        words = re.split(r"[ -]", text)
        if (start > 0 and len(words) >= 2 and not any(w in _NAME_STOPWORDS or w in _NAME_GENERIC for w in words)
                and free(start, start + len(text))):
            spans.append((start, start + len(text), "name"))
    return sorted(spans)


def _shape(span: str, kind: str) -> tuple:
    """A finer type so distractors look alike: digit count and separators, or the number of words."""
    if kind in ("number", "percent"):
        digits = sum(c.isdigit() for c in span)
        return kind, "," in span, "." in span, min(digits, 7)
    if kind == "name":
        return kind, len(re.split(r"[ -]", span))
    return (kind,)


def build_cloze_items(articles: Sequence[dict], n: int, seed: int = 0, max_per_article: int = 3) -> list[dict]:
    """Fill-in-the-gap items from articles, deterministic for a given seed.

    In a sentence a span (a year, a number, a percentage or a capitalised multi-word name) is hidden;
    the prompt is the article title plus the sentence up to the gap, the options are the true span
    and 3 distractors of the same kind (same shape where possible) from *other* articles. The span
    must follow a space (so " {option}" continues the prompt naturally) and must not already appear
    in the prompt (no copying). Answer positions cycle A, B, C, D, so they are balanced.
    """
    rng = random.Random(seed)
    arts = sorted((a for a in articles if document_text(a)), key=lambda a: str(a.get("id")))
    pool: dict[str, dict[str, set[str]]] = {}  # kind -> span -> article ids
    candidates: dict[str, list[dict]] = {}
    for art in arts:
        aid, title = str(art.get("id")), (art.get("title") or "").strip()
        for sentence in split_sentences(document_text(art)):
            if sentence == title or not 8 <= len(sentence.split()) <= 60:
                continue
            spans = find_spans(sentence)
            for s, e, kind in spans:
                pool.setdefault(kind, {}).setdefault(sentence[s:e], set()).add(aid)
            usable = []
            for s, e, kind in spans:
                span, prefix = sentence[s:e], sentence[:s].rstrip()
                if s < CLOZE_MIN_PREFIX_CHARS or sentence[s - 1] != " ":
                    continue
                if span.casefold() in (title + " " + prefix).casefold():
                    continue
                usable.append({"source_id": aid, "title": title, "sentence": sentence, "prefix": prefix,
                               "span": span, "kind": kind})
            if usable:
                candidates.setdefault(aid, []).append(rng.choice(usable))
    chosen: list[dict] = []
    for aid in sorted(candidates):
        cands = candidates[aid]
        chosen.extend(rng.sample(cands, min(max_per_article, len(cands))))
    rng.shuffle(chosen)

    items: list[dict] = []
    for cand in chosen:
        if len(items) >= n:
            break
        kind, span = cand["kind"], cand["span"]
        others = sorted(
            s for s, ids in pool.get(kind, {}).items()
            if ids - {cand["source_id"]} and s.casefold() != span.casefold()
            and s.casefold() not in cand["sentence"].casefold()
        )
        same_shape = [s for s in others if _shape(s, kind) == _shape(span, kind)]
        pick_from = same_shape if len(same_shape) >= 3 else others
        distinct = list(dict.fromkeys(pick_from))
        if len(distinct) < 3:
            continue
        distractors = rng.sample(distinct, 3)
        pos = len(items) % len(LETTERS)
        options = distractors[:pos] + [span] + distractors[pos:]
        items.append({
            "id": f"cloze-{len(items) + 1:03d}",
            "question": cand["prefix"],
            "prompt": f"{cand['title']}\n\n{cand['prefix']}" if cand["title"] else cand["prefix"],
            "options": options,
            "answer": LETTERS[pos],
            "source_id": cand["source_id"],
            "split": "validation",
            "span_type": kind,
            "sentence": cand["sentence"],
        })
    return items


# ---------------------------------------------------------------- option scoring


def _encode_pair(tokenizer, prompt: str, option: str, max_length: int | None) -> tuple[list[int], list[int]]:
    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cont = tokenizer(" " + option.strip(), add_special_tokens=False)["input_ids"]
    if not ctx:
        ctx = [tokenizer.eos_token_id]
    if max_length and len(ctx) + len(cont) > max_length:
        ctx = ctx[-max(1, max_length - len(cont)):]
        cont = cont[: max_length - len(ctx)]
    return ctx, cont


def score_pairs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16, bf16: bool = True,
                progress: bool = False, desc: str = "score") -> list[dict]:
    """Log-likelihood of each option given its prompt: {"sum", "mean", "tokens"} per (prompt, option).

    Sequences are sorted by length and right-padded into batches; the log-probabilities of the option
    tokens are read off the positions that predict them.
    """
    import torch
    from tqdm.auto import tqdm

    from bmwlm.modeling import autocast_context

    max_length = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    encoded = [_encode_pair(tokenizer, p, o, max_length) for p, o in pairs]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[dict | None] = [None] * len(encoded)
    model.eval()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode(), autocast_context(bf16):
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            seqs = [encoded[i][0] + encoded[i][1] for i in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, :len(s)] = torch.tensor(s)
                mask[row, :len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            for row, i in enumerate(batch):
                ctx, cont = encoded[i]
                if not cont:
                    results[i] = {"sum": float("-inf"), "mean": float("-inf"), "tokens": 0}
                    continue
                start = len(ctx) - 1  # logits at position t predict token t + 1
                logp = torch.log_softmax(logits[row, start:start + len(cont)].float(), dim=-1)
                token_logp = logp.gather(1, torch.tensor(cont).unsqueeze(1)).squeeze(1)
                total = float(token_logp.sum())
                results[i] = {"sum": total, "mean": total / len(cont), "tokens": len(cont)}
    return results  # type: ignore[return-value]


def score_options(model, tokenizer, prompt: str, options: Sequence[str], bf16: bool = False) -> list[dict]:
    """Score each option as a continuation " {option}" of `prompt`: [{"sum", "mean", "tokens"}, ...]."""
    return score_pairs(model, tokenizer, [(prompt, o) for o in options], batch_size=len(options), bf16=bf16)


def item_prompt(item: dict) -> str:
    return item.get("prompt") or qa_prompt(item["question"])


def score_items(model, tokenizer, items: Sequence[dict], batch_size: int = 16, bf16: bool = True,
                progress: bool = False, desc: str = "score") -> list[list[dict]]:
    """Option scores of every item (all options of all items batched together)."""
    pairs = [(item_prompt(it), opt) for it in items for opt in it["options"]]
    flat = score_pairs(model, tokenizer, pairs, batch_size=batch_size, bf16=bf16, progress=progress, desc=desc)
    out, k = [], 0
    for it in items:
        out.append(flat[k:k + len(it["options"])])
        k += len(it["options"])
    return out


def pick_option(option_scores: Sequence[dict], normalise: str = "mean") -> int:
    """Index of the best option by mean log-prob per token ("mean") or total log-likelihood ("sum")."""
    values = [s[normalise] for s in option_scores]
    return max(range(len(values)), key=lambda i: values[i])


def bootstrap_ci(correct: Sequence[bool], n_resamples: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> list[float] | None:
    """Percentile-bootstrap interval of the accuracy (resample items with replacement)."""
    import numpy as np

    x = np.asarray(correct, dtype=float)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def qa_accuracy(correct: Sequence[bool], n_resamples: int = 2000, seed: int = 0, chance: float = CHANCE) -> dict:
    """{"n", "accuracy", "ci95", "chance"} of a list of right/wrong answers."""
    n = len(correct)
    return {
        "n": n,
        "accuracy": (sum(bool(c) for c in correct) / n) if n else None,
        "ci95": bootstrap_ci(correct, n_resamples, seed),
        "chance": chance,
    }


def evaluate_choices(items: Sequence[dict], scores: Sequence[Sequence[dict]], *, set_name: str, model_key: str,
                     n_resamples: int = 2000, seed: int = 0, by_split: bool = False) -> tuple[dict, list[dict]]:
    """Accuracy summary and one prediction record per item (docs/records.md `qa_predictions.jsonl`)."""
    records, correct, loglik_correct = [], [], []
    for it, opt_scores in zip(items, scores):
        pred = LETTERS[pick_option(opt_scores)]
        ok = pred == it["answer"]
        correct.append(ok)
        loglik_correct.append(opt_scores[LETTERS.index(it["answer"])]["mean"])
        rec = {
            "model": model_key, "set": set_name, "item_id": it["id"], "question": it["question"],
            "options": it["options"], "answer": it["answer"], "predicted": pred, "correct": ok,
            "option_scores": [round(s["mean"], 5) for s in opt_scores],
            "option_loglik_sum": [round(s["sum"], 5) for s in opt_scores],
            "option_tokens": [s["tokens"] for s in opt_scores],
            "source_id": it.get("source_id"), "split": it.get("split"),
        }
        for extra in ("split_source", "span_type"):
            if extra in it:
                rec[extra] = it[extra]
        records.append(rec)
    summary = qa_accuracy(correct, n_resamples, seed)
    finite = [v for v in loglik_correct if math.isfinite(v)]
    summary["mean_loglik_correct"] = (sum(finite) / len(finite)) if finite else None
    if by_split:
        summary["by_split"] = {}
        for split in ("train", "validation"):
            sub = [c for c, it in zip(correct, items) if it.get("split") == split]
            summary["by_split"][split] = {"n": len(sub), "accuracy": (sum(sub) / len(sub)) if sub else None}
    return summary, records


# ---------------------------------------------------------------- perplexity

_METRIC = None


def load_perplexity_metric():
    """The repo's `evaluate` perplexity module, loaded by path (no model hub)."""
    global _METRIC
    if _METRIC is None:
        import evaluate

        _METRIC = evaluate.load(str(PERPLEXITY_METRIC_DIR), keep_in_memory=True)
    return _METRIC


def documents_to_blocks(tokenizer, texts: Sequence[str], block_size: int) -> list[list[int]]:
    """Training's packing: tokenize, EOS after each document, non-overlapping windows, tail kept."""
    from bmwlm.modeling import pack_documents, tokenize_texts

    return pack_documents(tokenize_texts(tokenizer, texts), block_size, tokenizer.eos_token_id, keep_tail=True)


def first_tokens(blocks: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """The leading windows holding at most `max_tokens` predicted tokens (the last one cut to fit)."""
    out, total = [], 0
    for b in blocks:
        if total >= max_tokens:
            break
        room = max_tokens - total
        b = list(b[:room + 1])
        if len(b) >= 2:
            out.append(b)
            total += len(b) - 1
    return out


def perplexity_of_blocks(model, blocks: Sequence[Sequence[int]], batch_size: int = 8, bf16: bool = True,
                         progress: bool = False, desc: str = "perplexity") -> dict:
    """Token-weighted loss and perplexity over `blocks`, timed; the model forward is `evaluate_nll`."""
    from tqdm.auto import tqdm

    from bmwlm.modeling import evaluate_nll

    metric = load_perplexity_metric()
    # Group equal-length windows so each evaluate_nll call is one full batch.
    ordered = sorted(blocks, key=len, reverse=True)
    chunks = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    start = time.perf_counter()
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        nll, count = evaluate_nll(model, chunk, batch_size=batch_size, bf16=bf16)
        metric.add_batch(nll=[nll], tokens=[count])
    seconds = time.perf_counter() - start
    result = metric.compute()
    return {
        "loss": result["loss"], "perplexity": result["perplexity"], "tokens": result["tokens"],
        "windows": len(blocks), "seconds": round(seconds, 2),
        "tokens_per_s": round(result["tokens"] / seconds, 1) if seconds > 0 else None,
    }


# ---------------------------------------------------------------- generation


def generate_samples(model, tokenizer, prompts: Sequence[tuple[str, str]], model_key: str, max_new_tokens: int = 60,
                     seed: int = 0, progress: bool = False) -> tuple[list[dict], float | None]:
    """Greedy and sampled completions of every prompt (all prompts batched, left-padded, float32).

    Returns the generations.jsonl records and the new tokens per second over all calls. A record's
    `seconds` is the wall time of the batched call it was part of.
    """
    import torch
    from tqdm.auto import tqdm

    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = [p for _, p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = old_side
    records, total_new, total_seconds = [], 0, 0.0
    for decoding, settings in tqdm(list(DECODINGS.items()), desc="generate", disable=not progress, leave=False):
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **settings)
        seconds = time.perf_counter() - start
        total_seconds += seconds
        new = out[:, enc["input_ids"].shape[1]:]
        for row, (prompt_id, prompt) in enumerate(prompts):
            ids = new[row].tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[:ids.index(tokenizer.eos_token_id)]
            total_new += len(ids)
            records.append({
                "model": model_key, "prompt_id": prompt_id, "prompt": prompt, "decoding": decoding,
                "settings": {"max_new_tokens": max_new_tokens, "seed": seed, "batched_prompts": len(prompts),
                             **settings},
                "completion": tokenizer.decode(ids, skip_special_tokens=True),
                "new_tokens": len(ids), "seconds": round(seconds, 2),
            })
    return records, (round(total_new / total_seconds, 2) if total_seconds > 0 else None)


# ---------------------------------------------------------------- models


@dataclass
class ModelSpec:
    key: str
    label: str
    path: str | None = None
    error: str | None = None
    run_file: Path | None = None
    extra: dict = field(default_factory=dict)


def _display_path(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def _find_dir(raw: str, prune_file: Path) -> Path | None:
    """The model directory named in the prune record: absolute, or relative to cwd / the repo / the record's repo."""
    if not raw:
        return None
    p = Path(raw)
    parents = prune_file.resolve().parents
    bases = [] if p.is_absolute() else [Path.cwd(), ROOT] + ([parents[2]] if len(parents) > 2 else [])
    for cand in ([p] if p.is_absolute() else [b / p for b in bases]):
        if (cand / "config.json").exists():
            return cand
    return None


def read_prune_record(prune_file: Path) -> dict | None:
    """outputs/prune/block_importance.json, or None if it is missing or unreadable (logged)."""
    if not prune_file.exists():
        return None
    try:
        record = read_json(prune_file)
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s); re-run 04_prune_layer.py", prune_file, exc)
        return None
    return record if isinstance(record, dict) else None


def resolve_model_specs(base_model: str, runs_dir: Path, prune_file: Path, wanted: Sequence[str]) -> dict[str, ModelSpec]:
    """Where each of the four models lives, or why it is unavailable (naming the stage that makes it)."""
    from bmwlm.modeling import ModelUnavailableError, model_slug, resolve_model

    slug = model_slug(base_model)
    prune = read_prune_record(prune_file)
    block = prune.get("removed_block") if prune else None
    minus = f"minus block {block}" if block is not None else "minus one block"
    specs = {
        "base": ModelSpec("base", f"{slug} (base)"),
        "base_minus_block": ModelSpec("base_minus_block", f"{slug} {minus} (not fine-tuned)"),
        "full": ModelSpec("full", f"{slug} fine-tuned (full)", run_file=runs_dir / "full" / "run.json"),
        "pruned": ModelSpec("pruned", f"{slug} {minus}, fine-tuned", run_file=runs_dir / "pruned" / "run.json"),
    }
    for key, spec in specs.items():
        if key not in wanted:
            spec.error = "not evaluated (not in --models)"
            continue
        if key == "base":
            try:
                spec.path = resolve_model(base_model)
            except ModelUnavailableError as exc:
                spec.error = str(exc)
        elif key == "base_minus_block":
            if prune is None:
                spec.error = f"missing or unreadable {_display_path(prune_file)}; run 04_prune_layer.py first"
            else:
                found = _find_dir(str(prune.get("output_dir", "")), prune_file)
                if found is None:
                    spec.error = (f"model directory {prune.get('output_dir')!r} named in {_display_path(prune_file)} "
                                  "not found; run 04_prune_layer.py")
                else:
                    spec.path = str(found)
                    spec.extra["pruning"] = {k: prune.get(k) for k in ("removed_block", "selection", "method", "seconds")}
        else:
            model_dir = runs_dir / key / "model"
            if (model_dir / "config.json").exists():
                spec.path = str(model_dir)
            else:
                spec.error = f"missing {_display_path(model_dir)}; run 03_train.py --variant {key} first"
    return specs


def weights_size_mb(path: str | None) -> float | None:
    """Size of the weight files in a model directory, in MiB (None for a model-hub id)."""
    if not path or not Path(path).is_dir():
        return None
    size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return round(size / 2**20, 1)


def training_summary(run_file: Path | None) -> dict | None:
    if run_file is None or not run_file.exists():
        return None
    run = read_json(run_file)
    out = {k: run[k] for k in TRAINING_KEYS if k in run}
    if isinstance(run.get("config"), dict) and "block_size" in run["config"]:
        out["block_size"] = run["config"]["block_size"]
    return out


def empty_entry(spec: ModelSpec) -> dict:
    return {
        "label": spec.label, "path": _display_path(spec.path) if spec.path else None,
        "available": False, "error": spec.error, "parameters": None, "blocks": None, "size_mb": None,
        "validation": None, "train_slice": None, "qa": None, "cloze": None, "generation": None,
        "training": training_summary(spec.run_file), **spec.extra,
    }


# ---------------------------------------------------------------- one model


@dataclass
class EvalData:
    validation_texts: list[str]
    train_texts: list[str] | None
    qa_items: list[dict]
    cloze_items: list[dict]


def evaluate_model(spec: ModelSpec, data: EvalData, args, check_bf16: bool) -> tuple[dict, list[dict], list[dict]]:
    """All measurements of one model: (metrics entry, generation records, prediction records)."""
    from bmwlm.modeling import count_parameters, load_model, load_tokenizer, num_blocks

    entry = empty_entry(spec)
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(spec.path)
    model = load_model(spec.path)
    model.eval()
    entry.update(available=True, error=None, parameters=count_parameters(model), blocks=num_blocks(model),
                 size_mb=weights_size_mb(spec.path))
    progress = not args.no_progress
    bf16 = not args.fp32

    val_blocks = documents_to_blocks(tokenizer, data.validation_texts, args.block_size)
    entry["validation"] = perplexity_of_blocks(model, val_blocks, args.batch_size, bf16, progress, f"{spec.key} val")
    log.info("%s: validation loss %.4f, perplexity %.2f over %d tokens (%.0f tokens/s)", spec.key,
             entry["validation"]["loss"], entry["validation"]["perplexity"], entry["validation"]["tokens"],
             entry["validation"]["tokens_per_s"] or 0)
    if data.train_texts:
        target = args.train_slice_tokens or entry["validation"]["tokens"]
        train_blocks = first_tokens(documents_to_blocks(tokenizer, data.train_texts, args.block_size), target)
        ts = perplexity_of_blocks(model, train_blocks, args.batch_size, bf16, progress, f"{spec.key} train")
        entry["train_slice"] = {k: ts[k] for k in ("loss", "perplexity", "tokens", "windows")}
        log.info("%s: train-slice loss %.4f, perplexity %.2f over %d tokens", spec.key, ts["loss"],
                 ts["perplexity"], ts["tokens"])

    predictions = []
    for set_name, items in (("qa", data.qa_items), ("cloze", data.cloze_items)):
        if not items:
            continue
        start = time.perf_counter()
        scores = score_items(model, tokenizer, items, args.score_batch_size, bf16, progress, f"{spec.key} {set_name}")
        summary, recs = evaluate_choices(items, scores, set_name=set_name, model_key=spec.key,
                                         n_resamples=args.bootstrap, seed=args.seed, by_split=set_name == "qa")
        summary["seconds"] = round(time.perf_counter() - start, 2)
        entry[set_name] = summary
        predictions.extend(recs)
        log.info("%s: %s accuracy %.3f [%.3f, %.3f] (n=%d, chance %.2f)", spec.key, set_name, summary["accuracy"],
                 *(summary["ci95"] or [math.nan, math.nan]), summary["n"], CHANCE)

    if check_bf16 and bf16 and data.qa_items:
        entry["bf16_check"] = compare_precisions(model, tokenizer, data.qa_items[:args.bf16_check_items])
        log.info("%s: bf16 vs fp32 on %d Q&A items: max |Δ mean log-prob| %.4f, same prediction %d/%d", spec.key,
                 entry["bf16_check"]["items"], entry["bf16_check"]["max_abs_diff_mean_logprob"],
                 entry["bf16_check"]["same_prediction"], entry["bf16_check"]["items"])

    generations, gen_speed = generate_samples(model, tokenizer, GENERATION_PROMPTS, spec.key, args.max_new_tokens,
                                              args.seed, progress)
    entry["generation"] = {"new_tokens_per_s": gen_speed, "prompts": len(GENERATION_PROMPTS),
                           "max_new_tokens": args.max_new_tokens}
    log.info("%s: generation %.1f new tokens/s", spec.key, gen_speed or 0)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    del model
    gc.collect()
    return entry, generations, predictions


def compare_precisions(model, tokenizer, items: Sequence[dict]) -> dict:
    """Score a few items under bf16 autocast and in float32: how far apart are they?"""
    a = score_items(model, tokenizer, items, bf16=True)
    b = score_items(model, tokenizer, items, bf16=False)
    diffs = [abs(x["mean"] - y["mean"]) for sa, sb in zip(a, b) for x, y in zip(sa, sb)]
    same = sum(pick_option(sa) == pick_option(sb) for sa, sb in zip(a, b))
    return {"items": len(items), "max_abs_diff_mean_logprob": round(max(diffs), 5), "same_prediction": same}


# ---------------------------------------------------------------- main


def auto_threads() -> int:
    """Threads for a shared machine: the cores not already busy (1-minute load average), at least 1.

    Measured on the shared 2-core machine with two other jobs running: 1 thread scored 3x (perplexity)
    to 10x (Q&A, generation) faster than 2, because a 2-thread OpenMP region waits for whichever of its
    threads the scheduler has parked. On an idle machine all cores are used.
    """
    import os

    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(MODEL_KEYS), help="comma-separated subset of " + ",".join(MODEL_KEYS))
    p.add_argument("--base-model", default=DEFAULT_MODEL, help="the base model: packaged name, directory or hub id")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where 03_train.py wrote <variant>/model")
    p.add_argument("--prune-file", type=Path, default=BLOCK_IMPORTANCE_FILE, help="04_prune_layer.py's record")
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE)
    p.add_argument("--train-file", type=Path, default=TRAIN_FILE)
    p.add_argument("--qa-file", type=Path, default=QA_FILE)
    p.add_argument("--out-dir", type=Path, default=EVAL_DIR)
    p.add_argument("--block-size", type=int, default=TrainConfig.block_size, help="window length, as in training")
    p.add_argument("--batch-size", type=int, default=TrainConfig.per_device_eval_batch_size, help="perplexity batch")
    p.add_argument("--score-batch-size", type=int, default=16, help="option sequences per forward pass")
    p.add_argument("--train-slice-tokens", type=int, default=16384,
                   help="tokens of the training split scored for the over-fitting check (0: as many as validation)")
    p.add_argument("--cloze-max", type=int, default=150, help="at most this many automatic cloze items")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp32", action="store_true", help="score in float32 instead of bfloat16 autocast")
    p.add_argument("--bf16-check-items", type=int, default=4, help="Q&A items scored in both precisions (first model)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads; 0 = auto: all cores on an idle machine, fewer when others are busy")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in MODEL_KEYS]
    if unknown:
        p.error(f"unknown model key(s) {unknown}; choose from {', '.join(MODEL_KEYS)}")
    return args


def load_data(args) -> tuple[EvalData, dict]:
    """Validation and train articles, the Q&A set with its splits, the cloze set; plus data settings."""
    validation = load_articles(args.validation_file)
    if not validation:
        raise MissingInputError(f"{args.validation_file} holds no articles; re-run {PREPROCESS_STAGE}")
    train = None
    if args.train_file.exists():
        train = _read_jsonl_checked(args.train_file)
    else:
        log.warning("missing %s (made by %s): no train-slice loss", args.train_file, PREPROCESS_STAGE)
    qa = load_qa_items(args.qa_file)
    balanced, counts = check_position_balance(qa)
    if not balanced:
        log.warning("Q&A answer positions are unbalanced: %s", counts)
    qa = assign_splits(qa, {a["id"] for a in train or []}, {a["id"] for a in validation})
    cloze = build_cloze_items(validation, args.cloze_max, args.seed) if args.cloze_max > 0 else []
    split_sources = {src: sum(it["split_source"] == src for it in qa) for src in ("processed", "qa_file")}
    log.info("data: %d validation and %d train articles; %d Q&A items (answer positions %s; splits from "
             "processed files %d, from the Q&A file %d); %d cloze items", len(validation), len(train or []),
             len(qa), counts, split_sources["processed"], split_sources["qa_file"], len(cloze))
    settings = {
        "validation_articles": len(validation),
        "train_articles": len(train) if train is not None else None,
        "qa_items": len(qa),
        "qa_answer_positions": counts,
        "qa_split_source": split_sources,
        "qa_splits": {s: sum(it["split"] == s for it in qa) for s in ("train", "validation")},
        "cloze_items": len(cloze),
        "cloze_answer_positions": check_position_balance(cloze)[1] if cloze else None,
    }
    data = EvalData([document_text(a) for a in validation], [document_text(a) for a in train] if train else None,
                    qa, cloze)
    return data, settings


def summary_table(models: dict[str, dict]) -> str:
    def f(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "—"

    head = f"{'model':<17} {'params':>8} {'blocks':>6} {'MiB':>6} {'val ppl':>8} {'train ppl':>9} " \
           f"{'QA acc [95% CI]':>20} {'cloze acc':>9} {'gen tok/s':>9}"
    lines = [head, "-" * len(head)]
    for key, e in models.items():
        if not e["available"]:
            lines.append(f"{key:<17} unavailable: {e['error']}")
            continue
        qa, cl = e.get("qa") or {}, e.get("cloze") or {}
        ci = qa.get("ci95") or [None, None]
        qa_txt = f"{f(qa.get('accuracy'), '.2f')} [{f(ci[0], '.2f')}, {f(ci[1], '.2f')}]" if qa else "—"
        lines.append(
            f"{key:<17} {f(e['parameters'] / 1e6, '.1f') + 'M':>8} {e['blocks']:>6} {f(e['size_mb'], '.0f'):>6} "
            f"{f((e.get('validation') or {}).get('perplexity'), '.2f'):>8} "
            f"{f((e.get('train_slice') or {}).get('perplexity'), '.2f'):>9} {qa_txt:>20} "
            f"{f(cl.get('accuracy'), '.2f'):>9} {f((e.get('generation') or {}).get('new_tokens_per_s'), '.1f'):>9}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    import torch

    threads_before = torch.get_num_threads()
    threads = args.threads or auto_threads()
    torch.set_num_threads(threads)
    try:
        return run(args, threads)
    finally:
        torch.set_num_threads(threads_before)  # main() is also called in-process by the tests


def run(args, threads: int) -> int:
    import torch
    import transformers

    log.info("using %d torch thread(s)%s", threads, "" if args.threads else " (auto, from the load average)")
    started = time.perf_counter()
    try:
        data, data_settings = load_data(args)
    except (MissingInputError, BadInputError) as exc:
        log.error("%s", exc)
        return 2

    specs = resolve_model_specs(args.base_model, args.runs_dir, args.prune_file, args.model_list)
    removed = (read_prune_record(args.prune_file) or {}).get("removed_block")
    settings = {
        "models": args.model_list, "base_model": args.base_model, "removed_block": removed,
        "block_size": args.block_size, "windowing": "non-overlapping block_size windows, EOS-separated, tail kept",
        "batch_size": args.batch_size, "train_slice_tokens": args.train_slice_tokens or "as validation",
        "scoring_precision": "fp32" if args.fp32 else "bf16 autocast",
        "option_score": "mean log-prob per option token (sum stored too)",
        "qa_prompt": "Question: {question}\\nAnswer: {option}", "bootstrap_resamples": args.bootstrap,
        "seed": args.seed, "cloze_max": args.cloze_max, "max_new_tokens": args.max_new_tokens,
        "repetition_penalty": REPETITION_PENALTY, "qa_file": _display_path(args.qa_file),
        "validation_file": _display_path(args.validation_file), "train_file": _display_path(args.train_file),
        "threads": threads, "torch": torch.__version__, "transformers": transformers.__version__,
        **data_settings,
    }

    models: dict[str, dict] = {}
    generations: list[dict] = []
    predictions: list[dict] = []
    checked = False
    for key in MODEL_KEYS:
        spec = specs[key]
        if spec.error:
            if key in args.model_list:
                log.warning("%s: unavailable: %s", key, spec.error)
            models[key] = empty_entry(spec)
            continue
        log.info("%s: evaluating %s (%s)", key, spec.label, _display_path(spec.path))
        try:
            entry, gens, preds = evaluate_model(spec, data, args, check_bf16=not checked)
        except Exception as exc:  # one broken model must not cost the others their results
            log.error("%s: evaluation failed: %s: %s", key, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            spec.error = f"{type(exc).__name__}: {exc}"
            models[key] = empty_entry(spec)
            continue
        checked = checked or "bf16_check" in entry
        models[key] = entry
        generations.extend(gens)
        predictions.extend(preds)

    settings["seconds"] = round(time.perf_counter() - started, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.out_dir / "metrics.json", {"settings": settings, "models": models})
    write_jsonl(args.out_dir / "generations.jsonl", generations)
    write_jsonl(args.out_dir / "qa_predictions.jsonl", predictions)
    log.info("summary (chance accuracy %.2f; perplexity over non-overlapping %d-token windows):\n%s",
             CHANCE, args.block_size, summary_table(models))
    log.info("wrote %s, generations.jsonl, qa_predictions.jsonl in %.0f s", args.out_dir / "metrics.json",
             settings["seconds"])
    evaluated = [k for k in args.model_list if models[k]["available"]]
    if not evaluated:
        log.error("no model could be evaluated (%s)", "; ".join(f"{k}: {models[k]['error']}" for k in args.model_list))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
