"""The command lines of 05_evaluate.py and 06_report.py: help text, and one clear line when an input is missing."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(script, *args, python_flags=()):
    return subprocess.run([sys.executable, *python_flags, str(ROOT / script), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=ENV, timeout=120)


def options_of(help_text: str) -> dict[str, tuple[bool, str]]:
    """{option: (takes a value, its help text)} from argparse's --help output."""
    out = {}
    for block in re.split(r"\n  (?=-)", help_text.split("options:", 1)[1])[1:]:
        flat = " ".join(block.split())
        m = re.match(r"(?:-\w, )?(--[\w-]+)( [A-Z][A-Z0-9_]*)?\s*(.*)", flat)
        out[m.group(1)] = (m.group(2) is not None, m.group(3))
    return out


@pytest.mark.parametrize("script, heavy", [("05_evaluate.py", "torch"), ("06_report.py", "matplotlib")])
def test_help_gives_every_option_a_help_text_and_each_default_once_without_heavy_imports(script, heavy):
    proc = run(script, "--help", python_flags=("-X", "importtime"))
    assert proc.returncode == 0
    assert f" {heavy}\n" not in proc.stderr  # -X importtime names every module imported
    options = options_of(proc.stdout)
    assert "--out-dir" in options and "--verbose" in options
    for name, (takes_value, text) in options.items():
        assert text, f"{name} has no help"
        assert "(default: None)" not in text
        assert text.count("(default:") == (1 if takes_value else 0), f"{name}: {text}"


def test_options_of_reads_flags_values_and_defaults():
    sample = ("options:\n  -h, --help     show this help\n  --seed SEED    the seed (default: 0)\n"
              "  --fp32         float32\n")
    assert options_of(sample) == {"--help": (False, "show this help"), "--seed": (True, "the seed (default: 0)"),
                                  "--fp32": (False, "float32")}


@pytest.fixture
def validation_file(tmp_path):
    path = tmp_path / "validation.jsonl"
    path.write_text(json.dumps({"id": "V1", "title": "t", "text": "Some text."}) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("missing, names", [("--validation-file", "run 02_preprocess.py (make preprocess) first"),
                                            ("--qa-file", "the hand-written Q&A set")])
def test_evaluate_with_a_missing_input_exits_1_with_one_line_naming_it(tmp_path, validation_file, missing, names):
    absent = tmp_path / "absent.jsonl"
    args = {"--validation-file": validation_file, "--qa-file": ROOT / "data" / "qa" / "bmw_qa.jsonl",
            "--out-dir": tmp_path / "out", missing: absent}
    proc = run("05_evaluate.py", *[x for kv in args.items() for x in kv])
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: missing input {absent}" + (
        f"; {names}" if missing == "--validation-file" else f": {names}, kept in the repository")
    assert not (tmp_path / "out").exists()


def test_report_with_no_inputs_exits_1_with_one_line_naming_05_and_03(tmp_path):
    dirs = [f"--{d}-dir" for d in ("runs", "eval", "prune", "processed", "raw")]
    proc = run("06_report.py", *[x for d in dirs for x in (d, tmp_path / d.strip("-"))], "--out-dir", tmp_path / "out")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nothing to report: missing input ")
    assert "eval-dir/metrics.json; run 05_evaluate.py (make evaluate) first" in lines[0]
    assert "run 03_train.py --variant full (make train-full) first" in lines[0]
    assert not (tmp_path / "out").exists()
