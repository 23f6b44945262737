"""Stage 03's TensorBoard events (issue 11, item 2): the points of log.jsonl, one per step, also across --resume.

Read back with TensorBoard's own reader (`EventAccumulator`, and `EventMultiplexer` over the runs folder,
which is what `tensorboard --logdir outputs/runs` shows).
"""
import shutil
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from bmwlm.records.training import run_files
from bmwlm.train.trainer import TB_EVAL_LOSS, TB_LOSS, TB_LR, TB_TOKENS_PER_S
from conftest import ROOT
from test_train import _Crash, _lines, _run, splits  # noqa: F401  (splits: the processed-splits fixture)

FLOAT32 = dict(rel=1e-6, abs=1e-6)  # events store float32; log.jsonl rounds to 5 decimals


def _scalars(accumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _events(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return _scalars(acc)


def _expected(run_dir) -> dict[str, list[tuple[int, float]]]:
    """log.jsonl's points, as the events should hold them."""
    lines = _lines(run_dir)
    return {TB_LOSS: [(r["step"], r["loss"]) for r in lines if "loss" in r],
            TB_LR: [(r["step"], r["lr"]) for r in lines if "lr" in r],
            TB_EVAL_LOSS: [(r["step"], r["eval_loss"]) for r in lines if "eval_loss" in r]}


def _assert_events_match_log(run_dir):
    events, expected = _events(run_dir), _expected(run_dir)
    assert set(events) == {TB_LOSS, TB_LR, TB_EVAL_LOSS, TB_TOKENS_PER_S}
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag  # same steps, each once
        assert [v for _, v in events[tag]] == [pytest.approx(v, **FLOAT32) for _, v in points], tag
    assert [s for s, _ in events[TB_TOKENS_PER_S]] == [s for s, _ in expected[TB_LOSS]]
    assert all(v > 0 for _, v in events[TB_TOKENS_PER_S])


def test_events_hold_log_jsonls_points_and_both_variants_share_one_log_root(tiny_gpt2_dir, splits, tmp_path):
    for variant, steps in (("full", 10), ("pruned", 6)):
        _run(tiny_gpt2_dir, splits, tmp_path, variant=variant, max_steps=steps, eval_steps=6, logging_steps=4)
        run_dir = tmp_path / variant
        assert run_files(variant, tmp_path).tensorboard_dir == run_dir / "tensorboard"
        assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
        _assert_events_match_log(run_dir)
    # what `tensorboard --logdir <runs dir>` shows: one run per variant, overlaid
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    assert set(mux.Runs()) == {"full/tensorboard", "pruned/tensorboard"}
    assert [e.step for e in mux.Scalars("pruned/tensorboard", TB_EVAL_LOSS)] == [0, 6]

    # a fresh run replaces the variant's old events
    _run(tiny_gpt2_dir, splits, tmp_path, max_steps=1)
    assert [s for s, _ in _events(tmp_path / "full")[TB_LOSS]] == [1]
    _assert_events_match_log(tmp_path / "full")


def test_resume_neither_repeats_nor_loses_a_point(tiny_gpt2_dir, splits, tmp_path):
    settings = dict(max_steps=8, save_steps=4, logging_steps=2, eval_steps=3)
    _run(tiny_gpt2_dir, splits, tmp_path / "a", **settings)
    with pytest.raises(KeyboardInterrupt):  # stops after step 7: steps 6 (and the eval at 6) were logged
        _run(tiny_gpt2_dir, splits, tmp_path / "b", callbacks=[_Crash(7)], **settings)
    before = _events(tmp_path / "b" / "full")
    assert before[TB_LOSS][-1][0] == 6 and before[TB_EVAL_LOSS][-1][0] == 6  # points past checkpoint-4
    resumed = _run(tiny_gpt2_dir, splits, tmp_path / "b", resume=True, **settings)
    assert resumed.resumed_from_step == 4
    _assert_events_match_log(tmp_path / "b" / "full")
    whole, again = _events(tmp_path / "a" / "full"), _events(tmp_path / "b" / "full")
    for tag in (TB_LOSS, TB_LR, TB_EVAL_LOSS):
        assert [s for s, _ in again[tag]] == [s for s, _ in whole[tag]]
        assert [v for _, v in again[tag]] == [pytest.approx(v, rel=1e-5) for _, v in whole[tag]]
    assert len(list((tmp_path / "b" / "full" / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_tensorboard_opens_the_runs_folder():
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "tensorboard"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "-m tensorboard.main --logdir outputs/runs --port 6006" in proc.stdout
