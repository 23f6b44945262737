"""The depth study's selection methods and removal curve (bmwlm.prune.methods / curve, 04 --curve)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from bmwlm import prune
from bmwlm.modeling import evaluate_nll, get_blocks, load_model, save_pretrained_atomically
from bmwlm.prune.curve import best_method, removal_curve
from bmwlm.prune.methods import METHODS, iterative_selection, quarter_depth, selection_from
from bmwlm.prune.runner import BlockRunner
from bmwlm.prune.scoring import score_windows
from bmwlm.records.prune import load_removal_curve
from conftest import ROOT
from test_prune import BLOCK_SIZE, CAL_TOKENS, splits  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def pattern_windows(n=16, length=24, vocab=200):
    """Arithmetic progressions mod `vocab`: a pattern a tiny model learns in a few steps."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        a = int(torch.randint(0, vocab, (1,), generator=g))
        out.append([(a + (1 + i % 5) * t) % vocab for t in range(length)])
    return out


def make_identity(block) -> None:
    """Zero the block's two output projections: its output is then exactly its input (residual + 0)."""
    for name in ("self_attn.o_proj", "mlp.down_proj", "attn.c_proj", "mlp.c_proj"):
        try:
            module = block.get_submodule(name)
        except AttributeError:
            continue
        with torch.no_grad():
            module.weight.zero_()
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        module.requires_grad_(False)


def tiny(kind: str, n_blocks: int = 4):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=n_blocks, n_embd=32, n_head=2, n_positions=64, vocab_size=256))
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=n_blocks,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def identity_model(request):
    """A tiny model whose block 2 is an exact identity, the others trained on a pattern so they matter."""
    model = tiny(request.param)
    make_identity(get_blocks(model)[2])
    ids = torch.tensor(pattern_windows())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(25):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def six_block_selection(request):
    model = tiny(request.param, n_blocks=6).eval()
    runner = BlockRunner(model)
    wins = pattern_windows(6)
    ws = score_windows(runner, wins, batch_size=4)
    steps = iterative_selection(runner, wins, 5, batch_size=4, first_losses=ws.losses_without())
    return model, runner, wins, selection_from(ws, 5, steps)


def test_iterative_selection_picks_an_exact_identity_block_first(identity_model):
    runner = BlockRunner(identity_model)
    wins = pattern_windows()
    deltas = score_windows(runner, wins, batch_size=8).delta_losses()
    assert deltas[2] == pytest.approx(0.0, abs=1e-6) and all(deltas[k] > 1e-3 for k in (0, 1, 3))
    steps = iterative_selection(runner, wins, 3, batch_size=8)  # scored afresh, not from the one-pass losses
    assert steps[0].chosen == 2
    assert [s.removed_before for s in steps] == [[], [2], sorted([2, steps[1].chosen])]
    assert len({s.chosen for s in steps}) == 3
    assert 2 not in steps[1].losses  # a removed block is not scored again


def test_the_angular_span_over_an_exact_identity_block_has_distance_zero_and_is_chosen(identity_model):
    ws = score_windows(BlockRunner(identity_model), pattern_windows(), batch_size=8)
    for last_token in (True, False):
        d = ws.angular_distance(1, last_token=last_token)
        assert d[2] == pytest.approx(0.0, abs=1e-3) and min(d[0], d[1]) > 1e-3
    assert len(ws.angular_distance(3)) == 1  # spans never include the final block: only blocks 0-2
    assert selection_from(ws, 1).chosen("angular_span", 1) == [2]
    assert selection_from(ws, 1).chosen("block_influence", 1) == [2]  # cosine 1: no influence


def test_iterative_first_step_equals_the_one_pass_ranking(six_block_selection):
    model, runner, wins, sel = six_block_selection
    fresh = iterative_selection(runner, wins, 1, batch_size=4)[0]
    assert fresh.chosen == sel.chosen("loss_increase", 1)[0]
    one_pass = score_windows(runner, wins, batch_size=4)
    assert [fresh.losses[c] for c in range(6)] == pytest.approx(list(one_pass.losses_without()), abs=1e-5)


def test_each_method_returns_k_distinct_valid_blocks_for_every_k(six_block_selection):
    _, _, _, sel = six_block_selection
    for method in METHODS:
        for k in range(0, 6):
            blocks = sel.chosen(method, k)
            assert len(blocks) == len(set(blocks)) == k, (method, k, blocks)
            assert all(0 <= b < 6 for b in blocks) and blocks == sorted(blocks)
            if method in ("angular_span", "last_blocks"):
                assert 5 not in blocks  # never the final block
            if method == "angular_span" and k:
                assert blocks == list(range(blocks[0], blocks[0] + k))  # one contiguous span
    assert sel.chosen("last_blocks", 2) == [3, 4]
    with pytest.raises(ValueError):
        sel.chosen("loss_increase", 6)


