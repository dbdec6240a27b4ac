"""The JSON lines format of a run's events, both ways: `JsonlSink` writes it, `read_jsonl` reads it.

One event per line: its fields plus ``"type"`` (the class name); enums appear as
their values, tuples as arrays, errors as text. `RunStarted` rows also carry
``"schema": SCHEMA``. Rows are built by a function generated per event class (one
dict display, no `dataclasses.fields` or `isinstance` per field) and encoded with
orjson when it is installed (the ``json`` extra), else with the standard library.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, cast

from ._events import EVENT_TYPES, Event, RunStarted
from ._writer import BackgroundWriter

SCHEMA = 1
"""Version of the row format, in every `RunStarted` row as ``"schema"``."""

orjson: types.ModuleType | None
try:
    import orjson
except ImportError:  # pragma: no cover - the stdlib path is tested through encoder(False)
    orjson = None


def _default(value: object) -> object:
    """What neither encoder knows: mappings (e.g. read-only params) and sets; else text."""
    if isinstance(value, Mapping):
        return dict(cast(Mapping[object, object], value))
    if isinstance(value, set | frozenset):
        return list(cast(set[object], value))
    return str(value)


def _stdlib_encoder() -> Callable[[dict[str, Any]], bytes]:
    encode = json.JSONEncoder(separators=(",", ":"), default=_default).encode

    def dumps(row: dict[str, Any]) -> bytes:
        return encode(row).encode()

    return dumps


def _orjson_encoder() -> Callable[[dict[str, Any]], bytes]:
    assert orjson is not None
    dumps, option = orjson.dumps, orjson.OPT_NON_STR_KEYS  # enum keys, as their values

    def encode(row: dict[str, Any]) -> bytes:
        return cast(bytes, dumps(row, default=_default, option=option))

    return encode


def encoder(fast: bool = True) -> Callable[[dict[str, Any]], bytes]:
    """A row -> JSON bytes function: orjson's if installed and `fast`, else the stdlib's."""
    return _orjson_encoder() if fast and orjson is not None else _stdlib_encoder()


def _row_builder(cls: type[Event]) -> Callable[[Event], dict[str, Any]]:
    # Generated from the class's own field names, like `_slots`: a dict display is
    # about 0.5 us per event where `event_to_dict` takes 7.
    names = [field.name for field in dataclasses.fields(cls)]
    items = [f"'type': {cls.__name__!r}"]
    if cls is RunStarted:
        items.append(f"'schema': {SCHEMA}")
    items += [f"{name!r}: e.{name}" for name in names]
    source = f"def row(e):\n    return {{{', '.join(items)}}}\n"
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return cast(Callable[[Event], dict[str, Any]], namespace["row"])


ROW_BUILDERS: dict[type[Event], Callable[[Event], dict[str, Any]]] = {
    cls: _row_builder(cls) for cls in EVENT_TYPES
}


def event_row(event: Event) -> dict[str, Any]:
    """The row of `event` (values as the event holds them; the encoder converts them)."""
    return ROW_BUILDERS[type(event)](event)


class JsonlSink:
    """One JSON object per event, one per line, written by a worker thread.

    `handle` encodes the row and queues it (it waits only when a slow disk lets more
    than `HIGH_WATER` lines pile up); the thread writes each batch with one unbuffered
    ``os.write``, so every line is on its way to the disk within about one write of
    being handled, and a process killed at any point leaves a file whose complete lines
    are a gap-free prefix of the run. The file is created (truncated) at the first
    event, or appended to when `append` is true. An I/O error disables the sink at the
    next event (or in `aclose`), like any sink that raises.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = os.fspath(path)
        self._flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._fd: int | None = None
        self._writer: BackgroundWriter[bytes] | None = None
        self._encode = encoder()
        self._rows = ROW_BUILDERS

    async def handle(self, event: Event, /) -> None:
        writer = self._writer
        if writer is None:
            writer = self._writer = BackgroundWriter(
                self._write, close=self._close_file, name=f"JsonlSink({self.path!r})"
            )
        writer.check()
        writer.put(self._encode(self._rows[type(event)](event)))
        if writer.pending > 4096:
            await writer.wait_room()

    async def aclose(self) -> None:
        """Wait for the writer thread to write what is queued (blocking: one batch at most).

        Blocking rather than awaiting a thread: under `trio.testing.MockClock` with
        autojump, a task waiting for a thread looks idle, the clock jumps to the drain
        deadline and the file would end early. Raises the writer's I/O error, if any.
        """
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close_now()
            writer.check()

    async def wait_written(self) -> None:
        """Wait until every event handled so far is written to the file."""
        if self._writer is not None:
            await self._writer.wait_written()

    def _write(self, batch: list[bytes]) -> None:  # in the writer thread
        if self._fd is None:
            self._fd = os.open(self.path, self._flags, 0o666)
        data = memoryview(b"\n".join(batch) + b"\n")
        while data:
            data = data[os.write(self._fd, data) :]

    def _close_file(self) -> None:  # in the writer thread, at its end
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r})"


