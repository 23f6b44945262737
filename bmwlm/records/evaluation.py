"""05's records: metrics.json (`Metrics`), generations.jsonl (`Generation`), qa_predictions.jsonl
(`QAPrediction`).

05 builds these objects and writes them with `to_dict`; 06 reads them back with `from_dict`, so a
renamed field breaks the reader's test (`tests/test_evaluate.py` feeds real 05 output to 06).
docs/records.md describes every field.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bmwlm.config import EVALUATE, METRICS_FILE
from bmwlm.records.base import Record
from bmwlm.records.training import RunSummary

# ---------------------------------------------------------------- shared pieces


@dataclass
class Interval(Record):
    """A statistic with its percentile-bootstrap 95% interval (`bmwlm.stats.Estimate` as a record)."""

    value: float
    ci95: list[float]
    n: int  # values summarised (items, or predicted tokens for a perplexity)
    units: int  # independent units the bootstrap resampled
    unit: str  # "item", "article" or "round"


@dataclass
class Comparison(Record):
    """One paired comparison of two models (or a model and a baseline) on the same units.

    `difference` is a - b; `sentence` is `bmwlm.stats.compare`'s wording: a direction only when the
    95% interval excludes 0 (`detectable`), else "no detectable difference".
    """

    family: str  # "perplexity", "qa", "cloze", "baseline", "gap", "speed"
    metric: str  # what is compared, e.g. "validation perplexity", "Q&A accuracy (calibrated)"
    a: str  # a model key (or "frequency_prior")
    b: str
    a_value: float
    b_value: float
    difference: float  # a - b
    ci95: list[float]
    test: str  # how the interval was made (and McNemar's p where it applies)
    units: int
    unit: str  # "article", "item" or "round"
    detectable: bool
    sentence: str
    ratio: float | None = None  # a / b: perplexities and timings
    ratio_ci95: list[float] | None = None
    mcnemar_p: float | None = None  # accuracy: exact two-sided McNemar p
    a_only: int | None = None  # accuracy: items only a gets right
    b_only: int | None = None


# ---------------------------------------------------------------- metrics.json: perplexity


@dataclass
class ArticleLosses(Record):
    """Per-article sums behind a perplexity: the unit its intervals resample.

    Windows are packed across article borders; each predicted token is attributed to the article it
    belongs to, and the EOS separator after an article belongs to that article. The sums over all
    articles equal the packed, token-weighted totals of the `SplitScore`.
    """

    article_ids: list[str]
    nll: list[float]  # summed NLL (nats) of the article's predicted tokens, its separator included
    tokens: list[int]  # its predicted tokens
    separator_nll: list[float]  # NLL of its EOS separator (0 when that position is not predicted)
    separator_tokens: list[int]  # 1 when its separator is predicted, else 0
    first_nll: list[float]  # NLL of its first token, predicted right after the previous separator
    first_tokens: list[int]  # 1 when that position is predicted, else 0


@dataclass
class SeparatorShare(Record):
    """What the EOS separators (and the first token after each) contribute to a perplexity."""

    separator_tokens: int
    share_of_tokens: float  # separator tokens / predicted tokens
    share_of_loss: float  # separator NLL / total NLL
    separator_loss: float  # mean NLL per separator token (nats)
    first_token_share_of_loss: float  # NLL of every article's first token / total NLL
    perplexity_without_separators: Interval  # separators left out of the loss (they stay in the context)
    perplexity_without_boundaries: Interval  # separators and every article's first token left out


@dataclass
class SplitScore(Record):
    """Token-weighted loss over non-overlapping windows of one split (`validation` or `train_slice`)."""

    loss: float
    perplexity: float  # exp(loss)
    tokens: int  # predicted tokens (a window of n tokens predicts n - 1)
    windows: int
    seconds: float | None = None
    tokens_per_s: float | None = None
    precision: str | None = None  # "bf16 autocast" or "float32"
    ci95: list[float] | None = None  # the perplexity's 95% interval, resampling articles
    articles: int | None = None  # articles with at least one predicted token
    per_article: ArticleLosses | None = None
    separators: SeparatorShare | None = None
    selection: str | None = None  # train slice: which articles it holds


# ---------------------------------------------------------------- metrics.json: multiple choice


@dataclass
class MethodAccuracy(Record):
    """Accuracy of one scoring method, overall and (Q&A) by whether the answer fact is in the training text."""

    accuracy: Interval  # Q&A: resampling items; cloze: resampling articles
    seen: Interval | None = None  # Q&A: items with seen_in_train true
    unseen: Interval | None = None  # Q&A: items with seen_in_train false
    mean_score_correct: float | None = None  # the method's score of the correct option, averaged over items


@dataclass
class ChoiceScore(Record):
    """Accuracy on a multiple-choice set (the hand-written Q&A set or the automatic cloze set) under
    each scoring method: "normalised" (mean log-prob per option token given the question), "calibrated"
    (summed log-likelihood given the question minus given the neutral prompt) and "prior_only" (the
    question removed: mean log-prob per token given the neutral prompt alone)."""

    n: int
    precision: str  # "float32" or "bf16 autocast"
    methods: dict[str, MethodAccuracy]
    uniform_guess: float | None  # Q&A: 1/4, a blind uniform guess over balanced positions; cloze: None
    seconds: float | None = None
    accuracy: float | None = None  # the headline: the normalised method's accuracy (filled in from `methods`)

    def __post_init__(self) -> None:
        if self.accuracy is None and "normalised" in self.methods:
            self.accuracy = self.methods["normalised"].accuracy.value


@dataclass
class FrequencyPrior(Record):
    """`bmwlm.qaset`'s guesser that never reads the question: the option most frequent in the training
    text. A baseline on the same Q&A items (intervals resample items)."""

    accuracy: Interval
    seen: Interval | None
    unseen: Interval | None


@dataclass
class PrecisionFlip(Record):
    set: str  # "qa" or "cloze"
    item_id: str
    float32: str  # the letter picked in float32
    bf16: str  # the letter picked under bf16 autocast
    margin_float32: float  # float32 score gap between the two letters


@dataclass
class PrecisionCheck(Record):
    """The same items and windows scored in float32 and under bf16 autocast (the two precisions the
    pipeline uses): which picks flip, and how far the numbers move."""

    method: str  # the scoring method compared ("normalised")
    items: int
    same_prediction: int
    flips: list[PrecisionFlip]  # every item whose pick differs, none hidden
    max_abs_diff_score: float  # largest |score(float32) - score(bf16)| over all options
    median_abs_diff_loglik: float  # median |summed option log-likelihood difference| (nats)
    perplexity_windows: int  # validation windows scored both ways (0: not checked)
    perplexity_float32: float | None
    perplexity_bf16: float | None


# ---------------------------------------------------------------- metrics.json: generations and cost


@dataclass
class AnswerQuality(Record):
    """Greedy answers to the question prompts in one style ("plain" or "chat")."""

    style: str
    available: bool  # chat: False when the tokenizer has no chat template
    note: str | None  # why not available
    questions: int
    contains_answer: Interval | None  # share of answers that contain the reference answer or an alias
    on_topic: Interval | None  # share that name a key term of the question or one of its options
    distinct_2: float | None  # distinct word bigrams / all word bigrams, averaged over answers


@dataclass
class GenerationSummary(Record):
    openings: int  # press-release openings continued (greedy and sampled)
    questions: int  # questions asked in each style
    max_new_tokens: int
    answer_new_tokens: int
    precision: str
    answers: dict[str, AnswerQuality]  # "plain", "chat"
    seconds: float | None = None


@dataclass
class CostOfModel(Record):
    train_step_seconds: Interval  # one forward+backward pass on the same batch, mean over rounds
    generation_seconds_per_sequence: Interval  # every sequence generates exactly `new_tokens` positions
    generation_tokens_per_s: float  # new_tokens / mean seconds per sequence
    train_step_rounds: list[float]  # the measured seconds, one per round (the paired unit)
    generation_rounds: list[float]


@dataclass
class CostMeasurement(Record):
    """Speed measured with the models interleaved in one process on the same inputs (rounds
    alternate the order), so a comparison is paired by round."""

    models: list[str]  # the two model keys measured
    rounds: int
    train_batch: list[int]  # [sequences, tokens per sequence]
    train_precision: str
    generation_new_tokens: int
    generation_precision: str
    per_model: dict[str, CostOfModel]
    threads: int
    seconds: float


@dataclass
class PruningInfo(Record):
    """For `base_minus_block`: how 04 chose the removed block (from block_importance.json)."""

    removed_block: int
    selection: str
    method: str
    seconds: float


@dataclass
class TrainingTotals(Record):
    """The run.json totals metrics.json repeats for a fine-tuned model."""

    train_seconds: float
    wall_seconds: float
    tokens_per_s: float
    tokens_seen: int
    steps: int
    threads: int | None
    initial_eval_loss: float | None
    final_eval_loss: float | None
    final_train_loss: float | None
    finished_at: str
    block_size: int | None = None

    @classmethod
    def from_run(cls, run: RunSummary) -> TrainingTotals:
        return cls(train_seconds=run.train_seconds, wall_seconds=run.wall_seconds, tokens_per_s=run.tokens_per_s,
                   tokens_seen=run.tokens_seen, steps=run.steps, threads=run.threads,
                   initial_eval_loss=run.initial_eval_loss, final_eval_loss=run.final_eval_loss,
                   final_train_loss=run.final_train_loss, finished_at=run.finished_at,
                   block_size=run.train_config().block_size)

    @property
    def seconds_per_step(self) -> float | None:
        return self.train_seconds / self.steps if self.steps else None


@dataclass
class ModelEntry(Record):
    """Everything measured on one model; `available` False (with `error`) when it could not be evaluated."""

    label: str
    path: str | None
    available: bool
    error: str | None
    parameters: int | None = None
    blocks: int | None = None
    size_mb: float | None = None  # weight files on disk, MiB
    validation: SplitScore | None = None
    train_slice: SplitScore | None = None
    qa: ChoiceScore | None = None
    cloze: ChoiceScore | None = None
    generation: GenerationSummary | None = None
    training: TrainingTotals | None = None  # full / pruned only
    pruning: PruningInfo | None = None  # base_minus_block only
    precision_check: PrecisionCheck | None = None
    seconds: float | None = None


@dataclass
class EvalSettings(Record):
    """How 05 measured, and what data it measured on."""

    models: list[str]  # the --models asked for
    base_model: str
    removed_block: int | None
    block_size: int
    windowing: str
    batch_size: int
    train_slice_tokens: int | str  # a token count, or "as validation"
    precision: dict[str, str]  # measurement -> "float32" or "bf16 autocast"
    methods: dict[str, str]  # scoring method -> what it is
    neutral_prompt: str  # the prompt of the calibrated and prior-only methods
    qa_prompt: str
    bootstrap_resamples: int
    seed: int
    cloze_max: int
    max_new_tokens: int
    answer_new_tokens: int
    repetition_penalty: float
    qa_file: str
    validation_file: str
    train_file: str
    threads: int
    torch: str
    transformers: str
    validation_articles: int
    train_articles: int | None  # None when the train split is missing
    qa_items: int
    qa_answer_positions: dict[str, int]
    qa_split_source: dict[str, int]  # "processed" (looked up in the splits) or "qa_file"
    qa_splits: dict[str, int]
    qa_seen: dict[str, int]  # "seen" / "unseen": items whose answer fact is (not) in the training text
    qa_seen_source: str  # "train split search" (re-checked by 05) or "qa_file" (no train split)
    qa_seen_changed: list[str]  # items whose file tag disagrees with the search of this train split
    cloze_items: int
    cloze_articles: int
    cloze_answer_positions: dict[str, int] | None
    seconds: float | None = None
    device: str = "cpu"  # where the models ran (files written before --device existed ran on the CPU)


@dataclass
class Metrics(Record):
    """`outputs/eval/metrics.json`: the settings, one entry per model key (always all four), the paired
    comparisons, the Q&A baseline and the interleaved speed measurement."""

    settings: EvalSettings
    models: dict[str, ModelEntry]
    comparisons: list[Comparison]
    frequency_prior: FrequencyPrior | None  # None without the train split
    cost: CostMeasurement | None  # None when fewer than two comparable models ran or --cost-rounds 0

    def entry(self, key: str) -> ModelEntry | None:
        """The model's entry if it was evaluated, else None."""
        e = self.models.get(key)
        return e if e is not None and e.available else None

    def comparisons_of(self, family: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.family == family]

    def comparison(self, family: str, metric: str, a: str, b: str) -> Comparison | None:
        return next((c for c in self.comparisons if (c.family, c.metric, c.a, c.b) == (family, metric, a, b)), None)


