"""Cache keys: what a stage's result depends on, hashed. Pure: no trio import.

A stage's key covers its name, its code fingerprint, its `version=`, the hash of each
input value (from the value's pickled bytes), the hash of each parameter and of each
declared file dependency. The key is value-based: an upstream that re-ran and returned
equal pickled bytes leaves its downstream's key unchanged.

The code fingerprint follows the stage function into the module-level functions,
classes and constants of the pipeline's own files that it references (by name, through
globals, closures and attributes of own modules), transitively. Anything from the
standard library, an installed distribution or trio_pipeline itself counts by version,
not content. Each reached item is recorded with a digest of its own, so an explanation
can say which function changed.
"""

from __future__ import annotations

import enum
import functools
import importlib.metadata
import json
import os
import pickle
import site
import sys
import sysconfig
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from pathlib import PurePath
from typing import Any, cast

from ._store import canonical_json, digest_bytes

KEY_FORMAT = 2
"""Bump when the meaning of a key changes: every stored entry then misses.

2: the key is the hash of `parts_text`, the text stored with the entry (1 hashed a
text of its own, so a commit built two texts)."""

PICKLE_PROTOCOL = 5

_CONST_TYPES = (int, float, complex, str, bytes, bool, type(None), range, PurePath)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A stage function's code fingerprint.

    Attributes:
        digest: The hash over every item reached.
        items: Each reached item (``"file.py:qualname"``, or ``"package dist"``) -> its own digest.
    """

    digest: str
    items: Mapping[str, str]


def pickle_value(value: object) -> bytes:
    """The bytes a value's hash is taken from (and that the store keeps).

    Raises:
        Exception: whatever pickling raises for an unpicklable value.
    """
    return pickle.dumps(value, protocol=PICKLE_PROTOCOL)


def hash_value(value: object) -> str:
    """The hash of `value`'s pickled bytes. Raises what pickling raises."""
    return digest_bytes(pickle_value(value))


# -- where code comes from -------------------------------------------------------------


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages())
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        roots.add(user_site)
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # trio_pipeline
    return tuple(sorted(os.path.abspath(r) + os.sep for r in roots))


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache
def _package_version(top: str) -> str:
    """How a library counts: its distribution's version, or the Python version for the stdlib."""
    if top in sys.stdlib_module_names or top == "builtins":
        return f"python {sys.version.split()[0]}"
    if top == "trio_pipeline":
        from .. import __version__

        return f"trio-pipeline {__version__}"
    for dist in _distributions().get(top, []):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - racy uninstall
            continue
    module = sys.modules.get(top)
    version = getattr(module, "__version__", None)
    return f"{top} {version if isinstance(version, str) else 'unknown version'}"


def _own_file(module_name: str | None) -> str | None:
    """The source file of `module_name` if it is one of the pipeline's own files, else None."""
    if not module_name:
        return None
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return None
    path = os.path.abspath(file)
    if path.startswith(_library_roots()):
        return None
    return path


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith(os.pardir) else rel


# -- the fingerprint -------------------------------------------------------------------


class CodeFingerprinter:
    """Computes code fingerprints, memoised per function object.

    Make one per run: module-level constants are read when first reached, so a
    long-lived fingerprinter would not see them change.
    """

    def __init__(self) -> None:
        self._memo: dict[int, tuple[object, Fingerprint]] = {}
        self._items: dict[int, tuple[object, str, str, tuple[object, ...]]] = {}

    def fingerprint(self, fn: object) -> Fingerprint:
        """The fingerprint of a stage function (an `ExecutorStage` or `Command` is unwrapped)."""
        memo = self._memo.get(id(fn))
        if memo is not None and memo[0] is fn:
            return memo[1]
        found: dict[str, str] = {}
        stack: list[object] = [fn]
        seen: set[int] = set()
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            name, digest, refs = self._item(obj)
            if name:
                found[name] = digest
            stack.extend(refs)
        body = json.dumps(sorted(found.items()), separators=(",", ":"))
        result = Fingerprint(digest_bytes(body.encode()), found)
        self._memo[id(fn)] = (fn, result)
        return result

    def _item(self, obj: object) -> tuple[str, str, tuple[object, ...]]:
        cached = self._items.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1], cached[2], cached[3]
        name, digest, refs = _describe_ref(obj) if isinstance(obj, _Ref) else _describe(obj)
        self._items[id(obj)] = (obj, name, digest, refs)
        return name, digest, refs


