"""The paired comparisons 05 writes: every comparison the report makes, with the test behind it.

Pairs (`PAIRS`, a - b): full vs base (fine-tuning), base_minus_block vs base (removing the block,
before fine-tuning), pruned vs full (removing the block, after fine-tuning), pruned vs
base_minus_block (fine-tuning the pruned model). For each pair:

- validation perplexity, with and without the separator tokens: paired bootstrap over validation
  articles (`bmwlm.stats.paired_bootstrap_perplexity`; both models' per-article sums, same resamples);
- Q&A and cloze accuracy under each scoring method: paired bootstrap of the accuracy difference on
  the same items (Q&A resamples items, cloze resamples articles) and McNemar's exact test on the
  items only one of the two gets right; Q&A also within the seen and unseen items (headline method);

and beyond the pairs: the generalisation gap (validation minus train-slice loss) of a fine-tuned
model against its starting point; every model's Q&A accuracy against the frequency-prior guesser on
the same items; the interleaved speed measurement (pruned-architecture model vs full one, paired by
round). Each record carries `stats.compare`'s sentence: a direction only when the 95% interval
excludes 0. Accuracy sentences are in percentage points.
"""
from __future__ import annotations

from typing import Sequence

from bmwlm import stats
from bmwlm.evaluate.choice import METHODS
from bmwlm.evaluate.qa import ChoiceItem
from bmwlm.records.evaluation import ArticleLosses, Comparison, CostMeasurement, ModelEntry, QAPrediction

PAIRS = (("full", "base"), ("base_minus_block", "base"), ("pruned", "full"), ("pruned", "base_minus_block"))
GAP_PAIRS = (("full", "base"), ("pruned", "base_minus_block"))
SET_NAMES = {"qa": "Q&A", "cloze": "cloze"}


NAMES = {"frequency_prior": "the frequency-prior guesser"}  # how a sentence names a baseline


def make_comparison(family: str, metric: str, a: str, b: str, a_value: float, b_value: float, difference: float,
            ci95: Sequence[float], test: str, units: int, unit: str, *, scale: float = 1.0, digits: int = 2,
            shown_unit: str = "", **more) -> Comparison:
    sentence = stats.compare(metric, NAMES.get(a, a), NAMES.get(b, b), difference * scale, [c * scale for c in ci95],
                             unit=shown_unit, test=test, digits=digits)
    return Comparison(family=family, metric=metric, a=a, b=b, a_value=a_value, b_value=b_value,
                      difference=difference, ci95=list(ci95), test=test, units=units, unit=unit,
                      detectable=stats.excludes_zero(ci95), sentence=sentence, **more)


def same_articles(a: ArticleLosses | None, b: ArticleLosses | None) -> bool:
    return a is not None and b is not None and a.article_ids == b.article_ids and a.tokens == b.tokens


def perplexity_comparisons(entries: dict[str, ModelEntry], n_resamples: int, seed: int) -> list[Comparison]:
    """Validation perplexity (all tokens, and without separators) of every pair, paired over articles."""
    out = []
    for a, b in PAIRS:
        ea, eb = entries.get(a), entries.get(b)
        pa = ea.validation.per_article if ea and ea.validation else None
        pb = eb.validation.per_article if eb and eb.validation else None
        if not same_articles(pa, pb):
            continue
        for metric, strip in (("validation perplexity", False), ("validation perplexity without separators", True)):
            nll_a = [n - s * strip for n, s in zip(pa.nll, pa.separator_nll)]
            nll_b = [n - s * strip for n, s in zip(pb.nll, pb.separator_nll)]
            tokens = [t - s * strip for t, s in zip(pa.tokens, pa.separator_tokens)]
            r = stats.paired_bootstrap_perplexity(nll_a, nll_b, tokens, n_resamples, seed)
            out.append(make_comparison("perplexity", metric, a, b, r["a"], r["b"], r["difference"], r["ci95"],
                               f"paired bootstrap over {r['articles']} articles", r["articles"], "article",
                               ratio=r["ratio"], ratio_ci95=r["ratio_ci95"]))
    return out


def gap_comparisons(entries: dict[str, ModelEntry], n_resamples: int, seed: int) -> list[Comparison]:
    """Does fine-tuning widen the gap between validation and train-slice loss (over-fitting)?"""
    out = []
    for a, b in GAP_PAIRS:
        ea, eb = entries.get(a), entries.get(b)
        if not (ea and eb and ea.validation and eb.validation and ea.train_slice and eb.train_slice):
            continue
        va, vb = ea.validation.per_article, eb.validation.per_article
        ta, tb = ea.train_slice.per_article, eb.train_slice.per_article
        if not (same_articles(va, vb) and same_articles(ta, tb)):
            continue
        r = stats.loss_gap_difference(va.nll, vb.nll, va.tokens, ta.nll, tb.nll, ta.tokens, n_resamples, seed)
        out.append(make_comparison("gap", "validation minus train-slice loss", a, b, r["a"], r["b"], r["difference"], r["ci95"],
                           f"bootstrap over {r['validation_articles']} validation and {r['train_articles']} "
                           "train-slice articles, paired across models", r["validation_articles"], "article",
                           digits=3, shown_unit="nats/token"))
    return out


