"""Stage 03, fine-tuning (03_train.py is the script; docs/records.md describes what it writes).

- `options`: the command-line overrides of the shared recipe (`TrainConfig`); light, no torch.
- `loss`: the chunked output-layer cross-entropy (`causal_lm_loss`).
- `trainer`: the `transformers.Trainer` subclass, the log.jsonl callback, the stopwatch.
- `run`: one run from start (or resume) to the saved model and run.json (`train_variant`).

Importing this package imports nothing heavy; `run`, `trainer` and `loss` import torch and transformers.
"""
