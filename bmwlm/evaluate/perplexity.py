"""Perplexity over exactly the windows training uses, with every predicted token attributed to its article.

The texts are tokenized, EOS-separated and cut into non-overlapping `block_size` windows
(`bmwlm.windows`, tail kept), so this number and 03_train.py's eval_loss curves agree. Every window is
scored on its own; the loss is token-weighted over all predicted tokens (the sums go through the
`evaluate` module kept in metrics/perplexity). A sliding window would give each token more context
and a slightly lower perplexity, at several times the cost, and would no longer match the training
curves.

Articles, not tokens, are the independent unit of a perplexity interval, so each predicted token's
NLL is added to the article it belongs to. Windows are packed across article borders; the rule:

- a token belongs to the article whose text it comes from;
- the EOS separator after an article belongs to **that** article (predicting where an article ends
  is part of modelling it);
- the first token of a window is not predicted (no context), so it counts for no article.

The per-article sums therefore add up to exactly the packed, token-weighted totals. The separator's
NLL and the NLL of each article's first token (predicted right after the previous separator, the
hardest position to guess) are kept apart as well, to show how much of the loss sits at the borders.

The train slice is a set of whole training articles evenly spaced through the (date-ordered) train
split, together at least `min_tokens` tokens long: it covers the whole training period rather
than the oldest articles only, and whole articles keep its interval meaningful.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import evaluate
import numpy as np
import torch
from tqdm.auto import tqdm

from bmwlm import stats
from bmwlm.config import ROOT
from bmwlm.evaluate.choice import interval, precision_name
from bmwlm.modeling import autocast_context, model_device
from bmwlm.records.evaluation import ArticleLosses, SeparatorShare, SplitScore
from bmwlm.windows import first_tokens, pack_documents, predicted_tokens, tokenize_texts

PERPLEXITY_METRIC_DIR = ROOT / "metrics" / "perplexity"
BODY, FIRST, SEPARATOR = 0, 1, 2  # the role of a stream position


def load_perplexity_metric() -> evaluate.EvaluationModule:
    """The repository's `evaluate` perplexity module, loaded by path (no model hub). Load it once per
    run and pass it on: `compute()` starts each model's count from zero."""
    return evaluate.load(str(PERPLEXITY_METRIC_DIR), keep_in_memory=True)


@dataclass
class PackedArticles:
    """The scoring windows of a list of articles and, per position of the packed stream, the article it
    belongs to and its role (body, first token, separator)."""

    blocks: list[list[int]]
    block_size: int
    owner: np.ndarray  # stream position -> article index
    role: np.ndarray  # stream position -> BODY, FIRST or SEPARATOR


def pack_articles(tokenizer, texts: Sequence[str], block_size: int, max_tokens: int | None = None) -> PackedArticles:
    """`bmwlm.windows.text_windows`'s windows, with the owner and role of every stream position."""
    docs = tokenize_texts(tokenizer, texts)
    eos = tokenizer.eos_token_id
    blocks = first_tokens(pack_documents(docs, block_size, eos, keep_tail=True), max_tokens)
    owner, role, stream = [], [], []
    for i, doc in enumerate(docs):
        owner.extend([i] * (len(doc) + 1))
        role.extend(([FIRST] + [BODY] * (len(doc) - 1) if doc else []) + [SEPARATOR])
        stream.extend([*doc, eos])
    for k, b in enumerate(blocks):  # the windows are consecutive slices of the stream
        if stream[k * block_size:k * block_size + len(b)] != list(b):
            raise AssertionError(f"window {k} is not the stream slice at {k * block_size}")
    return PackedArticles(blocks, block_size, np.asarray(owner), np.asarray(role))


def token_nll(model, blocks: Sequence[Sequence[int]], batch_size: int = 8, bf16: bool = True,
              progress: bool = False, desc: str = "perplexity") -> list[np.ndarray]:
    """Per window, the NLL (nats) of each predicted token (position 1 onwards); windows of equal length
    are batched together."""
    by_len: dict[int, list[int]] = {}
    for k, b in enumerate(blocks):
        by_len.setdefault(len(b), []).append(k)
    batches = [rows[i:i + batch_size] for rows in by_len.values() for i in range(0, len(rows), batch_size)]
    out: list[np.ndarray | None] = [None] * len(blocks)
    model.eval()
    device = model_device(model)
    with torch.inference_mode(), autocast_context(bf16, device):
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            ids = torch.tensor([blocks[k] for k in batch], dtype=torch.long, device=device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                                    reduction="none").view(len(batch), -1)
            for row, k in enumerate(batch):
                out[k] = nll[row].double().cpu().numpy()
    return out  # type: ignore[return-value]