def load_metrics(path: Path | str = METRICS_FILE) -> Metrics:
    return Metrics.load(path, str(EVALUATE))


# ---------------------------------------------------------------- generations.jsonl, qa_predictions.jsonl


@dataclass
class Generation(Record):
    model: str  # one of MODEL_KEYS
    prompt_id: str
    prompt: str  # the text the model continued (for a chat question: the rendered template)
    decoding: str  # "greedy" or "sampled"
    settings: dict  # the generate() settings, max_new_tokens and seed
    completion: str
    new_tokens: int  # tokens before the first EOS
    seconds: float  # wall time of the batched call this completion was part of
    kind: str = "opening"  # "opening" (a press-release opening) or "question"
    style: str | None = None  # question: "plain" or "chat"
    item_id: str | None = None  # question: the Q&A item it comes from
    seen_in_train: bool | None = None
    contains_answer: bool | None = None
    on_topic: bool | None = None
    distinct_2: float | None = None


@dataclass
class QAPrediction(Record):
    """One model's scores of one multiple-choice item, under every method."""

    model: str
    set: str  # "qa" or "cloze"
    item_id: str
    question: str
    options: list[str]
    answer: str  # "A".."D"
    predicted: dict[str, str]  # method -> letter
    correct: dict[str, bool]  # method -> whether that letter is the answer
    option_scores: dict[str, list[float]]  # method -> the four scores it ranks
    option_loglik_sum: list[float]  # summed log-likelihood of each option given the question / cloze prompt
    option_loglik_sum_neutral: list[float]  # ... given the neutral prompt
    option_tokens: list[int]
    precision: str
    source_id: str | None
    split: str | None  # "train" / "validation": the split of the source article
    split_source: str | None = None  # Q&A: "processed" or "qa_file"
    span_type: str | None = None  # cloze: "year", "number", "percent" or "name"
    seen_in_train: bool | None = None  # Q&A: whether the answer fact is in the training text
    answer_type: str | None = None  # Q&A: person, place, ...
