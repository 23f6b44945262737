"""Stage 01, the crawler behind `01_scrape.py`: BMW Group PressClub feeds -> `data/raw/articles.jsonl`.

Where things are (a newcomer starts at `run.scrape`, then `crawl.Crawler`):

- `settings` what a run is told to do (`Settings`, the defaults), the topic ids;
- `urls`     the URLs asked for, and `Site`, which pins the crawl to the host of `--base-url`;
- `fetch`    one URL: cache, robots.txt, pause, retries, deadline, size cap (`Fetcher`);
- `limits`   the deadline of one response, the crawl's time limit, the size cap while streaming;
- `text`     bytes -> text (declared encoding, bad bytes counted), HTML -> text, the length cap;
- `parse`    feed pages, detail pages, ids, dates, cut-short bodies;
- `records`  one article record, and which of two records with the same id is kept;
- `store`    the collection on disk, which only grows; the folder lock; stale temp files;
- `crawl`    paging through the feeds and building the records (`Crawler`);
- `report`   the run's counters and `scrape_report.json` (its `status` is 02's contract);
- `run`      one whole run: the order of writes and the status it ends with.
"""
