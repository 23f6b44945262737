"""The depth study's report section (bmwlm.report.depth) from hand-made records."""
import math

import pytest

from bmwlm.prune.methods import METHOD_LABELS, METHODS
from bmwlm.io import jsonl_text, write_text
from bmwlm.records.evaluation import Comparison, SplitScore
from bmwlm.records.prune import (
    BlockImportance, BlockScore, BlockScoring, CalibrationSample, CurvePoint, DeepCut, HealedModel, HealingEvaluation,
    RemovalCurve, RemovalResult, StudyScores,
)
from bmwlm.records.training import LogLine, RunSummary
from bmwlm.report import depth

N, K = 6, 2


def calibration() -> CalibrationSample:
    return CalibrationSample(file="data/processed/train.jsonl", rule="evenly spaced", block_size=256, windows=4,
                             windows_total=40, predicted_tokens=1020, budget_tokens=1020, budget_reason="test",
                             articles=9, articles_total=40, first_published="2024-10-31T11:00:00",
                             last_published="2025-11-05T11:00:00", validation_articles_checked=5)


def curve() -> RemovalCurve:
    curves = {}
    for i, m in enumerate(METHODS):
        pts = []
        for k in range(K + 1):
            cl, vl = 3.0 + 0.1 * k * (i + 1), 3.5 + 0.12 * k * (i + 1)
            pts.append(CurvePoint(k=k, blocks=list(range(2, 2 + k)), calibration_loss=cl,
                                  calibration_perplexity=math.exp(cl), validation_loss=vl,
                                  validation_perplexity=math.exp(vl)))
        curves[m] = pts
    return RemovalCurve(
        base_model="tiny", base_model_path="tiny", n_blocks=N, max_removed=K, methods=list(METHODS),
        method_labels=dict(METHOD_LABELS), calibration=calibration(), validation_file="v.jsonl", validation_tokens=900,
        baseline_calibration_loss=3.0, baseline_validation_loss=3.5,
        scores=StudyScores(delta_loss=[1.0] * N, block_influence=[0.1] * N, angular_distance={"1": [0.1] * 5},
                           angular_distance_all_tokens={"1": [0.1] * 5}, iterative=[]),
        curves=curves, deep_cut=DeepCut(method="loss_increase", blocks=[2, 3], output_dir="cut", parameters=1000),
        precision="float32", device="cpu", block_size=256, batch_size=8, threads=1, cpu_model="cpu", seconds=1.0)


def scores(deltas):
    return [BlockScore(block=i, loss_without=3 + d, delta_loss=d, cosine_similarity=0.9, importance=d)
            for i, d in enumerate(deltas)]


BEFORE = [2.0, 0.9, 0.05, 0.2, 0.3, 1.5]
AFTER = [2.5, 0.7, 0.2, 0.04, 0.3, 1.9]


def importance() -> BlockImportance:
    return BlockImportance(base_model="tiny", base_model_path="tiny", method="loss_increase", eval_tokens=1020,
                           baseline_loss=3.0, scores=scores(BEFORE), selection="auto", removed_block=2,
                           naive_comparison={"chosen": RemovalResult(block=2, loss=3.05)}, output_dir="x",
                           parameters_before=10, parameters_after=9, blocks_before=N, blocks_after=N - 1, seconds=1.0)


def finetuned() -> BlockScoring:
    return BlockScoring(model="full", model_path="full", method="loss_increase", eval_tokens=1020, baseline_loss=2.0,
                        scores=scores(AFTER), least_important=3, calibration=calibration(), precision="float32",
                        device="cpu", block_size=256, threads=1, cpu_model="cpu", scoring_seconds=1.0, seconds=1.0)


def run(initial_ppl, final_ppl, loss="chunked output layer, 512 positions", blocks=N - 1) -> RunSummary:
    return RunSummary(
        variant="pruned", base_model="m", base_model_path="m", config={}, overrides={}, seed=42, versions={},
        cpu_model="cpu", threads=1, precision="float32", compiled=False, loss=loss, parameters=1, blocks=blocks,
        train_blocks=1, validation_blocks=1, validation_blocks_total=1, validation_subset="all", steps=1, epochs=1.0,
        tokens_seen=1, train_seconds=600.0, eval_seconds=1.0, wall_seconds=700.0, tokens_per_s=800.0,
        matmul_gflops=1.0, share_of_peak=0.1, initial_eval_loss=math.log(initial_ppl),
        final_eval_loss=math.log(final_ppl), final_train_loss=1.0, resumed_from_step=None, train_file="t",
        validation_file="v", finished_at="now")


