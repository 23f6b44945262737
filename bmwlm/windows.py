"""How text becomes token windows: the one definition that training, pruning and evaluation share.

Documents are tokenised without special tokens, each is followed by EOS, the stream is cut into
non-overlapping `block_size` windows (HF `run_clm.py`'s `group_texts`). A window crosses a document
border only right after an EOS, so the model learns where an article ends. Training drops the final
partial window; scoring keeps it so that every token is scored.

A token budget (`max_tokens`) always counts **predicted** tokens: a window of n tokens predicts n - 1,
which is what a mean loss averages over and what `evaluate_nll` returns as its count.
"""
from __future__ import annotations

from typing import Sequence


def tokenize_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (packing adds the EOS separators)."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def pack_documents(docs: Sequence[Sequence[int]], block_size: int, eos_id: int,
                   keep_tail: bool = False) -> list[list[int]]:
    """Concatenate token lists, each followed by EOS, and cut into `block_size` windows.

    No padding: for training the final partial window is dropped; scoring passes `keep_tail=True`
    so every token is scored (a window needs at least two tokens to predict one).
    """
    stream: list[int] = []
    for doc in docs:
        stream.extend(doc)
        stream.append(eos_id)
    blocks = [stream[i:i + block_size] for i in range(0, len(stream), block_size)]
    if blocks and len(blocks[-1]) < block_size and not keep_tail:
        blocks.pop()
    return [b for b in blocks if len(b) >= 2 or not keep_tail]


def first_tokens(blocks: Sequence[Sequence[int]], max_tokens: int | None) -> list[list[int]]:
    """The leading windows holding at most `max_tokens` predicted tokens (the last one cut to fit);
    all windows when `max_tokens` is None or <= 0."""
    if not max_tokens or max_tokens <= 0:
        return [list(b) for b in blocks]
    out, total = [], 0
    for b in blocks:
        if total >= max_tokens:
            break
        b = list(b[:max_tokens - total + 1])
        if len(b) >= 2:
            out.append(b)
            total += len(b) - 1
    return out


def predicted_tokens(blocks: Sequence[Sequence[int]]) -> int:
    """How many tokens a loss over `blocks` averages over (n - 1 per window)."""
    return sum(max(0, len(b) - 1) for b in blocks)


def evenly_spaced(blocks: Sequence[Sequence[int]], max_blocks: int) -> list[Sequence[int]]:
    """All windows if `max_blocks` <= 0 or there are no more, else `max_blocks` evenly spaced ones
    (a fixed subset, the same at every evaluation)."""
    if max_blocks <= 0 or len(blocks) <= max_blocks:
        return list(blocks)
    return [blocks[(i * len(blocks)) // max_blocks] for i in range(max_blocks)]


def text_windows(tokenizer, texts: Sequence[str], block_size: int, *, keep_tail: bool = True,
                 max_tokens: int | None = None) -> list[list[int]]:
    """Texts to windows in one call: pack (keeping the tail for scoring), then cap the predicted tokens."""
    blocks = pack_documents(tokenize_texts(tokenizer, texts), block_size, tokenizer.eos_token_id,
                            keep_tail=keep_tail)
    return first_tokens(blocks, max_tokens)
