"""Small file helpers every stage uses: JSONL in and out, atomic writes, clear missing-input errors."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable

from bmwlm.config import PRODUCED_BY, ROOT

log = logging.getLogger(__name__)


class MissingInputError(FileNotFoundError):
    """An input file is missing; the message names the stage that writes it."""


def require(path: Path | str, stage: str | None = None) -> Path:
    """Return `path` if it exists, else raise an error naming the stage that makes it."""
    path = Path(path)
    if not path.exists():
        maker = stage or PRODUCED_BY.get(path.resolve(), PRODUCED_BY.get(path))
        hint = f"; run {maker} first" if maker else ""
        raise MissingInputError(f"missing input {path}{hint}")
    return path


def display_path(path: Path | str) -> str:
    """How records name a path: relative to the repository root when inside it (as in
    docs/records.md), absolute otherwise (e.g. under a BMWLM_WORKDIR elsewhere, so any reader
    finds it whatever its cwd); strings that are not existing paths (hub ids) as given."""
    p = Path(path)
    if not p.exists():
        return str(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p.resolve())


def read_jsonl(path: Path | str) -> list[dict]:
    """Every line of a JSONL file that we wrote ourselves; a bad line raises, naming file and line."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BadRecordError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
    return records


_JSON_KINDS = {type(None): "null", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class BadRecordError(ValueError):
    """A line of an input file is damaged; the message names the file and the line."""


def read_jsonl_lenient(path: Path | str, *, expect=dict, with_lines: bool = False) -> tuple[list, list[str]]:
    """Read a JSONL file that may be damaged (a killed writer, a hand edit): returns the records of
    type `expect` (as `(line_number, record)` pairs with `with_lines`) and one warning per skipped
    line, naming the file and line number. Lines that are not valid UTF-8 are skipped too, never the
    whole file."""
    records, problems = [], []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problems.append(f"{path}:{lineno}: not valid UTF-8; line skipped")
                continue
            except json.JSONDecodeError as exc:
                what = "truncated" if not raw.endswith(b"\n") else "not valid JSON"
                problems.append(f"{path}:{lineno}: {what} ({exc.msg}); line skipped")
                continue
            if not isinstance(value, expect):
                kind = _JSON_KINDS.get(type(value), type(value).__name__)
                problems.append(f"{path}:{lineno}: a JSON {kind}, not an object; line skipped")
                continue
            records.append((lineno, value) if with_lines else value)
    for problem in problems:
        log.warning(problem)
    return records, problems


def write_text(path: Path | str, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    write_together({path: text})


def write_jsonl(path: Path | str, records: Iterable[dict]) -> int:
    """Atomically write one JSON object per line; returns the number of records."""
    records = list(records)
    write_text(path, jsonl_text(records))
    return len(records)


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def jsonl_text(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def json_text(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def write_together(files: dict[Path | str, str | bytes]) -> None:
    """Write several files as one commit: every file goes to a temporary sibling first (where a full
    disk or a kill can strike), and only when all are written are they renamed into place. An
    interruption before the renames leaves every old file untouched; the renames take microseconds.
    Text is written as UTF-8, bytes (e.g. a PNG) as they are."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            binary = isinstance(text, bytes)
            with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: Path | str, names: Iterable[str] | None = None) -> list[str]:
    """Delete the `.NAME.*.tmp` files that a killed atomic write left in `folder` (only for the given
    output `names`, or all of them); returns the names removed. Call it before a stage writes, while
    no other writer of the same folder runs."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [f".{name}.*.tmp" for name in names] if names is not None else [".*.tmp"]
    removed = []
    for pattern in patterns:
        for tmp in folder.glob(pattern):
            try:
                if tmp.is_file():
                    tmp.unlink()
                    removed.append(tmp.name)
            except FileNotFoundError:
                continue
    if removed:
        log.info("removed %d temporary file(s) left by an earlier, killed run in %s: %s", len(removed), folder,
                 ", ".join(removed))
    return removed


def read_json(path: Path | str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
