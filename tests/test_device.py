"""One `--device auto|cpu|cuda|mps` policy (issue 11, item 4): stage 03 and the shared model helpers.

The CPU path runs here; the CUDA and MPS paths run where such a device exists and are skipped otherwise.
The policy itself (auto: CUDA, then MPS, then CPU; the autocast dtype per device) is checked everywhere
by pretending the devices exist.
"""
import dataclasses

import pytest
import torch

from bmwlm import hardware
from bmwlm.config import TrainConfig
from bmwlm.hardware import DeviceUnavailableError, autocast_dtype, bf16_supported, resolve_device
from bmwlm.modeling import autocast_context, evaluate_nll, load_model
from bmwlm.records.training import RunSummary
from bmwlm.train import options
from bmwlm.train.run import STAGE_ERRORS, train_variant, usable_loss_chunk
from bmwlm.train.trainer import training_arguments
from test_train import TINY, splits  # noqa: F401  (splits: the processed-splits fixture)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_mps = pytest.mark.skipif(not hardware.mps_available(), reason="no MPS device")
NEW_FIELDS = ("device", "device_model", "processes", "ddp_backend", "per_device_batch", "accumulation",
              "effective_batch", "world_batch")


def _train(model_dir, splits, runs_dir, device, **overrides):
    return train_variant("full", str(model_dir), TrainConfig(**{**TINY, **overrides}), train_file=splits[0],
                         validation_file=splits[1], runs_dir=runs_dir, progress=False, threads=1, device=device)


def _blocks(n=5, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (n, length), generator=g).tolist()


# ---------------------------------------------------------------- the policy


def test_the_matmul_ceiling_takes_about_a_second_even_where_the_dtype_is_emulated(monkeypatch):
    import time

    t0 = time.perf_counter()
    gflops = hardware.matmul_gflops("bfloat16")  # on a CPU without native bf16 a 2048 product alone takes ~20 s
    assert gflops > 0 and time.perf_counter() - t0 < 10
    calls = []
    real = time.perf_counter
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: calls.append(1) or real() + len(calls))
    assert hardware.matmul_gflops("float32", n=512, repeats=50) > 0  # every product seems to take a second
    assert len(calls) < 10  # probe and two repeats, not fifty


def test_03_offers_the_shared_device_choices():
    assert options.DEVICE_CHOICES is hardware.DEVICE_CHOICES  # one definition, in bmwlm.config


def test_auto_picks_cuda_then_mps_then_cpu_and_an_absent_device_is_an_error(monkeypatch):
    for cuda, mps, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda c=cuda: c)
        monkeypatch.setattr(hardware, "mps_available", lambda m=mps: m)
        assert resolve_device("auto") == resolve_device() == torch.device(expected)
        assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="--device cuda"):
        resolve_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="--device mps"):
        resolve_device("mps")
    with pytest.raises(DeviceUnavailableError, match="unknown device"):
        resolve_device("tpu")
    assert DeviceUnavailableError in STAGE_ERRORS  # 03_train.py reports it in one line, exit 1


def test_the_autocast_dtype_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("cuda") == torch.float16  # older GPUs: fp16, with Trainer's gradient scaler
    assert autocast_dtype("mps") == torch.float16
    assert autocast_dtype("cpu") == (torch.bfloat16 if bf16_supported() else None)
    assert autocast_dtype("cuda", low_precision=False) is None  # --no-bf16: float32 everywhere


def test_fp16_and_dataparallel_fall_back_to_the_models_own_loss():
    assert usable_loss_chunk(512, torch.bfloat16, False) == 512
    assert usable_loss_chunk(512, None, False) == 512
    assert usable_loss_chunk(512, torch.float16, False) == 0  # its gradients would skip the fp16 scaler
    assert usable_loss_chunk(512, torch.bfloat16, True) == 0  # nn.DataParallel replicates forward only
    assert usable_loss_chunk(0, torch.bfloat16, False) == 0


def test_training_arguments_follow_the_device_and_the_batch_share(tmp_path):
    args = training_arguments(TrainConfig(), tmp_path, bf16=True, resuming=False, device="cpu",
                              per_device_batch=4, accumulation=2)
    assert args.use_cpu and args.device == torch.device("cpu") and args.bf16 and not args.fp16
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert args.ddp_backend is None  # one process; gloo only under a launcher
    default = training_arguments(TrainConfig(), tmp_path, bf16=False, resuming=True)  # the benchmark's call
    assert default.device == resolve_device("auto")
    assert (default.per_device_train_batch_size, default.gradient_accumulation_steps) == (8, 1)


def test_several_processes_are_counted_from_the_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert hardware.data_parallel_size("cpu") == hardware.launched_processes() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert hardware.data_parallel_size("cpu") == 4 and hardware.local_processes() == 2


# ---------------------------------------------------------------- shared helpers (04 and 05 use them too)