def log_lines(initial_ppl, final_ppl) -> list[LogLine]:
    """A run's log.jsonl: a train line and evaluations before, half-way and after training."""
    mid = (initial_ppl * final_ppl) ** 0.5
    return [LogLine(step=0, epoch=0.0, tokens=0, eval_loss=math.log(initial_ppl), seconds=0.0),
            LogLine(step=5, epoch=0.5, tokens=500, loss=3.0, lr=1e-4, seconds=10.0),
            LogLine(step=5, epoch=0.5, tokens=500, eval_loss=math.log(mid), seconds=11.0),
            LogLine(step=10, epoch=1.0, tokens=1000, eval_loss=math.log(final_ppl), seconds=20.0)]


def write_run(folder, initial_ppl, final_ppl, **kw):
    """run.json and log.jsonl of one run, as 03 writes them."""
    run(initial_ppl, final_ppl, **kw).save(folder / "run.json")
    write_text(folder / "log.jsonl", jsonl_text([line.to_dict() for line in log_lines(initial_ppl, final_ppl)]))


def healed(name, ppl, ci, from_metrics=False) -> HealedModel:
    score = SplitScore(loss=math.log(ppl), perplexity=ppl, tokens=900, windows=4, ci95=list(ci), articles=5)
    return HealedModel(run=name, source=f"{name}/model", validation=score, run_final_eval_loss=math.log(ppl),
                       from_metrics=from_metrics)


def comparison(a, b, difference, ci) -> Comparison:
    return Comparison(family="healing", metric="validation perplexity", a=a, b=b, a_value=0.0, b_value=0.0,
                      difference=difference, ci95=list(ci), test="paired bootstrap over 5 articles", units=5,
                      unit="article", detectable=ci[0] > 0 or ci[1] < 0, sentence="(stored wording)")


def healing() -> HealingEvaluation:
    models = {"full": healed("full", 15.0, (14.0, 16.1)), "one_block_ft": healed("one_block_ft", 16.0, (15.0, 17.2), True),
              "one_block_kd": healed("one_block_kd", 20.0, (18.5, 21.9))}
    return HealingEvaluation(validation_file="v.jsonl", precision="bf16 autocast", bootstrap_resamples=100, seed=0,
                             models=models,
                             comparisons=[comparison("one_block_kd", "one_block_ft", 4.0, (3.1, 4.9)),
                                          comparison("one_block_ft", "full", 1.0, (-0.2, 2.1))],
                             device="cpu", threads=1, cpu_model="cpu", seconds=1.0)


RUNS = {"one_block_ft": (40.0, 16.0), "one_block_kd": (40.0, 20.0), "deep_cut_ft": (90.0, 35.0),
        "deep_cut_kd": (90.0, 30.0)}


def full_study() -> depth.Study:
    kd = "chunked output layer, 512 positions; distillation from outputs/runs/full/model (alpha 1.0, temperature 1.0)"
    return depth.Study(curve=curve(), before=importance(), after=finetuned(), full=run(37.0, 15.0, blocks=N),
                       runs={"one_block_ft": run(40.0, 16.0), "one_block_kd": run(40.0, 20.0, kd),
                             "deep_cut_ft": run(90.0, 35.0, blocks=N - K), "deep_cut_kd": run(90.0, 30.0, kd, N - K)},
                       logs={"full": log_lines(37.0, 15.0), **{name: log_lines(*p) for name, p in RUNS.items()}},
                       healing=healing())


def test_the_gap_closed_is_the_share_of_the_distance_to_the_target():
    assert depth.gap_closed(40.0, 16.0, 15.0) == pytest.approx(24 / 25)
    assert depth.gap_closed(40.0, 40.0, 15.0) == 0.0
    assert depth.gap_closed(None, 16.0, 15.0) is None and depth.gap_closed(15.0, 14.0, 15.0) is None


