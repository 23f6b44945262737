"""`python -m bmwlm.report.publish`: a run's result files land under docs/results/, cloze text does not."""
from __future__ import annotations

import json

from bmwlm.io import read_jsonl, write_text
from bmwlm.report import publish


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_publish_copies_the_records_and_keeps_no_cloze_sentence(tmp_path, monkeypatch):
    out, dest = tmp_path / "outputs", tmp_path / "results"
    pruned_model = tmp_path / "models" / "m-minus-block3"
    write_text(out / "prune" / "block_importance.json", json.dumps({"output_dir": str(pruned_model)}))
    write_text(pruned_model / "README.md", "---\nlicense: apache-2.0\n---\n# card\n")
    for v in ("full", "pruned"):
        write_text(out / "runs" / v / "run.json", "{}")
        write_text(out / "runs" / v / "log.jsonl", "{}\n")
        write_text(out / "runs" / v / "model" / "README.md", f"# {v}\n")
    write_text(out / "eval" / "metrics.json", "{}")
    secret = "The BMW iX3 rolled off the line in Debrecen on 28 October."
    rows = [{"set": "qa", "item_id": "qa-001", "question": "Where is the plant?", "options": ["a", "b", "c", "d"]},
            {"set": "cloze", "item_id": "cz-1", "source_id": "T1EN", "question": secret,
             "options": ["Debrecen", "Munich", "Leipzig", "Dingolfing"], "answer": "A", "predicted": {"normalised": "A"}}]
    write_text(out / "eval" / "qa_predictions.jsonl", _jsonl(rows))
    write_text(out / "eval" / "harness" / "full.json", "{}")
    write_text(out / "seeds" / "seed43" / "full" / "run.json", "{}")
    write_text(out / "seeds" / "seed43" / "full" / "log.jsonl", "{}\n")
    write_text(out / "study" / "runs" / "deep_cut_kd" / "pruned" / "run.json", "{}")

    reports = []
    monkeypatch.setattr(publish, "report_from_published", lambda *a: reports.append(a) or [])
    from bmwlm.report import readme
    monkeypatch.setattr(readme, "seed_summary", lambda results: {"from": str(results)})  # tested in test_readme_numbers
    copied = publish.publish(dest, out)

    assert reports == [(dest / "run" / "eval", out, dest / "run" / "report")]  # 06 reads the published (redacted) files

    rel = {p.relative_to(dest).as_posix() for p in copied}
    assert {"run/prune/block_importance.json", *(f"run/runs/{v}/{f}" for v in ("full", "pruned")
                                                  for f in ("run.json", "log.jsonl")),
            "run/cards/full.md", "run/cards/pruned.md", "run/cards/base_minus_block.md", "run/eval/metrics.json",
            "run/eval/qa_predictions.jsonl", "run/eval/harness/full.json", "seeds/seed43/full/run.json",
            "seeds/seed43/full/log.jsonl", "seeds/summary.json", "study/runs/deep_cut_kd/pruned/run.json",
            "study/teacher/full/run.json", "study/teacher/full/log.jsonl"} == rel  # the healing runs' teacher
    assert json.loads((dest / "seeds" / "summary.json").read_text()) == {"from": str(dest)}
    published = read_jsonl(dest / "run" / "eval" / "qa_predictions.jsonl")
    assert published[0] == rows[0]  # the project's own Q&A text stays whole
    cloze = published[1]
    assert "Debrecen" not in json.dumps(cloze) and "T1EN" in cloze["question"]
    assert (cloze["answer"], cloze["predicted"], len(cloze["options"])) == ("A", {"normalised": "A"}, 4)


def test_publish_with_nothing_to_publish_exits_1_naming_the_folder(tmp_path, capsys):
    assert publish.main(["--outputs", str(tmp_path / "none"), "--dest", str(tmp_path / "d")]) == 1
    assert "nothing to publish under" in capsys.readouterr().err


def test_publish_only_study_copies_the_study_and_leaves_the_default_run_as_it_was(tmp_path):
    out, dest = tmp_path / "outputs", tmp_path / "results"
    write_text(out / "runs" / "full" / "run.json", '{"from": "the study work folder"}')
    write_text(out / "runs" / "full" / "log.jsonl", "{}\n")
    write_text(out / "study" / "runs" / "one_block_kd" / "pruned" / "run.json", "{}")
    write_text(out / "study" / "healing_eval.json", "{}")
    write_text(dest / "run" / "runs" / "full" / "run.json", '{"from": "the published default run"}')

    copied = publish.publish(dest, out, parts=("study",))

    rel = {p.relative_to(dest).as_posix() for p in copied}
    assert rel == {"study/runs/one_block_kd/pruned/run.json", "study/healing_eval.json",
                   "study/teacher/full/run.json", "study/teacher/full/log.jsonl"}
    assert json.loads((dest / "run" / "runs" / "full" / "run.json").read_text()) == {"from": "the published default run"}
    assert json.loads((dest / "study" / "teacher" / "full" / "run.json").read_text()) == {"from": "the study work folder"}
