"""04's records (docs/records.md, section 04 and the depth study):

- `BlockImportance` (`outputs/prune/block_importance.json`): how important each block of the base model is
  on the calibration sample of the training split, which one was removed, and where the smaller model is;
- `BlockScoring` (`04 --scores-only`, e.g. `outputs/prune/block_scores_finetuned.json`): the same scores for
  any model, without removing anything;
- `RemovalCurve` (`04 --curve`, `outputs/prune/removal_curve.json`): five selection methods' scores and
  chosen sets for k = 0 … K blocks, the calibration and validation perplexity of each set, and the deep cut;
- `HealingEvaluation` (`python -m bmwlm.evaluate.healing`, `outputs/study/healing_eval.json`): the validation
  perplexity of every healed model and of the fine-tuned full model per article, and the paired comparisons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bmwlm.config import BLOCK_IMPORTANCE_FILE, PRUNE, PRUNE_DIR, ROOT, STUDY_DIR
from bmwlm.io import MissingInputError
from bmwlm.records.base import Record
from bmwlm.records.evaluation import Comparison, SplitScore

REMOVAL_CURVE_FILE = PRUNE_DIR / "removal_curve.json"
FINETUNED_SCORES_FILE = PRUNE_DIR / "block_scores_finetuned.json"
HEALING_EVAL_FILE = STUDY_DIR / "healing_eval.json"
# The depth study's four healing runs: (cut, healing) -> folder under outputs/study/runs/ (each holds pruned/)
HEALING_RUNS = {("one_block", "fine-tune"): "one_block_ft", ("one_block", "distill"): "one_block_kd",
                ("deep_cut", "fine-tune"): "deep_cut_ft", ("deep_cut", "distill"): "deep_cut_kd"}
TEACHER = "full"  # the fine-tuned full model's key in a HealingEvaluation: the teacher and the gap's target


@dataclass
class BlockScore(Record):
    block: int
    loss_without: float  # mean calibration loss with this block skipped (replaced by the identity)
    delta_loss: float  # loss_without - the intact model's loss
    cosine_similarity: float  # of the block's input and output hidden states, averaged over tokens
    importance: float  # the score the selection ranks by (delta_loss)


@dataclass
class RemovalResult(Record):
    block: int
    loss: float  # mean loss of the model with this block removed


@dataclass
class ProxyComparison(Record):
    method: str  # "cosine_similarity": the cheap proxy recorded beside the loss increase
    block: int  # the block the proxy would remove (the one whose output is most like its input)
    loss: float  # mean calibration loss of the model with that block removed
    rank_correlation_with_importance: float  # Spearman, proxy ranking vs importance ranking


@dataclass
class CalibrationSample(Record):
    """The tokens every block score averages over: windows of the training split, never validation."""

    file: str  # the split the windows come from (display_path)
    rule: str  # how the windows were drawn
    block_size: int
    windows: int
    windows_total: int  # windows of the packed split
    predicted_tokens: int  # what the losses average over (block_size - 1 per window)
    budget_tokens: int  # the --calibration-tokens asked for
    budget_reason: str  # why this budget (the measurement behind it)
    articles: int  # articles with at least one token in the sample
    articles_total: int
    first_published: str | None
    last_published: str | None
    validation_articles_checked: int  # validation articles verified absent from the sample (0: no file)
    window_indices: list[int] = field(default_factory=list)  # positions in the packed split
    article_ids: list[str] = field(default_factory=list)


@dataclass
class ValidationReport(Record):
    """Validation losses scored AFTER the choice, for reporting only (never used to choose)."""

    note: str
    file: str
    predicted_tokens: int
    baseline_loss: float
    removed: dict[str, RemovalResult]  # "chosen", "last", "middle", "cosine_proxy"


@dataclass
class BlockImportance(Record):
    base_model: str  # the --model value
    base_model_path: str
    method: str
    eval_tokens: int  # predicted calibration tokens the losses average over (n - 1 per window)
    baseline_loss: float  # calibration loss of the intact model
    scores: list[BlockScore]
    selection: str  # "auto" or "manual"
    removed_block: int
    naive_comparison: dict[str, RemovalResult]  # "chosen", "last", "middle": calibration loss without the block
    output_dir: str  # display_path of the smaller model: relative to the repository root, or absolute
    parameters_before: int
    parameters_after: int
    blocks_before: int
    blocks_after: int
    seconds: float
    # Settings and evidence: 04 always writes them; records made by hand may leave them out.
    proxy_comparison: ProxyComparison | None = None
    validation_file: str | None = None  # only checked for overlap and, if asked, scored after the choice
    block_size: int | None = None
    bf16: bool | None = None
    threads: int | None = None
    cpu_model: str | None = None  # the machine that made the timings
    scoring_seconds: float | None = None  # the prefix-cached scoring of every block
    calibration: CalibrationSample | None = None
    precision: str | None = None  # "float32" or "bfloat16 autocast"
    device: str | None = None
    scoring: str | None = None  # "prefix-cached" (blocks before the skipped one run once per batch)
    validation_report: ValidationReport | None = None  # scored after the choice; null unless asked for
    extra: dict = field(default_factory=dict)  # anything else beyond the contract

    def model_dir(self, source: Path | str = BLOCK_IMPORTANCE_FILE) -> Path:
        """The smaller model's directory: the one rule for resolving `output_dir` (absolute, or
        relative to the repository root as `bmwlm.io.display_path` wrote it)."""
        path = Path(self.output_dir)
        if not path.is_absolute():
            path = ROOT / path
        if not (path / "config.json").exists():
            raise MissingInputError(f"pruned model {self.output_dir} (named in {source}) is missing; run {PRUNE} first")
        return path


@dataclass
class BlockScoring(Record):
    """`04 --scores-only`: every block's scores for any model (e.g. the fine-tuned one); nothing removed."""

    model: str  # the --model value
    model_path: str
    method: str
    eval_tokens: int
    baseline_loss: float
    scores: list[BlockScore]
    least_important: int  # the block 04 would remove from this model
    calibration: CalibrationSample
    precision: str
    device: str
    block_size: int
    threads: int
    cpu_model: str
    scoring_seconds: float
    seconds: float


