"""The cache's CLI commands: ``cache stats|clear|prune``, ``history [FILE]``, ``show RUN_ID``.

`add_commands` registers them on the ``trio-pipeline`` parser; `main` runs one. They
open the store directly (no event loop). A corrupt or foreign store is reported as
one message naming the file and the way out, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ._files import ObjectCache
from ._store import (
    OBJECTS_DIRNAME,
    STORE_FILENAME,
    CacheStoreError,
    RunRecord,
    SQLiteStore,
    default_cache_dir,
    remove_store_files,
)

COMMANDS = frozenset({"cache", "history", "show"})
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
_PROG = "trio-pipeline"


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_cache_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default_cache_dir(),
        help="cache and run history folder (default: $TRIO_PIPELINE_CACHE_DIR or .trio-pipeline/)",
    )


def add_commands(commands: Any) -> None:
    """Register ``cache``, ``history`` and ``show`` on the CLI's subparsers."""
    cache = commands.add_parser(
        "cache",
        help="inspect or empty the result cache",
        description="Inspect or empty the result cache (and the run history kept with it).",
    )
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cache.set_defaults(handler=main)
    stats = actions.add_parser("stats", help="entries, sizes and runs recorded")
    add_cache_dir_option(stats)
    clear = actions.add_parser(
        "clear", help="delete the cache and history (also a corrupt or foreign store file)"
    )
    add_cache_dir_option(clear)
    prune = actions.add_parser("prune", help="delete entries and runs older than DAYS")
    prune.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
    add_cache_dir_option(prune)

    history = commands.add_parser(
        "history",
        help="list recent runs",
        description="List recent runs (newest first), of FILE's pipelines if FILE is given.",
    )
    history.add_argument("file", nargs="?", metavar="FILE", help="a pipeline file")
    history.add_argument("-n", "--limit", type=_limit, default=20, metavar="N")
    history.set_defaults(handler=main)
    add_cache_dir_option(history)

    show = commands.add_parser("show", help="print one run's summary and failures")
    show.add_argument("run_id", metavar="RUN_ID", help="a run id (or a unique prefix of one)")
    show.set_defaults(handler=main)
    add_cache_dir_option(show)


def main(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the ``cache``, ``history`` or ``show`` command in `args`; return the exit code."""
    stream: IO[str] = sys.stdout if out is None else out
    cache_dir: str = args.cache_dir
    try:
        if args.command == "cache" and args.cache_command == "clear":
            return _clear(cache_dir, stream)
        if not (Path(cache_dir) / STORE_FILENAME).exists():
            stream.write(f"no cache in {cache_dir}/ (nothing recorded yet)\n")
            return EXIT_OK
        with SQLiteStore(cache_dir) as store:
            if args.command == "cache":
                if args.cache_command == "stats":
                    return _stats(store, stream)
                return _prune(store, stream, args.older_than)
            if args.command == "history":
                return _history(store, stream, args)
            return _show(store, stream, args.run_id)
    except CacheStoreError as exc:
        _error(str(exc))
        return EXIT_USAGE


def _error(message: str) -> None:
    sys.stderr.write(f"{_PROG}: error: {message}\n")
    sys.stderr.flush()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _stats(store: SQLiteStore, out: IO[str]) -> int:
    stats = store.stats()
    objects = ObjectCache(store.cache_dir / OBJECTS_DIRNAME)
    lines = [
        f"cache store: {store.path.resolve()}",
        f"entries: {stats.entries} ({stats.stages} stages), values {_size(stats.value_bytes)}",
        f"oldest entry: {_when(stats.oldest)}; newest: {_when(stats.newest)}",
        f"restorable outputs: {_size(objects.size())}",
        f"runs recorded: {stats.runs}",
        f"store file: {_size(stats.file_bytes)}",
    ]
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _clear(cache_dir: str, out: IO[str]) -> int:
    removed = remove_store_files(cache_dir)
    if removed:
        out.write(f"removed the cache and history in {cache_dir}/\n")
    else:
        out.write(f"no cache in {cache_dir}/\n")
    return EXIT_OK


def _prune(store: SQLiteStore, out: IO[str], days: float) -> int:
    removed = store.prune(days * 86400)
    objects = ObjectCache(store.cache_dir / OBJECTS_DIRNAME)
    dropped = objects.prune(store.referenced_objects())
    noun = "entry" if removed == 1 else "entries"
    extra = f" and {dropped} stored outputs" if dropped else ""
    out.write(f"removed {removed} {noun}{extra} older than {days:g} days\n")
    return EXIT_OK


def format_counts(counts: dict[str, int] | Any) -> str:
    parts = [f"{n} {status}" for status, n in counts.items() if n]
    return ", ".join(parts) if parts else "no stages"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _history(store: SQLiteStore, out: IO[str], args: argparse.Namespace) -> int:
    file = None
    if args.file is not None:
        from .._cli import split_target

        file = os.path.abspath(split_target(args.file)[0])
    runs = store.runs(limit=args.limit, file=file)
    if not runs:
        out.write("no runs recorded" + (f" for {args.file}" if args.file else "") + "\n")
        return EXIT_OK
    rows = [["RUN", "STARTED", "PIPELINE", "STATE", "DURATION", "STAGES"]]
    for run in runs:
        state = run.state if run.ok or run.state != "closed" else "failed"
        rows.append(
            [
                run.run_id,
                _when(run.started),
                run.pipeline,
                state,
                f"{run.duration:.2f}s",
                format_counts(run.counts),
            ]
        )
    out.write(_table(rows))
    return EXIT_OK


def format_run(run: RunRecord) -> str:
    """``show``'s text: the summary, then every stage that did not succeed or hit."""
    lines = [
        f"run {run.run_id} of pipeline {run.pipeline!r}" + (f" ({run.file})" if run.file else ""),
        f"started {_when(run.started)}, took {run.duration:.2f}s, ended {run.state}"
        + ("" if run.ok else " with failures"),
        f"stages: {format_counts(run.counts)}",
    ]
    if run.params:
        shown = ", ".join(f"{k}={v!r}" for k, v in run.params.items())
        lines.append(f"params: {shown}")
    notable = [s for s in run.stages if s.status not in ("succeeded", "cached", "skipped")]
    for stage in notable:
        detail = stage.error or stage.reason or ""
        attempts = f" after {stage.attempts} attempts" if stage.attempts > 1 else ""
        lines.append(
            f"  {stage.name}: {stage.status}{attempts}" + (f": {detail}" if detail else "")
        )
    cached = [s.name for s in run.stages if s.status == "cached"]
    if cached:
        shown = ", ".join(cached[:10]) + (", ..." if len(cached) > 10 else "")
        lines.append(f"cached: {shown}")
    return "\n".join(lines) + "\n"


def _show(store: SQLiteStore, out: IO[str], run_id: str) -> int:
    run = store.run(run_id)
    if run is None:
        _error(f"no run {run_id!r} in {store.cache_dir}/ (or the prefix is ambiguous)")
        return EXIT_NOT_FOUND
    out.write(format_run(run))
    return EXIT_OK


# -- `run` options ----------------------------------------------------------------------


def add_run_options(run: argparse.ArgumentParser) -> None:
    """``--force [STAGE...]``, ``--no-cache``, ``--cache-dir``, ``--explain``, ``--watch``."""
    group = run.add_argument_group("incremental runs")
    group.add_argument(
        "--force",
        nargs="*",
        metavar="STAGE",
        default=None,
        help="re-run cached stages: all of them, or the named ones and their downstream",
    )
    group.add_argument(
        "--no-cache", action="store_true", help="neither read nor write cached results"
    )
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default_cache_dir(),
        help="cache and run history folder (default: $TRIO_PIPELINE_CACHE_DIR or .trio-pipeline/)",
    )
    group.add_argument(
        "--explain",
        action="store_true",
        help="say for each stage why it ran or was cached (with --dry-run: run nothing)",
    )
    group.add_argument(
        "--watch",
        action="store_true",
        help="re-run on each change of a dep file or of the pipeline's code (Ctrl-C ends)",
    )
    group.add_argument(
        "--debounce",
        type=_milliseconds,
        default=300,
        metavar="MS",
        help="with --watch: wait this long for changes to settle (default 300)",
    )


