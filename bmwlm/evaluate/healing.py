"""Intervals for the depth study's healing table (issue 8.3): every healed model and the fine-tuned full model
scored on the validation split per article, then compared in pairs over the same articles.

03's run.json gives each healing run's validation loss before and after training, but one number per run
cannot say whether distillation healed better than plain fine-tuning. This module scores each model exactly
as 05 scores one (`bmwlm.evaluate.perplexity.score_articles`: the training windows, bf16 autocast by default,
every predicted token attributed to its article) and makes the paired bootstrap over validation articles
(`bmwlm.stats.paired_bootstrap_perplexity`, the test 05 uses) for

- distillation vs plain fine-tuning at each cut (`one_block_kd` vs `one_block_ft`, `deep_cut_kd` vs
  `deep_cut_ft`): the question the study asks;
- each healed model vs the fine-tuned full model (`full`, the teacher): what is left of the gap.

A run whose model folder is gone (a run published from another machine keeps only run.json and log.jsonl)
can be taken from a 05 `metrics.json` entry of the same model: `--from-metrics one_block_ft=FILE:pruned`.
It is accepted only when that entry's validation loss equals the run's own last evaluation loss within
`SAME_MODEL_TOLERANCE` (03 and 05 score the same windows the same way, so a different model would differ
in far more than that), and the record names the source.

    python -m bmwlm.evaluate.healing            # make study runs it after the healing runs
Writes outputs/study/healing_eval.json (`HealingEvaluation`, docs/records.md).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bmwlm import stats
from bmwlm.config import DEVICE_CHOICES, PREPROCESS, RUNS_DIR, STUDY_RUNS_DIR, VALIDATION_FILE, TrainConfig
from bmwlm.io import BadRecordError, MissingInputError, display_path, read_json, read_jsonl, require, setup_logging
from bmwlm.records.evaluation import Comparison, SplitScore
from bmwlm.records.prune import HEALING_EVAL_FILE, HEALING_RUNS, TEACHER, HealedModel, HealingEvaluation
from bmwlm.records.training import RunSummary, run_files

log = logging.getLogger("healing")
SAME_MODEL_TOLERANCE = 1e-4  # nats: a 05 entry stands for a run only when their validation losses agree this well
# (a, b) pairs compared, a - b: distillation vs fine-tuning at each cut, then every healed model vs the teacher
PAIRS = (("one_block_kd", "one_block_ft"), ("deep_cut_kd", "deep_cut_ft"),
         *((name, TEACHER) for name in HEALING_RUNS.values()))


class HealingInputError(ValueError):
    """A model or record the healing evaluation was pointed at cannot stand for its run."""


@dataclass(frozen=True)
class Candidate:
    """Where one run's model is and what its own run.json says."""

    run: str
    folder: Path  # <runs dir>/<variant>: run.json, log.jsonl, model/
    variant: str

    @property
    def model_dir(self) -> Path:
        return run_files(self.variant, self.folder.parent).model_dir

    def summary(self) -> RunSummary | None:
        files = run_files(self.variant, self.folder.parent)
        return files.summary() if files.run_file.is_file() else None


def candidates(study_runs_dir: Path = STUDY_RUNS_DIR, runs_dir: Path = RUNS_DIR) -> list[Candidate]:
    """The teacher (`<runs_dir>/full`) and the four healing runs (`<study_runs_dir>/<name>/pruned`)."""
    out = [Candidate(TEACHER, Path(runs_dir) / "full", "full")]
    out += [Candidate(name, Path(study_runs_dir) / name / "pruned", "pruned") for name in HEALING_RUNS.values()]
    return out


def parse_from_metrics(values: list[str]) -> dict[str, tuple[Path, str]]:
    """`RUN=FILE:ENTRY` strings -> {run: (metrics file, entry key)}."""
    out = {}
    known = {TEACHER, *HEALING_RUNS.values()}
    for value in values:
        run, sep, rest = value.partition("=")
        file, sep2, entry = rest.rpartition(":")
        if not sep or not sep2 or not run or not file or not entry:
            raise HealingInputError(f"--from-metrics {value!r}: expected RUN=FILE:ENTRY, e.g. "
                                    "one_block_ft=docs/results/run/eval/metrics.json:pruned")
        if run not in known:
            raise HealingInputError(f"--from-metrics {value!r}: {run!r} is not one of {', '.join(sorted(known))}")
        out[run] = (Path(file), entry)
    return out