def _accuracy_record(family: str, metric: str, a: str, b: str, ca: list[bool], cb: list[bool],
                     clusters: list | None, n_resamples: int, seed: int) -> Comparison:
    d = stats.paired_bootstrap_mean_difference([float(x) for x in ca], [float(x) for x in cb], clusters,
                                               n_resamples, seed)
    m = stats.mcnemar(ca, cb)
    test = (f"paired bootstrap over {d.units} {d.unit}s; McNemar exact p = {m['p_exact']:.3g} "
            f"({m['a_only']} vs {m['b_only']} discordant)")
    return make_comparison(family, metric, a, b, sum(ca) / len(ca), sum(cb) / len(cb), d.value, d.ci95, test, d.units, d.unit,
                   scale=100, digits=1, shown_unit="points", mcnemar_p=m["p_exact"], a_only=m["a_only"],
                   b_only=m["b_only"])


def _by_model(predictions: Sequence[QAPrediction], set_name: str) -> dict[str, dict[str, QAPrediction]]:
    out: dict[str, dict[str, QAPrediction]] = {}
    for p in predictions:
        if p.set == set_name:
            out.setdefault(p.model, {})[p.item_id] = p
    return out


def choice_comparisons(predictions: Sequence[QAPrediction], items: dict[str, Sequence[ChoiceItem]],
                       n_resamples: int, seed: int) -> list[Comparison]:
    """Accuracy differences of every pair, on every set and method (Q&A also by seen / unseen)."""
    out = []
    for set_name, set_items in items.items():
        by_model = _by_model(predictions, set_name)
        ids = [it.id for it in set_items]
        clusters = None if set_name == "qa" else [it.source_id for it in set_items]
        for a, b in PAIRS:
            pa, pb = by_model.get(a), by_model.get(b)
            if not pa or not pb or not all(i in pa and i in pb for i in ids):
                continue
            for method in METHODS:
                out.append(_accuracy_record(set_name, f"{SET_NAMES[set_name]} accuracy ({method})", a, b,
                                            [pa[i].correct[method] for i in ids], [pb[i].correct[method] for i in ids],
                                            clusters, n_resamples, seed))
            if set_name != "qa":
                continue
            for group, tag in (("seen", True), ("unseen", False)):
                sub = [it.id for it in set_items if it.seen_in_train is tag]
                if sub:
                    out.append(_accuracy_record("qa", f"Q&A accuracy (normalised, {group})", a, b,
                                                [pa[i].correct["normalised"] for i in sub],
                                                [pb[i].correct["normalised"] for i in sub], None, n_resamples, seed))
    return out


def baseline_comparisons(predictions: Sequence[QAPrediction], items: Sequence[ChoiceItem],
                         prior_hits: Sequence[bool] | None, n_resamples: int, seed: int) -> list[Comparison]:
    """Each model's Q&A accuracy (normalised and calibrated) against the frequency-prior guesser."""
    if prior_hits is None:
        return []
    out = []
    ids = [it.id for it in items]
    for key, preds in _by_model(predictions, "qa").items():
        if not all(i in preds for i in ids):
            continue
        for method in ("normalised", "calibrated"):
            out.append(_accuracy_record("baseline", f"Q&A accuracy ({method})", key, "frequency_prior",
                                        [preds[i].correct[method] for i in ids], list(prior_hits), None,
                                        n_resamples, seed))
    return out


def speed_comparisons(cost: CostMeasurement | None, n_resamples: int, seed: int) -> list[Comparison]:
    """The second measured model (one block fewer) against the first, paired by round."""
    if cost is None or len(cost.models) != 2:
        return []
    b, a = cost.models
    out = []
    for metric, field in (("training step time", "train_step_rounds"),
                          ("generation latency per sequence", "generation_rounds")):
        xa, xb = getattr(cost.per_model[a], field), getattr(cost.per_model[b], field)
        r = stats.paired_bootstrap_ratio(xa, xb, n_resamples, seed)
        out.append(make_comparison("speed", metric, a, b, r["a"], r["b"], r["difference"], r["ci95"],
                           f"paired bootstrap over {r['pairs']} interleaved rounds", r["pairs"], "round",
                           digits=3, shown_unit="s", ratio=r["ratio"], ratio_ci95=r["ratio_ci95"]))
    return out