def attribute(packed: PackedArticles, nll: Sequence[np.ndarray], n_articles: int) -> dict[str, np.ndarray]:
    """Per-article sums of the windows' token NLLs: nll, tokens, and the separator / first-token parts."""
    sums = {k: np.zeros(n_articles) for k in ("nll", "tokens", "separator_nll", "separator_tokens",
                                              "first_nll", "first_tokens")}
    for k, values in enumerate(nll):
        pos = k * packed.block_size + np.arange(1, len(values) + 1)
        owner, role = packed.owner[pos], packed.role[pos]
        np.add.at(sums["nll"], owner, values)
        np.add.at(sums["tokens"], owner, 1)
        for name, r in (("separator", SEPARATOR), ("first", FIRST)):
            hit = role == r
            np.add.at(sums[f"{name}_nll"], owner[hit], values[hit])
            np.add.at(sums[f"{name}_tokens"], owner[hit], 1)
    return sums


def separator_share(a: ArticleLosses, n_resamples: int, seed: int) -> SeparatorShare:
    nll, tok = np.asarray(a.nll), np.asarray(a.tokens, dtype=float)
    sep, sep_t = np.asarray(a.separator_nll), np.asarray(a.separator_tokens, dtype=float)
    first, first_t = np.asarray(a.first_nll), np.asarray(a.first_tokens, dtype=float)
    total = float(nll.sum())
    return SeparatorShare(
        separator_tokens=int(sep_t.sum()), share_of_tokens=float(sep_t.sum() / tok.sum()),
        share_of_loss=float(sep.sum() / total) if total else 0.0,
        separator_loss=float(sep.sum() / sep_t.sum()) if sep_t.sum() else 0.0,
        first_token_share_of_loss=float(first.sum() / total) if total else 0.0,
        perplexity_without_separators=interval(stats.bootstrap_perplexity(nll - sep, tok - sep_t, n_resamples,
                                                                          seed)),
        perplexity_without_boundaries=interval(stats.bootstrap_perplexity(nll - sep - first, tok - sep_t - first_t,
                                                                          n_resamples, seed)))


def score_articles(model, tokenizer, texts: Sequence[str], ids: Sequence[str], block_size: int, *,
                   batch_size: int = 8, bf16: bool = True, max_tokens: int | None = None,
                   metric: evaluate.EvaluationModule | None = None, n_resamples: int = stats.N_RESAMPLES,
                   seed: int = 0, progress: bool = False, desc: str = "perplexity") -> SplitScore:
    """Token-weighted loss and perplexity of `texts` (timed), its interval over articles, the
    per-article sums and the separators' share."""
    metric = metric or load_perplexity_metric()
    packed = pack_articles(tokenizer, texts, block_size, max_tokens)
    start = time.perf_counter()
    nll = token_nll(model, packed.blocks, batch_size, bf16, progress, desc)
    seconds = time.perf_counter() - start
    sums = attribute(packed, nll, len(texts))
    keep = [i for i in range(len(texts)) if sums["tokens"][i] > 0]
    per_article = ArticleLosses(
        article_ids=[str(ids[i]) for i in keep], nll=[float(sums["nll"][i]) for i in keep],
        tokens=[int(sums["tokens"][i]) for i in keep],
        separator_nll=[float(sums["separator_nll"][i]) for i in keep],
        separator_tokens=[int(sums["separator_tokens"][i]) for i in keep],
        first_nll=[float(sums["first_nll"][i]) for i in keep], first_tokens=[int(sums["first_tokens"][i]) for i in keep])
    metric.add_batch(nll=per_article.nll, tokens=per_article.tokens)
    result = metric.compute()
    assert result["tokens"] == predicted_tokens(packed.blocks)
    ci = stats.bootstrap_perplexity(per_article.nll, per_article.tokens, n_resamples, seed)
    return SplitScore(loss=result["loss"], perplexity=result["perplexity"], tokens=result["tokens"],
                      windows=len(packed.blocks), seconds=round(seconds, 2),
                      tokens_per_s=round(result["tokens"] / seconds, 1) if seconds > 0 else None,
                      precision=precision_name(bf16, model_device(model)), ci95=ci.ci95, articles=len(keep),
                      per_article=per_article,
                      separators=separator_share(per_article, n_resamples, seed))


def train_slice(tokenizer, texts: Sequence[str], min_tokens: int) -> list[int]:
    """Indices of the fewest whole articles, evenly spaced through `texts`, that hold at least
    `min_tokens` tokens with their separators (all articles when they hold fewer)."""
    sizes = [len(d) + 1 for d in tokenize_texts(tokenizer, texts)]
    n = len(sizes)
    for k in range(1, n + 1):
        picked = sorted({((2 * j + 1) * n) // (2 * k) for j in range(k)})  # the middles of k equal parts
        if sum(sizes[i] for i in picked) >= min_tokens:
            return picked
    return list(range(n))