def _describe(obj: object) -> tuple[str, str, tuple[object, ...]]:
    """One item: its name, its own digest, and the objects it references."""
    # Wrappers the pipeline itself makes: look through them.
    function = getattr(obj, "function", None)
    if type(obj).__name__ == "ExecutorStage" and function is not None:
        return "", "", (function,)
    if type(obj).__name__ == "Command" and type(obj).__module__.startswith("trio_pipeline"):
        argv: object = getattr(obj, "argv", ())
        text = repr((argv, getattr(obj, "cwd", None), repr(getattr(obj, "env", None))))
        return f"command {argv!r}", digest_bytes(text.encode()), ()
    if isinstance(obj, functools.partial):
        partial = cast("functools.partial[object]", obj)
        args = (partial.args, sorted(partial.keywords.items()))
        text = _const_text(args) if _is_const(args) else repr(args)
        inner = getattr(partial.func, "__qualname__", repr(partial.func))
        return f"partial of {inner}", digest_bytes(text.encode()), (partial.func,)
    if isinstance(obj, types.MethodType):
        return "", "", (obj.__func__,)
    if isinstance(obj, types.FunctionType):
        return _describe_function(obj)
    if isinstance(obj, type):
        return _describe_class(obj)
    if isinstance(obj, types.ModuleType):
        return _describe_module(obj)
    module_name = getattr(type(obj), "__module__", None)
    if callable(obj) and _own_file(module_name) is not None:
        # An instance of an own class with __call__: its class, and its state if it pickles.
        try:
            state = digest_bytes(pickle_value(obj))
        except Exception:
            state = "unpicklable"
        return f"{_qualified(type(obj))} instance", state, (type(obj),)
    top = (module_name or "builtins").partition(".")[0]
    version = _package_version(top)
    return version, digest_bytes(version.encode()), ()


def _qualified(obj: type | types.FunctionType) -> str:
    file = _own_file(obj.__module__)
    where = _display_path(file) if file is not None else obj.__module__
    return f"{where}:{obj.__qualname__}"


def _describe_function(fn: types.FunctionType) -> tuple[str, str, tuple[object, ...]]:
    module_name = fn.__module__
    if _own_file(module_name) is None:
        top = (module_name or "builtins").partition(".")[0]
        version = _package_version(top)
        return version, digest_bytes(version.encode()), ()
    code = fn.__code__
    names: set[str] = set()
    text = _code_text(code, names, doc=fn.__doc__)
    extra = _const_text((fn.__defaults__, sorted((fn.__kwdefaults__ or {}).items())))
    refs: list[object] = []
    globals_ = fn.__globals__
    builtins_ = globals_.get("__builtins__")
    for name in sorted(names):
        if name in globals_:
            refs.append(_GlobalRef(module_name, name, globals_[name], names))
        elif isinstance(builtins_, dict) and name in builtins_:
            continue  # builtins count through the Python version
    qualified = _qualified(fn)
    for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            refs.append(_ClosureValue(cell.cell_contents, f"{qualified} closure {var}"))
        except ValueError:  # an empty cell
            continue
    digest = digest_bytes(f"{text}|{extra}".encode())
    return qualified, digest, tuple(refs)


