"""Stage 03 (bmwlm.train, 03_train.py) on tiny random GPT-2 / Llama models and made-up press releases."""
import argparse
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

from bmwlm.config import TrainConfig
from bmwlm.io import MissingInputError
from bmwlm.modeling import ModelUnavailableError, load_model, load_tokenizer, remove_block
from bmwlm.records.prune import BlockImportance, BlockScore, RemovalResult, pruned_model_dir
from bmwlm.records.training import RunSummary, load_log, run_files
from bmwlm.train import trainer
from bmwlm.train.loss import causal_lm_loss
from bmwlm.train.options import HELP, add_config_arguments, config_from_args
from bmwlm.train.run import STAGE_ERRORS, TrainSetupError, resolve_base_model, train_variant
from bmwlm.train.trainer import NonFiniteLossError
from bmwlm.windows import evenly_spaced
from conftest import ROOT

SUBJECTS = ["The BMW Group", "BMW M Motorsport", "The new BMW iX3", "MINI", "Rolls-Royce Motor Cars",
            "The BMW Plant Debrecen", "BMW Motorrad", "The Neue Klasse"]
VERBS = ["presents", "celebrates", "starts production of", "announces", "delivers", "unveils"]
OBJECTS = ["its sixth-generation electric drive", "a record year in Munich", "the first vehicles in Hungary",
           "new models for the 2026 season", "a partnership for sustainable battery cells",
           "the world premiere at the IAA Mobility"]

# Short settings so each run takes a second or two; the recipe itself is TrainConfig's. Runs use one
# thread: tiny models gain nothing from two, and lose a lot when the machine is busy.
TINY = dict(block_size=32, per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=6,
            eval_steps=3, logging_steps=2, save_steps=2, learning_rate=3e-3, warmup_ratio=0.0, loss_chunk_size=16,
            torch_compile=False)  # compiling costs seconds a run; llama_run covers it

TRAIN_LINE_KEYS = {"step", "epoch", "tokens", "loss", "lr", "seconds"}
EVAL_LINE_KEYS = {"step", "epoch", "tokens", "eval_loss", "seconds"}