def from_metrics(run: str, summary: RunSummary | None, metrics_file: Path, entry: str) -> HealedModel:
    """A run's validation score taken from 05's metrics.json, if that entry is the run's model."""
    if summary is None or summary.final_eval_loss is None:
        raise HealingInputError(f"{run}: no run.json with a final evaluation loss to check {metrics_file}:{entry} against")
    data = read_json(require(metrics_file, "05_evaluate.py"))
    found = ((data.get("models") or {}).get(entry) or {}).get("validation") if isinstance(data, dict) else None
    score = SplitScore.from_dict(found, source=f"{metrics_file}:{entry}") if found else None
    if score is None or score.per_article is None:
        raise HealingInputError(f"{metrics_file} has no per-article validation score for {entry!r}")
    if abs(score.loss - summary.final_eval_loss) > SAME_MODEL_TOLERANCE:
        raise HealingInputError(
            f"{run}: {metrics_file}:{entry} has validation loss {score.loss:.5f}, the run ended at "
            f"{summary.final_eval_loss:.5f}: not the same model (tolerance {SAME_MODEL_TOLERANCE:g})")
    return HealedModel(run=run, source=f"{display_path(metrics_file)}:{entry}", validation=score,
                       run_final_eval_loss=summary.final_eval_loss, from_metrics=True)


def score_model(run: str, model_dir: Path, summary: RunSummary | None, texts: list[str], ids: list[str], *,
                block_size: int, batch_size: int, bf16: bool, n_resamples: int, seed: int, device: str,
                progress: bool) -> HealedModel:
    """05's validation score of one model folder."""
    from bmwlm.evaluate.perplexity import score_articles
    from bmwlm.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).to(device)
    score = score_articles(model, tokenizer, texts, ids, block_size, batch_size=batch_size, bf16=bf16,
                           n_resamples=n_resamples, seed=seed, progress=progress, desc=f"{run} val")
    final = summary.final_eval_loss if summary else None
    if final is not None and abs(score.loss - final) > 1e-3:
        log.warning("%s: validation loss %.5f here, %.5f in its run.json (different windows or precision?)",
                    run, score.loss, final)
    return HealedModel(run=run, source=display_path(model_dir), validation=score, run_final_eval_loss=final)


def healing_comparisons(models: dict[str, HealedModel], n_resamples: int, seed: int) -> list[Comparison]:
    """The paired comparisons of PAIRS whose two models were scored on the same articles."""
    from bmwlm.evaluate.compare import make_comparison, same_articles

    out = []
    for a, b in PAIRS:
        ma, mb = models.get(a), models.get(b)
        if ma is None or mb is None:
            continue
        pa, pb = ma.validation.per_article, mb.validation.per_article
        if not same_articles(pa, pb):
            log.warning("%s and %s were scored on different articles or windows: not compared", a, b)
            continue
        r = stats.paired_bootstrap_perplexity(pa.nll, pb.nll, pa.tokens, n_resamples, seed)
        out.append(make_comparison("healing", "validation perplexity", a, b, r["a"], r["b"], r["difference"], r["ci95"],
                                   f"paired bootstrap over {r['articles']} articles", r["articles"], "article",
                                   ratio=r["ratio"], ratio_ci95=r["ratio_ci95"]))
    return out