# -- reading ------------------------------------------------------------------------


class JsonlFormatError(ValueError):
    """A line of a JSONL event log is not an event row (raised with its line number)."""


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    """How to turn a JSON value back into a field of type `hint`; None: as is."""
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if origin is tuple:
        args = typing.get_args(hint)
        inner = _converter(args[0]) if args else None
        if inner is None:
            return tuple
        convert_item = inner
        return lambda value: tuple(convert_item(v) for v in value)
    if origin in (Mapping, dict):
        key, _ = typing.get_args(hint)
        if isinstance(key, type) and issubclass(key, enum.Enum):
            return lambda value: {key(k): v for k, v in value.items()}
        return None
    if origin in (typing.Union, types.UnionType):
        convert = [c for c in map(_converter, typing.get_args(hint)) if c is not None]
        if convert:
            inner = convert[0]
            return lambda value: None if value is None else inner(value)
    return None


def _field_converter(hint: Any, default: Any) -> Callable[[Any], Any] | None:
    convert = _converter(hint)
    # A read-only mapping type as the default (`Params`): rebuild the value as one.
    if convert is None and isinstance(default, Mapping) and not isinstance(default, dict):
        return type(cast(Mapping[str, Any], default))
    return convert


def _reader(cls: type[Event]) -> Callable[[dict[str, Any]], Event]:
    hints = typing.get_type_hints(cls)
    fields = [
        (f.name, _field_converter(hints[f.name], f.default), f.default)
        for f in dataclasses.fields(cls)
    ]

    def build(row: dict[str, Any]) -> Event:
        values: list[Any] = []
        for name, convert, default in fields:
            if name in row:
                value = row[name]
                values.append(value if convert is None else convert(value))
            elif default is not dataclasses.MISSING:
                values.append(default)
            else:
                raise KeyError(name)
        return cls(*values)

    return build


_READERS = {cls.__name__: _reader(cls) for cls in EVENT_TYPES}


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[Event]:
    """The events of a JSON lines log written by `JsonlSink`, in file order, typed again.

    A torn last line (the writer was killed mid-line) ends the events with a
    `warnings.warn` naming the line; it never raises.

    Raises:
        JsonlFormatError: (a ValueError) a line other than the last is not an event
            row, or the log's schema is newer than this version reads.
        OSError: the file cannot be read.
    """
    name = os.fspath(path)
    loads: Callable[[bytes], Any] = orjson.loads if orjson is not None else json.loads
    with open(name, "rb") as file:
        yield from _read(cast(IO[bytes], file), name, loads)


def _read(file: IO[bytes], name: str, loads: Callable[[bytes], Any]) -> Iterator[Event]:
    previous: tuple[int, bytes] | None = None
    for number, line in enumerate(file, 1):
        if previous is not None:
            yield _parse(*previous, name, loads)
        previous = (number, line)
    if previous is None:
        return
    number, line = previous
    try:
        event = _parse(number, line, name, loads)
    except JsonlFormatError as exc:
        if exc.args and "schema" in str(exc.args[0]):
            raise
        warnings.warn(
            f"{name}:{number}: torn last line ignored (the writer stopped mid-line?): {exc}",
            stacklevel=3,
        )
        return
    yield event


def _row(line: bytes, loads: Callable[[bytes], Any]) -> tuple[dict[str, Any], str]:
    row = loads(line)
    if not isinstance(row, dict):
        raise TypeError("not a JSON object")
    kind = cast(dict[str, Any], row).get("type")
    if not isinstance(kind, str) or kind not in _READERS:
        raise TypeError(f"unknown event type {kind!r}")
    return cast(dict[str, Any], row), kind


def _parse(number: int, line: bytes, name: str, loads: Callable[[bytes], Any]) -> Event:
    try:
        row, kind = _row(line, loads)
    except (ValueError, TypeError) as exc:
        raise JsonlFormatError(f"{name}:{number}: not an event row: {exc}") from None
    schema = row.get("schema", SCHEMA) if kind == "RunStarted" else SCHEMA
    if not isinstance(schema, int) or schema > SCHEMA:
        raise JsonlFormatError(
            f"{name}:{number}: log schema {schema!r} is newer than this version reads ({SCHEMA})"
        )
    try:
        return _READERS[kind](row)
    except KeyError as exc:
        raise JsonlFormatError(f"{name}:{number}: row lacks the field {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise JsonlFormatError(f"{name}:{number}: not an event row: {exc}") from None
