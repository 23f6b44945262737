"""The same items and windows scored in float32 and under bf16 autocast, the two precisions the
pipeline uses (training and perplexity run under bf16 autocast; 05 scores the multiple-choice sets in
float32).

bf16 keeps 8 bits of mantissa, so two options whose scores are nearly tied can swap places, and
which ones swap depends on the CPU's bf16 kernels. The check re-scores every item's options (given
its own prompt, the headline `normalised` method) under bf16 and lists every item whose pick
changes, with the float32 score gap between the two letters: the flips are recorded, never hidden.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from bmwlm.evaluate.choice import pick, score_items
from bmwlm.evaluate.qa import LETTERS, ChoiceItem
from bmwlm.modeling import evaluate_nll
from bmwlm.records.evaluation import PrecisionCheck, PrecisionFlip


def compare_picks(sets: dict[str, tuple[Sequence[ChoiceItem], Sequence[Sequence[dict]], Sequence[Sequence[dict]]]]
                  ) -> tuple[int, int, list[PrecisionFlip], float, float]:
    """(items, same picks, flips, max |Δ mean score|, median |Δ summed log-likelihood|) of
    {set name: (items, float32 scores, bf16 scores)}, scores as `score_items` returns them."""
    n, same, flips, diffs_mean, diffs_sum = 0, 0, [], [0.0], []
    for set_name, (items, fp32, bf16) in sets.items():
        for it, a, b in zip(items, fp32, bf16):
            n += 1
            pa, pb = pick([s["mean"] for s in a]), pick([s["mean"] for s in b])
            same += pa == pb
            if pa != pb:
                flips.append(PrecisionFlip(set=set_name, item_id=it.id, float32=LETTERS[pa], bf16=LETTERS[pb],
                                           margin_float32=round(a[pa]["mean"] - a[pb]["mean"], 6)))
            for x, y in zip(a, b):
                if math.isfinite(x["sum"]) and math.isfinite(y["sum"]):
                    diffs_mean.append(abs(x["mean"] - y["mean"]))
                    diffs_sum.append(abs(x["sum"] - y["sum"]))
    return n, same, flips, max(diffs_mean), statistics.median(diffs_sum) if diffs_sum else 0.0


def precision_check(model, tokenizer, float32_scores: dict[str, tuple[Sequence[ChoiceItem], Sequence[Sequence[dict]]]],
                    windows: Sequence[Sequence[int]] = ()) -> PrecisionCheck:
    """Re-score the items of {set name: (items, their float32 scores)} under bf16 autocast and compare;
    `windows` (a few validation windows) are scored both ways for the perplexity."""
    sets = {}
    for set_name, (items, fp32) in float32_scores.items():
        bf16, _ = score_items(model, tokenizer, items, bf16=True, neutral=False)
        sets[set_name] = (items, fp32, bf16)
    n, same, flips, max_diff, median_sum = compare_picks(sets)
    ppl = {}
    if windows:
        for bf16 in (False, True):
            nll, count = evaluate_nll(model, windows, bf16=bf16)
            ppl[bf16] = math.exp(nll / count)
    return PrecisionCheck(method="normalised", items=n, same_prediction=same, flips=flips,
                          max_abs_diff_score=round(max_diff, 6), median_abs_diff_loglik=round(median_sum, 6),
                          perplexity_windows=len(windows), perplexity_float32=ppl.get(False),
                          perplexity_bf16=ppl.get(True))