def test_the_section_tables_every_method_every_healing_run_and_the_importance_shift():
    md = depth.depth_section(full_study(), {"removal_curve.png": "removal_curve.png"})
    for label in METHOD_LABELS.values():
        assert f"| {label} |" in md
    assert f"{math.exp(3.5 + 0.12 * 2):.1f} ({math.exp(3.0 + 0.1 * 2):.1f})" in md  # k = 2, one-pass: val (cal)
    assert "removes blocks [2, 3]" in md and "![Perplexity against blocks removed](removal_curve.png)" in md
    assert "| block 2 | fine-tune | 40.00 | 16.00 | [15.00, 17.20] | 96% |" in md  # interval: healing evaluation
    assert "| 2 blocks [2, 3] | distill | 90.00 | 30.00 | n/a | 80% |" in md  # (90 - 30) / (90 - 15); not scored
    assert "(teacher: outputs/runs/full/model (alpha 1.0, temperature 1.0))" in md and "One training seed per run" in md
    assert "(timings: cpu, 1 thread, float32)" in md  # one set of conditions, said once, with the precision
    assert "least important block 2 before, 3 after" in md
    assert "importance_shift.png" not in md  # no figure link unless it was drawn


def test_healing_comparisons_name_the_models_and_give_a_direction_only_outside_noise():
    md = depth.depth_section(full_study())
    assert ("- Block 2, distill has higher validation perplexity than block 2, fine-tune: +4.00 "
            "(95% CI [+3.10, +4.90], paired bootstrap over 5 articles).") in md
    assert ("- No detectable difference in validation perplexity between block 2, fine-tune and the fine-tuned full "
            "model: +1.00 (95% CI [-0.20, +2.10], paired bootstrap over 5 articles).") in md
    assert "one_block_ft from one_block_ft/model" in md  # a score taken from 05's records is said to be


def test_a_study_without_files_says_what_is_missing_instead_of_failing(tmp_path):
    study = depth.load_study(tmp_path / "curve.json", tmp_path / "imp.json", tmp_path / "ft.json", tmp_path / "runs",
                             tmp_path / "runs")
    assert study.curve is None and not study.runs and "curve" in study.notes
    md = depth.depth_section(study)
    assert "No removal curve" in md and "No healing run found" in md and "Not measured" in md
    assert depth.figures(study) == {}


