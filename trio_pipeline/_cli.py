"""The ``trio-pipeline`` command: run, graph and list the pipelines defined in a Python file.

Exit codes: 0 every stage succeeded (or was skipped); 1 a stage failed, was blocked
or cancelled, or an event sink failed (the --jsonl file is then incomplete: a lost
log is a failure); 2 a usage error or an invalid pipeline; 130 interrupted by
SIGINT/SIGTERM.

Subcommands: each is one ``_add_<name>(commands)`` function in `_SUBCOMMANDS` that
adds its parser and sets ``handler=`` to a function ``(args) -> exit code``.

Ownership during ``run``: `_execute` owns everything. Inside the signal receiver
(installed before the run starts, so no signal slips between) it holds the live
display (if any) and one nursery with the run (`open_run`) and the signal watcher.
The watcher only steers the run through its `RunHandle`; when the run has finished
the nursery is cancelled, which ends the watcher and its grace timer.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import importlib.machinery
import importlib.util
import itertools
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, NoReturn, TypeAlias, cast

import trio
from rich.console import Console

from ._cache import _commands as _cache_commands
from ._cache import _run as _cache_run
from ._cache import _watch as _cache_watch
from ._cache._store import CacheStoreError
from ._command import kill_command_groups
from ._delivery import cut_off_warnings
from ._dispatch import DEFAULT_MAX_BACKLOG
from ._dryrun import dry_run_json, render_dry_run
from ._engine import RunHandle, open_run
from ._errors import PipelineError, UnknownStageError
from ._events import Event, RunFinished, StageFinished
from ._executors import DaskExecutor, MissingExtraError, kill_worker_processes
from ._graph import Pipeline, Plan, failure_free_run_of
from ._live import LiveSink, RunTracker, open_live_sink
from ._options import Trigger
from ._params import load_params_file, parse_param
from ._render import FORMATS, render_graph, render_order
from ._replay import cmd_check, cmd_replay
from ._report import ReportInputError, ReportSink, report_from_log
from ._result import RunResult
from ._sinks import ConsoleSink, JsonlSink, Sink, format_summary
from ._state import StageStatus
from ._targets import select_stages, subpipeline

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_GRACE = 5.0
"""Seconds a run gets, after the second interrupt cancelled it, before the process exits anyway."""

DEFAULT_DRAIN_TIMEOUT = 5.0
"""Seconds the event sinks get, once every stage is done, to receive the remaining events."""

DEFAULT_TEARDOWN_TIMEOUT = 30.0
"""Seconds teardown stages get after the second interrupt cancelled the run (`open_run`'s)."""

_PROG = "trio-pipeline"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_module_ids = itertools.count()


class UsageError(Exception):
    """A bad command line or target file. Printed as one message (plus `detail`); exit 2."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-pipeline`` and ``python -m trio_pipeline``; returns the exit code."""
    started = time.monotonic()
    parser = _parser()
    # parse_known_args: argparse gives a `nargs="*"` positional nothing once an option
    # came between (`run FILE -k STAGE`), so stray STAGE words are collected here.
    args, extra = parser.parse_known_args(argv)  # exits 2 itself on a malformed line
    if extra:
        if getattr(args, "stages", None) is None or any(word.startswith("-") for word in extra):
            command = parser.command(getattr(args, "command", None))
            command.error(f"unrecognized arguments: {' '.join(extra)}{command.suggest(extra)}")
        args.stages = [*args.stages, *extra]
    args.started = started
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as exc:
        _error(str(exc))
        if exc.detail:
            sys.stderr.write(exc.detail)
        return EXIT_USAGE
    except CacheStoreError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except PipelineError as exc:
        _error(f"invalid pipeline: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Before the signal receiver is installed (while loading the file), or raised
        # by a stage or a sink (the run still delivered every event first).
        _error("interrupted")
        return EXIT_INTERRUPTED


# -- command line ---------------------------------------------------------------------


EXIT_CODES = """\
exit codes:
  0    every stage succeeded (or was skipped)
  1    a stage failed, was blocked or cancelled; or an event sink failed or missed
       events (e.g. the --jsonl file could not be written): a lost log is a failure
  2    usage error, or an invalid pipeline (the message names the culprit)
  130  interrupted (SIGINT/SIGTERM)
"""
_TARGET_HELP = (
    "a Python file, and the name of a Pipeline in it if it defines several (its variable"
    " name or the Pipeline's own name)"
)


class _Parser(argparse.ArgumentParser):
    """argparse with each usage error on one line: the culprit, a did-you-mean, --help."""

    subcommands: _Commands | None = None

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def command(self, name: str | None) -> _Parser:
        """The parser of subcommand `name` (this one if there is none)."""
        found = None if self.subcommands is None else self.subcommands.choices.get(name or "")
        return found if isinstance(found, _Parser) else self

    def suggest(self, words: Sequence[str]) -> str:
        """``"; did you mean --plain?"`` for the first unknown option close to one of ours."""
        options = [
            option
            for action in self._actions  # pyright: ignore[reportPrivateUsage]
            for option in action.option_strings
            if option.startswith("--")
        ]
        for word in words:
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=", 1)[0], options, n=1)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def _parser() -> _Parser:
    from . import __version__

    parser = _Parser(
        prog=_PROG,
        description="Run a DAG of async stages defined with trio_pipeline.",
        epilog=EXIT_CODES,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = cast(
        "_Commands", parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    )
    parser.subcommands = commands
    for add in _SUBCOMMANDS:
        add(commands)
    return parser


_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # pyright: ignore[reportPrivateUsage]


def _subcommand(commands: _Commands, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand's parser; no abbreviated options (``--keep`` is not ``--keep-going``)."""
    return commands.add_parser(
        name, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )


def _add_run(commands: _Commands) -> None:
    run = _subcommand(
        commands,
        "run",
        help="run a pipeline (or some of its stages)",
        description=(
            "Run a pipeline, or only the STAGEs named and every stage they depend on.\n\n"
            "Ctrl-C (or SIGTERM) once: start no new stage, let running ones finish; teardown\n"
            "stages (trigger always) still run. Twice: cancel running stages; teardown stages\n"
            "keep running (or start) for up to --teardown-timeout seconds, then are cancelled.\n"
            "A stage still running --grace seconds after that (after the second Ctrl-C when\n"
            "no teardown stage is left) ignores cancellation: the process exits without\n"
            "waiting, as it does on a third Ctrl-C, killing the processes of command stages\n"
            "and worker processes still running.\n"
            "Commands run in process groups of their own: the terminal's Ctrl-C reaches only\n"
            "trio-pipeline, which stops them as above.\n\n"
            "The summary's time is the wall time from the command's start to the summary."
        ),
        epilog=EXIT_CODES,
    )
    run.add_argument("target", metavar="FILE[:NAME]", help=_TARGET_HELP)
    run.add_argument(
        "stages",
        nargs="*",
        default=[],  # else argparse calls it required: "arguments are required: FILE, STAGE"
        metavar="STAGE",
        help=(
            "run only these stages, what they depend on, and the teardowns (trigger always)"
            " of those (default: every stage)"
        ),
    )
    run.add_argument(
        "--only",
        action="store_true",
        help="with STAGEs: run just them, not what they depend on (their inputs then lack it)",
    )
    policy = run.add_mutually_exclusive_group()
    policy.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="after a failure, run every stage that does not depend on it",
    )
    policy.add_argument(
        "--fail-fast",
        action="store_true",
        help="the first failure cancels the rest (the default; for scripts that want to say it)",
    )
    run.add_argument(
        "-j", "--jobs", type=_positive_int, metavar="N", help="run at most N stages at once"
    )
    run.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="KEY=VALUE",
        help=(
            "a run parameter, read by stages as ctx.params[KEY]; VALUE is parsed as JSON when it"
            ' parses (3, true, [1,2], {...}, "text"), else taken as a string. Repeatable;'
            " overrides --params"
        ),
    )
    run.add_argument(
        "--params",
        metavar="FILE",
        help="run parameters from a .json file (an object) or a .toml file",
    )
    run.add_argument("--jsonl", metavar="PATH", help="write every event as a JSON line to PATH")
    run.add_argument(
        "--report",
        metavar="PATH",
        help="write the HTML run report to PATH when the run ends (also after Ctrl-C)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "print what would run, in start order: per stage its dependencies, trigger, pools,"
            " retries, timeout and executor; then the stages a run without failures skips, and"
            " why; run nothing"
        ),
    )
    run.add_argument("--json", action="store_true", help="with --dry-run: print it as JSON")
    run.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live view (the default when not a terminal or CI is set)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="print only the summary and errors")
    run.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=(
            "after the second Ctrl-C, exit at most this long after the cancelled stages"
            f" (and teardown stages) were due to stop (default {DEFAULT_GRACE:g})"
        ),
    )
    run.add_argument(
        "--teardown-timeout",
        type=_seconds,
        default=DEFAULT_TEARDOWN_TIMEOUT,
        metavar="SECONDS",
        help=(
            "after the second Ctrl-C, how long teardown stages (trigger always) may still run"
            f" before they are cancelled (default {DEFAULT_TEARDOWN_TIMEOUT:g})"
        ),
    )
    run.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="SECONDS",
        help=(
            "once every stage is done, how long the event sinks get to receive the rest"
            f" (default {DEFAULT_DRAIN_TIMEOUT:g}); after it, what they missed is reported"
        ),
    )
    run.add_argument(
        "--max-backlog",
        type=_backlog,
        default=DEFAULT_MAX_BACKLOG,
        metavar="N",
        help=(
            "start no new stage while an event sink is more than N events behind"
            f" (default {DEFAULT_MAX_BACKLOG:,}; 'none': never wait for the sinks)"
        ),
    )
    _cache_commands.add_run_options(run)
    run.set_defaults(handler=_cmd_run)


