"""Multiple-choice scoring: each option's log-likelihood as a continuation of a prompt, three ways.

Each option " {option}" is scored after two prompts: the item's own (the question, or the cloze
sentence up to the gap) and a neutral one (`NEUTRAL_PROMPT`). From these the three methods pick:

- `normalised`: the highest mean log-probability per option token given the question. Length-
  normalised, so a long name is not penalised for having more tokens. The headline method.
- `calibrated`: the highest log-likelihood given the question minus the log-likelihood given the
  neutral prompt (summed over the option's tokens): how much the question raises the option above
  its prior. An option the model likes anyway (a famous name) gains nothing from being familiar.
- `prior_only`: the option-prior control, the question removed: the highest mean log-probability per
  token given the neutral prompt alone. It cannot know the answer; what it scores is what a model gets
  from preferring some strings regardless of the question.

A prompt is run once and the options continue it from its key/value cache, so the cost grows with
the prompt once plus the options, not four times the prompt. Accuracy intervals come from
`bmwlm.stats`: the Q&A set resamples items, the cloze set resamples articles (several items come
from one article).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bmwlm import hardware, stats
from bmwlm.evaluate.qa import LETTERS, UNIFORM_GUESS, ChoiceItem
from bmwlm.modeling import autocast_context, model_device
from bmwlm.records.evaluation import ChoiceScore, Interval, MethodAccuracy, QAPrediction

NEUTRAL_PROMPT = "Answer:"
METHODS = {
    "normalised": "mean log-prob per option token given the question (the headline method)",
    "calibrated": f"summed log-likelihood given the question minus given the neutral prompt {NEUTRAL_PROMPT!r}",
    "prior_only": f"option-prior control: mean log-prob per option token given only {NEUTRAL_PROMPT!r}",
}
PRECISIONS = {True: "bf16 autocast", False: "float32"}


def precision_name(bf16: bool, device: torch.device | str = "cpu") -> str:
    """How records name the precision of a measurement: "float32", "bf16 autocast" on a CPU, and the
    autocast dtype that `autocast_context` picks for a GPU ("bfloat16 autocast" / "float16 autocast")."""
    if bf16 and torch.device(device).type != "cpu":
        return hardware.precision_name(hardware.autocast_dtype(device))
    return PRECISIONS[bool(bf16)]


def _max_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)


def score_pairs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 32, bf16: bool = False,
                progress: bool = False, desc: str = "score") -> list[dict]:
    """Log-likelihood of " {option}" after its prompt: {"sum", "mean", "tokens"} per (prompt, option).

    Pairs that share a prompt are scored together: the prompt runs once (batch of one, no padding), its
    cache is repeated for up to `batch_size` options, which run right-padded after it. The first option
    token is read off the prompt's last position, the others off the option positions.
    """
    max_length = _max_length(model)
    by_prompt: dict[str, list[int]] = {}
    for i, (prompt, _) in enumerate(pairs):
        by_prompt.setdefault(prompt, []).append(i)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[dict | None] = [None] * len(pairs)
    chunks = [(prompt, rows[k:k + batch_size]) for prompt, rows in by_prompt.items()
              for k in range(0, len(rows), batch_size)]
    model.eval()
    with torch.inference_mode(), autocast_context(bf16, model_device(model)):
        for prompt, rows in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
            conts = [tokenizer(" " + pairs[i][1].strip(), add_special_tokens=False)["input_ids"] for i in rows]
            longest = max(len(c) for c in conts)
            if max_length and len(ctx) + longest > max_length:
                ctx = ctx[-max(1, max_length - longest):]
            first, rest = _option_logprobs(model, ctx, conts, pad_id)
            for r, (i, c) in enumerate(zip(rows, conts)):
                if not c:
                    results[i] = {"sum": float("-inf"), "mean": float("-inf"), "tokens": 0}
                    continue
                total = float(first[c[0]]) + sum(float(rest[r, j - 1, c[j]]) for j in range(1, len(c)))
                results[i] = {"sum": total, "mean": total / len(c), "tokens": len(c)}
    return results  # type: ignore[return-value]


def _option_logprobs(model, ctx: list[int], conts: list[list[int]], pad_id: int):
    """(log-probs at the prompt's last position, log-probs at each option position or None).

    The prompt runs once and its cache is repeated for the options; a model that returns no cache
    (a test stand-in) gets the options appended to the prompt instead, with the same result.
    """
    longest = max(len(c) for c in conts)
    device = model_device(model)
    out = model(input_ids=torch.tensor([ctx], device=device), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    if longest <= 1:
        return first, None
    ids = torch.full((len(conts), longest - 1), pad_id, dtype=torch.long, device=device)
    for r, c in enumerate(conts):
        if len(c) > 1:
            ids[r, :len(c) - 1] = torch.tensor(c[:-1], device=device)  # position j predicts option token j + 1
    cache = getattr(out, "cache", None)
    if cache is not None:
        cache.batch_repeat_interleave(len(conts))
        logits = model(input_ids=ids, cache=cache).logits
    else:
        full = torch.cat([torch.tensor([ctx] * len(conts), device=device), ids], dim=1)
        logits = model(input_ids=full).logits[:, len(ctx):]
    return first, torch.log_softmax(logits.float(), dim=-1)


def score_options(model, tokenizer, prompt: str, options: Sequence[str], bf16: bool = False) -> list[dict]:
    """Score each option as a continuation " {option}" of `prompt`: [{"sum", "mean", "tokens"}, ...]."""
    return score_pairs(model, tokenizer, [(prompt, o) for o in options], bf16=bf16)


def _per_item(items: Sequence[ChoiceItem], flat: list[dict]) -> list[list[dict]]:
    out, k = [], 0
    for it in items:
        out.append(flat[k:k + len(it.options)])
        k += len(it.options)
    return out


def score_items(model, tokenizer, items: Sequence[ChoiceItem], bf16: bool = False, neutral: bool = True,
                progress: bool = False, desc: str = "score") -> tuple[list[list[dict]], list[list[dict]] | None]:
    """Option scores of every item given its own prompt, and (with `neutral`) given `NEUTRAL_PROMPT`."""
    own = score_pairs(model, tokenizer, [(it.context, o) for it in items for o in it.options], bf16=bf16,
                      progress=progress, desc=desc)
    if not neutral:
        return _per_item(items, own), None
    prior = score_pairs(model, tokenizer, [(NEUTRAL_PROMPT, o) for it in items for o in it.options], bf16=bf16,
                        progress=progress, desc=f"{desc} (neutral)")
    return _per_item(items, own), _per_item(items, prior)


def method_scores(own: Sequence[dict], neutral: Sequence[dict]) -> dict[str, list[float]]:
    """The four option scores each method ranks (see the module docstring)."""
    return {"normalised": [s["mean"] for s in own],
            "calibrated": [a["sum"] - b["sum"] for a, b in zip(own, neutral)],
            "prior_only": [b["mean"] for b in neutral]}


def pick(scores: Sequence[float]) -> int:
    """Index of the highest score (ties: the earliest option)."""
    return max(range(len(scores)), key=lambda i: scores[i])


def interval(estimate: stats.Estimate) -> Interval:
    return Interval(**estimate.to_dict())


def accuracy_interval(correct: Sequence[bool], clusters: Sequence | None = None, n_resamples: int = stats.N_RESAMPLES,
                      seed: int = 0) -> Interval | None:
    """Accuracy with its bootstrap interval (None for no items); `clusters` = article per item for cloze."""
    if not correct:
        return None
    return interval(stats.bootstrap_mean([float(c) for c in correct], clusters, n_resamples, seed))


def _round(values: Sequence[float]) -> list[float]:
    return [round(v, 5) if math.isfinite(v) else v for v in values]


def evaluate_choices(items: Sequence[ChoiceItem], own: Sequence[Sequence[dict]], neutral: Sequence[Sequence[dict]],
                     *, set_name: str, model_key: str, precision: str, n_resamples: int = stats.N_RESAMPLES,
                     seed: int = 0) -> tuple[ChoiceScore, list[QAPrediction]]:
    """Accuracy of every method (with intervals; Q&A also by seen/unseen tag) and one auditable
    prediction record per item holding every option's score under every method."""
    records, correct = [], {m: [] for m in METHODS}
    score_correct: dict[str, list[float]] = {m: [] for m in METHODS}
    for it, o, n in zip(items, own, neutral):
        scores = method_scores(o, n)
        predicted = {m: LETTERS[pick(s)] for m, s in scores.items()}
        ok = {m: predicted[m] == it.answer for m in METHODS}
        for m in METHODS:
            correct[m].append(ok[m])
            score_correct[m].append(scores[m][it.answer_index])
        records.append(QAPrediction(
            model=model_key, set=set_name, item_id=it.id, question=it.question, options=it.options,
            answer=it.answer, predicted=predicted, correct=ok,
            option_scores={m: _round(s) for m, s in scores.items()},
            option_loglik_sum=_round([s["sum"] for s in o]), option_loglik_sum_neutral=_round([s["sum"] for s in n]),
            option_tokens=[s["tokens"] for s in o], precision=precision, source_id=it.source_id, split=it.split,
            split_source=it.split_source, span_type=it.span_type, seen_in_train=it.seen_in_train,
            answer_type=it.answer_type))
    is_qa = set_name == "qa"
    clusters = None if is_qa else [it.source_id for it in items]
    methods = {}
    for m in METHODS:
        finite = [v for v in score_correct[m] if math.isfinite(v)]
        acc = MethodAccuracy(accuracy=accuracy_interval(correct[m], clusters, n_resamples, seed),
                             mean_score_correct=sum(finite) / len(finite) if finite else None)
        if is_qa:
            acc.seen = accuracy_interval([c for c, it in zip(correct[m], items) if it.seen_in_train is True],
                                         None, n_resamples, seed)
            acc.unseen = accuracy_interval([c for c, it in zip(correct[m], items) if it.seen_in_train is False],
                                           None, n_resamples, seed)
        methods[m] = acc
    summary = ChoiceScore(n=len(items), precision=precision, methods=methods,
                          uniform_guess=UNIFORM_GUESS if is_qa else None)
    return summary, records
