"""Command stages and their process groups: no process outlives its stage (checked by PID).

Each shell prints its own pid first (``echo $$``): a command runs in a session of its
own, so that pid is also its process group's id, and /proc tells the group's members.
"""

from __future__ import annotations

import os
import sys
import time

import trio

import trio_pipeline as tp
from trio_pipeline.testing import RecordingSink


def stat_of(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after "(comm)": state, ppid, pgrp, ...; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (which nobody may reap in a container)."""
    fields = stat_of(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def group_members(root: int) -> set[int]:
    """Live processes of `root`'s group, and its live descendants wherever they are."""
    parents: dict[int, int] = {}
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_of(int(entry))) and fields[0] not in (b"Z", b"X"):
            parents[int(entry)] = int(fields[1])
            if int(fields[2]) == root:
                members.add(int(entry))
    for pid in parents:
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            members.add(pid)
    return members


class FirstLine(RecordingSink):
    """Records events; `line` is set to the stage's first log line once dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.line: str | None = None
        self.seen = trio.Event()

    async def handle(self, event: tp.Event, /) -> None:
        await super().handle(event)
        if isinstance(event, tp.StageLog) and self.line is None:
            self.line = event.message
            self.seen.set()


async def run_and_watch_group(
    pipe: tp.Pipeline, *, members: int
) -> tuple[tp.RunResult, set[int], FirstLine]:
    """Run `pipe`; while it runs, collect the command's group once it has `members` processes."""
    sink = FirstLine()
    seen: set[int] = set()
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        with trio.fail_after(20):
            await sink.seen.wait()
            assert sink.line is not None
            group = int(sink.line)
            while len(seen) < members:
                seen |= group_members(group)
                await trio.sleep(0.005)  # polling another process's state: no event exists
    return handle.result, seen, sink


async def test_timed_out_shell_leaves_no_process() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_command("w", ["sh", "-c", "echo $$; sleep 31; echo done"], timeout=0.5)
    result, pids, _ = await run_and_watch_group(pipe, members=2)  # sh and sleep
    assert isinstance(result.stages["w"].error, tp.StageTimeout)
    assert len(pids) == 2
    assert not [pid for pid in pids if alive(pid)]


async def test_term_ignoring_children_die_at_sigkill() -> None:
    pipe = tp.Pipeline("p")
    script = "trap '' TERM; echo $$; sleep 31; echo done"
    pipe.add_command("w", ["sh", "-c", script], timeout=0.5, grace_period=0.3)
    started = time.monotonic()
    result, pids, _ = await run_and_watch_group(pipe, members=2)
    assert time.monotonic() - started >= 0.8  # the timeout, then the whole grace period
    assert isinstance(result.stages["w"].error, tp.StageTimeout)
    assert not [pid for pid in pids if alive(pid)]


async def test_processes_left_behind_by_a_finished_command_are_stopped() -> None:
    pipe = tp.Pipeline("p")
    script = "echo $$; sleep 31 >/dev/null 2>&1 & echo started"
    pipe.add_command("w", ["sh", "-c", script], grace_period=0.3)
    sink = FirstLine()
    with trio.fail_after(20):
        result = await tp.run(pipe, sinks=[sink])
    assert result.stages["w"].status is tp.StageStatus.SUCCEEDED
    logs = [e.message for e in sink.events if isinstance(e, tp.StageLog)]
    ours = [line for line in logs if line.startswith("trio-pipeline: stopping")]
    assert len(ours) == 1  # said once, wherever it falls among the command's lines
    group = int(result.stages["w"].value.split()[0])
    assert not group_members(group)  # not even the backgrounded sleep


async def test_a_command_runs_in_a_session_of_its_own() -> None:
    # So a terminal's Ctrl-C reaches only the CLI's group, which decides what to stop.
    pipe = tp.Pipeline("p")
    pipe.add_command("w", [sys.executable, "-c", "import os; print(os.getpgrp(), os.getsid(0))"])
    result = await tp.run(pipe)
    group, session = map(int, result.stages["w"].value.split())
    assert group == session
    assert group != os.getpgrp()
    assert session != os.getsid(0)