def _describe_class(cls: type) -> tuple[str, str, tuple[object, ...]]:
    if _own_file(cls.__module__) is None:
        top = (cls.__module__ or "builtins").partition(".")[0]
        version = _package_version(top)
        return version, digest_bytes(version.encode()), ()
    parts: list[str] = [repr([_safe_name(b) for b in cls.__bases__])]
    refs: list[object] = list(cls.__bases__)
    for attr, value in sorted(vars(cls).items()):
        if attr in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
            continue
        raw: object = value
        if isinstance(value, staticmethod | classmethod):
            raw = cast("staticmethod[..., object]", value).__func__
        if isinstance(raw, types.FunctionType | type | property):
            if isinstance(raw, property):
                refs.extend(f for f in (raw.fget, raw.fset, raw.fdel) if f is not None)
            else:
                refs.append(raw)
            parts.append(attr)
        elif _is_const(raw):
            parts.append(f"{attr}={_const_text(raw)}")
        else:
            parts.append(f"{attr}:{type(raw).__qualname__}")
    return _qualified(cls), digest_bytes("|".join(parts).encode()), tuple(refs)


def _describe_module(module: types.ModuleType) -> tuple[str, str, tuple[object, ...]]:
    top = module.__name__.partition(".")[0]
    version = _package_version(top)
    return version, digest_bytes(version.encode()), ()


