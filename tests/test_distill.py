"""Healing by distillation (bmwlm.train.distill) and its hooks in 03_train.py."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bmwlm.modeling import load_model
from bmwlm.train.distill import DistillSettings, DistillSetupError, distillation_loss, load_teacher
from conftest import ROOT
from test_prune import splits  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama(seed: int):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()


IDS = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(0))


def reference_loss(student, teacher, ids, alpha, T):
    """The textbook formula on full logits (what the chunked loss must equal)."""
    s = student(input_ids=ids).logits[:, :-1].reshape(-1, 300)
    with torch.no_grad():
        t = teacher(input_ids=ids).logits[:, :-1].reshape(-1, 300)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1), log_target=True,
                                    reduction="batchmean")
    ce = torch.nn.functional.cross_entropy(s, ids[:, 1:].reshape(-1))
    return alpha * T * T * kl + (1 - alpha) * ce


def test_the_distillation_loss_is_zero_for_the_same_model_and_positive_for_another():
    student, other = tiny_llama(0), tiny_llama(1)
    assert distillation_loss(student, student, IDS, alpha=1.0, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(student, other, IDS, alpha=1.0, temperature=2.0).item() > 1e-3
    teacher_copy = tiny_llama(0)  # another instance with the same weights: still zero
    assert distillation_loss(student, teacher_copy, IDS, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("alpha,temperature,chunk", [(1.0, 1.0, 7), (0.5, 2.0, 16), (0.0, 3.0, 1000)])
def test_the_chunked_loss_and_its_gradients_equal_the_full_logits_formula(alpha, temperature, chunk):
    student, teacher = tiny_llama(0), tiny_llama(1)
    ours = distillation_loss(student, teacher, IDS, alpha, temperature, chunk_size=chunk)
    ours.backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    ref = reference_loss(student, teacher, IDS, alpha, temperature)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for name, p in student.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher gets no gradients


def test_distillation_settings_come_from_the_command_line_overrides():
    assert DistillSettings.from_overrides({"max_steps": 3}) is None
    s = DistillSettings.from_overrides({"distill_from": "t", "distill_temperature": 2.0})
    assert (s.teacher, s.alpha, s.temperature) == ("t", 1.0, 2.0)
    with pytest.raises(DistillSetupError, match="need --distill-from"):
        DistillSettings.from_overrides({"distill_alpha": 0.5})
    with pytest.raises(DistillSetupError, match=r"\[0, 1\]"):
        DistillSettings.from_overrides({"distill_from": "t", "distill_alpha": 1.5})


def test_a_missing_teacher_names_the_full_training_run(tmp_path, tiny_llama_dir):
    from bmwlm.io import MissingInputError
    from bmwlm.modeling import load_tokenizer

    with pytest.raises(MissingInputError, match=r"run 03_train.py --variant full \(make train-full\) first"):
        load_teacher(DistillSettings(teacher=str(tmp_path / "none")), load_model(tiny_llama_dir),
                     load_tokenizer(tiny_llama_dir))


def test_03_distils_under_the_same_recipe_and_records_it(tiny_llama_dir, tiny_gpt2_dir, splits, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--train-file", splits["train"], "--validation-file", splits["validation"], "--max-steps", "2",
              "--eval-steps", "2", "--save-steps", "2", "--logging-steps", "1", "--block-size", "32",
              "--per-device-train-batch-size", "4", "--no-torch-compile", "--threads", "1", "--no-progress"]

    def train(runs, *extra):
        return subprocess.run([sys.executable, str(ROOT / "03_train.py"), "--variant", "pruned", "--pruned-model",
                               str(tiny_llama_dir), "--runs-dir", str(runs), *map(str, common), *map(str, extra)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)

    teacher_before = {k: v.clone() for k, v in load_model(tiny_gpt2_dir).state_dict().items()}
    proc = train(tmp_path / "plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the teacher may have another architecture; it needs the student's tokenizer (both use GPT-2's here)
    proc = train(tmp_path / "kd", "--distill-from", tiny_gpt2_dir, "--distill-alpha", "0.5", "--distill-temperature", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads((tmp_path / "plain/pruned/run.json").read_text())
    kd = json.loads((tmp_path / "kd/pruned/run.json").read_text())
    assert plain["config"] == kd["config"]  # the same budget and settings
    assert kd["overrides"]["distill_from"] == str(tiny_gpt2_dir)
    assert (kd["overrides"]["distill_alpha"], kd["overrides"]["distill_temperature"]) == (0.5, 2.0)
    assert "distillation from" in kd["loss"] and "distill" not in plain["loss"]
    assert "distill_from" not in plain["overrides"]
    settings = json.loads((tmp_path / "kd/pruned/checkpoints/run_settings.json").read_text())
    assert settings["distill"] == {"teacher": str(tiny_gpt2_dir), "alpha": 0.5, "temperature": 2.0}  # --resume checks it
    assert plain["final_train_loss"] != kd["final_train_loss"]
    after = load_model(tiny_gpt2_dir).state_dict()
    assert all(torch.equal(after[k], v) for k, v in teacher_before.items())


def test_distillation_refuses_to_run_under_several_processes(monkeypatch, tiny_llama_dir, tmp_path):
    from transformers import TrainingArguments

    from bmwlm.train.distill import DistillTrainer

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(DistillSetupError, match="runs in one process"):
        DistillTrainer(model=load_model(tiny_llama_dir), args=args, teacher=load_model(tiny_llama_dir),
                       distill=DistillSettings(teacher="t"))
