"""What each model writes: press-release openings continued, and questions answered.

- Openings: six BMW press-release openings, greedy and sampled (fixed seed), to read the style.
- Questions: items of the Q&A set (half whose answer fact is in the training text, half not), asked
  without their options in two styles: plain text "Question: …\\nAnswer:" and through the tokenizer's
  chat template (the Instruct checkpoint the base comes from has one; a tokenizer without a template
  is recorded as "not available"). Greedy, so the answers are repeatable.

Three cheap measures of the answers (`answer_measures`), per model and style:
- contains the answer: the reference answer or one of its aliases occurs, as a whole word or phrase
  after `bmwlm.qaset.normalise`, in the answer text;
- on topic: the answer names one of the question's key terms or one of its four options (a
  candidate of the right kind), i.e. it talks about what was asked; repeating the question counts,
  so read it together with the other two;
- distinct-2: distinct word bigrams / all word bigrams of the whole completion (1 = no repetition).
The answer text is the completion up to the first blank line or a new "Question:" (a plain-text
model often goes on to invent the next question).

All prompts of a kind are batched (left-padded) and generated in float32: bf16 autocast slows
token-by-token decoding on CPU. Speed is not measured here (see `cost`).
"""
from __future__ import annotations

import re
import time
from typing import Sequence

import torch

from bmwlm import qaset
from bmwlm.evaluate.choice import accuracy_interval
from bmwlm.evaluate.qa import ChoiceItem, qa_prompt
from bmwlm.modeling import model_device
from bmwlm.records.evaluation import AnswerQuality, Generation, GenerationSummary

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
STYLES = ("plain", "chat")
ANSWER_TYPES = ("person", "place", "organisation", "vehicle")  # answers a free text can name
NO_TEMPLATE = "not available: the tokenizer has no chat template"
_ANSWER_END = re.compile(r"\n\s*\n|\bQuestion:")


def pick_questions(items: Sequence[ChoiceItem], n: int) -> list[ChoiceItem]:
    """`n` items (half seen in training, half not; by id) whose answer is a name a free answer can
    contain: the first of each group in id order, so the choice is fixed for a given Q&A file."""
    named = sorted((it for it in items if it.answer_type in ANSWER_TYPES), key=lambda it: it.id)
    seen = [it for it in named if it.seen_in_train is True]
    unseen = [it for it in named if it.seen_in_train is False]
    picked = seen[:n - n // 2] + unseen[:n // 2]
    rest = [it for it in named if it not in picked]
    return sorted(picked + rest[:max(0, n - len(picked))], key=lambda it: it.id)


def chat_prompt(tokenizer, question: str) -> str | None:
    """The question as a user turn through the tokenizer's chat template (None without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template([{"role": "user", "content": question.strip()}], tokenize=False,
                                         add_generation_prompt=True)


def answer_text(completion: str) -> str:
    """The answer part of a completion: up to the first blank line or a new "Question:"."""
    return _ANSWER_END.split(completion.strip(), maxsplit=1)[0].strip()


def distinct_2(text: str) -> float | None:
    words = text.lower().split()
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def answer_measures(item: ChoiceItem, completion: str) -> dict:
    """{"contains_answer", "on_topic", "distinct_2"} of one completion (see the module docstring)."""
    answer = answer_text(completion)
    forms = [item.answer_text, *item.answer_aliases]
    text = qaset.normalise(answer)
    return {"contains_answer": any(qaset.count_occurrences(f, answer) for f in forms),
            "on_topic": any(qaset.normalise(t) in text for t in item.key_terms)
            or any(qaset.count_occurrences(o, answer) for o in item.options),
            "distinct_2": distinct_2(completion)}


def _generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, settings: dict, seed: int):
    """(new token ids per prompt, cut at the first EOS; seconds of the batched call)."""
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(model_device(model))
    tokenizer.padding_side = old_side
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **settings)
    seconds = time.perf_counter() - start
    rows = []
    for ids in out[:, enc["input_ids"].shape[1]:].tolist():
        rows.append(ids[:ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids)
    return rows, seconds


def generate_samples(model, tokenizer, prompts: Sequence[tuple[str, str]], model_key: str, max_new_tokens: int = 60,
                     seed: int = 0) -> list[Generation]:
    """Greedy and sampled completions of every opening (generations.jsonl records)."""
    model.eval()
    records = []
    for decoding, settings in DECODINGS.items():
        rows, seconds = _generate(model, tokenizer, [p for _, p in prompts], max_new_tokens, settings, seed)
        for (prompt_id, prompt), ids in zip(prompts, rows):
            records.append(Generation(
                model=model_key, prompt_id=prompt_id, prompt=prompt, decoding=decoding,
                settings={"max_new_tokens": max_new_tokens, "seed": seed, "batched_prompts": len(prompts), **settings},
                completion=tokenizer.decode(ids, skip_special_tokens=True), new_tokens=len(ids),
                seconds=round(seconds, 2)))
    return records


def answer_questions(model, tokenizer, items: Sequence[ChoiceItem], model_key: str, max_new_tokens: int = 40,
                     n_resamples: int = 2000, seed: int = 0) -> tuple[list[Generation], dict[str, AnswerQuality]]:
    """Greedy answers to each question in each style, with their measures; the styles' summaries."""
    model.eval()
    records, quality = [], {}
    settings = DECODINGS["greedy"]
    for style in STYLES:
        prompts = [qa_prompt(it.question) if style == "plain" else chat_prompt(tokenizer, it.question) for it in items]
        if not items or prompts[0] is None:
            quality[style] = AnswerQuality(style=style, available=False, note=NO_TEMPLATE if items else "no questions",
                                           questions=0, contains_answer=None, on_topic=None, distinct_2=None)
            continue
        rows, seconds = _generate(model, tokenizer, prompts, max_new_tokens, settings, seed)
        measures = []
        for it, prompt, ids in zip(items, prompts, rows):
            completion = tokenizer.decode(ids, skip_special_tokens=True)
            m = answer_measures(it, completion)
            measures.append(m)
            records.append(Generation(
                model=model_key, prompt_id=f"{style}:{it.id}", prompt=prompt, decoding="greedy",
                settings={"max_new_tokens": max_new_tokens, "seed": seed, "batched_prompts": len(items), **settings},
                completion=completion, new_tokens=len(ids), seconds=round(seconds, 2), kind="question", style=style,
                item_id=it.id, seen_in_train=it.seen_in_train, **m))
        d2 = [m["distinct_2"] for m in measures if m["distinct_2"] is not None]
        quality[style] = AnswerQuality(
            style=style, available=True, note=None, questions=len(items),
            contains_answer=accuracy_interval([m["contains_answer"] for m in measures], None, n_resamples, seed),
            on_topic=accuracy_interval([m["on_topic"] for m in measures], None, n_resamples, seed),
            distinct_2=sum(d2) / len(d2) if d2 else None)
    return records, quality


def generation_summary(openings: int, questions: int, max_new_tokens: int, answer_new_tokens: int,
                       answers: dict[str, AnswerQuality], seconds: float) -> GenerationSummary:
    return GenerationSummary(openings=openings, questions=questions, max_new_tokens=max_new_tokens,
                             answer_new_tokens=answer_new_tokens, precision="float32", answers=answers,
                             seconds=round(seconds, 1))