def _milliseconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds >= 0, got {text!r}")
    return value


def force_option(args: argparse.Namespace) -> bool | tuple[str, ...]:
    """``--force`` alone: True; with names: those; absent: False."""
    force: list[str] | None = args.force
    if force is None:
        return False
    return tuple(force) if force else True


def check_run_options(plan: Any, args: argparse.Namespace) -> None:
    """Before the run: ``--force`` names stages, and the store opens (else one message)."""
    from .._cli import UsageError
    from ._run import UnknownForcedStageError, forced_stages

    try:
        forced_stages(plan, force_option(args))
    except UnknownForcedStageError as exc:
        raise UsageError(f"--force: {str(exc).removeprefix('force= names ')}") from None
    SQLiteStore(args.cache_dir).close()  # CacheStoreError: reported by the CLI, exit 2


def run_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The `open_run` keywords the cache options of ``run`` stand for."""
    return {
        "cache": not args.no_cache,
        "cache_dir": args.cache_dir,
        "force": force_option(args),
        "explain": bool(args.explain),
    }


def print_dry_run_explain(
    plan: Any,
    pipeline_cache: Any,
    order: Sequence[str],
    args: argparse.Namespace,
    params: Mapping[str, Any] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> int:
    """``--dry-run --explain``: each stage, whether it would run, hit or be skipped, and why.

    `skipped` is `Pipeline.skipped_stages()`: the stages a failure-free run skips,
    listed after the others as the plain dry run does.
    """
    from ._run import dry_run_decisions

    check_run_options(plan, args)
    if args.no_cache:
        decisions = None
    else:
        decisions = dry_run_decisions(
            plan,
            pipeline_cache=pipeline_cache,
            order=order,
            cache_dir=args.cache_dir,
            force=force_option(args),
            params=params,
        )
    rows = [["STAGE", "WOULD", "WHY"]]
    if decisions is None:
        rows.extend([name, "run", "--no-cache"] for name in order)
    else:
        rows.extend([d.stage, d.verb, d.reason] for d in decisions)
    rows.extend([name, "skipped", reason] for name, reason in (skipped or {}).items())
    sys.stdout.write(_table(rows))
    sys.stdout.flush()
    return EXIT_OK


class ExplainSink:
    """``--explain``: one line per finished stage that has a reason (why it ran or hit)."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = sys.stdout if out is None else out

    async def handle(self, event: Any, /) -> None:
        reason = getattr(event, "reason", None)
        status = getattr(event, "status", None)
        if reason is not None and status is not None and hasattr(event, "stage"):
            self._out.write(f"{event.stage} | why {status.value}: {reason}\n")
            self._out.flush()

    async def aclose(self) -> None:
        pass
