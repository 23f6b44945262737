"""Stage 06's work, one module per concern (06_report.py calls them):

- `inputs`: reading every stage's typed records, each optional, with a note when one is absent;
- `text`: how numbers, intervals, dates and markdown cells are written;
- `tables`: the metrics, data, block-removal, training and per-item tables;
- `evaluation`: the paired comparisons, the Q&A controls, cloze, separators, precision, speed and
  generated-answer sections, all from 05's records (no comparison is computed here);
- `markdown`: the trade-off list (05's test sentences), the generations, and report.md as a whole;
- `figures`: the five PNG figures (imports matplotlib, which takes a moment).
"""
