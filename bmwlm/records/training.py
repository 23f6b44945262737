"""03's records: `outputs/runs/<variant>/run.json` (RunSummary) and each line of `log.jsonl` (LogLine).

03 builds these objects and writes them with `save` / `to_dict`; 05 and 06 read them back with `load` /
`load_log`, and find a variant's files through `run_files` (errors name the 03 command that makes them).
docs/records.md describes every field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from bmwlm.config import RUNS_DIR, TrainConfig, train_stage
from bmwlm.io import MissingInputError, read_jsonl, require
from bmwlm.records.base import Record

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class LogLine(Record):
    """One line of log.jsonl: a train line (`loss`, `lr`) or an eval line (`eval_loss`)."""

    step: int
    epoch: float
    tokens: int  # training tokens seen so far
    loss: float | None = None  # train lines: mean training loss since the previous train line
    lr: float | None = None  # train lines: learning rate at this step
    eval_loss: float | None = None  # eval lines: token-weighted validation loss
    seconds: float = field(kw_only=True)  # run seconds (train lines) or when the evaluation began (eval lines)

    @property
    def is_eval(self) -> bool:
        return self.eval_loss is not None

    def to_dict(self) -> dict:
        """Only the keys this kind of line has (a train line has no `eval_loss` key, and vice versa)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RunSummary(Record):
    """run.json: every setting of one fine-tuning run and its totals."""

    variant: str  # "full" or "pruned"
    base_model: str  # what was fine-tuned: the --model value or the pruned model's directory
    base_model_path: str  # the directory it was loaded from (display_path)
    config: dict  # every TrainConfig field, overrides applied
    overrides: dict  # the TrainConfig fields set on the command line
    seed: int
    versions: dict  # python, torch, transformers, accelerate, datasets, tokenizers
    cpu_model: str  # the machine that made the timings
    threads: int
    precision: str  # "bf16-autocast", "fp16-autocast" (with a gradient scaler) or "float32"
    compiled: bool  # transformer blocks ran torch.compile'd
    loss: str  # "chunked output layer, N positions" or "model loss"
    parameters: int
    blocks: int
    train_blocks: int
    validation_blocks: int  # validation windows each evaluation scores
    validation_blocks_total: int
    validation_subset: str  # "all" or "K evenly spaced of N blocks"
    steps: int
    epochs: float
    tokens_seen: int
    train_seconds: float  # run seconds without the evaluations (over all resumed parts)
    eval_seconds: float
    wall_seconds: float  # this process, from start to run.json
    tokens_per_s: float  # tokens_seen / train_seconds
    matmul_gflops: float  # one device's matmul ceiling measured at start-up, in `peak_dtype`
    share_of_peak: float  # tokens_per_s * 6 * parameters / (ceiling * processes)
    initial_eval_loss: float | None  # None when a resumed run's log lacks step 0
    final_eval_loss: float | None
    final_train_loss: float | None
    resumed_from_step: int | None  # None for an uninterrupted run
    train_file: str
    validation_file: str
    finished_at: str  # ISO 8601, UTC
    # Where it ran and how many processes shared each step (defaults: what a run.json from before had)
    device: str = "cpu"  # "cpu", "cuda" or "mps"
    device_model: str | None = None  # the GPU's name, "Apple MPS", or the CPU model
    processes: int = 1  # data-parallel replicas: torchrun processes (or GPUs under one process)
    ddp_backend: str | None = None  # "gloo" (CPU) or "nccl" (CUDA) with more than one process
    per_device_batch: int | None = None  # training blocks per forward pass in each process
    accumulation: int | None = None  # micro-batches per optimizer step in each process
    effective_batch: int | None = None  # per_device_batch * processes * accumulation blocks per step
    world_batch: str = "keep"  # "keep": effective batch = the recipe's; "scale": recipe's x processes
    peak_dtype: str = "bfloat16"  # the dtype the ceiling was measured in: the one the run's matmuls ran in

    # run.json files from before the ceiling followed the precision: always measured in bfloat16
    LEGACY_KEYS = {"bf16_matmul_gflops": "matmul_gflops", "share_of_bf16_peak": "share_of_peak"}

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "") -> "RunSummary":
        """Also reads an older run.json, whose ceiling fields carry their former bf16 names."""
        if isinstance(data, dict):
            data = {cls.LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        return super().from_dict(data, source=source)

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)

    @property
    def seconds_per_step(self) -> float | None:
        return self.train_seconds / self.steps if self.steps else None


@dataclass(frozen=True)
class RunFiles:
    """Where 03 writes one variant: <runs_dir>/<variant>/{model/, log.jsonl, run.json, checkpoints/, tensorboard/}."""

    variant: str
    runs_dir: Path = RUNS_DIR

    @property
    def folder(self) -> Path:
        return Path(self.runs_dir) / self.variant

    @property
    def run_file(self) -> Path:
        return self.folder / RUN_FILE

    @property
    def log_file(self) -> Path:
        return self.folder / LOG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.folder / CHECKPOINTS_DIR

    @property
    def model_dir(self) -> Path:
        return self.folder / MODEL_DIR

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files; `tensorboard --logdir <runs_dir>` shows every variant side by side."""
        return self.folder / TENSORBOARD_DIR

    def summary(self) -> RunSummary:
        """run.json; a missing file names the 03 command that writes it."""
        return RunSummary.load(self.run_file, str(train_stage(self.variant)))

    def log(self) -> list[LogLine]:
        return load_log(require(self.log_file, str(train_stage(self.variant))))

    def trained_model(self) -> Path:
        """The fine-tuned model's directory; a missing one names the 03 command that writes it."""
        if not (self.model_dir / "config.json").exists():
            raise MissingInputError(f"missing {self.model_dir}; run {train_stage(self.variant)} first")
        return self.model_dir


def run_files(variant: str, runs_dir: Path | str = RUNS_DIR) -> RunFiles:
    return RunFiles(variant, Path(runs_dir))


def load_log(path: Path | str) -> list[LogLine]:
    """Every line of a log.jsonl, typed; a damaged line raises BadRecordError naming file and line."""
    return [LogLine.from_dict(d, source=f"{path}:{i}") for i, d in enumerate(read_jsonl(path), 1)]
