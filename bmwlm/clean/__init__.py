"""Stage 02's work: clean raw PressClub articles, drop what should not be trained on, split by date.

`02_preprocess.py` reads, calls `pipeline.preprocess` and writes. Where each idea lives:

- `raw`         reading articles.jsonl leniently; records set aside (damaged line, no id, no date);
                refusing a collection whose scrape did not finish
- `text`        unicode normalisation, paragraphs, sentences, tidying after a removal, truncation
- `patterns`    links, e-mail addresses and phone numbers, shared by several rule families
- `rules`       THE ordered list of cleaning rules, and `clean_text` that applies it; the rules
                themselves live by family in `furniture`, `contacts`, `company`, `consumption`, `links`
- `records`     the processed record (title line + cleaned body) and how `published` is read
- `language`    which language an article is in
- `dedup`       one copy per id, exact and near duplicates
- `split`       the chronological or random split, and the check that nothing leaks
- `report`      per-rule totals, per-split summaries, token counts, the closing log lines
- `pipeline`    the steps above in order: `preprocess(records) -> (train, validation, report)`
"""