def evaluate_healing(study_runs_dir: Path = STUDY_RUNS_DIR, runs_dir: Path = RUNS_DIR,
                     validation_file: Path = VALIDATION_FILE, from_metrics_args: dict[str, tuple[Path, str]] | None = None,
                     *, block_size: int = TrainConfig.block_size, batch_size: int = TrainConfig.per_device_eval_batch_size,
                     bf16: bool = True, n_resamples: int = stats.N_RESAMPLES, seed: int = 0, device: str = "cpu",
                     threads: int = 1, progress: bool = False) -> HealingEvaluation:
    """Score every run with a model folder (or a --from-metrics entry); compare in pairs."""
    from bmwlm.evaluate.choice import precision_name
    from bmwlm.hardware import cpu_model

    start = time.perf_counter()
    rows = read_jsonl(require(validation_file, str(PREPROCESS)))
    texts, ids = [r["text"] for r in rows], [str(r.get("id", i)) for i, r in enumerate(rows)]
    from_metrics_args = from_metrics_args or {}
    runs = candidates(study_runs_dir, runs_dir)
    # every --from-metrics entry is checked before any model is loaded: a wrong entry fails in seconds
    taken = {c.run: from_metrics(c.run, c.summary(), *from_metrics_args[c.run])
             for c in runs if c.run in from_metrics_args}
    models: dict[str, HealedModel] = {}
    for c in runs:
        summary = c.summary()
        if c.run in taken:
            models[c.run] = taken[c.run]
        elif (c.model_dir / "config.json").is_file():
            models[c.run] = score_model(c.run, c.model_dir, summary, texts, ids, block_size=block_size,
                                        batch_size=batch_size, bf16=bf16, n_resamples=n_resamples, seed=seed,
                                        device=device, progress=progress)
        else:
            log.info("%s: no model in %s and no --from-metrics entry: left out", c.run, display_path(c.model_dir))
            continue
        v = models[c.run].validation
        log.info("%s: validation perplexity %.2f [%.2f, %.2f] (%s)", c.run, v.perplexity, *v.ci95, models[c.run].source)
    if not models:
        raise MissingInputError(f"no healing run or teacher model found under {study_runs_dir} or {runs_dir}; "
                                "run make study first")
    comparisons = healing_comparisons(models, n_resamples, seed)
    for comp in comparisons:
        log.info("%s", comp.sentence)
    return HealingEvaluation(
        validation_file=display_path(validation_file), precision=precision_name(bf16, device),
        bootstrap_resamples=n_resamples, seed=seed, models=models, comparisons=comparisons, device=str(device),
        threads=threads, cpu_model=cpu_model(), seconds=round(time.perf_counter() - start, 1))


def parse_args(argv=None) -> argparse.Namespace:
    cfg = TrainConfig()
    p = argparse.ArgumentParser(
        description="Score the depth study's healed models and the fine-tuned full model on the validation split "
                    "per article and compare them in pairs (paired bootstrap over articles).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--study-runs-dir", type=Path, default=STUDY_RUNS_DIR,
                   help="the healing runs: <dir>/<run>/pruned/{run.json,model/}")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="03's runs: the teacher is <dir>/full")
    p.add_argument("--validation-file", type=Path, default=VALIDATION_FILE, help="validation split (02_preprocess.py)")
    p.add_argument("--from-metrics", action="append", default=[], metavar="RUN=FILE:ENTRY",
                   help="take RUN's score from a 05 metrics.json entry instead of its (absent) model folder; "
                        "accepted only when the entry's validation loss equals the run's (repeatable)")
    p.add_argument("--out", type=Path, default=HEALING_EVAL_FILE, help="the record written")
    p.add_argument("--block-size", type=int, default=cfg.block_size, help="tokens per scoring window (as 03 and 05)")
    p.add_argument("--batch-size", type=int, default=cfg.per_device_eval_batch_size, help="windows per forward pass")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast where the device has it (05's perplexity precision)")
    p.add_argument("--bootstrap", type=int, default=stats.N_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where to run (auto: CUDA, MPS, then CPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads; 0 = the physical cores not busy with other jobs (bmwlm.hardware)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    from bmwlm.hardware import DeviceUnavailableError, resolve_device, set_threads

    try:
        device = resolve_device(args.device)
        threads = set_threads(args.threads)
        record = evaluate_healing(args.study_runs_dir, args.runs_dir, args.validation_file,
                                  parse_from_metrics(args.from_metrics), block_size=args.block_size,
                                  batch_size=args.batch_size, bf16=args.bf16, n_resamples=args.bootstrap,
                                  seed=args.seed, device=str(device), threads=threads, progress=args.progress)
    except (HealingInputError, MissingInputError, BadRecordError, DeviceUnavailableError) as exc:
        print(f"bmwlm.evaluate.healing: error: {exc}", file=sys.stderr)
        return 1
    record.save(args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