def _add_graph(commands: _Commands) -> None:
    graph = _subcommand(commands, "graph", help="print the dependency graph")
    graph.add_argument("target", metavar="FILE[:NAME]", help=_TARGET_HELP)
    graph.add_argument("--format", choices=FORMATS, default="mermaid", help="default: mermaid")
    graph.set_defaults(handler=_cmd_graph)


def _add_report(commands: _Commands) -> None:
    report = _subcommand(
        commands,
        "report",
        help="write the HTML run report of a --jsonl log",
        description="Write the run report (timeline, graph, failures): one HTML file, no network.",
    )
    report.add_argument("log", metavar="LOG", help="a log written by run --jsonl")
    report.add_argument(
        "-o", "--output", metavar="PATH", help="where to write it (default: LOG with .html)"
    )
    report.set_defaults(handler=_cmd_report)


def _add_list(commands: _Commands) -> None:
    listing = _subcommand(
        commands,
        "list",
        help="list the stages in start order with their dependencies",
        description="List stages in start order; without NAME, of every pipeline in FILE.",
    )
    listing.add_argument("target", metavar="FILE[:NAME]", help=_TARGET_HELP)
    listing.set_defaults(handler=_cmd_list)


def _add_check(commands: _Commands) -> None:
    check = _subcommand(
        commands,
        "check",
        help="verify a JSONL event log (--jsonl): exit 0, or 1 naming the broken invariant",
    )
    check.add_argument("log", metavar="RUN.jsonl")
    check.set_defaults(handler=_cmd_check)