def _safe_name(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


class _Ref:
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class _GlobalRef(_Ref):
    """A global name a function reads: a constant becomes an item, anything else is followed."""

    __slots__ = ("attrs", "module", "name")

    def __init__(self, module: str, name: str, value: object, attrs: set[str]) -> None:
        super().__init__(value)
        self.module = module
        self.name = name
        self.attrs = attrs  # names the function uses, some of them attributes of `value`


class _ClosureValue(_Ref):
    """A value a closure captured (`label` names the function and the variable)."""

    __slots__ = ("label",)

    def __init__(self, value: object, label: str) -> None:
        super().__init__(value)
        self.label = label


def _describe_ref(ref: _Ref) -> tuple[str, str, tuple[object, ...]]:
    value = ref.value
    if isinstance(ref, _ClosureValue):
        if _is_const(value, frozen=True):
            return ref.label, digest_bytes(_const_text(value).encode()), ()
        if isinstance(value, list | dict | set):
            # A mutable container a closure shares (a counter, a cache): its
            # contents are state, not code.
            return "", "", ()
        return "", "", (value,)
    if isinstance(ref, _GlobalRef) and _is_const(value):
        file = _own_file(ref.module)
        where = _display_path(file) if file is not None else ref.module
        return f"{where}:{ref.name}", digest_bytes(_const_text(value).encode()), ()
    if (
        isinstance(ref, _GlobalRef)
        and isinstance(value, types.ModuleType)
        and _own_file(value.__name__) is not None
    ):
        # `helpers.f` reads attribute `f` of an own module: follow what exists.
        members = vars(value)
        followed = [
            _GlobalRef(value.__name__, a, members[a], set()) for a in ref.attrs if a in members
        ]
        return "", "", tuple(followed)
    return "", "", (value,)


def _is_const(value: object, *, frozen: bool = False) -> bool:
    """A constant: scalars and containers of them (only immutable ones if `frozen`)."""
    if isinstance(value, (*_CONST_TYPES, enum.Enum)):
        return True
    if isinstance(value, tuple | frozenset) or (not frozen and isinstance(value, list | set)):
        return all(_is_const(v, frozen=frozen) for v in cast(Iterable[object], value))
    if isinstance(value, dict) and not frozen:
        items = cast(dict[object, object], value).items()
        return all(_is_const(k) and _is_const(v) for k, v in items)
    return False


def _const_text(value: object) -> str:
    """A stable text for a constant: sets sorted by their items' text, floats exact."""
    if isinstance(value, set | frozenset):
        inner = sorted(_const_text(v) for v in cast(Iterable[object], value))
        return f"{type(cast(object, value)).__name__}({inner})"
    if isinstance(value, dict):
        items = cast(dict[object, object], value).items()
        return "{" + ", ".join(f"{_const_text(k)}: {_const_text(v)}" for k, v in items) + "}"
    if isinstance(value, tuple | list):
        inner_items = ", ".join(_const_text(v) for v in cast(Iterable[object], value))
        return f"{type(cast(object, value)).__name__}[{inner_items}]"
    if isinstance(value, float):
        return value.hex()
    return repr(value)


def _code_text(code: types.CodeType, names: set[str], *, doc: str | None = None) -> str:
    """A text of what a code object does: bytecode, constants, names; no line numbers."""
    names.update(code.co_names)
    consts: list[str] = []
    for i, const in enumerate(code.co_consts):
        if isinstance(const, types.CodeType):
            consts.append("<" + _code_text(const, names) + ">")
        elif i == 0 and doc is not None and const == doc:
            consts.append("<doc>")  # editing a docstring does not change what the code does
        else:
            consts.append(_const_text(const))
    return "|".join(
        (
            code.co_code.hex(),
            ",".join(consts),
            ",".join(code.co_names),
            ",".join(code.co_varnames),
            ",".join(code.co_freevars),
            ",".join(code.co_cellvars),
            f"{code.co_argcount},{code.co_posonlyargcount},{code.co_kwonlyargcount},{code.co_flags}",
            code.co_exceptiontable.hex() if hasattr(code, "co_exceptiontable") else "",
        )
    )


# -- keys ------------------------------------------------------------------------------


def key_parts(
    *,
    stage: str,
    code: Fingerprint,
    version: str | None,
    inputs: Mapping[str, str],
    params: Mapping[str, str],
    deps: Mapping[str, str],
) -> dict[str, Any]:
    """The components of a key, as stored with the entry (JSON-compatible)."""
    return {
        "format": KEY_FORMAT,
        "stage": stage,
        "code": code.digest,
        "functions": dict(code.items),
        "version": version,
        "inputs": dict(inputs),
        "params": dict(params),
        "deps": dict(deps),
    }


def parts_text(parts: Mapping[str, Any]) -> str:
    """`parts` (`key_parts`) without ``"functions"``, as canonical JSON: what the store
    keeps with the entry, and what the key is the hash of."""
    return canonical_json({name: value for name, value in parts.items() if name != "functions"})


def key_of(parts: Mapping[str, Any]) -> str:
    """The key for `parts` (`key_parts`); the per-function digests are covered by ``code``."""
    return digest_bytes(parts_text(parts).encode())


def functions_json(functions: Mapping[str, str]) -> str:
    """The JSON of a fingerprint's items, as the store keeps them (memoise it per fingerprint)."""
    return canonical_json(functions)


def text_head(code: str) -> str:
    """The start of `parts_text` for a code digest (memoise it per digest)."""
    return f'{{"code":{_quote(code)},"deps":{{}},"format":{KEY_FORMAT},"inputs":{{'


def input_piece(name: str, digest: str) -> str:
    """One upstream's entry in `parts_text`'s inputs (memoise it per upstream)."""
    return f"{_quote(name)}:{_quote(digest)}"


def text_from(
    head: str, pieces: Sequence[str], params_json: str, stage: str, version: str | None
) -> str:
    """`parts_text` of parts without deps, cheaper: from pieces that can be memoised.

    `head` is `text_head`; `pieces` are the inputs' `input_piece` in name order;
    `params_json` is the parameters' hashes as canonical JSON (memoise it).
    """
    tail = "null" if version is None else _quote(version)
    return (
        f'{head}{",".join(pieces)}}},"params":{params_json},"stage":{_quote(stage)},'
        f'"version":{tail}}}'
    )


def hash_params(params: Mapping[str, Any], only: Iterable[str] | None = None) -> dict[str, str]:
    """Each parameter's hash (of its pickled bytes); `only` limits the names.

    Raises:
        Exception: a parameter that cannot be pickled (the stage is then not cached).
    """
    names = params.keys() if only is None else [n for n in only if n in params]
    return {str(name): hash_value(params[name]) for name in names}
