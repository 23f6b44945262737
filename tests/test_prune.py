"""Stage 04 (bmwlm.prune, 04_prune_layer.py) on tiny random GPT-2 and Llama models: prefix-cached scoring,
the calibration sample of the training split, the stage and its record.

The depth study's selection methods and removal curve are in tests/test_prune_methods.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bmwlm import prune
from bmwlm.modeling import count_parameters, evaluate_nll, get_blocks, load_model, load_tokenizer, remove_block
from bmwlm.prune.data import calibration_sample, check_disjoint, validation_ids, validation_windows
from bmwlm.prune.runner import BlockRunner, RunnerError, check_runner
from bmwlm.prune.scoring import score_windows, set_losses, uncached_skip_losses
from bmwlm.records.prune import BlockImportance, BlockScore, BlockScoring, load_block_importance, pruned_model_dir
from conftest import ROOT

SENTENCES = [
    "The BMW Group presented its new electric model in Munich today.",
    "Production at the Dingolfing plant rose by four percent in the third quarter.",
    "The racing team finished second at the Nürburgring after a long night.",
    "Deliveries of the new series begin in spring, the board member said.",
    "The new plant in Debrecen starts series production of the Neue Klasse.",
]
BLOCK_SIZE = 32
CAL_TOKENS = 6 * (BLOCK_SIZE - 1)  # --calibration-tokens of the stage runs below: 6 of the split's windows


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one torch thread


@pytest.fixture(params=["tiny_gpt2_dir", "tiny_llama_dir"])
def tiny_model_dir(request):
    return request.getfixturevalue(request.param)


def write_split(path: Path, prefix: str, n: int, first_day: int, shift: int = 0) -> Path:
    """A processed split: n articles in date order, ids prefix + number."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            text = " ".join(SENTENCES[(i + j + shift) % len(SENTENCES)] for j in range(2 + i % 4))
            day = first_day + i
            fh.write(json.dumps({"id": f"{prefix}{i}", "published": f"2025-{1 + day // 28:02d}-{1 + day % 28:02d}T10:00:00",
                                 "title": f"t{i}", "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("splits")
    return {"train": write_split(d / "train.jsonl", "T", 40, 0),
            "validation": write_split(d / "validation.jsonl", "V", 8, 60),
            "validation_other": write_split(d / "validation_other.jsonl", "W", 5, 70, shift=3)}


def run_cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "04_prune_layer.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def stage_args(model_dir, splits, out, validation=None, *extra):
    return ("--model", model_dir, "--train-file", splits["train"],
            "--validation-file", validation or splits["validation"], "--block-size", BLOCK_SIZE,
            "--calibration-tokens", CAL_TOKENS, "--no-progress", "--threads", "1", "--device", "cpu",
            "--out-models-dir", out / "models", "--out-dir", out / "prune", *extra)


def run_stage(model_dir, splits, out, *extra, validation=None) -> BlockImportance:
    """The real 04_prune_layer.py; returns its block_importance.json read as the typed record."""
    proc = run_cli(*stage_args(model_dir, splits, out, validation, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_block_importance(out / "prune" / "block_importance.json")


@pytest.fixture(scope="module")
def auto_run(tiny_llama_dir, splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    return run_stage(tiny_llama_dir, splits, out, "--report-validation"), out


def windows(n=5, length=24, start=10):
    return [list(range(start + 7 * i, start + 7 * i + length)) for i in range(n)] + [[3, 4, 5, 6, 7]]


# ---------------------------------------------------------------- prefix-cached scoring


def test_prefix_cached_score_of_every_block_equals_the_uncached_one(tiny_model_dir):
    model = load_model(tiny_model_dir).eval()
    wins = windows()  # two window lengths: two batch shapes
    cached = score_windows(BlockRunner(model), wins, batch_size=2)
    baseline, uncached = uncached_skip_losses(model, wins, bf16=False, batch_size=2)
    assert cached.baseline_loss() == pytest.approx(baseline, abs=1e-4)
    assert list(cached.losses_without()) == pytest.approx(uncached, abs=1e-4)
    assert len(set(uncached)) == len(uncached)  # every block really skipped, not one model four times


def test_block_scores_have_one_entry_per_block_with_the_loss_increase_as_importance(tiny_llama_dir):
    ws = score_windows(BlockRunner(load_model(tiny_llama_dir)), windows(), batch_size=4)
    baseline, scores = prune.block_scores(ws)
    assert [s.block for s in scores] == [0, 1, 2, 3]
    for s in scores:
        assert s.importance == s.delta_loss == pytest.approx(s.loss_without - baseline)
        assert -1.0 <= s.cosine_similarity <= 1.0


@pytest.mark.parametrize("index", [0, 2, 3])
def test_skipping_a_block_gives_the_same_logits_as_removing_it(tiny_model_dir, index):
    model = load_model(tiny_model_dir).eval()
    ids = torch.randint(0, 1000, (2, 24))
    with torch.no_grad():
        intact = model(input_ids=ids).logits
        with prune.skip_block(model, index):
            skipped = model(input_ids=ids).logits
        restored = model(input_ids=ids).logits
        removed = remove_block(load_model(tiny_model_dir).eval(), index)(input_ids=ids).logits
    torch.testing.assert_close(skipped, removed, rtol=0, atol=1e-6)
    assert not torch.allclose(skipped, intact)
    torch.testing.assert_close(restored, intact, rtol=0, atol=0)  # the patch is undone


def test_the_loss_of_a_removed_set_equals_the_model_without_those_blocks(tiny_model_dir):
    model = load_model(tiny_model_dir).eval()
    wins = windows()
    (skipped,) = set_losses(BlockRunner(model), wins, [[1, 3]], batch_size=2)
    nll, n = evaluate_nll(prune.without_blocks(model, [1, 3]), wins, batch_size=2, bf16=False)
    assert skipped == pytest.approx(nll / n, abs=1e-5)
    assert len(get_blocks(model)) == 4  # the original is untouched


def test_a_model_whose_logits_are_not_the_head_of_the_final_norm_is_refused(tiny_llama_dir):
    model = load_model(tiny_llama_dir).eval()
    forward = model.forward

    def scaled(*args, **kwargs):  # logit scaling, as some architectures do after the output layer
        out = forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out

    model.forward = scaled
    with pytest.raises(RunnerError, match="differs from the model's own"):
        check_runner(BlockRunner(model), torch.tensor(windows()[:2]))


# ---------------------------------------------------------------- the calibration sample


def test_calibration_sample_and_validation_split_share_no_article(tiny_llama_dir, splits):
    sample = calibration_sample(splits["train"], load_tokenizer(tiny_llama_dir), BLOCK_SIZE, CAL_TOKENS)
    assert sample.article_ids and not set(sample.article_ids) & validation_ids(splits["validation"])
    assert check_disjoint(sample, splits["validation"]) == 8
    with pytest.raises(prune.PruneInputError, match="shares .* article"):
        check_disjoint(sample, splits["train"])  # the training split passed as validation


def test_calibration_windows_are_evenly_spaced_over_the_whole_training_split(tiny_llama_dir, splits):
    tokenizer = load_tokenizer(tiny_llama_dir)
    sample = calibration_sample(splits["train"], tokenizer, BLOCK_SIZE, CAL_TOKENS)
    assert sample.predicted_tokens == CAL_TOKENS and len(sample.windows) == 6
    assert all(len(w) == BLOCK_SIZE for w in sample.windows)
    idx = sample.window_indices
    assert idx[0] == 0 and idx[-1] >= sample.windows_total * 5 // 6  # from the oldest to the newest part
    gaps = {b - a for a, b in zip(idx, idx[1:])}
    assert max(gaps) - min(gaps) <= 1
    records = [json.loads(line) for line in splits["train"].read_text().splitlines()]
    assert sample.first_published == records[0]["published"]
    assert sample.last_published >= records[30]["published"]  # its first N tokens end near article 6
    everything = calibration_sample(splits["train"], tokenizer, BLOCK_SIZE, 0)
    assert len(everything.windows) == everything.windows_total and len(everything.article_ids) == 40


def test_capped_validation_windows_are_evenly_spaced_over_the_whole_split(tiny_llama_dir, splits):
    tokenizer = load_tokenizer(tiny_llama_dir)
    every = validation_windows(splits["validation"], tokenizer, BLOCK_SIZE)
    capped = validation_windows(splits["validation"], tokenizer, BLOCK_SIZE, 2 * (BLOCK_SIZE - 1))
    assert len(every) > 3 and len(capped) == 2
    assert capped[0] == every[0] and capped[1] == every[len(every) // 2]  # not the first two: the oldest weeks
    assert validation_windows(splits["validation"], tokenizer, BLOCK_SIZE, 0) == every


def test_a_training_split_without_text_is_refused(tiny_llama_dir, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"id": "T1", "text": ""}) + "\n")
    with pytest.raises(prune.PruneInputError, match="no records with text"):
        calibration_sample(path, load_tokenizer(tiny_llama_dir), BLOCK_SIZE, 100)


# ---------------------------------------------------------------- choosing


def _scores(importances, cosines=None):
    cosines = cosines or [0.5] * len(importances)
    return [BlockScore(block=i, loss_without=3 + v, delta_loss=v, cosine_similarity=c, importance=v)
            for i, (v, c) in enumerate(zip(importances, cosines))]


def test_choose_block_is_the_argmin_of_importance_and_the_lower_index_on_ties():
    assert prune.choose_block(_scores([0.3, -0.01, 0.2, -0.01, 0.5])) == 1


def test_cosine_proxy_picks_the_block_most_like_its_input_and_ranks_against_importance():
    scores = _scores([0.1, 0.2, 0.3, 0.4], cosines=[0.9, 0.8, 0.99, 0.7])
    assert prune.cosine_choice(scores) == 2
    comparison = prune.proxy_comparison(scores, {2: 3.3})
    assert (comparison.block, comparison.loss) == (2, 3.3)
    assert comparison.rank_correlation_with_importance == pytest.approx(prune.spearman([1, 2, 3, 4], [-0.9, -0.8, -0.99, -0.7]))


def test_spearman_of_known_rankings_and_ties():
    assert prune.spearman([1, 2, 3], [3, 2, 1]) == -1.0 and prune.spearman([1, 2, 3], [10, 20, 30]) == 1.0
    assert prune.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert prune.spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties share their rank


def test_a_block_index_the_model_lacks_is_refused():
    prune.check_block(-4, 4)
    prune.check_block("auto", 4)
    with pytest.raises(prune.PruneInputError, match=r"the model has 4 blocks \(0..3\)"):
        prune.check_block(4, 4)


# ---------------------------------------------------------------- the stage and its record


def test_block_auto_removes_the_argmin_importance_block(auto_run, tiny_llama_dir):
    record, out = auto_run
    expected = min(record.scores, key=lambda s: (s.importance, s.block)).block
    assert record.selection == "auto" and record.removed_block == expected
    chosen = record.naive_comparison["chosen"]
    assert chosen.block == expected and chosen.loss == record.scores[expected].loss_without
    out_dir = out / "models" / f"{Path(tiny_llama_dir).name}-minus-block{expected}"
    assert_saved_model_lacks_block(tiny_llama_dir, out_dir, expected)


def test_the_record_says_how_the_calibration_sample_was_drawn_and_the_precision(auto_run, splits):
    record, out = auto_run
    prune_file = out / "prune" / "block_importance.json"
    assert BlockImportance.from_dict(json.loads(prune_file.read_text())) == record
    cal = record.calibration
    assert record.eval_tokens == cal.predicted_tokens == cal.budget_tokens == CAL_TOKENS
    assert cal.file == str(splits["train"]) and "evenly spaced" in cal.rule and cal.windows == 6
    assert cal.validation_articles_checked == 8 and not set(cal.article_ids) & validation_ids(splits["validation"])
    assert (record.precision, record.bf16, record.scoring, record.device) == ("float32", False, "prefix-cached", "cpu")
    assert (record.block_size, record.threads, record.blocks_before, record.blocks_after) == (BLOCK_SIZE, 1, 4, 3)
    assert record.method == "loss_increase" and record.seconds >= record.scoring_seconds > 0


def test_validation_is_scored_only_after_the_choice_and_labelled_as_reporting(auto_run):
    record, _ = auto_run
    report = record.validation_report
    assert "after" in report.note and "reporting only" in report.note
    assert set(report.removed) == {"chosen", "last", "middle", "cosine_proxy"}
    assert report.removed["chosen"].block == record.removed_block
    assert report.baseline_loss != record.baseline_loss  # other tokens than the calibration sample


def test_the_choice_does_not_change_when_the_validation_file_changes(tiny_llama_dir, splits, tmp_path):
    first = run_stage(tiny_llama_dir, splits, tmp_path / "a")
    other = run_stage(tiny_llama_dir, splits, tmp_path / "b", validation=splits["validation_other"])
    missing = run_stage(tiny_llama_dir, splits, tmp_path / "c", validation=tmp_path / "absent.jsonl")
    assert first.scores == other.scores == missing.scores  # bit for bit: validation takes no part
    assert first.removed_block == other.removed_block == missing.removed_block
    assert first.calibration.validation_articles_checked == 8 and missing.calibration.validation_articles_checked == 0


def test_block_k_removes_block_k(tiny_gpt2_dir, splits, tmp_path):
    record = run_stage(tiny_gpt2_dir, splits, tmp_path, "--block", "1")
    assert record.selection == "manual" and record.removed_block == 1
    out_dir = tmp_path / "models" / f"{Path(tiny_gpt2_dir).name}-minus-block1"
    assert pruned_model_dir(tmp_path / "prune" / "block_importance.json") == out_dir
    assert_saved_model_lacks_block(tiny_gpt2_dir, out_dir, 1)


def assert_saved_model_lacks_block(base_dir, out_dir, index):
    base = get_blocks(load_model(base_dir)).state_dict()
    saved = get_blocks(AutoModelForCausalLM.from_pretrained(out_dir)).state_dict()
    kept = [i for i in range(4) if i != index]
    assert {key.split(".", 1)[0] for key in saved} == {"0", "1", "2"}
    for new, old in enumerate(kept):
        for key, value in saved.items():
            if key.startswith(f"{new}."):
                torch.testing.assert_close(value, base[f"{old}." + key.split(".", 1)[1]], rtol=0, atol=0)


def test_written_model_reloads_with_one_block_fewer_and_generates_with_kv_cache(auto_run):
    record, out = auto_run
    out_dir = pruned_model_dir(out / "prune" / "block_importance.json")
    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert AutoConfig.from_pretrained(out_dir).num_hidden_layers == 3 == len(get_blocks(model))
    assert count_parameters(model) == record.parameters_after < record.parameters_before
    prompt = torch.tensor([[5, 6, 7, 8]])
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape[1] == 10 and torch.equal(cached, uncached)
    assert not list(out_dir.parent.glob(".*"))  # no temporary directory left behind


def test_scores_only_scores_any_model_into_its_own_file_and_writes_no_model(tiny_gpt2_dir, splits, tmp_path):
    scores_file = tmp_path / "scores" / "finetuned.json"
    proc = run_cli(*stage_args(tiny_gpt2_dir, splits, tmp_path, None, "--scores-only", "--scores-file", scores_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = BlockScoring.load(scores_file)
    assert record.model == str(tiny_gpt2_dir) and len(record.scores) == 4
    assert record.least_important == prune.choose_block(record.scores)
    assert record.precision == "float32" and record.eval_tokens == CAL_TOKENS
    assert not (tmp_path / "models").exists() and not (tmp_path / "prune").exists()


# ---------------------------------------------------------------- command line


def test_missing_training_split_exits_1_with_one_line_naming_the_stage(tmp_path):
    result = run_cli("--train-file", tmp_path / "nope.jsonl", "--out-dir", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"04_prune_layer.py: error: missing input {tmp_path / 'nope.jsonl'}; run 02_preprocess.py (make preprocess) first"]


def test_unreachable_hub_model_is_reported_in_one_line_without_traceback(splits, tmp_path):
    result = run_cli("--model", "no-such-org/no-such-model", "--train-file", splits["train"],
                     "--out-dir", tmp_path, "--out-models-dir", tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "04_prune_layer.py: error: model 'no-such-org/no-such-model' is not a local directory")


def test_help_explains_every_option_and_shows_its_real_default_once():
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0
    blocks = {b.split()[0].rstrip(","): " ".join(b.split()) for b in proc.stdout.split("\n  -")[1:]}
    blocks.pop("h")
    assert len(blocks) == 21
    for option, text in blocks.items():
        assert len(text.split("(default:")[0].split()) > 3, f"-{option} has no help text"
        assert text.count("(default:") == 1 and "(default: None)" not in text, f"-{option}: {text}"
    assert f"(default: {prune.DEFAULT_CALIBRATION_TOKENS})" in blocks["-calibration-tokens"]
    assert "(default: False)" in blocks["-bf16"] and "(default: 0)" in blocks["-threads"]


def test_the_script_and_the_package_agree_on_the_default_budget():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stage_04_prune_layer", ROOT / "04_prune_layer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.DEFAULT_CALIBRATION_TOKENS == prune.DEFAULT_CALIBRATION_TOKENS
