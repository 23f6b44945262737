"""The Q&A and cloze sets as EleutherAI lm-evaluation-harness tasks, and a cross-check of 05's scorer.

`lm_eval_tasks/bmw/` holds two `multiple_choice` tasks, `bmw_qa` and `bmw_cloze`, that any reader can
run on any model with the standard harness (the README gives the command). Their documents come from
this module, so the harness sees exactly the items 05 scores: the hand-written Q&A file, and the
automatic cloze items built from the processed validation split with 05's own function and defaults
(nothing is copied into a second file that could drift).

The harness scores option i of a document as the summed log-likelihood of `" " + option` after the
document's context: `acc` picks the largest sum, `acc_norm` the largest sum per character of the
option. 05 picks by the mean log-probability per option *token*, which the harness does not offer, so
the cross-check compares like with like: the harness's `acc` against 05's log-likelihoods summed,
and `acc_norm` against 05's sums divided by the option's length in characters.

    python -m bmwlm.harness --model outputs/runs/full/model   # both tasks, plus the cross-check
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import datasets

from bmwlm.config import DEVICE_CHOICES, EVAL_DIR, PREPROCESS, QA_FILE, ROOT, VALIDATION_FILE
from bmwlm.evaluate.choice import score_pairs
from bmwlm.evaluate.cloze import build_cloze_items
from bmwlm.evaluate.qa import load_qa_items
from bmwlm.io import read_jsonl, require, setup_logging, write_json
from bmwlm.modeling import load_model, load_tokenizer

TASKS_DIR = ROOT / "lm_eval_tasks"
TASKS = ("bmw_qa", "bmw_cloze")
CLOZE_MAX = 150  # 05_evaluate.py --cloze-max default
CLOZE_SEED = 0  # 05_evaluate.py --seed default
HARNESS_FILE = EVAL_DIR / "harness.json"
log = logging.getLogger("harness")


def _doc(item) -> dict:
    return {"id": item.id, "context": item.context, "options": list(item.options), "label": item.answer_index}


def qa_docs(qa_file: Path | str = QA_FILE) -> list[dict]:
    """The hand-written Q&A items as harness documents (context = 05's prompt)."""
    return [_doc(it) for it in load_qa_items(qa_file)]


def cloze_docs(validation_file: Path | str = VALIDATION_FILE, n: int = CLOZE_MAX, seed: int = CLOZE_SEED) -> list[dict]:
    """The automatic cloze items, built from the validation split exactly as 05 builds them."""
    articles = read_jsonl(require(validation_file, str(PREPROCESS)))
    return [_doc(it) for it in build_cloze_items(articles, n, seed)]


def as_dataset(docs: Sequence[dict]):
    """A `datasets.DatasetDict` with one `test` split, the form a task's `custom_dataset` returns."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(list(docs))})


def harness_choices(model_dir: str, tasks: Sequence[str] = TASKS, limit: int | None = None,
                    batch_size: int = 8, device: str = "cpu") -> dict[str, list[dict]]:
    """Run lm-evaluation-harness on `model_dir` (float32) and return, per task and document, the
    option log-likelihoods and the `acc` / `acc_norm` choices."""
    # lm-eval is an optional dependency (requirements-harness.txt): imported only where it is used
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=list(tasks),
        task_manager=TaskManager(include_path=str(TASKS_DIR)), batch_size=batch_size, device=device,
        limit=limit, log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
        fewshot_random_seed=0,
    )
    per_task = {}
    for task in tasks:
        rows = []
        for sample in sorted(out["samples"][task], key=lambda s: s["doc_id"]):
            lls = [float(resp[0]) for resp in sample["filtered_resps"]]
            options = sample["doc"]["options"]
            rows.append({"id": sample["doc"]["id"], "loglik": lls, "label": sample["doc"]["label"],
                         "acc_choice": _argmax(lls), "acc_norm_choice": _argmax([x / len(o) for x, o in zip(lls, options)])})
        per_task[task] = rows
    per_task["_metrics"] = {t: {k: v for k, v in out["results"][t].items() if k.split(",")[0] in ("acc", "acc_norm")}
                            for t in tasks}
    return per_task


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


@dataclass
class Agreement:
    """How often the harness and 05's scorer pick the same option, under the same normalisation."""

    task: str
    items: int
    same_acc: int  # harness `acc` vs 05's summed log-likelihood
    same_acc_norm: int  # harness `acc_norm` vs 05's sum per character
    max_abs_loglik_diff: float  # largest difference of one option's summed log-likelihood
    near_ties: int  # items whose two best options are within 1e-4 nats (a flip there is noise)


def scorer_choices(model_dir: str, docs: Sequence[dict], device: str = "cpu") -> list[dict]:
    """05's scorer in float32 on the same documents: summed log-likelihoods and both choices."""
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir).to(device)
    pairs = [(d["context"], o) for d in docs for o in d["options"]]
    flat = score_pairs(model, tokenizer, pairs, bf16=False)
    rows, k = [], 0
    for d in docs:
        sums = [s["sum"] for s in flat[k:k + len(d["options"])]]
        k += len(d["options"])
        rows.append({"id": d["id"], "loglik": sums, "acc_choice": _argmax(sums),
                     "acc_norm_choice": _argmax([x / len(o) for x, o in zip(sums, d["options"])])})
    return rows


def agreement(task: str, harness_rows: Sequence[dict], scorer_rows: Sequence[dict]) -> Agreement:
    by_id = {r["id"]: r for r in scorer_rows}
    same_acc = same_norm = near = 0
    max_diff = 0.0
    for h in harness_rows:
        s = by_id[h["id"]]
        same_acc += h["acc_choice"] == s["acc_choice"]
        same_norm += h["acc_norm_choice"] == s["acc_norm_choice"]
        max_diff = max(max_diff, *(abs(a - b) for a, b in zip(h["loglik"], s["loglik"])))
        top = sorted(s["loglik"], reverse=True)
        near += (top[0] - top[1]) < 1e-4
    return Agreement(task, len(harness_rows), same_acc, same_norm, round(max_diff, 6), near)


def cross_check(model_dir: str, limit: int | None = None, validation_file: Path | str = VALIDATION_FILE,
                device: str = "cpu") -> dict:
    """Both tasks through the harness and through 05's scorer; the harness metrics and the agreement."""
    harness = harness_choices(model_dir, TASKS, limit=limit, device=device)
    docs = {"bmw_qa": qa_docs(), "bmw_cloze": cloze_docs(validation_file)}
    result = {"model": model_dir, "device": device, "metrics": harness.pop("_metrics"), "agreement": {}}
    for task, rows in harness.items():
        wanted = {r["id"] for r in rows}
        mine = scorer_choices(model_dir, [d for d in docs[task] if d["id"] in wanted], device)
        result["agreement"][task] = asdict(agreement(task, rows, mine))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Score a saved model on the BMW tasks with lm-evaluation-harness "
                                            "and cross-check the choices against 05's scorer.")
    p.add_argument("--model", required=True, help="a save_pretrained directory (or a model-hub id)")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task (default: all)")
    p.add_argument("--out", type=Path, default=HARNESS_FILE, help="where the result is written (default: %(default)s)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where both scorers run (auto: CUDA, then MPS, then the CPU); always float32 "
                        "(default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    from bmwlm.hardware import DeviceUnavailableError, resolve_device

    try:
        device = str(resolve_device(args.device))
    except DeviceUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = cross_check(args.model, args.limit, device=device)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