def test_one_pass_and_block_influence_sets_grow_by_their_ranking(six_block_selection):
    _, _, _, sel = six_block_selection
    for method in ("loss_increase", "block_influence", "iterative_loss"):
        for k in range(1, 6):
            assert set(sel.chosen(method, k - 1)) < set(sel.chosen(method, k))


def test_the_curve_scores_each_set_as_the_model_without_those_blocks(six_block_selection):
    model, runner, wins, sel = six_block_selection
    curves = removal_curve(runner, sel, wins, wins[:3], batch_size=4)
    assert set(curves) == set(METHODS)
    for method, points in curves.items():
        assert [p.k for p in points] == list(range(6))
        assert points[0].blocks == [] and points[0].calibration_loss == curves["last_blocks"][0].calibration_loss
    point = curves["block_influence"][3]
    nll, n = evaluate_nll(prune.without_blocks(model, point.blocks), wins, batch_size=4, bf16=False)
    assert point.calibration_loss == pytest.approx(nll / n, abs=1e-5)
    nll, n = evaluate_nll(prune.without_blocks(model, point.blocks), wins[:3], batch_size=4, bf16=False)
    assert point.validation_loss == pytest.approx(nll / n, abs=1e-5)
    assert curves["iterative_loss"][2].calibration_loss == pytest.approx(
        sel.iterative[1].losses[sel.iterative[1].chosen], abs=1e-6)
    best = best_method(curves, 3)
    assert curves[best][3].calibration_loss == min(c[3].calibration_loss for c in curves.values())


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_model_with_k_blocks_removed_saves_reloads_generates_with_kv_cache_and_has_k_fewer(kind, tmp_path, gpt2_tokenizer_dir):
    from transformers import GPT2TokenizerFast

    model = tiny(kind, n_blocks=6).eval()
    smaller = prune.without_blocks(model, [4, 1, 2])
    out = save_pretrained_atomically(smaller, GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir), tmp_path / "cut")
    config = AutoConfig.from_pretrained(out)
    assert (config.num_hidden_layers if kind == "llama" else config.n_layer) == 3
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert len(get_blocks(reloaded)) == 3 == len(get_blocks(model)) - 3
    for i, block in enumerate(get_blocks(reloaded)):  # the KV cache is indexed by layer_idx
        assert {m.layer_idx for m in block.modules() if hasattr(m, "layer_idx")} == {i}
    prompt = torch.tensor([[5, 6, 7, 8]])
    cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape[1] == 10 and torch.equal(cached, uncached)
    wins = pattern_windows(4)
    (skipped,) = prune.scoring.set_losses(BlockRunner(model), wins, [[1, 2, 4]], batch_size=4)
    nll, n = evaluate_nll(reloaded, wins, batch_size=4, bf16=False)
    assert skipped == pytest.approx(nll / n, abs=1e-5)


def test_quarter_depth_is_about_a_quarter_and_keeps_the_final_block():
    assert [quarter_depth(n) for n in (2, 4, 8, 30, 32)] == [1, 1, 2, 8, 8]


# ---------------------------------------------------------------- 04 --curve


def test_the_curve_stage_writes_every_method_s_scores_sets_and_the_deep_cut(tiny_llama_dir, splits, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "04_prune_layer.py"), "--curve", "--max-removed", "2", "--model", str(tiny_llama_dir),
         "--train-file", str(splits["train"]), "--validation-file", str(splits["validation"]),
         "--block-size", str(BLOCK_SIZE), "--calibration-tokens", str(CAL_TOKENS), "--no-progress", "--threads", "1",
         "--out-models-dir", str(tmp_path / "models"), "--out-dir", str(tmp_path / "prune")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = load_removal_curve(tmp_path / "prune" / "removal_curve.json")
    assert json.loads((tmp_path / "prune" / "removal_curve.json").read_text())["methods"] == list(METHODS)
    assert (record.n_blocks, record.max_removed, record.precision) == (4, 2, "float32")
    assert len(record.scores.delta_loss) == len(record.scores.block_influence) == 4
    assert set(record.scores.angular_distance) == {"1", "2"} and len(record.scores.angular_distance["2"]) == 2
    assert len(record.scores.iterative) == 2
    for method in METHODS:
        points = record.curves[method]
        assert [len(p.blocks) for p in points] == [0, 1, 2]
        assert all(p.validation_perplexity == pytest.approx(math.exp(p.validation_loss)) for p in points)
    assert record.curves["loss_increase"][0].validation_loss == pytest.approx(record.baseline_validation_loss)
    cut = record.deep_cut
    assert cut.blocks == record.curves[cut.method][2].blocks
    assert len(get_blocks(load_model(cut.output_dir))) == 2
    assert record.calibration.validation_articles_checked == 8 and not (tmp_path / "prune" / "block_importance.json").exists()
