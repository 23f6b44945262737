"""Small file helpers every stage uses: JSONL in and out, atomic writes, clear missing-input errors."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from bmwlm.config import PRODUCED_BY, ROOT


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
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def iter_jsonl(path: Path | str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_text(path: Path | str, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: Path | str, records: Iterable[dict]) -> int:
    """Atomically write one JSON object per line; returns the number of records."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_json(path: Path | str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
