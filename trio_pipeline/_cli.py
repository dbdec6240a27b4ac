"""The ``trio-pipeline`` command: run, graph and list the pipelines defined in a Python file.

Exit codes: 0 every stage succeeded (or was skipped); 1 a stage failed, was blocked
or cancelled (or an event sink failed); 2 a usage error or an invalid pipeline;
130 interrupted by SIGINT/SIGTERM.

Ownership during ``run``: `_execute` owns everything. Inside the signal receiver
(installed before the run starts, so no signal slips between) it holds the live
display (if any) and one nursery with the run (`open_run`) and the signal watcher.
The watcher only steers the run through its `RunHandle`; when the run has finished
the nursery is cancelled, which ends the watcher and its grace timer.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.machinery
import importlib.util
import itertools
import math
import os
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType

import trio
from rich.console import Console

from ._delivery import cut_off_warnings
from ._engine import RunHandle, open_run
from ._errors import PipelineError
from ._events import Event, RunFinished
from ._graph import Pipeline, Plan
from ._live import LiveSink, RunTracker, open_live_sink
from ._render import FORMATS, render_graph, render_order
from ._replay import cmd_check, cmd_replay
from ._result import RunResult
from ._sinks import ConsoleSink, JsonlSink, Sink, format_summary
from ._state import StageStatus

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_GRACE = 5.0
"""Seconds a run gets, after the second interrupt cancelled it, before the process exits anyway."""

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
    args = _parser().parse_args(argv)  # exits 2 itself on a malformed command line
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "graph":
            return _cmd_graph(args)
        if args.command == "check":
            return cmd_check(args.log)
        if args.command == "replay":
            mode = _output_mode(plain=args.plain, quiet=False)
            return cmd_replay(args.log, speed=args.speed, live=mode == "live")
        return _cmd_list(args)
    except UsageError as exc:
        _error(str(exc))
        if exc.detail:
            sys.stderr.write(exc.detail)
        return EXIT_USAGE
    except PipelineError as exc:
        _error(f"invalid pipeline: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Only before the signal receiver is installed (while loading the file).
        _error("interrupted")
        return EXIT_INTERRUPTED


# -- command line ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Run a DAG of async stages defined with trio_pipeline.",
        epilog=(
            "exit codes: 0 all stages succeeded; 1 a stage failed, was blocked or cancelled;"
            " 2 usage error or invalid pipeline; 130 interrupted"
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    target_help = "a Python file, and the name of a Pipeline in it if it defines several"

    run = commands.add_parser(
        "run",
        help="run a pipeline",
        description=(
            "Run a pipeline. Ctrl-C (or SIGTERM) once: start no new stage, let running ones"
            " finish. Twice: cancel running stages. A third time, or --grace seconds after"
            " the second, the process exits without waiting."
        ),
    )
    run.add_argument("target", metavar="FILE[:NAME]", help=target_help)
    run.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="after a failure, run every stage that does not depend on it",
    )
    run.add_argument(
        "-j", "--jobs", type=_positive_int, metavar="N", help="run at most N stages at once"
    )
    run.add_argument("--jsonl", metavar="PATH", help="write every event as a JSON line to PATH")
    run.add_argument(
        "--dry-run", action="store_true", help="print the start order and dependencies; run nothing"
    )
    run.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live view (the default when not a terminal or CI is set)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="print only the summary and errors")
    run.add_argument(
        "--grace",
        type=_grace_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"after the second Ctrl-C, exit at most this long after (default {DEFAULT_GRACE:g})",
    )

    graph = commands.add_parser("graph", help="print the dependency graph")
    graph.add_argument("target", metavar="FILE[:NAME]", help=target_help)
    graph.add_argument("--format", choices=FORMATS, default="mermaid", help="default: mermaid")

    listing = commands.add_parser(
        "list",
        help="list the stages in start order with their dependencies",
        description="List stages in start order; without NAME, of every pipeline in FILE.",
    )
    listing.add_argument("target", metavar="FILE[:NAME]", help=target_help)

    check = commands.add_parser(
        "check",
        help="verify a JSONL event log (--jsonl): exit 0, or 1 naming the broken invariant",
    )
    check.add_argument("log", metavar="RUN.jsonl")
    replay = commands.add_parser("replay", help="show a run again from its JSONL event log")
    replay.add_argument("log", metavar="RUN.jsonl")
    replay.add_argument(
        "--speed", type=_speed, default=1.0, metavar="X", help="X times as fast (0: at once)"
    )
    replay.add_argument("--plain", action="store_true", help="plain lines, not the live view")
    return parser


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a speed factor >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _grace_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _error(message: str) -> None:
    sys.stderr.write(f"{_PROG}: error: {message}\n")
    sys.stderr.flush()


def _notice(message: str) -> None:
    sys.stderr.write(f"{_PROG}: {message}\n")
    sys.stderr.flush()


# -- loading FILE[:NAME] --------------------------------------------------------------


def split_target(target: str) -> tuple[str, str | None]:
    """``"dir/file.py:name"`` -> ``("dir/file.py", "name")``; no NAME -> None.

    A colon belongs to the path when what follows it is not an identifier (``C:\\x.py``)
    or when the whole target is an existing file.
    """
    path, sep, name = target.rpartition(":")
    if sep and path and name.isidentifier() and not os.path.exists(target):
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
    module_name = f"_trio_pipeline_file_{next(_module_ids)}"
    loader = importlib.machinery.SourceFileLoader(module_name, str(file))
    spec = importlib.util.spec_from_file_location(module_name, file, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        loader.exec_module(module)
    except PipelineError as exc:
        frame = _last_frame_in(exc.__traceback__, file)
        where = path if frame is None else f"{path}:{frame.tb_lineno}"
        raise PipelineError(f"{where}: {exc}") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        detail = "".join(
            traceback.format_exception(type(exc), exc, _first_frame_in(exc.__traceback__, file))
        )
        raise UsageError(
            f"{path} raised {type(exc).__name__} while loading", detail=detail
        ) from None
    return module


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

    Raises:
        UsageError: no pipeline, several and no NAME, or NAME is not a pipeline.
    """
    path, name = split_target(target)
    module = load_file(path)
    found = pipelines_in(module)
    listed = ", ".join(found)
    if name is not None:
        if not hasattr(module, name):
            hint = difflib.get_close_matches(name, found, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            where = f"; its pipelines: {listed}" if found else "; it defines no Pipeline"
            raise UsageError(f"{path} has no attribute {name!r}{more}{where}")
        value = getattr(module, name)
        if not isinstance(value, Pipeline):
            raise UsageError(
                f"{path}:{name} is a {type(value).__name__}, not a trio_pipeline.Pipeline"
                + (f"; its pipelines: {listed}" if found else "")
            )
        return value
    if not found:
        raise UsageError(
            f"{path} defines no trio_pipeline.Pipeline at module level"
            " (e.g. pipe = trio_pipeline.Pipeline('name'))"
        )
    if len(found) > 1:
        raise UsageError(
            f"{path} defines {len(found)} pipelines ({listed}); choose one with {path}:NAME"
        )
    return next(iter(found.values()))


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


def _cmd_list(args: argparse.Namespace) -> int:
    path, name = split_target(args.target)
    if name is not None:
        pipelines = [select_pipeline(args.target)]
    else:
        pipelines = list(pipelines_in(load_file(path)).values())
        if not pipelines:
            raise UsageError(f"{path} defines no trio_pipeline.Pipeline at module level")
    # Validate all before printing any, so an invalid pipeline prints only the error.
    texts = [render_order(_compile(p, args.target), p.start_order()) for p in pipelines]
    sys.stdout.write("\n".join(texts))
    return EXIT_OK


@dataclass(frozen=True, slots=True, kw_only=True)
class _RunOptions:
    keep_going: bool
    jobs: int | None
    jsonl: str | None
    mode: str  # "live", "plain" or "quiet"
    grace: float


def _cmd_run(args: argparse.Namespace) -> int:
    pipeline = select_pipeline(args.target)
    plan = _compile(pipeline, args.target)
    if args.dry_run:
        sys.stdout.write(render_order(plan, pipeline.start_order()))
        return EXIT_OK
    if args.jsonl is not None:
        _check_writable(args.jsonl)
    options = _RunOptions(
        keep_going=args.keep_going,
        jobs=args.jobs,
        jsonl=args.jsonl,
        mode=_output_mode(plain=args.plain, quiet=args.quiet),
        grace=args.grace,
    )
    result, interrupted = trio.run(functools.partial(_execute, pipeline, options=options))
    _report_failures(result)
    if interrupted:
        return EXIT_INTERRUPTED
    if result.ok and not result.sink_errors and not result.undelivered:
        return EXIT_OK
    return EXIT_FAILED


def _output_mode(*, plain: bool, quiet: bool) -> str:
    if quiet:
        return "quiet"
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    if plain or ci or not sys.stdout.isatty():
        return "plain"
    console = Console()
    return "live" if console.is_terminal and not console.is_dumb_terminal else "plain"


def _check_writable(path: str) -> None:
    # The sink opens the file at the first event; a typo in the path should not wait
    # for (and then silently lose) a whole run.
    try:
        with open(path, "w", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"--jsonl {path}: {exc.strerror or exc}") from None


async def _execute(pipeline: Pipeline, *, options: _RunOptions) -> tuple[RunResult, int]:
    """Run `pipeline` under the signal watcher; return its result and the signal count."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with AsyncExitStack() as stack:
            # JSONL first: when a console line appears, the file already holds its event.
            sinks: list[Sink] = [] if options.jsonl is None else [JsonlSink(options.jsonl)]
            live: LiveSink | None = None
            if options.mode == "live":
                live = await stack.enter_async_context(open_live_sink(Console()))
                tracker = live.tracker
                sinks.append(live)
            else:
                tracker = RunTracker()
                sinks.append(tracker)
                if options.mode == "plain":
                    sinks.append(ConsoleSink(sys.stdout, logs=True))
                else:
                    sinks.append(_SummarySink())
            interrupts = _Interrupts(tracker, live, grace=options.grace)
            async with trio.open_nursery() as nursery:
                async with open_run(
                    pipeline,
                    sinks=sinks,
                    keep_going=options.keep_going,
                    max_parallel=options.jobs,
                ) as handle:
                    nursery.start_soon(interrupts.watch, signals, handle, nursery)
                    result = await handle.wait_finished()
                nursery.cancel_scope.cancel()
    return result, interrupts.count


class _SummarySink:
    """``--quiet``: only the summary line."""

    async def handle(self, event: Event, /) -> None:
        if isinstance(event, RunFinished):
            sys.stdout.write(format_summary(event) + "\n")
            sys.stdout.flush()

    async def aclose(self) -> None:
        pass


class _Interrupts:
    """Turns SIGINT/SIGTERM into close, then cancel, then a bounded exit.

    First signal: `RunHandle.request_close`. Second: `RunHandle.cancel`, and a timer
    of `grace` seconds. Third signal, or the timer: `force_exit`. The timer exists
    because a stage may ignore cancellation (a shielded scope, a thread that cannot
    be abandoned) and the run, which owns it, cannot finish before it does.
    """

    def __init__(self, tracker: RunTracker, live: LiveSink | None, *, grace: float) -> None:
        self.count = 0
        self._tracker = tracker
        self._live = live
        self._grace = grace

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
                _notice(
                    f"{what}: closing: no new stage will start; waiting for"
                    f" {self._running()}. Press Ctrl-C again to cancel them."
                )
            elif self.count == 2:
                handle.cancel()
                _notice(
                    f"{what} again: cancelling {self._running()}; exiting within"
                    f" {self._grace:g}s even if a stage ignores cancellation."
                    " Press Ctrl-C again to exit now."
                )
                nursery.start_soon(self._exit_after_grace)
            else:
                self.force_exit(f"{what} a third time: exiting now")

    async def _exit_after_grace(self) -> None:
        await trio.sleep(self._grace)
        self.force_exit(f"stages still running {self._grace:g}s after cancellation")

    def _running(self) -> str:
        names = list(self._tracker.running)
        if not names:
            return "no running stage"
        noun = "running stage" if len(names) == 1 else "running stages"
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"{len(names)} {noun} ({shown})"

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
        sys.stdout.write(self._tracker.partial_summary(trio.current_time()) + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


def _report_failures(result: RunResult) -> None:
    """Print each failed stage's traceback once (plain text, so markup-safe), then sink trouble."""
    for name, outcome in result.stages.items():
        error = outcome.error
        if outcome.status is not StageStatus.FAILED or error is None:
            continue
        attempts = "" if outcome.attempts <= 1 else f" (last of {outcome.attempts} attempts)"
        sys.stderr.write(f"\n--- stage {name!r} failed{attempts} ---\n")
        tb = _skip_package_frames(error.__traceback__)
        sys.stderr.write("".join(traceback.format_exception(type(error), error, tb)))
    for sink, exc in result.sink_errors.items():
        _error(f"event sink {sink!r} failed and was disabled: {exc!r}")
    for line in cut_off_warnings(result.deliveries):
        _notice(f"warning: {line}")
    sys.stderr.flush()


def _skip_package_frames(tb: TracebackType | None) -> TracebackType | None:
    """Drop the engine's own frames at the top: the stage's code is what matters."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR + os.sep):
        tb = tb.tb_next
    return tb