# ---------------------------------------------------------------- the depth study (04 --curve)


@dataclass
class IterativeStep(Record):
    removed_before: list[int]  # blocks removed when this step scored the rest
    losses: dict[str, float]  # candidate block (as a string: JSON keys) -> calibration loss without it too
    chosen: int


@dataclass
class StudyScores(Record):
    """Every score the five methods rank by, on the calibration sample."""

    delta_loss: list[float]  # per block: calibration loss increase when skipped alone
    block_influence: list[float]  # per block: 1 - cos(input, output), every token (ShortGPT)
    angular_distance: dict[str, list[float]]  # span n -> per start block l (l + n <= N - 1): arccos(cos)/pi of
    #                                           the inputs of blocks l and l + n, last token of each window
    angular_distance_all_tokens: dict[str, list[float]]  # the same averaged over every token (diagnostic)
    iterative: list[IterativeStep]  # SLEB's steps


@dataclass
class CurvePoint(Record):
    k: int
    blocks: list[int]  # the k blocks removed (sorted)
    calibration_loss: float
    calibration_perplexity: float
    validation_loss: float | None  # scored after every set was fixed (reporting only)
    validation_perplexity: float | None
    # summed NLL of each validation window (RemovalCurve.validation_window_tokens predicted tokens each), for
    # paired intervals; None in a record written before they were kept (04 --curve-windows adds them)
    validation_window_nll: list[float] | None = None


@dataclass
class CurveComparison(Record):
    """One method's k-block set against the reference method's (the deep cut's, chosen on calibration), on the
    validation windows: perplexity ratio with a paired bootstrap interval over windows."""

    k: int
    method: str
    reference: str
    same_set: bool  # the two methods remove the same blocks: ratio exactly 1
    perplexity: float
    reference_perplexity: float
    ratio: float  # perplexity / reference_perplexity
    ratio_ci95: list[float]
    windows: int  # the resampled unit: validation windows (each window lies mostly in one article)
    resamples: int


@dataclass
class DeepCut(Record):
    method: str  # the best method by calibration perplexity at k = max_removed
    blocks: list[int]
    output_dir: str  # the model without those blocks (display_path)
    parameters: int


@dataclass
class RemovalCurve(Record):
    base_model: str
    base_model_path: str
    n_blocks: int
    max_removed: int  # K
    methods: list[str]
    method_labels: dict[str, str]
    calibration: CalibrationSample
    validation_file: str | None
    validation_tokens: int  # predicted validation tokens each curve point averages over (0: not scored)
    baseline_calibration_loss: float
    baseline_validation_loss: float | None
    scores: StudyScores
    curves: dict[str, list[CurvePoint]]  # method -> k = 0 … K
    deep_cut: DeepCut | None
    precision: str
    device: str
    block_size: int
    batch_size: int
    threads: int
    cpu_model: str
    seconds: float
    extra: dict = field(default_factory=dict)
    validation_window_tokens: list[int] = field(default_factory=list)  # predicted tokens of each window
    validation_comparisons: list[CurveComparison] = field(default_factory=list)  # k >= 1, each method vs deep_cut's


@dataclass
class HealedModel(Record):
    """One model's validation score in the healing evaluation."""

    run: str  # a HEALING_RUNS folder name, or TEACHER
    source: str  # the model folder scored (display_path), or "<metrics.json>:<entry>" taken from 05
    validation: SplitScore  # as 05 scores it: the training windows, per-article sums, bootstrap interval
    run_final_eval_loss: float | None  # the run's own last evaluation (03's run.json): the same windows
    from_metrics: bool = False  # taken from a 05 metrics.json entry (`source`) instead of scoring a folder


@dataclass
class HealingEvaluation(Record):
    """outputs/study/healing_eval.json: the healed models and the teacher scored per validation article, and
    their paired comparisons (`bmwlm.evaluate.healing`)."""

    validation_file: str
    precision: str
    bootstrap_resamples: int
    seed: int
    models: dict[str, HealedModel]  # run -> score
    comparisons: list[Comparison]  # paired over validation articles: distill vs fine-tune, each vs TEACHER
    device: str
    threads: int
    cpu_model: str
    seconds: float


def load_block_importance(path: Path | str = BLOCK_IMPORTANCE_FILE) -> BlockImportance:
    return BlockImportance.load(path, str(PRUNE))


def pruned_model_dir(path: Path | str = BLOCK_IMPORTANCE_FILE) -> Path:
    """Where 04 saved the base model minus one block, from its record (errors name stage 04)."""
    return load_block_importance(path).model_dir(path)


def load_removal_curve(path: Path | str = REMOVAL_CURVE_FILE) -> RemovalCurve:
    return RemovalCurve.load(path, "04_prune_layer.py --curve (make study)")


def load_block_scoring(path: Path | str = FINETUNED_SCORES_FILE) -> BlockScoring:
    return BlockScoring.load(path, "04_prune_layer.py --scores-only (make study)")


def load_healing_evaluation(path: Path | str = HEALING_EVAL_FILE) -> HealingEvaluation:
    return HealingEvaluation.load(path, "python -m bmwlm.evaluate.healing (make study)")
