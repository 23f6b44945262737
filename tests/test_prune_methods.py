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
from bmwlm.prune.curve import best_method, removal_curve, validation_comparisons
from bmwlm.prune.methods import METHODS, iterative_selection, quarter_depth, selection_from
from bmwlm.prune.runner import BlockRunner
from bmwlm.prune.scoring import mean_loss, score_windows, set_losses, set_window_nll
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
    for points in curves.values():  # each validation window's loss is kept, and they make up the mean
        for p in points:
            assert len(p.validation_window_nll) == 3
            assert mean_loss(p.validation_window_nll, wins[:3]) == pytest.approx(p.validation_loss, abs=1e-9)


def test_each_window_s_loss_is_that_window_scored_alone_in_the_order_given(six_block_selection):
    model, runner, wins, _ = six_block_selection
    mixed = [wins[0], wins[1][:10], wins[2], wins[3][:10], wins[4]]  # two lengths: batched out of order
    sets = [[], [1, 3], [4]]
    per_window = set_window_nll(runner, mixed, sets, batch_size=2)
    for blocks, nlls in zip(sets, per_window):
        smaller = prune.without_blocks(model, blocks) if blocks else model
        for window, nll in zip(mixed, nlls):
            alone, n = evaluate_nll(smaller, [window], batch_size=1, bf16=False)
            assert nll == pytest.approx(alone, abs=1e-4) and n == len(window) - 1
    assert set_losses(runner, mixed, sets, batch_size=2) == [mean_loss(n, mixed) for n in per_window]


def test_curve_intervals_say_same_set_for_shared_sets_and_exclude_1_only_for_a_consistent_gap():
    from bmwlm.prune.curve import point

    base = [10.0, 12.0, 9.0, 11.0, 10.5, 9.5]
    worse = [x + 1.0 for x in base]  # 1 nat more on every window: a ratio well above 1
    noisy = [x + d for x, d in zip(base, [1.0, -1.0, 0.5, -0.5, 1.0, -1.0])]  # +/- : inside noise
    tokens = [20] * 6

    def curve(window_nll, blocks):
        return [point(0, [], 3.0, 0.5, base), point(1, blocks, 3.1, math.fsum(window_nll) / 120, window_nll)]

    curves = {"ref": curve(base, [2]), "same": curve(base, [2]), "worse": curve(worse, [1]),
              "noisy": curve(noisy, [3])}
    comps = {c.method: c for c in validation_comparisons(curves, "ref", tokens, n_resamples=500)}
    assert set(comps) == {"same", "worse", "noisy"} and {c.k for c in comps.values()} == {1}
    assert comps["same"].same_set and comps["same"].ratio == 1.0 and comps["same"].ratio_ci95 == [1.0, 1.0]
    assert comps["worse"].ratio == pytest.approx(math.exp(6 / 120)) and comps["worse"].ratio_ci95[0] > 1
    lo, hi = comps["noisy"].ratio_ci95
    assert lo < 1 < hi and comps["noisy"].windows == 6
    no_windows = {m: [point(0, [], 3.0, 0.5), point(1, [m == "ref" and 2 or 1], 3.1, 0.6)] for m in ("ref", "b")}
    assert validation_comparisons(no_windows, "ref", tokens) == []  # an old record: nothing to pair


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
    n_windows = len(record.validation_window_tokens)
    assert n_windows and all(len(p.validation_window_nll) == n_windows for m in METHODS for p in record.curves[m])
    assert {(c.k, c.method) for c in record.validation_comparisons} == {
        (k, m) for k in (1, 2) for m in METHODS if m != cut.method}


def _curve_windows(tiny_llama_dir, splits, out_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(ROOT / "04_prune_layer.py"), "--curve-windows", "--model", str(tiny_llama_dir),
         "--train-file", str(splits["train"]), "--validation-file", str(splits["validation"]),
         "--block-size", str(BLOCK_SIZE), "--no-progress", "--threads", "1", "--out-dir", str(out_dir)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_curve_windows_adds_the_window_losses_to_an_old_record_and_refuses_one_it_cannot_reproduce(
        tiny_llama_dir, splits, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "04_prune_layer.py"), "--curve", "--max-removed", "2", "--model", str(tiny_llama_dir),
         "--train-file", str(splits["train"]), "--validation-file", str(splits["validation"]),
         "--block-size", str(BLOCK_SIZE), "--calibration-tokens", str(CAL_TOKENS), "--validation-tokens",
         str(3 * (BLOCK_SIZE - 1)), "--no-progress", "--threads", "1",
         "--out-models-dir", str(tmp_path / "models"), "--out-dir", str(tmp_path / "prune")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "prune" / "removal_curve.json"
    fresh = json.loads(path.read_text())
    old = json.loads(path.read_text())  # as a record from before the windows were kept
    for points in old["curves"].values():
        for p in points:
            del p["validation_window_nll"]
    del old["validation_window_tokens"], old["validation_comparisons"]
    path.write_text(json.dumps(old))
    assert load_removal_curve(path).validation_comparisons == []

    proc = _curve_windows(tiny_llama_dir, splits, tmp_path / "prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    added = json.loads(path.read_text())
    assert added["validation_window_tokens"] == fresh["validation_window_tokens"] == [BLOCK_SIZE - 1] * 3
    for method, points in added["curves"].items():
        for p, f in zip(points, fresh["curves"][method]):
            assert p["validation_window_nll"] == pytest.approx(f["validation_window_nll"], abs=1e-4)
            assert p["validation_loss"] == f["validation_loss"]  # the recorded numbers are untouched
    assert [(c["k"], c["method"]) for c in added["validation_comparisons"]] == [
        (c["k"], c["method"]) for c in fresh["validation_comparisons"]]

    old["curves"]["loss_increase"][1]["validation_loss"] += 0.01  # not what this model scores on these windows
    path.write_text(json.dumps(old))
    proc = _curve_windows(tiny_llama_dir, splits, tmp_path / "prune")
    assert proc.returncode == 1 and "not the same model, split or windows" in proc.stderr
    assert json.loads(path.read_text()) == old  # nothing written

