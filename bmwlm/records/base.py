"""The base of every typed record: a dataclass that reads and writes itself as JSON.

`from_dict` takes the known fields (nested records and lists of records included), ignores keys it
does not know (a newer writer may add some) and raises `BadRecordError` naming the missing ones, so
a renamed field fails loudly in the reader's test instead of silently becoming `None`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from bmwlm.io import BadRecordError, read_json, require, write_json

R = TypeVar("R", bound="Record")


def _is_record(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Record)


def _convert(tp, value):
    """Turn a JSON value into the field's declared type where that type is (a container of) records."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                return _convert(arg, value)
    if _is_record(tp) and isinstance(value, dict):
        return tp.from_dict(value)
    if origin is list and isinstance(value, list):
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(arg, v) for v in value]
    if origin is dict and isinstance(value, dict):
        args = typing.get_args(tp)
        if len(args) == 2:
            return {k: _convert(args[1], v) for k, v in value.items()}
    return value


@dataclasses.dataclass
class Record:
    @classmethod
    def from_dict(cls: type[R], data: dict, *, source: str = "") -> R:
        if not isinstance(data, dict):
            raise BadRecordError(f"{source or cls.__name__}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        kwargs, missing = {}, []
        for f in dataclasses.fields(cls):
            if f.name in data:
                kwargs[f.name] = _convert(hints[f.name], data[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                missing.append(f.name)
        if missing:
            where = f"{source}: " if source else ""
            raise BadRecordError(f"{where}{cls.__name__} lacks {', '.join(missing)}")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls: type[R], path: Path | str, stage: str | None = None) -> R:
        """Read a record file; a missing file names the stage that writes it."""
        return cls.from_dict(read_json(require(path, stage)), source=str(path))

    def save(self, path: Path | str) -> None:
        write_json(path, self.to_dict())