def test_render_writes_the_section_and_both_figures(tmp_path):
    out = depth.render(full_study(), tmp_path / "report")
    md = out.read_text()
    assert "![Block importance before and after fine-tuning](importance_shift.png)" in md
    for name in depth.FIGURES:
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_06_adds_the_depth_section_and_its_figures_only_when_study_files_exist(tmp_path):
    from test_report import run_report, write_inputs

    dirs = write_inputs(tmp_path)
    assert run_report(dirs).returncode == 0
    assert "## Depth study" not in (dirs["report"] / "report.md").read_text(encoding="utf-8")
    curve().save(dirs["prune"] / "removal_curve.json")
    importance().save(dirs["prune"] / "block_importance.json")
    finetuned().save(dirs["prune"] / "block_scores_finetuned.json")
    write_run(dirs["study"] / "one_block_ft" / "pruned", 40.0, 16.0)
    proc = run_report(dirs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (dirs["report"] / "report.md").read_text(encoding="utf-8")
    study = md.split("## Depth study", 1)[1]
    assert md.index("## Block removal") < md.index("## Depth study") < md.index("## Training: loss curves")
    assert "| 40.00 | 16.00 |" in study and "not run (deep_cut_kd)" in study
    for name in depth.FIGURES:
        assert f"]({name})" in study and (dirs["report"] / name).read_bytes()[:4] == b"\x89PNG"


def test_scores_of_models_with_different_depths_are_not_compared():
    study = full_study()
    study.after.scores = study.after.scores[:-1]
    md = depth.depth_section(study)
    assert "Not comparable" in md and "importance_shift.png" not in depth.figures(study)


def test_publish_copies_the_study_and_renders_its_section_from_the_published_files(tmp_path):
    from bmwlm.report import publish

    out, dest = tmp_path / "outputs", tmp_path / "results"
    curve().save(out / "prune" / "removal_curve.json")
    importance().save(out / "prune" / "block_importance.json")
    finetuned().save(out / "prune" / "block_scores_finetuned.json")
    write_run(out / "runs" / "full", 37.0, 15.0, blocks=N)
    write_run(out / "study" / "runs" / "one_block_ft" / "pruned", 40.0, 16.0)
    healing().save(out / "study" / "healing_eval.json")
    publish.publish(dest, out)
    assert (dest / "study" / "runs" / "one_block_ft" / "pruned" / "run.json").is_file()
    study = publish.published_study(dest)
    assert depth.has_study(study) and set(study.runs) == {"one_block_ft"} and study.full is not None
    md = (dest / "study" / "report" / "depth.md").read_text(encoding="utf-8")
    assert "| 40.00 | 16.00 | [15.00, 17.20] |" in md and study.healing is not None
    assert (dest / "study" / "teacher" / "full" / "log.jsonl").is_file()  # the healing figure's dotted line
    for name in depth.FIGURES:
        assert (dest / "study" / "report" / name).read_bytes()[:4] == b"\x89PNG"


def test_a_method_that_explodes_is_tabled_in_two_digits_and_the_figure_still_draws():
    c = curve()
    last = c.curves["last_blocks"][K]
    last.validation_perplexity, last.calibration_perplexity = 2.11e9, 2.46e9
    assert "| 2.1e9 (2.5e9) |" in "\n".join(depth.curve_table(c))
    assert depth.plot_removal_curve(c)[:4] == b"\x89PNG"


def test_the_curve_intervals_table_bolds_only_ratios_whose_interval_excludes_1():
    from bmwlm.prune.curve import validation_comparisons

    c = curve()  # every method removes blocks 2.. at each k: give them distinct sets and per-window losses
    tokens = [255] * 8
    for i, m in enumerate(METHODS):
        for p in c.curves[m]:
            shift = {"loss_increase": 0.0, "iterative_loss": 0.0, "block_influence": 5.0}.get(m, 0.0)
            jitter = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] if m != "angular_span" else [3, -3, 2, -2, 3, -3, 2, -2]
            p.validation_window_nll = [900.0 + p.k * 10 + shift * p.k + j for j in jitter]
            if m not in ("loss_increase", "iterative_loss") and p.k:
                p.blocks = [10 + i, *p.blocks[1:]]  # a set of its own
    c.validation_window_tokens = tokens
    c.validation_comparisons = validation_comparisons(c.curves, c.deep_cut.method, tokens, n_resamples=300)
    md = depth.depth_section(depth.Study(curve=c))
    table = md[md.index("relative to that of loss increase, one pass at the same k"):]
    assert "95% paired bootstrap interval over the 8 validation windows (300 resamples)" in table
    assert "| loss increase, iterative (SLEB) | same set | same set |" in table
    assert f"| Block Influence (ShortGPT) | **{math.exp(5 / 255):.2f}** [" in table  # +5 nats on every window
    span = next(line for line in table.splitlines() if line.startswith("| angular distance span"))
    assert "**" not in span  # +/- 3 nats around the same mean: no detectable difference
    assert "No intervals on the curve" in depth.depth_section(depth.Study(curve=curve()))


def test_healing_end_labels_of_close_values_are_pushed_apart_and_far_ones_stay():
    from bmwlm.report.depth import label_offsets

    offsets = label_offsets([100.0, 103.0, 50.0, 300.0], min_gap=10.0)
    placed = [y + dy for y, dy in zip([100.0, 103.0, 50.0, 300.0], offsets)]
    assert offsets[2] == offsets[0] == offsets[3] == 0.0  # the lowest of a close pair and the far ones stay
    assert placed[1] - placed[0] == pytest.approx(10.0)


def test_the_depth_section_names_the_teacher_from_outputs_on_not_by_the_work_folder():
    from bmwlm.report.depth import work_relative

    text = "/work/studyrun/outputs/runs/full/model (alpha 1.0, temperature 1.0)"
    assert work_relative(text) == "outputs/runs/full/model (alpha 1.0, temperature 1.0)"
    assert work_relative("distilled from ./model") == "distilled from ./model"
    assert work_relative("/data/outputs/exp1/outputs/runs/full/model") == "outputs/runs/full/model"  # the last one
