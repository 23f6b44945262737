"""What the machine offers and how the stages use it: cores, threads, bf16 support, the matmul ceiling.

One thread policy for every stage (03, 04, 05 and the benchmark): `--threads N` uses N torch threads;
`--threads 0` (the default) takes the physical cores this process may run on, minus the cores that the
1-minute load average says other jobs are using, and at least one. On a 2-core machine shared with
another torch job, a 2-thread OpenMP region waits for whichever of its threads the scheduler parks,
so fewer threads finish sooner (the README's performance section has the measurements).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time

import torch

from bmwlm.config import DEVICE_CHOICES

log = logging.getLogger(__name__)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share one core's matmul units)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu, package = set(), None, "0"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu, package = int(value), "0"
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu in allowed:
                    cores.add((package, value))
    except OSError:
        pass
    return max(1, len(cores) or len(allowed))


def free_cores(cores: int | None = None) -> int:
    """`cores` (default: physical cores) minus those the 1-minute load average says are busy, >= 1."""
    cores = cores or physical_cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def choose_threads(requested: int | None = 0) -> int:
    """The thread policy: `requested` if > 0, else the free physical cores (see the module docstring)."""
    if requested and requested > 0:
        return requested
    return free_cores()


def set_threads(requested: int | None = 0) -> int:
    """Apply `choose_threads(requested)` to torch and return it (logged, so a run says what it used)."""
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    how = "as asked" if requested and requested > 0 else f"auto: {physical_cores()} physical core(s), load-aware"
    log.info("using %d torch thread(s) (%s)", threads, how)
    return threads


def bf16_supported() -> bool:
    """True where bfloat16 matmuls run natively: a CUDA GPU with bf16, or a CPU oneDNN reports bf16 for."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def matmul_gflops(dtype_name: str = "bfloat16", n: int = 2048, repeats: int = 10,
                  budget_s: float | None = 1.0) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n matmul: the machine's practical ceiling for that dtype.

    The best of several so that a busy machine lowers it less. Bounded in time (`budget_s`; None: exactly
    n and repeats): a 256 x 256 probe first, then the largest power-of-two n up to `n` whose product the
    probe predicts to take at most a tenth of the budget, and no more repeats once the budget is spent.
    Where the dtype is slow (bfloat16 emulated on a CPU without native support runs some 40 times slower
    than float32) the start-up measurement so stays about a second instead of minutes.
    """
    dtype = getattr(torch, dtype_name)
    if budget_s is not None:
        probe = 256
        a, b = torch.randn(probe, probe, dtype=dtype), torch.randn(probe, probe, dtype=dtype)
        a @ b  # warm-up (oneDNN picks its kernel)
        t0 = time.perf_counter()
        a @ b
        per_flop = (time.perf_counter() - t0) / (2 * probe**3)
        size = probe
        while size * 2 <= n and per_flop * 2 * (size * 2) ** 3 <= budget_s / 10:
            size *= 2
        n = min(n, size)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (oneDNN picks its kernel)
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        took = time.perf_counter() - t0
        best, spent = min(best, took), spent + took
        if budget_s is not None and spent > budget_s:
            break
    return 2 * n**3 / best / 1e9


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), so a record says which machine made a timing."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    """Library versions a result depends on (recorded in run.json and metrics.json)."""
    import accelerate
    import datasets
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "datasets": datasets.__version__, "tokenizers": tokenizers.__version__}


# ---------------------------------------------------------------------------------------------
# Devices: one `--device auto|cpu|cuda|mps` policy for 03, 04 and 05
# ---------------------------------------------------------------------------------------------


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device that is absent is an error."""
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES:
        raise DeviceUnavailableError(f"unknown device {name!r}; choose from {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    if name == "mps" and not mps_available():
        raise DeviceUnavailableError("--device mps: the Metal backend is not available")
    return torch.device(name)


def autocast_dtype(device: torch.device | str, low_precision: bool = True) -> torch.dtype | None:
    """The autocast dtype that follows the device: bfloat16 where it runs natively (CUDA with bf16,
    a CPU with AVX512-BF16/AMX), float16 on older GPUs and MPS (training then needs a gradient
    scaler), None (float32) where neither helps or when `low_precision` is off."""
    kind = torch.device(device).type
    if not low_precision:
        return None
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.bfloat16 if bf16_supported() else None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """An autocast context for `device` in `dtype`, or a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def compute_dtype_name(dtype: torch.dtype | None) -> str:
    """The dtype matmuls run in under autocast `dtype` (None: no autocast, float32): "bfloat16", "float32"..."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def precision_name(dtype: torch.dtype | None) -> str:
    """How records name a precision: "float32", "bfloat16 autocast", "float16 autocast"."""
    return "float32" if dtype is None else f"{compute_dtype_name(dtype)} autocast"


def device_matmul_gflops(device: torch.device | str, dtype_name: str = "bfloat16", n: int = 2048,
                         repeats: int = 10) -> float:
    """`matmul_gflops` on `device`: the CPU as before; a GPU (or MPS) synchronised around each timing. The
    caller names the dtype its matmuls run in (`compute_dtype_name`: float16 on a GPU without bfloat16)."""
    device = torch.device(device)
    if device.type == "cpu":
        return matmul_gflops(dtype_name, n, repeats)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on `device` (a GPU runs asynchronously; a timing must wait for it)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def device_model(device: torch.device | str) -> str:
    """What a record names as the machine: the GPU's name on CUDA, "Apple MPS", else the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


# ---------------------------------------------------------------------------------------------
# More than one process: what torchrun / accelerate launch tell each process
# ---------------------------------------------------------------------------------------------
def process_rank() -> int:
    """This process's rank among all launched processes (RANK, set by torchrun and accelerate launch); 0 alone."""
    return int(os.environ.get("RANK", "0"))


def local_processes() -> int:
    """Processes launched on this machine (LOCAL_WORLD_SIZE); 1 without a launcher."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def data_parallel_size(device: torch.device | str) -> int:
    """How many model replicas share each optimizer step: the launched processes (WORLD_SIZE), or, for
    one process on a machine with several visible GPUs, every GPU (transformers.Trainer then runs
    nn.DataParallel over all of them)."""
    world = launched_processes()
    if world == 1 and torch.device(device).type == "cuda":
        return max(1, torch.cuda.device_count())
    return world


def launched_processes() -> int:
    """Processes of the whole run (WORLD_SIZE, set by torchrun and accelerate launch); 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))
