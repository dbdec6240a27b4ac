"""Run parameters: the read-only mapping stages see, and the CLI's ways to give them. Pure.

A run's parameters are given once (``run(..., params=...)``, or ``--param`` and
``--params`` on the command line) and read by every stage as `StageContext.params`
or `StageSnapshot.params`. The mapping is read-only; the values are the caller's
objects, not copies, so a stage must not mutate them.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any, cast

from ._errors import StageDefinitionTypeError


class Params(Mapping[str, Any]):
    """A read-only mapping of parameter names to values. Pickles (for worker processes).

    Hashable by its keys, so it can be the default of a frozen dataclass field.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = {} if data is None else dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data))

    def __eq__(self, other: object) -> bool:
        return dict(self.items()) == other if isinstance(other, Mapping) else NotImplemented

    def __repr__(self) -> str:
        return f"Params({self._data!r})"

    def __reduce__(self) -> tuple[type[Params], tuple[dict[str, Any]]]:
        return (type(self), (self._data,))


NO_PARAMS = Params()


def check_params(params: Mapping[str, Any] | None) -> Params:
    """`params` as a `Params` (a copy of the top level); None is empty.

    Raises:
        StageDefinitionTypeError: not a mapping, or a key is not a str (a TypeError, as
            every run option's type error).
    """
    if params is None:
        return NO_PARAMS
    if isinstance(params, Params):
        return params
    if not isinstance(params, Mapping):
        raise StageDefinitionTypeError(f"params must be a mapping of str to values, got {params!r}")
    bad = [key for key in params if not isinstance(key, str)]
    if bad:
        raise StageDefinitionTypeError(f"params keys must be str, got {bad[0]!r}")
    return Params(params)


def parse_param(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, value)``: VALUE parsed as JSON if it parses, else the text.

    So ``n=3`` gives 3, ``on=true`` True, ``tags=["a","b"]`` a list, ``name=ci`` and
    ``v=007`` the strings ``"ci"`` and ``"007"``; ``s='"3"'`` the string ``"3"``.

    Raises:
        ValueError: no ``=``, or an empty KEY.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def load_params_file(path: str) -> dict[str, Any]:
    """The parameters in a ``.json`` file (an object) or a ``.toml`` file (its top-level table).

    Raises:
        ValueError: another suffix, the file cannot be read or parsed, or the JSON is
            not an object. The message names the file.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".json", ".toml"):
        raise ValueError(f"{path}: expected a .json or .toml file")
    try:
        with open(path, "rb") as file:
            data: object = json.load(file) if suffix == ".json" else tomllib.load(file)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 - a bad file's content, reported like a parse error
            f"{path}: expected a JSON object, got {type(data).__name__}"
        )
    return cast(dict[str, Any], data)  # json and tomllib give str keys