def _articles(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        title = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
        body = " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(6))
        out.append({"id": f"T{i:07d}EN", "published": f"2025-0{1 + i % 9}-10T10:00:00+01:00",
                    "title": title, "text": f"{title}\n\n{body}"})
    return out


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("processed")
    for name, n, seed in (("train", 40, 0), ("validation", 6, 1)):
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for r in _articles(n, seed):
                fh.write(json.dumps(r) + "\n")
    return d / "train.jsonl", d / "validation.jsonl"


@pytest.fixture(params=["tiny_gpt2_dir", "tiny_llama_dir"])
def tiny_model_dir(request):
    return request.getfixturevalue(request.param)


def _run(model_dir, splits, runs_dir, variant="full", callbacks=(), resume=False, **overrides) -> RunSummary:
    cfg = TrainConfig(**{**TINY, **overrides})
    return train_variant(variant, str(model_dir), cfg, train_file=splits[0], validation_file=splits[1],
                         runs_dir=runs_dir, resume=resume, progress=False, threads=1, callbacks=callbacks)


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _script(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "03_train.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def _block_importance(output_dir, removed_block=1) -> BlockImportance:
    """A complete 04 record naming `output_dir` (the numbers do not matter to 03)."""
    scores = [BlockScore(block=i, loss_without=3.0, delta_loss=0.1 * i, cosine_similarity=0.9, importance=0.1 * i)
              for i in range(4)]
    return BlockImportance(
        base_model="tiny", base_model_path="tiny", method="loss_increase", eval_tokens=100, baseline_loss=2.9,
        scores=scores, selection="manual", removed_block=removed_block,
        naive_comparison={"chosen": RemovalResult(block=removed_block, loss=3.0)}, output_dir=str(output_dir),
        parameters_before=10, parameters_after=9, blocks_before=4, blocks_after=3, seconds=1.0)


@pytest.fixture(scope="module")
def gpt2_run(tiny_gpt2_dir, splits, tmp_path_factory):
    """A 10-step run of the tiny GPT-2 (eager), recording whether each loss ran under autocast."""
    runs_dir, seen = tmp_path_factory.mktemp("runs"), []

    def spy(model, input_ids, chunk_size=0):
        seen.append((model.training, torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
        return causal_lm_loss(model, input_ids, chunk_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "causal_lm_loss", spy)
        record = _run(tiny_gpt2_dir, splits, runs_dir, max_steps=10, eval_steps=6, logging_steps=4)
    return record, runs_dir / "full", seen


@pytest.fixture(scope="module")
def llama_run(tiny_llama_dir, splits, tmp_path_factory):
    """A 10-step run of the tiny Llama with compiled blocks (the default recipe)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    record = _run(tiny_llama_dir, splits, runs_dir, max_steps=10, eval_steps=6, logging_steps=4, torch_compile=True)
    return record, runs_dir / "full", tiny_llama_dir


@pytest.fixture(params=["gpt2_run", "llama_run"])
def short_run(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------- a run and what it writes


def test_short_run_lowers_validation_and_training_loss(short_run):
    record, run_dir = short_run[:2]
    assert record.final_eval_loss < record.initial_eval_loss - 0.5
    assert record.final_train_loss < next(r["loss"] for r in _lines(run_dir) if "loss" in r)


def test_run_json_written_by_a_real_run_loads_as_the_run_summary_it_returned(short_run):
    record, run_dir = short_run[:2]
    assert RunSummary.load(run_dir / "run.json") == record
    assert run_files("full", run_dir.parent).summary() == record
    assert record.train_config().to_dict() == record.config and record.train_config().max_steps == 10


def test_saved_model_reloads_with_its_tokenizer_and_plain_parameter_names(llama_run):
    record, run_dir, base_dir = llama_run
    assert record.compiled  # compiled blocks must not leak "_orig_mod" into the saved names
    reloaded = load_model(run_files("full", run_dir.parent).trained_model())
    assert set(reloaded.state_dict()) == set(load_model(base_dir).state_dict())
    assert load_tokenizer(run_dir / "model").eos_token_id == load_tokenizer(base_dir).eos_token_id


def test_log_lines_have_the_documented_keys_and_load_as_log_lines(gpt2_run):
    record, run_dir, _ = gpt2_run
    lines = _lines(run_dir)
    train_lines = [r for r in lines if "loss" in r]
    eval_lines = [r for r in lines if "eval_loss" in r]
    assert all(r.keys() == TRAIN_LINE_KEYS for r in train_lines)
    assert all(r.keys() == EVAL_LINE_KEYS for r in eval_lines)
    assert [r["step"] for r in train_lines] == [4, 8, 10]  # every logging_steps and the last step
    assert [r["step"] for r in eval_lines] == [0, 6, 10]  # before training, every eval_steps, at the end
    assert eval_lines[0]["tokens"] == 0 and eval_lines[0]["seconds"] == 0.0
    assert train_lines[-1]["tokens"] == record.tokens_seen == 10 * 4 * 32
    assert record.initial_eval_loss == eval_lines[0]["eval_loss"]
    assert record.final_eval_loss == eval_lines[-1]["eval_loss"]
    assert all(a["seconds"] <= b["seconds"] for a, b in zip(lines, lines[1:]))
    typed = load_log(run_dir / "log.jsonl")
    assert [line.to_dict() for line in typed] == lines
    assert [line.step for line in typed if line.is_eval] == [0, 6, 10]


def test_run_summary_has_every_setting_of_the_recipe(gpt2_run):
    record = gpt2_run[0]
    assert set(record.config) == set(TrainConfig.field_names())
    assert record.threads == 1 and record.steps == 10 and record.blocks == 4
    assert record.validation_subset == "all" and record.validation_blocks == record.validation_blocks_total


def test_training_runs_under_bf16_autocast_where_the_cpu_has_it_else_in_float32(gpt2_run):
    from bmwlm.hardware import bf16_supported

    record, _, seen = gpt2_run
    native = bf16_supported()  # AVX512-BF16 or AMX: bf16 autocast; without them bf16 is emulated, so float32
    assert {autocast for training, autocast in seen if training} == ({torch.bfloat16} if native else {False})
    assert record.precision == ("bf16-autocast" if native else "float32")
    assert record.peak_dtype == ("bfloat16" if native else "float32")  # the ceiling of the matmuls it ran


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_each_precision_trains_under_its_autocast_and_measures_its_ceiling_in_its_dtype(
        tiny_gpt2_dir, splits, tmp_path, monkeypatch, native):
    from bmwlm import hardware
    from bmwlm.train import run

    seen, ceilings = [], []

    def spy(model, input_ids, chunk_size=0):
        seen.append((model.training, torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
        return causal_lm_loss(model, input_ids, chunk_size)

    def ceiling(device, dtype_name="bfloat16", *args, **kwargs):
        ceilings.append(dtype_name)
        return 123.0

    monkeypatch.setattr(hardware, "bf16_supported", lambda: native)  # as on a CPU with / without native bf16
    monkeypatch.setattr(trainer, "causal_lm_loss", spy)
    monkeypatch.setattr(run, "device_matmul_gflops", ceiling)
    record = _run(tiny_gpt2_dir, splits, tmp_path, max_steps=2, eval_steps=2, logging_steps=1)
    assert {autocast for training, autocast in seen if training} == ({torch.bfloat16} if native else {False})
    assert record.precision == ("bf16-autocast" if native else "float32")
    # a float32 run's share is of the float32 ceiling (of the bf16 one it read 1,000%+ where bf16 is emulated)
    assert ceilings == [record.peak_dtype] == (["bfloat16"] if native else ["float32"])
    assert record.matmul_gflops == 123.0
    # tokens_per_s is stored rounded to 0.1, the share from the unrounded rate: equal to its last digit
    share = record.tokens_per_s * 6 * record.parameters / 123e9
    assert record.share_of_peak == pytest.approx(share, abs=1e-4 + 0.05 * 6 * record.parameters / 123e9)


def test_a_run_json_from_before_the_ceiling_followed_the_precision_still_loads(tmp_path):
    old = json.loads((ROOT / "docs/results/run/runs/full/run.json").read_text())
    assert "bf16_matmul_gflops" in old and "peak_dtype" not in old  # the committed default run is such a file
    record = RunSummary.from_dict(old)
    assert record.matmul_gflops == old["bf16_matmul_gflops"] and record.share_of_peak == old["share_of_bf16_peak"]
    assert record.peak_dtype == "bfloat16"
    assert "bf16_matmul_gflops" not in record.to_dict() and RunSummary.from_dict(record.to_dict()) == record


def test_evaluation_uses_a_fixed_evenly_spaced_subset_when_capped(tiny_gpt2_dir, splits, tmp_path):
    record = _run(tiny_gpt2_dir, splits, tmp_path, max_steps=1, eval_max_blocks=2)
    assert record.validation_blocks == 2 < record.validation_blocks_total
    assert record.validation_subset == f"2 evenly spaced of {record.validation_blocks_total} blocks"
    blocks = [[i] for i in range(10)]
    assert evenly_spaced(blocks, 0) == evenly_spaced(blocks, 20) == blocks
    assert evenly_spaced(blocks, 4) == [[0], [2], [5], [7]]


# ---------------------------------------------------------------- resume and fresh runs


class _Crash(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_reproduces_the_uninterrupted_run(tiny_gpt2_dir, splits, tmp_path):
    # GPT-2 has dropout, so this also checks that the RNG state is restored, not only data order.
    whole = _run(tiny_gpt2_dir, splits, tmp_path / "a", max_steps=7)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_gpt2_dir, splits, tmp_path / "b", max_steps=7, callbacks=[_Crash(5)])
    assert not (tmp_path / "b" / "full" / "model").exists()
    resumed = _run(tiny_gpt2_dir, splits, tmp_path / "b", max_steps=7, resume=True)
    assert resumed.resumed_from_step == 4
    assert resumed.final_eval_loss == pytest.approx(whole.final_eval_loss, rel=1e-5)
    assert resumed.final_train_loss == pytest.approx(whole.final_train_loss, rel=1e-5)
    assert resumed.tokens_seen == whole.tokens_seen
    steps = lambda run: [(r["step"], "loss" in r) for r in _lines(tmp_path / run / "full")]  # noqa: E731
    assert steps("b") == steps("a")  # no duplicated or missing log lines
    seconds = [r["seconds"] for r in _lines(tmp_path / "b" / "full")]
    assert seconds == sorted(seconds)  # the clock goes on from the checkpoint's time, not from zero
    assert resumed.train_seconds >= seconds[-1] - resumed.eval_seconds - 0.1


def test_resume_refuses_a_checkpoint_made_with_other_settings(tiny_gpt2_dir, splits, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_gpt2_dir, splits, tmp_path, callbacks=[_Crash(3)])
    with pytest.raises(TrainSetupError, match="without --resume"):
        _run(tiny_gpt2_dir, splits, tmp_path, resume=True, learning_rate=1e-3)


def test_fresh_run_clears_the_variants_old_log_and_checkpoints(tiny_gpt2_dir, splits, tmp_path):
    _run(tiny_gpt2_dir, splits, tmp_path, max_steps=3, save_steps=1)
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("checkpoint-*")) == \
        ["checkpoint-2", "checkpoint-3"]  # only the last two are kept
    record = _run(tiny_gpt2_dir, splits, tmp_path, max_steps=1, bf16=False)
    assert [p.name for p in (tmp_path / "full" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]
    assert max(r["step"] for r in _lines(tmp_path / "full")) == 1
    assert record.precision == "float32"


def test_nan_loss_stops_the_run_with_a_clear_message_and_no_model(tiny_gpt2_dir, splits, tmp_path, monkeypatch):
    calls = []

    def loss_that_explodes(model, input_ids, chunk_size=0):
        calls.append(1)
        loss = causal_lm_loss(model, input_ids, chunk_size)
        return loss * float("nan") if len(calls) > 4 else loss

    monkeypatch.setattr(trainer, "causal_lm_loss", loss_that_explodes)
    with pytest.raises(NonFiniteLossError, match=r"training loss became nan at step 5 .*--learning-rate"):
        _run(tiny_gpt2_dir, splits, tmp_path)
    assert NonFiniteLossError in STAGE_ERRORS  # so 03_train.py reports it in one line, exit 1
    assert not (tmp_path / "full" / "model").exists() and not (tmp_path / "full" / "run.json").exists()


# ---------------------------------------------------------------- what to fine-tune; missing inputs


def test_both_variants_get_identical_settings_and_pruned_trains_the_model_04_names(tiny_llama_dir, splits, tmp_path):
    pruned_dir = tmp_path / "models" / "tiny-minus-block1"
    remove_block(load_model(tiny_llama_dir), 1).save_pretrained(pruned_dir)
    load_tokenizer(tiny_llama_dir).save_pretrained(pruned_dir)
    prune_file = tmp_path / "prune" / "block_importance.json"
    _block_importance(pruned_dir).save(prune_file)
    common = ["--train-file", splits[0], "--validation-file", splits[1], "--runs-dir", tmp_path / "runs",
              "--prune-file", prune_file, "--no-progress", "--max-steps", "2", "--block-size", "32",
              "--per-device-train-batch-size", "4", "--eval-steps", "2", "--save-steps", "2", "--no-torch-compile",
              "--threads", "1"]
    for variant in ("full", "pruned"):
        proc = _script("--variant", variant, "--model", tiny_llama_dir, *common)
        assert proc.returncode == 0, proc.stderr[-2000:]
    full, pruned = (run_files(v, tmp_path / "runs").summary() for v in ("full", "pruned"))
    assert full.config == pruned.config
    assert full.overrides == pruned.overrides == {"max_steps": 2, "block_size": 32, "per_device_train_batch_size": 4,
                                                  "eval_steps": 2, "save_steps": 2, "torch_compile": False}
    assert (full.blocks, pruned.blocks) == (4, 3)
    assert pruned.base_model == str(pruned_model_dir(prune_file)) == str(pruned_dir)


def test_pruned_variant_takes_the_directory_from_04s_record_or_from_pruned_model(tiny_llama_dir, tmp_path):
    prune_file = tmp_path / "block_importance.json"
    _block_importance(tiny_llama_dir).save(prune_file)
    assert resolve_base_model("pruned", "unused", prune_file=prune_file) == str(tiny_llama_dir)
    assert resolve_base_model("pruned", "unused", tiny_llama_dir, prune_file=tmp_path / "none") == str(tiny_llama_dir)
    assert resolve_base_model("full", "gpt2", prune_file=prune_file) == "gpt2"


def test_pruned_model_named_in_block_importance_but_missing_names_the_prune_stage(tmp_path):
    prune_file = tmp_path / "block_importance.json"
    _block_importance(tmp_path / "gone").save(prune_file)
    with pytest.raises(MissingInputError, match="run 04_prune_layer.py"):
        resolve_base_model("pruned", "unused", prune_file=prune_file)
    with pytest.raises(MissingInputError, match="run 04_prune_layer.py"):
        resolve_base_model("pruned", "unused", tmp_path / "gone")


@pytest.mark.parametrize("missing", ["train", "validation"])
def test_missing_processed_split_names_the_preprocess_stage(tiny_gpt2_dir, splits, tmp_path, missing):
    files = {"train": splits[0], "validation": splits[1], missing: tmp_path / "nope.jsonl"}
    with pytest.raises(MissingInputError, match=r"nope.jsonl; run 02_preprocess.py \(make preprocess\) first"):
        train_variant("full", str(tiny_gpt2_dir), TrainConfig(**TINY), train_file=files["train"],
                      validation_file=files["validation"], runs_dir=tmp_path, threads=1)


def test_cli_reports_a_missing_input_in_one_line_naming_the_stage_and_exits_1(splits, tmp_path):
    proc = _script("--variant", "pruned", "--prune-file", tmp_path / "block_importance.json",
                   "--train-file", splits[0], "--validation-file", splits[1], "--runs-dir", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"03_train.py: error: missing input {tmp_path / 'block_importance.json'}; "
        "run 04_prune_layer.py (make prune) first"]


def test_a_missing_run_names_the_03_command_that_makes_it(tmp_path):
    with pytest.raises(MissingInputError, match=r"run 03_train.py --variant pruned \(make train-pruned\) first"):
        run_files("pruned", tmp_path).summary()
    with pytest.raises(MissingInputError, match=r"run 03_train.py --variant full \(make train-full\) first"):
        run_files("full", tmp_path).trained_model()


def test_unreachable_model_fails_fast_naming_the_offline_default(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="smollm2-135m"):
        train_variant("full", "no-such-org/no-such-model", TrainConfig(**TINY), train_file=splits[0],
                      validation_file=splits[1], runs_dir=tmp_path, threads=1)
    assert ModelUnavailableError in STAGE_ERRORS


# ---------------------------------------------------------------- the loss


def test_chunked_loss_equals_the_models_loss_and_gradients(tiny_model_dir):
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 17))
    grads = []
    for chunk in (0, 7):
        model = load_model(tiny_model_dir)
        model.eval()  # no dropout
        loss = causal_lm_loss(model, ids, chunk)
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref_loss, ref), (loss, ours) = grads
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert ref.keys() == ours.keys()
    for name in ref:
        assert torch.allclose(ours[name], ref[name], rtol=1e-3, atol=1e-6), name


def test_chunked_loss_under_bf16_autocast_stays_close_to_float32(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    ids = torch.randint(0, 1000, (2, 32))
    with torch.no_grad():
        fp32 = causal_lm_loss(model, ids, 16).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = causal_lm_loss(model, ids, 16).item()
    assert math.isfinite(bf16) and bf16 == pytest.approx(fp32, rel=0.02)


# ---------------------------------------------------------------- command line


def test_cli_overrides_change_only_the_named_settings():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg, overrides = config_from_args(parser.parse_args(["--max-steps", "3", "--no-bf16", "--learning-rate", "1e-4"]))
    assert overrides == {"max_steps": 3, "bf16": False, "learning_rate": 1e-4}
    assert cfg == TrainConfig(max_steps=3, bf16=False, learning_rate=1e-4)
    assert config_from_args(parser.parse_args([])) == (TrainConfig(), {})


def test_help_explains_every_option_and_shows_its_real_default_once():
    assert set(HELP) == set(TrainConfig.field_names())
    proc = _script("--help", timeout=60)
    assert proc.returncode == 0
    assert "(default: None)" not in " ".join(proc.stdout.split())  # argparse wraps lines
    blocks = {b.split()[0].rstrip(","): " ".join(b.split()) for b in proc.stdout.split("\n  -")[1:]}
    blocks.pop("h")
    # 11 run options, 2 device options (--device, --world-batch), one per TrainConfig field, 3 distillation options
    assert len(blocks) == 11 + 2 + len(TrainConfig.field_names()) + 3
    for option, text in blocks.items():
        assert len(text.split("(default:")[0].split()) > 3, f"-{option} has no help text"
        assert text.count("(default:") == (0 if option == "-variant" else 1), f"-{option}: {text}"
    for name, value in TrainConfig().to_dict().items():
        assert f"(default: {value})" in blocks["-" + name.replace("_", "-")]
