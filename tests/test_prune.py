"""04_prune_layer.py on tiny random GPT-2 and Llama models: scoring, choosing, removing, writing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bmwlm.modeling import count_parameters, get_blocks, load_model, remove_block
from conftest import ROOT, load_script

prune = load_script("04_prune_layer")

SENTENCES = [
    "The BMW Group presented its new electric model in Munich today.",
    "Production at the Dingolfing plant rose by four percent in the third quarter.",
    "The racing team finished second at the Nürburgring after a long night.",
    "Deliveries of the new series begin in spring, the board member said.",
]


@pytest.fixture(params=["tiny_gpt2_dir", "tiny_llama_dir"])
def tiny_model_dir(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def validation_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("val") / "validation.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(12):
            text = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(3))
            fh.write(json.dumps({"id": f"T{i}", "title": f"t{i}", "text": text}) + "\n")
    return path


def run_stage(model_dir, validation_file, out, block="auto"):
    argv = ["--model", str(model_dir), "--validation-file", str(validation_file), "--block", str(block),
            "--block-size", "32", "--max-eval-tokens", "256", "--no-bf16", "--no-progress",
            "--out-models-dir", str(out / "models"), "--out-dir", str(out / "prune")]
    assert prune.main(argv) == 0
    return json.loads((out / "prune" / "block_importance.json").read_text())


@pytest.fixture(scope="module")
def auto_run(tiny_llama_dir, validation_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    return run_stage(tiny_llama_dir, validation_file, out), out


def eval_blocks():
    return [list(range(10 + 7 * i, 42 + 7 * i)) for i in range(4)]


def test_importance_scores_have_one_entry_per_block_with_all_keys(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    baseline, scores = prune.block_importance(model, eval_blocks(), bf16=False, batch_size=2)
    assert [s["block"] for s in scores] == [0, 1, 2, 3]
    for s in scores:
        assert set(s) == {"block", "loss_without", "delta_loss", "cosine_similarity", "importance"}
        assert s["delta_loss"] == pytest.approx(s["loss_without"] - baseline)
        assert s["importance"] == s["delta_loss"]
        assert -1.0 <= s["cosine_similarity"] <= 1.0


def test_choose_block_is_the_argmin_of_importance():
    scores = [{"block": i, "importance": v} for i, v in enumerate([0.3, -0.01, 0.2, -0.01, 0.5])]
    assert prune.choose_block(scores) == 1


@pytest.mark.parametrize("index", [0, 2, 3])
def test_skipping_a_block_gives_the_same_logits_as_removing_it(tiny_model_dir, index):
    model = load_model(tiny_model_dir).eval()
    ids = torch.randint(0, 1000, (2, 24))
    with torch.no_grad():
        intact = model(input_ids=ids).logits
        with prune.skip_block(model, index):
            skipped = model(input_ids=ids).logits
        restored = model(input_ids=ids).logits
        removed = remove_block(load_model(tiny_model_dir).eval(), index)(input_ids=ids).logits
    torch.testing.assert_close(skipped, removed, rtol=0, atol=1e-6)
    assert not torch.allclose(skipped, intact)
    torch.testing.assert_close(restored, intact, rtol=0, atol=0)  # the patch is undone


def test_block_auto_removes_the_argmin_importance_block(auto_run, tiny_llama_dir):
    record, out = auto_run
    expected = min(record["scores"], key=lambda s: s["importance"])["block"]
    assert record["selection"] == "auto"
    assert record["removed_block"] == expected
    assert record["naive_comparison"]["chosen"] == {
        "block": expected, "loss": pytest.approx(record["scores"][expected]["loss_without"], abs=1e-5)}
    out_dir = out / "models" / f"{Path(tiny_llama_dir).name}-minus-block{expected}"
    assert record["output_dir"] == str(out_dir.resolve())
    assert_saved_model_lacks_block(tiny_llama_dir, out_dir, expected)


def test_block_k_removes_block_k(tiny_gpt2_dir, validation_file, tmp_path):
    record = run_stage(tiny_gpt2_dir, validation_file, tmp_path, block=1)
    assert record["selection"] == "manual"
    assert record["removed_block"] == 1
    out_dir = tmp_path / "models" / f"{Path(tiny_gpt2_dir).name}-minus-block1"
    assert_saved_model_lacks_block(tiny_gpt2_dir, out_dir, 1)


def assert_saved_model_lacks_block(base_dir, out_dir, index):
    base = get_blocks(load_model(base_dir)).state_dict()
    saved = get_blocks(AutoModelForCausalLM.from_pretrained(out_dir)).state_dict()
    kept = [i for i in range(4) if i != index]
    for new, old in enumerate(kept):
        for key, value in saved.items():
            if key.startswith(f"{new}."):
                torch.testing.assert_close(value, base[f"{old}." + key.split(".", 1)[1]], rtol=0, atol=0)


def test_written_model_reloads_with_one_block_fewer_and_generates_with_kv_cache(auto_run):
    record, _ = auto_run
    out_dir = Path(record["output_dir"])  # absolute: the test writes outside the working directory
    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert AutoConfig.from_pretrained(out_dir).num_hidden_layers == 3
    assert len(get_blocks(model)) == 3
    assert count_parameters(model) == record["parameters_after"] < record["parameters_before"]
    prompt = torch.tensor([[5, 6, 7, 8]])
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape[1] == 10
    assert torch.equal(cached, uncached)
    assert not list(out_dir.parent.glob(".*"))  # no temporary directory left behind


def test_json_follows_records_contract(auto_run, tiny_llama_dir):
    record, _ = auto_run
    required = {"base_model", "base_model_path", "method", "eval_tokens", "baseline_loss", "scores", "selection",
                "removed_block", "naive_comparison", "output_dir", "parameters_before", "parameters_after",
                "blocks_before", "blocks_after", "seconds"}
    assert required <= set(record)
    assert record["base_model"] == str(tiny_llama_dir)
    assert record["method"] == "loss_increase"
    assert 0 < record["eval_tokens"] <= 256
    assert (record["blocks_before"], record["blocks_after"]) == (4, 3)
    assert set(record["naive_comparison"]) == {"chosen", "last", "middle"}
    assert record["naive_comparison"]["last"]["block"] == 3
    assert record["naive_comparison"]["middle"]["block"] == 2
    for entry in record["naive_comparison"].values():
        assert set(entry) == {"block", "loss"} and isinstance(entry["loss"], float)
    assert record["output_dir"].endswith(f"-minus-block{record['removed_block']}")
    assert isinstance(record["seconds"], float)


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "04_prune_layer.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_missing_validation_file_names_the_stage_without_traceback(tmp_path):
    result = run_cli("--validation-file", str(tmp_path / "nope.jsonl"), "--out-dir", str(tmp_path))
    assert result.returncode != 0
    assert "02_preprocess.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_hub_model_is_reported_cleanly(validation_file, tmp_path):
    result = run_cli("--model", "no-such-org/no-such-model", "--validation-file", str(validation_file),
                     "--out-dir", str(tmp_path), "--out-models-dir", str(tmp_path))
    assert result.returncode != 0
    assert "ERROR" in result.stderr and "no-such-org/no-such-model" in result.stderr
    assert "Traceback" not in result.stderr
