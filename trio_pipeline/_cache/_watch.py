"""``trio-pipeline run FILE --watch``: re-run on each change of a dep file or of own code.

Ownership: `watch` runs one `trio.run`; in it each round owns a nursery holding the
file watcher (watchfiles' ``awatch``, which runs on Trio through anyio) and the run
itself (the CLI's `_execute`, with its signal handling). A change seen during a run
is remembered and causes exactly one re-run after it (changes are coalesced); a
change seen while idle starts the next round after ``--debounce`` milliseconds of
quiet. Each round reloads the pipeline file (and the own modules it imports), so
the cache sees the new code: stages whose key did not change hit, the rest re-run.

Ctrl-C during a run behaves as in a normal run and ends watching with exit 130;
Ctrl-C while waiting ends at once with exit 130.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import trio

from .._errors import PipelineError
from . import _run
from ._keys import CodeFingerprinter, _own_file  # pyright: ignore[reportPrivateUsage]
from ._run import stage_cache_options

if TYPE_CHECKING:
    from .._graph import Pipeline

EXIT_INTERRUPTED = 130


def own_modules(folder: str) -> list[str]:
    """Names of imported modules whose file is an own file below `folder`."""
    names: list[str] = []
    prefix = os.path.abspath(folder) + os.sep
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        inside = isinstance(file, str) and os.path.abspath(file).startswith(prefix)
        if inside and _own_file(name) is not None:
            names.append(name)
    return names


def watched_paths(pipeline: Pipeline, pipeline_file: str) -> tuple[set[str], set[str]]:
    """The files to watch (the pipeline file, own code reached by stages, file deps)
    and the directories to watch recursively (directory deps). Absolute paths."""
    files = {os.path.abspath(pipeline_file)}
    folders: set[str] = set()
    printer = CodeFingerprinter()
    for stage in pipeline:
        fn: Any = getattr(stage.fn, "__wrapped__", None) or stage.fn
        for item in printer.fingerprint(fn).items:
            path, sep, _ = item.rpartition(":")
            if sep and path and not path.startswith(("python ", "command ")):
                files.add(os.path.abspath(path))
        options = stage_cache_options(stage)
        for dep in () if options is None else options.deps:
            full = os.path.abspath(dep)
            (folders if os.path.isdir(full) else files).add(full)
    return files, folders


class _Changes:
    """What the watcher saw since the last round started."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.event = trio.Event()

    def add(self, paths: Iterable[str]) -> None:
        self.paths.update(paths)
        self.event.set()


async def _watch_files(files: set[str], folders: set[str], debounce: int, seen: _Changes) -> None:
    import watchfiles

    parents = {os.path.dirname(f) for f in files}

    def wanted(_: object, path: str) -> bool:
        path = os.path.abspath(path)
        return path in files or any(path.startswith(d + os.sep) or path == d for d in folders)

    async def watch(paths: list[str], recursive: bool) -> None:
        if not paths:
            return
        async for changes in watchfiles.awatch(
            *paths,
            watch_filter=wanted,
            debounce=debounce,
            recursive=recursive,
            # The watcher's thread checks for cancellation this often (ms): leaving
            # a round must not wait for the next file event.
            rust_timeout=100,
        ):
            seen.add(path for _, path in changes)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, _existing(parents), False)
        nursery.start_soon(watch, _existing(folders), True)


def _existing(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if os.path.exists(p))


def _notice(message: str) -> None:
    sys.stderr.write(f"trio-pipeline: {message}\n")
    sys.stderr.flush()


def _short(paths: set[str]) -> str:
    shown = sorted(os.path.relpath(p) for p in paths)
    return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")


def watch(args: argparse.Namespace) -> int:
    """Run ``args.target`` now and again on each change; return the exit code (130 on Ctrl-C)."""
    try:
        import watchfiles  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        from .._cli import UsageError

        raise UsageError(
            "--watch needs the watchfiles package: pip install 'trio-pipeline[watch]'"
        ) from None
    from .. import _cli

    _run.pipeline_file.set(os.path.abspath(_cli.split_target(args.target)[0]))
    try:
        return trio.run(functools.partial(_watch_loop, args))
    except BaseException as exc:
        # A Ctrl-C outside a run or a wait (say, while reloading) arrives as itself,
        # or in the group of the nursery it crossed.
        if not _is_interrupt(exc):
            raise
        _notice("interrupted; stopped watching")
        return EXIT_INTERRUPTED


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        rest = cast(BaseExceptionGroup[BaseException], exc).split(KeyboardInterrupt)[1]
        return rest is None
    return isinstance(exc, KeyboardInterrupt)


def _prepare_round(args: argparse.Namespace) -> tuple[Pipeline | None, set[str], set[str]]:
    """Reload the pipeline file and its own modules; what to watch. Blocking."""
    from .. import _cli

    path = _cli.split_target(args.target)[0]
    for name in own_modules(os.path.dirname(os.path.abspath(path))):
        sys.modules.pop(name, None)  # reload helpers too: the cache must see new code
    try:
        pipeline = _cli.select_pipeline(args.target)
        _cli._compile(pipeline, args.target)  # pyright: ignore[reportPrivateUsage]
    except (_cli.UsageError, PipelineError) as exc:
        _cli._error(str(exc))  # pyright: ignore[reportPrivateUsage]
        return None, {os.path.abspath(path)}, set()
    files, folders = watched_paths(pipeline, path)
    if pipeline.cache is None:
        pipeline.cache = True  # watch mode: what did not change hits the cache
    return pipeline, files, folders


async def _watch_loop(args: argparse.Namespace) -> int:
    from .. import _cli
    from . import _commands

    params = _cli._run_params(args)  # pyright: ignore[reportPrivateUsage]
    while True:
        pipeline, files, folders = _prepare_round(args)
        seen = _Changes()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_files, files, folders, args.debounce, seen)
            if pipeline is not None:
                options = _cli._RunOptions(  # pyright: ignore[reportPrivateUsage]
                    keep_going=args.keep_going,
                    jobs=args.jobs,
                    jsonl=args.jsonl,
                    report=args.report,
                    mode=_cli._output_mode(plain=True, quiet=args.quiet),  # pyright: ignore[reportPrivateUsage]
                    grace=args.grace,
                    teardown_timeout=args.teardown_timeout,
                    drain_timeout=args.drain_timeout,
                    max_backlog=args.max_backlog,
                    params=params,
                    started=time.monotonic(),
                    cache=_commands.run_keywords(args),
                )
                result, interrupted = await _cli._execute(pipeline, options=options)  # pyright: ignore[reportPrivateUsage]
                _cli._report_failures(result, jsonl=args.jsonl)  # pyright: ignore[reportPrivateUsage]
                if interrupted:
                    nursery.cancel_scope.cancel()
                    return EXIT_INTERRUPTED
            if not seen.paths and await _wait_or_interrupt(seen, len(files) + len(folders)):
                nursery.cancel_scope.cancel()
                _notice("interrupted; stopped watching")
                return EXIT_INTERRUPTED
            nursery.cancel_scope.cancel()
        _notice(f"changed: {_short(seen.paths)}; re-running")


async def _wait_or_interrupt(seen: _Changes, count: int) -> bool:
    """Wait for a change; True if SIGINT/SIGTERM came first."""
    _notice(f"watching {count} paths for changes; Ctrl-C stops")
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as waiter:

            async def on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    waiter.cancel_scope.cancel()
                    return

            waiter.start_soon(on_signal)
            await seen.event.wait()
            waiter.cancel_scope.cancel()
    return interrupted