def _add_replay(commands: _Commands) -> None:
    replay = _subcommand(commands, "replay", help="show a run again from its JSONL event log")
    replay.add_argument("log", metavar="RUN.jsonl")
    replay.add_argument(
        "--speed", type=_speed, default=1.0, metavar="X", help="X times as fast (0: at once)"
    )
    replay.add_argument("--plain", action="store_true", help="plain lines, not the live view")
    replay.set_defaults(handler=_cmd_replay)


def _cmd_check(args: argparse.Namespace) -> int:
    return cmd_check(args.log)


def _cmd_replay(args: argparse.Namespace) -> int:
    live = _output_mode(plain=args.plain, quiet=False) == "live"
    return cmd_replay(args.log, speed=args.speed, live=live)


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a speed factor >= 0, got {text!r}")
    return value


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _backlog(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    return _int_at_least(text, 0, "an int >= 0 or 'none'")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _param(text: str) -> tuple[str, Any]:
    try:
        return parse_param(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _error(message: str) -> None:
    sys.stderr.write(f"{_PROG}: error: {message}\n")
    sys.stderr.flush()


def _notice(message: str) -> None:
    sys.stderr.write(f"{_PROG}: {message}\n")
    sys.stderr.flush()


# -- loading FILE[:NAME] --------------------------------------------------------------


def split_target(target: str) -> tuple[str, str | None]:
    """``"dir/file.py:name"`` -> ``("dir/file.py", "name")``; no NAME -> None.

    NAME is a variable name or a Pipeline's own name (``file.py:build-all``). A colon
    belongs to the path when the whole target is an existing file, or when what follows
    it looks like a path (``C:\\x.py``).
    """
    path, sep, name = target.rpartition(":")
    if sep and path and name and not os.path.exists(target) and not any(c in name for c in "/\\"):
        return path, name
    return target, None


def load_file(path: str) -> ModuleType:
    """Execute `path` as a fresh module (its ``__name__`` is not ``"__main__"``).

    Its folder goes first on `sys.path`, as when running ``python path``, so it can
    import its neighbours.

    Raises:
        UsageError: the file is missing or raised while loading (with its traceback).
        PipelineError: it raised one while defining a pipeline (the message says where).
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such file" if not file.exists() else f"{path}: not a file")
    if file.suffix and file.suffix not in (".py", ".pyw"):
        # Executed as Python, a log or a config file fails with a puzzling traceback.
        hint = f"; a run's log: trio-pipeline check {path}" if file.suffix == ".jsonl" else ""
        raise UsageError(f"{path}: not a Python file (a pipeline file is a .py file){hint}")
    module_name = f"_trio_pipeline_file_{next(_module_ids)}"
    loader = importlib.machinery.SourceFileLoader(module_name, str(file))
    spec = importlib.util.spec_from_file_location(module_name, file, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    _pickle_by_value(module)
    try:
        loader.exec_module(module)
    except PipelineError as exc:
        frame = _last_frame_in(exc.__traceback__, file)
        where = path if frame is None else f"{path}:{frame.tb_lineno}"
        raise PipelineError(f"{where}: {exc}") from None
    except MissingExtraError as exc:  # the message says what to install: no traceback
        sys.modules.pop(module_name, None)
        frame = _last_frame_in(exc.__traceback__, file)
        where = path if frame is None else f"{path}:{frame.tb_lineno}"
        raise UsageError(f"{where}: {exc}") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        detail = "".join(
            traceback.format_exception(type(exc), exc, _first_frame_in(exc.__traceback__, file))
        )
        raise UsageError(
            f"{path} raised {type(exc).__name__} while loading", detail=detail
        ) from None
    return module


def _pickle_by_value(module: ModuleType) -> None:
    """Let worker processes and Dask workers run the file's functions.

    The file is loaded under a synthetic module name that no other process can
    import, so its functions (and classes) must travel by value, not by reference.
    cloudpickle comes with the ``process`` and ``dask`` extras; without them there is
    no worker to send functions to.
    """
    try:
        cloudpickle = importlib.import_module("cloudpickle")
    except ImportError:  # pragma: no cover - exercised only without the extras
        return
    cloudpickle.register_pickle_by_value(module)


def _first_frame_in(tb: TracebackType | None, file: Path) -> TracebackType | None:
    """The traceback from the first frame in `file` on; None if no frame is in it."""
    target = os.path.abspath(file)
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    return tb


def _last_frame_in(tb: TracebackType | None, file: Path) -> TracebackType | None:
    target = os.path.abspath(file)
    last = None
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == target:
            last = tb
        tb = tb.tb_next
    return last


def pipelines_in(module: ModuleType) -> dict[str, Pipeline]:
    """The module's `Pipeline` attributes by name, in definition order; aliases dropped."""
    found: dict[str, Pipeline] = {}
    seen: set[int] = set()
    for name, value in vars(module).items():
        if isinstance(value, Pipeline) and id(value) not in seen:
            seen.add(id(value))
            found[name] = value
    return found


def select_pipeline(target: str) -> Pipeline:
    """The pipeline `target` (``FILE[:NAME]``) designates.

    NAME is the variable the file binds the Pipeline to, or the Pipeline's own name
    (what `list` shows); the variable wins if both match different pipelines.

    Raises:
        UsageError: no pipeline, several and no NAME, or NAME matches neither (the
            message lists both kinds of names).
    """
    path, name = split_target(target)
    module = load_file(path)
    found = pipelines_in(module)
    if name is not None:
        value = getattr(module, name, None)
        if isinstance(value, Pipeline):
            return value
        by_name = [p for p in found.values() if p.name == name]
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            variables = ", ".join(v for v, p in found.items() if p.name == name)
            raise UsageError(
                f"{path} defines {len(by_name)} pipelines named {name!r} ({variables});"
                f" choose one by its variable: {path}:VARIABLE"
            )
        names = _pipeline_names(found)
        hint = difflib.get_close_matches(name, [*found, *(p.name for p in found.values())], n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        if value is not None or hasattr(module, name):
            what = f"{path}:{name} is a {type(value).__name__}, not a trio_pipeline.Pipeline"
        else:
            what = f"{path} has no pipeline {name!r}{more}"
        raise UsageError(what + (f"; its pipelines: {names}" if found else "; it defines none"))
    if not found:
        raise UsageError(
            f"{path} defines no trio_pipeline.Pipeline at module level"
            " (e.g. pipe = trio_pipeline.Pipeline('name'))"
        )
    if len(found) > 1:
        raise UsageError(
            f"{path} defines {len(found)} pipelines ({_pipeline_names(found)});"
            f" choose one with {path}:NAME"
        )
    return next(iter(found.values()))


def _pipeline_names(found: dict[str, Pipeline]) -> str:
    """``"build, deploy (variable deploy_pipe)"``: names, and variables where they differ."""
    return ", ".join(
        p.name if p.name == variable else f"{p.name} (variable {variable})"
        for variable, p in found.items()
    )


# -- commands -------------------------------------------------------------------------


def _compile(pipeline: Pipeline, target: str) -> Plan:
    try:
        return pipeline.compile()
    except PipelineError as exc:
        path = split_target(target)[0]
        raise PipelineError(f"pipeline {pipeline.name!r} in {path}: {exc}") from None


def _cmd_graph(args: argparse.Namespace) -> int:
    plan = _compile(select_pipeline(args.target), args.target)
    sys.stdout.write(render_graph(plan, args.format))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        path = report_from_log(args.log, args.output)
    except ReportInputError as exc:
        raise UsageError(str(exc)) from None
    _notice(f"report written to {path}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    path, name = split_target(args.target)
    if name is not None:
        pipelines = [select_pipeline(args.target)]
    else:
        pipelines = list(pipelines_in(load_file(path)).values())
        if not pipelines:
            raise UsageError(f"{path} defines no trio_pipeline.Pipeline at module level")
    # Validate all before printing any, so an invalid pipeline prints only the error.
    texts: list[str] = []
    for p in pipelines:
        plan = _compile(p, args.target)
        free = failure_free_run_of(p)
        texts.append(render_order(plan, free.started, free.skipped))
    sys.stdout.write("\n".join(texts))
    return EXIT_OK


@dataclass(frozen=True, slots=True, kw_only=True)
class _RunOptions:
    keep_going: bool
    jobs: int | None
    jsonl: str | None
    report: str | None
    mode: str  # "live", "plain" or "quiet"
    grace: float
    teardown_timeout: float
    drain_timeout: float
    params: dict[str, Any]
    started: float  # time.monotonic() when the command started
    max_backlog: int | None = DEFAULT_MAX_BACKLOG
    cache: dict[str, Any] = field(default_factory=dict[str, Any])  # open_run's cache options


def _cmd_run(args: argparse.Namespace) -> int:
    if args.json and not args.dry_run:
        raise UsageError("--json goes with --dry-run (for events as JSON, use --jsonl PATH)")
    if args.only and not args.stages:
        raise UsageError("--only needs the STAGEs to run: run FILE STAGE... --only")
    if args.watch:
        return _cache_watch.watch(args)
    params = _run_params(args)
    pipeline = select_pipeline(args.target)
    _compile(pipeline, args.target)
    if args.stages:
        # The run is of the selection only: as `run(..., targets=)` does, and the dry
        # run shows the same.
        pipeline = subpipeline(pipeline, _select(pipeline, args.stages, only=args.only))
    if args.dry_run:
        plan = _compile(pipeline, args.target)
        free = failure_free_run_of(pipeline)
        order, skipped, pools = free.started, free.skipped, pipeline.pools
        if args.explain:
            return _cache_commands.print_dry_run_explain(
                plan, pipeline.cache, order, args, params, skipped
            )
        if args.json:
            text = dry_run_json(plan, order, params=params, pools=pools, skipped=skipped)
            sys.stdout.write(text + "\n")
        else:
            sys.stdout.write(
                render_dry_run(plan, order, params=params, pools=pools, skipped=skipped)
            )
        return EXIT_OK
    if args.jsonl is not None:
        _check_writable(args.jsonl)
    _cache_commands.check_run_options(_compile(pipeline, args.target), args)
    if args.report is not None:
        _check_writable(args.report, option="--report")
    options = _RunOptions(
        keep_going=args.keep_going,
        jobs=args.jobs,
        jsonl=args.jsonl,
        report=args.report,
        mode=_output_mode(plain=args.plain or args.explain, quiet=args.quiet),
        grace=args.grace,
        teardown_timeout=args.teardown_timeout,
        drain_timeout=args.drain_timeout,
        max_backlog=args.max_backlog,
        params=params,
        started=args.started,
        cache=_cache_commands.run_keywords(args),
    )
    _cache_run.pipeline_file.set(os.path.abspath(split_target(args.target)[0]))
    try:
        result, interrupted = trio.run(functools.partial(_execute, pipeline, options=options))
    finally:
        _close_executors(pipeline)
    _report_failures(result, jsonl=options.jsonl)
    report_failed = any(isinstance(sink, ReportSink) for sink in result.sink_errors)
    if options.report is not None and options.mode != "quiet" and not report_failed:
        _notice(f"report written to {options.report}")
    if interrupted:
        return EXIT_INTERRUPTED
    if result.ok and not result.sink_errors and not result.undelivered:
        return EXIT_OK
    return EXIT_FAILED


def _run_params(args: argparse.Namespace) -> dict[str, Any]:
    """``--params FILE`` first, then each ``--param KEY=VALUE`` over it."""
    params: dict[str, Any] = {}
    if args.params is not None:
        try:
            params.update(load_params_file(args.params))
        except ValueError as exc:
            raise UsageError(f"--params {exc}") from None
    params.update(args.param)
    return params


def _select(pipeline: Pipeline, targets: list[str], *, only: bool) -> list[str]:
    try:
        return select_stages(pipeline, targets, only=only)
    except UnknownStageError as exc:
        raise UsageError(str(exc)) from None


def _close_executors(pipeline: Pipeline) -> None:
    """Close the Dask clients the pipeline file's executors opened: the file cannot."""
    seen: set[int] = set()
    for stage in pipeline:
        executor = stage.executor
        if isinstance(executor, DaskExecutor) and id(executor) not in seen:
            seen.add(id(executor))
            try:
                executor.close()
            except Exception as exc:  # the run is over; say it, do not mask its result
                _notice(f"closing {executor!r} failed: {exc!r}")


def _output_mode(*, plain: bool, quiet: bool) -> str:
    if quiet:
        return "quiet"
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    if plain or ci or not sys.stdout.isatty():
        return "plain"
    console = Console()
    return "live" if console.is_terminal and not console.is_dumb_terminal else "plain"


def _check_writable(path: str, *, option: str = "--jsonl") -> None:
    # The sink opens the file at the first event; a typo in the path should not wait
    # for (and then silently lose) a whole run.
    try:
        with open(path, "w", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None


async def _execute(pipeline: Pipeline, *, options: _RunOptions) -> tuple[RunResult, int]:
    """Run `pipeline` under the signal watcher; return its result and the signal count."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with AsyncExitStack() as stack:
            # JSONL first: when a console line appears, the file already holds its event.
            sinks: list[Sink] = [] if options.jsonl is None else [JsonlSink(options.jsonl)]
            report = None if options.report is None else ReportSink(options.report)
            if report is not None:
                sinks.append(report)
            live: LiveSink | None = None
            display: Sink
            if options.mode == "live":
                live = await stack.enter_async_context(open_live_sink(Console()))
                tracker = live.tracker
                display = live
            else:
                tracker = RunTracker()
                sinks.append(tracker)
                if options.mode == "plain":
                    display = ConsoleSink(sys.stdout, logs=True)
                else:
                    display = _SummarySink()
            sinks.append(_WallClockSummary(display, options.started))
            if options.cache.get("explain"):
                sinks.append(_cache_commands.ExplainSink(sys.stdout))
            teardowns = _Teardowns(pipeline)
            sinks.append(teardowns)
            interrupts = _Interrupts(
                tracker,
                live,
                grace=options.grace,
                teardowns=teardowns,
                teardown_timeout=options.teardown_timeout,
                started=options.started,
            )
            interrupts.report = report
            stack.enter_context(_reported_by_cli(sinks))
            # open_run outside the watcher's nursery: a stage's KeyboardInterrupt (or
            # SystemExit) then comes out of open_run as itself, not in a group.
            async with (
                open_run(
                    pipeline,
                    sinks=sinks,
                    keep_going=options.keep_going,
                    max_parallel=options.jobs,
                    drain_timeout=options.drain_timeout,
                    teardown_timeout=options.teardown_timeout,
                    max_backlog=options.max_backlog,
                    params=options.params,
                    **options.cache,
                ) as handle,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(interrupts.watch, signals, handle, nursery)
                result = await handle.wait_finished()
                nursery.cancel_scope.cancel()
    return result, interrupts.count


class _WallClockSummary:
    """Passes events to `display`; the summary's time becomes the command's wall time.

    `RunFinished.duration` ends when the engine emits it; the user waits until the
    display has shown every event before it (and the file was loaded before the run).
    """

    def __init__(self, display: Sink, started: float) -> None:
        self.display = display
        self._started = started

    async def handle(self, event: Event, /) -> None:
        if isinstance(event, RunFinished):
            # The display's copy only. `time` = now as well, so a formatter that adds
            # the display lag (now - time) to `duration` does not count it twice.
            wall = time.monotonic() - self._started
            event = dataclasses.replace(event, duration=wall, time=trio.current_time())
        await self.display.handle(event)

    async def aclose(self) -> None:
        await self.display.aclose()

    def __getattr__(self, name: str) -> Any:
        # Sink options the dispatcher may read (say, a per-sink timeout) are the display's.
        if name == "display":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.display, name)

    def __repr__(self) -> str:
        return repr(self.display)


@contextlib.contextmanager
def _reported_by_cli(sinks: Sequence[Sink]) -> Generator[None, None, None]:
    """Drop the library's log records about these sinks: the CLI reports each once, at the end."""
    ours = {id(sink) for sink in sinks}

    def keep(record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(id(arg) in ours for arg in args)

    library = logging.getLogger("trio_pipeline")
    library.addFilter(keep)
    try:
        yield
    finally:
        library.removeFilter(keep)


class _SummarySink:
    """``--quiet``: only the summary line."""

    async def handle(self, event: Event, /) -> None:
        if isinstance(event, RunFinished):
            sys.stdout.write(format_summary(event) + "\n")
            sys.stdout.flush()

    async def aclose(self) -> None:
        pass


class _Teardowns:
    """A sink that knows which teardown stages (trigger ALWAYS) of the run have not finished."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.left = {
            name: None
            for name, stage in pipeline.stages.items()
            if stage.options.trigger is Trigger.ALWAYS
        }  # a dict: definition order, for the notices
        self.done = trio.Event()
        if not self.left:
            self.done.set()

    async def handle(self, event: Event, /) -> None:
        if isinstance(event, StageFinished):
            self.left.pop(event.stage, None)
            if not self.left:
                self.done.set()
        elif isinstance(event, RunFinished):
            self.done.set()

    async def aclose(self) -> None:
        self.done.set()

    def __repr__(self) -> str:
        return "<the CLI's teardown watch>"


class _Interrupts:
    """Turns SIGINT/SIGTERM into close, then cancel, then a bounded exit.

    First signal: `RunHandle.request_close`. Second: `RunHandle.cancel`, and a timer:
    `grace` seconds, and while a teardown stage has not finished, until it has or
    `grace` seconds after its deadline (`teardown_timeout` from the cancel, enforced
    by the engine). Third signal, or the timer: `force_exit`. The timer exists
    because a stage may ignore cancellation (a shielded scope, a thread that cannot
    be abandoned) and the run, which owns it, cannot finish before it does; a
    teardown stage within its deadline is not ignoring anything, so it is waited for.
    """

    def __init__(
        self,
        tracker: RunTracker,
        live: LiveSink | None,
        *,
        grace: float,
        teardowns: _Teardowns,
        teardown_timeout: float,
        started: float,
    ) -> None:
        self.count = 0
        self._tracker = tracker
        self._live = live
        self._grace = grace
        self._teardowns = teardowns
        self._teardown_timeout = teardown_timeout
        self._started = started
        self.report: ReportSink | None = None  # written by force_exit too

    async def watch(
        self,
        signals: AsyncIterator[int],
        handle: RunHandle,
        nursery: trio.Nursery,
    ) -> None:
        async for signum in signals:
            self.count += 1
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            if self.count == 1:
                handle.request_close()
                left = list(self._teardowns.left)
                but = f" but teardown stage{'s' if len(left) > 1 else ''} {_names(left)}"
                _notice(
                    f"{what}: closing: no new stage will start{but if left else ''}; waiting for"
                    f" {self._running()}. Press Ctrl-C again to cancel them."
                )
            elif self.count == 2 and self._tracker.finished is not None:
                # Every stage is done; only the sinks are still being served.
                _notice(
                    f"{what} again: every stage has finished; exiting within {self._grace:g}s"
                    " (delivering the last events). Press Ctrl-C again to exit now."
                )
                nursery.start_soon(self._exit_after_grace, trio.current_time())
            elif self.count == 2:
                handle.cancel()
                left = list(self._teardowns.left)
                if left:
                    shown = _names(left)
                    within = self._teardown_timeout + self._grace
                    also = (
                        f"; teardown stage{'s' if len(left) > 1 else ''} {shown} may run"
                        f" {self._teardown_timeout:g}s more (--teardown-timeout)"
                    )
                else:
                    within, also = self._grace, ""
                _notice(
                    f"{what} again: cancelling {self._running(but=left)}{also}; exiting within"
                    f" {within:g}s even if a stage ignores cancellation."
                    " Press Ctrl-C again to exit now."
                )
                nursery.start_soon(self._exit_after_grace, trio.current_time())
            else:
                self.force_exit(f"{what} a third time: exiting now")

    async def _exit_after_grace(self, cancelled: float) -> None:
        # Teardown stages run until they finish or the engine cancels them at their
        # deadline. Then every stage was due to stop: one still running `grace`
        # seconds later ignores cancellation.
        after = "after cancellation"
        if not self._teardowns.done.is_set():
            after = "after the teardown stages ended (or were cancelled)"
            with trio.move_on_at(cancelled + self._teardown_timeout):
                await self._teardowns.done.wait()
        await trio.sleep(self._grace)
        self.force_exit(f"stages still running {self._grace:g}s {after}")

    def _running(self, *, but: Sequence[str] = ()) -> str:
        names = [name for name in self._tracker.running if name not in but]
        if not names:
            return "no running stage"
        noun = "running stage" if len(names) == 1 else "running stages"
        return f"{len(names)} {noun} ({_names(names)})"

    def force_exit(self, reason: str) -> None:
        """Leave the process now, without waiting for the run that owns the stuck stages.

        The run cannot be left any other way: its nursery waits for every stage. What
        the sinks received so far is on disk (they flush per event); the summary is
        the tracker's view, marked as a forced exit.
        """
        if self._live is not None:
            self._live.stop()
        stuck = ", ".join(self._tracker.running) or "none"
        _notice(f"{reason}; still running: {stuck}. The run did not finish: no RunFinished event")
        # No process may outlive the run, and os._exit would leave these running.
        killed = kill_command_groups()
        if killed:
            plural = "s" if len(killed) > 1 else ""
            _notice(f"killed the processes of command stage{plural} {', '.join(killed)}")
        workers = kill_worker_processes()
        if workers:
            _notice(f"killed {workers} worker process{'es' if workers > 1 else ''}")
        if self.report is not None:
            with contextlib.suppress(OSError):
                self.report.write()  # marked incomplete: the stuck stages show as running
                _notice(f"report (incomplete) written to {self.report.path}")
        # Wall time since the command started, as in a finished run's summary.
        run_started = self._tracker.started_at
        now = trio.current_time()
        if run_started is not None:
            now = run_started + (time.monotonic() - self._started)
        sys.stdout.write(self._tracker.partial_summary(now) + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


def _names(names: Sequence[str]) -> str:
    """Up to five names, comma-separated, then ``...``."""
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _report_failures(result: RunResult, *, jsonl: str | None) -> None:
    """Print each failed stage's traceback once (plain text, so markup-safe), then sink trouble.

    Each sink problem is said once, here (the library's own log records about the
    CLI's sinks are filtered out during the run).
    """
    for name, outcome in result.stages.items():
        error = outcome.error
        if outcome.status is not StageStatus.FAILED or error is None:
            continue
        attempts = "" if outcome.attempts <= 1 else f" (last of {outcome.attempts} attempts)"
        sys.stderr.write(f"\n--- stage {name!r} failed{attempts} ---\n")
        tb = _skip_package_frames(error.__traceback__)
        sys.stderr.write("".join(traceback.format_exception(type(error), error, tb)))
    for sink, exc in result.sink_errors.items():
        if isinstance(sink, JsonlSink) and sink.path == jsonl:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
            _error(f"--jsonl {jsonl}: writing failed ({why}); the file is incomplete (exit code 1)")
        else:
            _error(f"event sink {sink!r} failed and was disabled: {exc!r} (exit code 1)")
    for line in cut_off_warnings(result.deliveries):
        _notice(f"warning: {line} (exit code 1)")
    sys.stderr.flush()


def _skip_package_frames(tb: TracebackType | None) -> TracebackType | None:
    """Drop the engine's own frames at the top: the stage's code is what matters."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR + os.sep):
        tb = tb.tb_next
    return tb


_SUBCOMMANDS: tuple[Callable[[_Commands], None], ...] = (
    _add_run,
    _add_graph,
    _add_report,
    _add_list,
    _add_check,
    _add_replay,
    _cache_commands.add_commands,  # cache, history, show
)
"""Each adds one subcommand's parser (with ``handler=``); add yours here."""