def test_autocast_context_keeps_its_cpu_default_and_takes_a_device(tiny_llama_dir):
    with autocast_context(True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast_context(False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(True, "cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
    model = load_model(tiny_llama_dir)
    blocks = _blocks()
    for bf16 in (False, True):  # the model's device by default; the same result when named
        assert evaluate_nll(model, blocks, 2, bf16=bf16) == evaluate_nll(model, blocks, 2, bf16=bf16, device="cpu")
    nll, n = evaluate_nll(model, blocks, 2, bf16=False)
    assert n == 5 * 23 and nll > 0


def test_old_run_json_without_the_device_fields_still_loads(tiny_gpt2_dir, splits, tmp_path):
    record = _train(tiny_gpt2_dir, splits, tmp_path, "cpu", max_steps=2)
    assert (record.device, record.processes, record.ddp_backend, record.world_batch) == ("cpu", 1, None, "keep")
    assert (record.per_device_batch, record.accumulation, record.effective_batch) == (4, 1, 4)
    assert record.device_model == hardware.cpu_model()
    assert record.precision == ("bf16-autocast" if bf16_supported() else "float32")
    old = {k: v for k, v in record.to_dict().items() if k not in NEW_FIELDS}
    loaded = RunSummary.from_dict(old)
    assert loaded.device == "cpu" and loaded.processes == 1 and loaded.effective_batch is None
    assert dataclasses.replace(loaded, **{k: getattr(record, k) for k in NEW_FIELDS}) == record


# ---------------------------------------------------------------- where the hardware exists


@needs_cuda
def test_cuda_run_trains_in_the_devices_dtype_and_records_it(tiny_llama_dir, splits, tmp_path):
    record = _train(tiny_llama_dir, splits, tmp_path, "cuda", max_steps=6)
    dtype = autocast_dtype("cuda")
    assert record.device == "cuda" and record.device_model == torch.cuda.get_device_name(0)
    assert record.precision == {torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast"}[dtype]
    # the chunked loss runs unless fp16 (gradient scaler) or several GPUs in this one process (DataParallel)
    assert ("model loss" in record.loss) == (dtype == torch.float16 or torch.cuda.device_count() > 1)
    assert record.processes == torch.cuda.device_count() and record.effective_batch == TINY["per_device_train_batch_size"]
    assert record.final_eval_loss < record.initial_eval_loss
    assert record.matmul_gflops > 0 and record.peak_dtype == str(dtype).removeprefix("torch.")


@needs_cuda
def test_evaluate_nll_on_cuda_matches_the_cpu(tiny_llama_dir):
    blocks = _blocks()
    cpu_nll, n = evaluate_nll(load_model(tiny_llama_dir), blocks, 2, bf16=False)
    gpu_nll, gpu_n = evaluate_nll(load_model(tiny_llama_dir).to("cuda"), blocks, 2, bf16=False)
    assert gpu_n == n and gpu_nll == pytest.approx(cpu_nll, rel=1e-4)
    low, _ = evaluate_nll(load_model(tiny_llama_dir).to("cuda"), blocks, 2, bf16=True)
    assert low == pytest.approx(cpu_nll, rel=0.02)
    with autocast_context(True, "cuda"):
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == autocast_dtype("cuda")


@needs_cuda
def test_training_arguments_on_cuda_use_the_gpu_and_fp16_where_bf16_is_missing(tmp_path):
    dtype = autocast_dtype("cuda")
    args = training_arguments(TrainConfig(), tmp_path, bf16=dtype == torch.bfloat16, resuming=False,
                              device="cuda", fp16=dtype == torch.float16)
    assert not args.use_cpu and args.device.type == "cuda" and args.fp16 == (dtype == torch.float16)


@needs_mps
def test_mps_run_trains_in_float16_autocast(tiny_llama_dir, splits, tmp_path):
    record = _train(tiny_llama_dir, splits, tmp_path, "mps", max_steps=6)
    assert record.device == "mps" and record.precision == "fp16-autocast" and "model loss" in record.loss
    assert record.final_eval_loss < record.initial_eval_loss


# ---------------------------------------------------------------- 05 on a device


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device exists here")
def test_05_refuses_an_absent_device_with_one_line_naming_it(splits, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    train, validation = splits
    proc = subprocess.run([sys.executable, str(ROOT / "05_evaluate.py"), "--device", "cuda", "--train-file", str(train),
                           "--validation-file", str(validation), "--out-dir", str(tmp_path / "eval")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --device cuda: no CUDA device")
    assert not (tmp_path / "eval").exists()


@needs_cuda
def test_05_scores_options_windows_and_generations_on_cuda_as_on_the_cpu(tiny_llama_dir):
    from bmwlm.evaluate import choice, generation, perplexity
    from bmwlm.modeling import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    cpu, gpu = load_model(tiny_llama_dir), load_model(tiny_llama_dir).to("cuda")
    pairs = [("The BMW iX3 is built in", o) for o in ("Debrecen", "Munich", "Leipzig plant", "Spartanburg")]
    for a, b in zip(choice.score_pairs(cpu, tok, pairs), choice.score_pairs(gpu, tok, pairs)):
        assert b["tokens"] == a["tokens"] and b["sum"] == pytest.approx(a["sum"], abs=1e-3)
    blocks = _blocks()
    for a, b in zip(perplexity.token_nll(cpu, blocks, 2, bf16=False), perplexity.token_nll(gpu, blocks, 2, bf16=False)):
        assert b == pytest.approx(a, abs=1e-3)
    settings = {"do_sample": False}
    assert generation._generate(gpu, tok, ["BMW Group"], 8, settings, 0)[0] == \
        generation._generate(cpu, tok, ["BMW Group"], 8, settings, 0)[0]
    assert choice.precision_name(True, "cuda") == hardware.precision_name(autocast_dtype("cuda"))
