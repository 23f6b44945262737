"""03_train.py on tiny random GPT-2 / Llama models and a few made-up press-release sentences."""
import json
import math
import random

import pytest
import torch
from transformers import TrainerCallback

from bmwlm.config import TrainConfig
from bmwlm.modeling import load_model, remove_block
from tests.conftest import load_script

train = load_script("03_train")

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
            torch_compile=False)  # compiling costs ~10 s a run; test_compiled_blocks_* covers it

TRAIN_LINE_KEYS = {"step", "epoch", "tokens", "loss", "lr", "seconds"}
EVAL_LINE_KEYS = {"step", "epoch", "tokens", "eval_loss", "seconds"}
RUN_KEYS = {"variant", "base_model", "config", "seed", "versions", "threads", "parameters", "blocks",
            "train_blocks", "validation_blocks", "tokens_seen", "train_seconds", "wall_seconds", "tokens_per_s",
            "initial_eval_loss", "final_eval_loss", "final_train_loss", "steps", "finished_at"}


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


def _run(model_dir, splits, runs_dir, variant="full", callbacks=(), resume=False, **overrides):
    cfg = TrainConfig(**{**TINY, **overrides})
    return train.train_variant(variant, str(model_dir), cfg, train_file=splits[0], validation_file=splits[1],
                               runs_dir=runs_dir, resume=resume, progress=False, threads=1, callbacks=callbacks)


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def gpt2_run(tiny_gpt2_dir, splits, tmp_path_factory):
    """A 10-step run of the tiny GPT-2 (eager), recording whether each loss ran under autocast."""
    runs_dir, seen, real = tmp_path_factory.mktemp("runs"), [], train.causal_lm_loss

    def spy(model, input_ids, chunk_size=0):
        seen.append((model.training, torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
        return real(model, input_ids, chunk_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "causal_lm_loss", spy)
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


def test_short_run_lowers_validation_and_training_loss(short_run):
    record, run_dir = short_run[:2]
    assert record["final_eval_loss"] < record["initial_eval_loss"] - 0.5
    assert record["final_train_loss"] < next(r["loss"] for r in _lines(run_dir) if "loss" in r)
    assert json.loads((run_dir / "run.json").read_text()) == record


def test_saved_model_reloads_with_its_tokenizer_and_plain_parameter_names(llama_run):
    record, run_dir, base_dir = llama_run
    assert record["compiled"]  # compiled blocks must not leak "_orig_mod" into the saved names
    reloaded = load_model(run_dir / "model")
    assert set(reloaded.state_dict()) == set(load_model(base_dir).state_dict())
    assert train.load_tokenizer(run_dir / "model").eos_token_id == train.load_tokenizer(base_dir).eos_token_id


def test_log_and_run_record_have_the_documented_keys(gpt2_run):
    record, run_dir, _ = gpt2_run
    assert RUN_KEYS <= record.keys()
    assert set(TrainConfig.field_names()) == record["config"].keys()
    lines = _lines(run_dir)
    train_lines = [r for r in lines if "loss" in r]
    eval_lines = [r for r in lines if "eval_loss" in r]
    assert all(r.keys() == TRAIN_LINE_KEYS for r in train_lines)
    assert all(r.keys() == EVAL_LINE_KEYS for r in eval_lines)
    assert [r["step"] for r in train_lines] == [4, 8, 10]  # every logging_steps and the last step
    assert [r["step"] for r in eval_lines] == [0, 6, 10]  # before training, every eval_steps, at the end
    assert eval_lines[0]["tokens"] == 0 and eval_lines[0]["seconds"] == 0.0
    assert train_lines[-1]["tokens"] == record["tokens_seen"] == 10 * 4 * 32
    assert record["initial_eval_loss"] == eval_lines[0]["eval_loss"]
    assert record["final_eval_loss"] == eval_lines[-1]["eval_loss"]
    assert all(a["seconds"] <= b["seconds"] for a, b in zip(lines, lines[1:]))


def test_training_runs_under_bf16_autocast(gpt2_run):
    record, _, seen = gpt2_run
    assert {autocast for training, autocast in seen if training} == {torch.bfloat16}
    assert record["precision"] == "bf16-autocast"


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
    assert resumed["resumed_from_step"] == 4
    assert resumed["final_eval_loss"] == pytest.approx(whole["final_eval_loss"], rel=1e-5)
    assert resumed["final_train_loss"] == pytest.approx(whole["final_train_loss"], rel=1e-5)
    assert resumed["tokens_seen"] == whole["tokens_seen"]
    steps = lambda run: [(r["step"], "loss" in r) for r in _lines(tmp_path / run / "full")]  # noqa: E731
    assert steps("b") == steps("a")  # no duplicated or missing log lines


def test_resume_refuses_a_checkpoint_made_with_other_settings(tiny_gpt2_dir, splits, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_gpt2_dir, splits, tmp_path, callbacks=[_Crash(3)])
    with pytest.raises(train.TrainSetupError, match="without --resume"):
        _run(tiny_gpt2_dir, splits, tmp_path, resume=True, learning_rate=1e-3)


def test_fresh_run_clears_the_variants_old_log_and_checkpoints(tiny_gpt2_dir, splits, tmp_path):
    _run(tiny_gpt2_dir, splits, tmp_path, max_steps=3, save_steps=1)
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("checkpoint-*")) == \
        ["checkpoint-2", "checkpoint-3"]  # only the last two are kept
    record = _run(tiny_gpt2_dir, splits, tmp_path, max_steps=1, bf16=False)
    assert [p.name for p in (tmp_path / "full" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]
    assert max(r["step"] for r in _lines(tmp_path / "full")) == 1
    assert record["precision"] == "float32"


def test_both_variants_get_identical_settings(tiny_llama_dir, splits, tmp_path, capsys):
    pruned_dir = tmp_path / "models" / "tiny-minus-block1"
    model = remove_block(load_model(tiny_llama_dir), 1)
    model.save_pretrained(pruned_dir)
    train.load_tokenizer(tiny_llama_dir).save_pretrained(pruned_dir)
    prune_file = tmp_path / "prune" / "block_importance.json"
    prune_file.parent.mkdir()
    prune_file.write_text(json.dumps({"output_dir": str(pruned_dir), "removed_block": 1}))
    common = ["--train-file", str(splits[0]), "--validation-file", str(splits[1]), "--runs-dir", str(tmp_path / "runs"),
              "--prune-file", str(prune_file), "--no-progress", "--max-steps", "2", "--block-size", "32",
              "--per-device-train-batch-size", "4", "--eval-steps", "2", "--save-steps", "2", "--no-torch-compile",
              "--threads", "1"]
    assert train.main(["--variant", "full", "--model", str(tiny_llama_dir), *common]) == 0
    assert train.main(["--variant", "pruned", *common]) == 0
    full, pruned = (json.loads((tmp_path / "runs" / v / "run.json").read_text()) for v in ("full", "pruned"))
    assert full["config"] == pruned["config"]
    assert full["config"]["max_steps"] == 2 and full["overrides"] == pruned["overrides"]
    assert full["overrides"]["max_steps"] == 2
    assert (full["blocks"], pruned["blocks"]) == (4, 3)
    assert pruned["base_model"] == str(pruned_dir)


def test_nan_loss_stops_the_run_with_a_clear_message(tiny_gpt2_dir, splits, tmp_path, monkeypatch, capsys):
    real = train.causal_lm_loss
    calls = []

    def loss_that_explodes(model, input_ids, chunk_size=0):
        calls.append(1)
        loss = real(model, input_ids, chunk_size)
        return loss * float("nan") if len(calls) > 4 else loss

    monkeypatch.setattr(train, "causal_lm_loss", loss_that_explodes)
    code = train.main(["--variant", "full", "--model", str(tiny_gpt2_dir), "--train-file", str(splits[0]),
                       "--validation-file", str(splits[1]), "--runs-dir", str(tmp_path), "--no-progress",
                       "--block-size", "32", "--per-device-train-batch-size", "4", "--max-steps", "6",
                       "--no-torch-compile", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "training loss became nan at step" in err and "--learning-rate" in err
    assert "Traceback" not in err
    assert not (tmp_path / "full" / "model").exists() and not (tmp_path / "full" / "run.json").exists()


@pytest.mark.parametrize("missing", ["train", "validation"])
def test_missing_processed_split_names_the_preprocess_stage(tiny_gpt2_dir, splits, tmp_path, capsys, missing):
    files = {"train": str(splits[0]), "validation": str(splits[1]), missing: str(tmp_path / "nope.jsonl")}
    code = train.main(["--variant", "full", "--model", str(tiny_gpt2_dir), "--train-file", files["train"],
                       "--validation-file", files["validation"], "--runs-dir", str(tmp_path)])
    assert code == 1
    assert "02_preprocess.py" in capsys.readouterr().err


def test_missing_block_importance_names_the_prune_stage(splits, tmp_path, capsys):
    code = train.main(["--variant", "pruned", "--prune-file", str(tmp_path / "block_importance.json"),
                       "--train-file", str(splits[0]), "--validation-file", str(splits[1]),
                       "--runs-dir", str(tmp_path)])
    assert code == 1
    assert "04_prune_layer.py" in capsys.readouterr().err


def test_pruned_model_dir_named_in_block_importance_but_missing_names_the_prune_stage(tmp_path):
    prune_file = tmp_path / "block_importance.json"
    prune_file.write_text(json.dumps({"output_dir": str(tmp_path / "gone")}))
    with pytest.raises(train.MissingInputError, match="04_prune_layer.py"):
        train.resolve_base_model("pruned", "unused", prune_file=prune_file)


def test_unreachable_model_fails_fast_naming_the_offline_default(splits, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = train.main(["--variant", "full", "--model", "no-such-org/no-such-model", "--train-file", str(splits[0]),
                       "--validation-file", str(splits[1]), "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "smollm2-135m" in err and "Traceback" not in err


def test_chunked_loss_equals_the_models_loss_and_gradients(tiny_model_dir):
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 17))
    grads = []
    for chunk in (0, 7):
        model = load_model(tiny_model_dir)
        model.eval()  # no dropout
        loss = train.causal_lm_loss(model, ids, chunk)
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
        fp32 = train.causal_lm_loss(model, ids, 16).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = train.causal_lm_loss(model, ids, 16).item()
    assert math.isfinite(bf16) and bf16 == pytest.approx(fp32, rel=0.02)


def test_eval_subset_is_fixed_evenly_spaced_or_everything():
    blocks = [[i] for i in range(10)]
    assert train.eval_subset(blocks, 0) == blocks
    assert train.eval_subset(blocks, 20) == blocks
    assert train.eval_subset(blocks, 4) == [[0], [2], [5], [7]]


def test_cli_overrides_change_only_the_named_settings():
    args = train.parse_args(["--variant", "full", "--max-steps", "3", "--no-bf16", "--learning-rate", "1e-4"])
    cfg, overrides = train.make_config(args)
    assert overrides == {"max_steps": 3, "bf16": False, "learning_rate": 1e-4}
    assert cfg == TrainConfig(max_steps=3, bf16=False, learning_rate=1e-4)


def test_physical_cores_is_a_sane_thread_count():
    import os

    assert 1 <= train.physical_cores() <= (os.cpu_count() or 1)
