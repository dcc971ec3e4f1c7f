"""Typed JSON records: frozen dataclasses read from untrusted JSON with every field's type and range checked.

A record is a frozen dataclass whose fields are annotated with JSON-shaped types: ``str``, ``int``, ``float``,
``bool``, ``X | None``, ``tuple[X, ...]`` (a JSON array), ``dict[str, X]`` (a JSON object), ``Literal[...]``,
another record, or ``Json`` (a value the record leaves to its owner, e.g. a format's own conversion facts).
``Annotated[int, Range(lo, hi)]`` bounds a number. ``decode`` refuses a missing field without a default, an unknown
field, a wrong type (a bool is not a number here) or a value out of range with one ToolchainError line naming the
field's path; ``encode`` writes the record back as the same JSON. A field named ``class_`` is written ``class``.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from core.errors import ToolchainError

Json = Any  # any JSON value, checked by the record's owner
Record = TypeVar("Record")


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a number field."""

    low: float
    high: float


@dataclass(frozen=True)
class Text:
    """At most ``max_length`` characters, none of them control characters when ``line`` (a name shown to people)."""

    max_length: int
    line: bool = True


@dataclass(frozen=True)
class Hex:
    """Exactly ``length`` lowercase hexadecimal digits (a digest)."""

    length: int


@dataclass(frozen=True)
class Matches:
    """The whole string matches ``pattern`` (a name that becomes part of a file name or of generated code)."""

    pattern: str
    meaning: str


@dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (a registry's names)."""

    choices: tuple[str, ...]


def json_key(name: str) -> str:
    return name.rstrip("_")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def decode(cls: type[Record], data: Any, error: type[ToolchainError], where: str, partial: bool = False) -> Record:
    """``cls`` from parsed JSON ``data``; one ``error`` naming ``where.field`` for the first thing wrong.
    ``partial``: the object's other top-level fields are left to their owner instead of refused (a format's facts
    for people beside the few its runner reads back)."""
    def fail(at: str, problem: str) -> ToolchainError:
        return error(f"{where}: {at or 'the record'} {problem}")

    if partial and isinstance(data, dict):
        known = {json_key(f.name) for f in dataclasses.fields(cls)}
        data = {key: value for key, value in data.items() if key in known}
    return _decode(cls, data, fail, "")


def encode(record: Any) -> Json:
    """A record (or any value decode reads) as plain JSON values."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {json_key(f.name): encode(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, tuple | list):
        return [encode(v) for v in record]
    if isinstance(record, dict):
        return {k: encode(v) for k, v in record.items()}
    return record


def _type_name(kind: Any) -> str:
    origin = get_origin(kind)
    if kind is type(None):
        return "null"
    if origin is Annotated:
        return _type_name(get_args(kind)[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(k) for k in get_args(kind))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(kind))
    if origin is tuple:
        return "an array"
    if origin is dict or dataclasses.is_dataclass(kind):
        return "an object"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(kind, str(kind))


def _decode(kind: Any, value: Any, fail: Callable[[str, str], ToolchainError], at: str) -> Any:
    origin = get_origin(kind)
    if kind is Json:
        return value
    if origin is Annotated:
        base, *limits = get_args(kind)
        decoded = _decode(base, value, fail, at)
        for limit in limits:
            _check_limit(limit, decoded, fail, at)
        return decoded
    if origin in (Union, types.UnionType):
        options = [k for k in get_args(kind) if k is not type(None)]
        if value is None and len(options) < len(get_args(kind)):
            return None
        if len(options) == 1:
            return _decode(options[0], value, fail, at)
        for option in options:
            try:
                return _decode(option, value, fail, at)
            except ToolchainError:
                continue
        raise fail(at, f"must be {_type_name(kind)}, got {_json_type(value)}")
    if origin is Literal:
        if value not in get_args(kind) or isinstance(value, bool) != any(isinstance(v, bool) for v in get_args(kind)):
            raise fail(at, f"must be {_type_name(kind)}, got {_shown(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise fail(at, f"must be an array, got {_json_type(value)}")
        item = get_args(kind)[0]
        return tuple(_decode(item, v, fail, f"{at}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(at, f"must be an object, got {_json_type(value)}")
        item = get_args(kind)[1]
        return {k: _decode(item, v, fail, _join(at, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return _decode_record(kind, value, fail, at)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(at, f"must be a number, got {_json_type(value)}")
        return float(value)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise fail(at, f"must be {_type_name(kind)}, got {_json_type(value)}")
    return value


def _decode_record(cls: type, value: Any, fail: Callable[[str, str], ToolchainError], at: str) -> Any:
    if not isinstance(value, dict):
        raise fail(at, f"must be an object, got {_json_type(value)}")
    fields = {json_key(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise fail(at, f"has an unknown field {unknown[0]!r}; known: {', '.join(sorted(fields))}")
    hints = _hints(cls)
    kwargs = {}
    for key, spec in fields.items():
        if key not in value:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise fail(at, f"lacks {key!r}")
            continue
        kwargs[spec.name] = _decode(hints[spec.name], value[key], fail, _join(at, key))
    return cls(**kwargs)


def _check_limit(limit: Any, value: Any, fail: Callable[[str, str], ToolchainError], at: str) -> None:
    if isinstance(limit, Range) and value is not None and not limit.low <= value <= limit.high:
        raise fail(at, f"is {_shown(value)}, outside {_shown(limit.low)}..{_shown(limit.high)}")
    if isinstance(limit, Text) and value is not None:
        if len(value) > limit.max_length:
            raise fail(at, f"has {len(value)} characters, more than {limit.max_length}")
        if limit.line and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise fail(at, "holds a control character; it must be one line of text")
    if isinstance(limit, Matches) and not re.fullmatch(limit.pattern, value):
        raise fail(at, f"is {_shown(value)}; it must be {limit.meaning}")
    if isinstance(limit, OneOf) and value not in limit.choices:
        raise fail(at, f"is {_shown(value)}; known: {', '.join(limit.choices)}")
    if isinstance(limit, Hex) and (len(value) != limit.length or not set(value) <= set("0123456789abcdef")):
        raise fail(at, f"is not {limit.length} lowercase hexadecimal digits")


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true or false", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
