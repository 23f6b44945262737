"""Stage 05's work, one module per measurement (05_evaluate.py calls them in order):

- `models`: which four models exist and where (base, base minus a block, full, pruned), or why not;
- `data`: the validation/train articles, the Q&A set re-tagged against these splits (and the
  frequency-prior guesser's answers), the cloze set built from the validation articles;
- `qa`: the multiple-choice item; every check of the Q&A file is `bmwlm.qaset`'s;
- `cloze`: the automatic fill-in-the-gap set built from the validation articles;
- `choice`: scoring the options three ways (normalised, calibrated, prior only), accuracy intervals;
- `precision`: the same items re-scored under bf16 autocast, every flip recorded;
- `perplexity`: token-weighted loss over the training windows, each token attributed to its article;
- `generation`: press-release openings continued, questions answered in plain and chat form;
- `cost`: training-step and generation timings of two models, interleaved in one process;
- `compare`: the paired comparisons (bootstrap, McNemar) behind every claim of the report;
- `runner`: all of the above for one model, as one `ModelEntry` of metrics.json, then the comparisons.

`models`, `data`, `qa` and `cloze` import quickly; the others import torch (and `evaluate`), which
takes seconds.
"""
