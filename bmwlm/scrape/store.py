"""The collection on disk, which only ever grows.

`articles.jsonl` is read at the start of a run; what the run collects is merged into it
(`records.merge`), and every write is the whole union, written atomically (temp file + rename).
So a run stopped in any way (Ctrl-C, SIGTERM, SIGKILL, during `--refresh` or a plain re-run)
leaves at least the articles that were there before. Also here: the lock that keeps two crawls
out of one folder, the removal of temp files left by killed writes, and holding off Ctrl-C while a
file is being replaced.
"""
from __future__ import annotations

import fcntl
import json
import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bmwlm.config import ARTICLES_FILE, SCRAPE_REPORT_FILE
from bmwlm.io import write_jsonl
from bmwlm.scrape.records import is_record, merge, newest_first

log = logging.getLogger(__name__)

ARTICLES_NAME = ARTICLES_FILE.name  # the names inside --out
REPORT_NAME = SCRAPE_REPORT_FILE.name
LOCK_NAME = ".scrape.lock"


class Busy(RuntimeError):
    """Another crawl is writing to the same folder."""


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold `out/.scrape.lock` for the block (released by the system even on SIGKILL)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another 01_scrape.py is writing to {out}; wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def interrupts_deferred(reraise: bool = True) -> Iterator[None]:
    """Hold off SIGINT and SIGTERM while the block runs (a file being replaced); afterwards raise
    the KeyboardInterrupt they would have raised (or drop it, with reraise=False, when the run
    is finishing anyway). Only the main thread can do this; elsewhere the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and reraise:
        raise KeyboardInterrupt


class Collection:
    """The articles already on disk (`previous`) and those this run collected (`run`, by id)."""

    def __init__(self, path: Path, previous: dict[str, dict] | None = None, unreadable_lines: int = 0):
        self.path = path
        self.previous = previous or {}
        self.unreadable_lines = unreadable_lines
        self.run: dict[str, dict] = {}
        self.unsaved = 0  # changes since the last save
        self.conflicts_in_run = 0
        self.conflicts_with_previous: set[str] = set()

    @classmethod
    def load(cls, path: Path) -> "Collection":
        """The collection in `path` (none if the file does not exist). Lines that are not article
        records are skipped with a warning naming the line; they could not be merged anyway."""
        previous: dict[str, dict] = {}
        unreadable = 0
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        record, problem = None, f"not JSON ({exc.msg})"
                    else:
                        problem = "not an article record"
                    if not is_record(record):
                        unreadable += 1
                        log.warning("%s line %d: %s; skipped", path, number, problem)
                        continue
                    record.setdefault("topics", [])
                    if record["id"] in previous:
                        record, _ = merge(previous[record["id"]], record)
                    previous[record["id"]] = record
            log.info("%s holds %d articles; what this run collects is merged into them", path, len(previous))
        return cls(path, previous, unreadable)

    # ---- this run's records ---------------------------------------------------------------
    def __contains__(self, article_id: str) -> bool:
        return article_id in self.run

    def get(self, article_id: str) -> dict | None:
        return self.run.get(article_id)

    def add(self, record: dict) -> None:
        """A new article of this run."""
        self.run[record["id"]] = record
        self.unsaved += 1

    def add_topic(self, article_id: str, topic: str) -> None:
        topics = self.run[article_id]["topics"]
        if topic not in topics:
            topics.append(topic)
            self.unsaved += 1

    def offer(self, record: dict) -> bool:
        """The same article met again in this run: keep the better body (`records.merge`, the
        first sighting preferred). Returns whether the bodies conflicted."""
        kept, conflict = merge(self.run[record["id"]], record)
        if conflict:
            self.conflicts_in_run += 1
            self.run[record["id"]] = kept
            self.unsaved += 1
        return conflict

    # ---- the union, on disk ---------------------------------------------------------------
    def records(self) -> list[dict]:
        """Everything there is: the previous collection merged with this run's records (this
        run preferred), newest first."""
        out = dict(self.previous)
        conflicts = set()
        for article_id, record in self.run.items():
            if article_id in out:
                out[article_id], conflict = merge(record, out[article_id])
                if conflict:
                    conflicts.add(article_id)
            else:
                out[article_id] = record
        self.conflicts_with_previous = conflicts
        return newest_first(out.values())

    @property
    def new_ids(self) -> set[str]:
        return set(self.run) - set(self.previous)

    def save(self) -> int:
        """Write the union atomically; returns how many articles the file holds."""
        count = write_jsonl(self.path, self.records())
        self.unsaved = 0
        return count
