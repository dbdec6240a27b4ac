"""The pure core imports only the standard library and other core modules.

The core is the list below, plus any module whose docstring says "Pure: no trio
import". Read from the source (every ``import``, including those inside functions), not by
importing: a lazy ``import trio`` in a function passes an import-time check and still
loads trio at run time. Imports under ``if TYPE_CHECKING:`` never run and are allowed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trio_pipeline"
CORE = frozenset(
    {
        "_graph",
        "_state",
        "_events",
        "_errors",
        "_result",
        "_context",
        "_options",
        "_scheduler",
        "_chaos",
        "_slots",
        "_items",
        "_delivery",
        "_params",
        "_targets",
        "_signature",
        "_dryrun",
        "_cache._policy",  # the cache's stage options (issue 14); the rest of _cache is edge
    }
)
NOT_YET = frozenset({"_scheduler"})  # lands with the scheduler rebuild (issue 10 section 1)


def _says_pure(path: Path) -> bool:
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    return "pure: no trio import" in docstring.split("\n\n")[0].lower()


# A module that calls itself pure in its docstring is held to it too, core or not.
PURE = frozenset(CORE | {p.stem for p in PACKAGE.glob("_*.py") if _says_pure(p)})


def forbidden_imports(source: str) -> list[str]:
    """Each import in `source` that is neither the standard library nor a pure module."""
    tree = ast.parse(source)
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            type_only.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if not _allowed(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "trio_pipeline":  # from trio_pipeline import _x
                found += [f"trio_pipeline.{a.name}" for a in node.names if a.name not in PURE]
            elif node.level == 0:
                if not _allowed(node.module or ""):
                    found.append(node.module or "")
            elif node.module is not None:  # from ._x import y
                if node.module not in PURE:
                    found.append("." + node.module)
            else:  # from . import _x
                found += ["." + a.name for a in node.names if a.name not in PURE]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            found.append(ast.unparse(node))
    return found


def _allowed(module: str) -> bool:
    top = module.partition(".")[0]
    if top == "trio_pipeline":  # the package itself imports the engine, hence trio
        return module.count(".") == 1 and module.partition(".")[2] in PURE
    return top in sys.stdlib_module_names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_dynamic_import(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in {"import_module", "__import__"}


@pytest.mark.parametrize("module", sorted(PURE))
def test_core_module_imports_only_stdlib_and_core(module: str) -> None:
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    if module in NOT_YET and not path.exists():
        pytest.skip(f"{module} is not written yet")
    assert forbidden_imports(path.read_text()) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import trio", ["trio"]),
        ("def f():\n    import trio.lowlevel", ["trio.lowlevel"]),
        ("class C:\n    def m(self):\n        from trio import sleep", ["trio"]),
        ("from ._executors import Executor", ["._executors"]),
        ("def f():\n    from . import _command", ["._command"]),
        ("from trio_pipeline._engine import run", ["trio_pipeline._engine"]),
        ("import rich.console", ["rich.console"]),
        ("importlib.import_module('trio')", ["importlib.import_module('trio')"]),
        ("__import__('trio')", ["__import__('trio')"]),
        ("if TYPE_CHECKING:\n    from ._executors import Executor", []),
        ("if typing.TYPE_CHECKING:\n    import trio", []),
        ("if TYPE_CHECKING:\n    pass\nelse:\n    import trio", ["trio"]),
        ("import math, heapq\nfrom collections.abc import Mapping", []),
        ("from . import _chaos\nfrom ._errors import PipelineError", []),
        ("import trio_pipeline", ["trio_pipeline"]),
        ("import trio_pipeline._state", []),
        ("from trio_pipeline import _state, _live", ["trio_pipeline._live"]),
    ],
)
def test_the_import_check_itself(source: str, expected: list[str]) -> None:
    assert forbidden_imports(source) == expected
