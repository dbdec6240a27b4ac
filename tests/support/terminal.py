"""A tiny terminal emulator: what a screen shows after rich's live display wrote to it."""

from __future__ import annotations

import re

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: just the controls rich's live display uses."""
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(raw):
        match = CSI.match(raw, i)
        if match:
            params, cmd = match.groups()
            if cmd == "A":
                row = max(0, row - int(params or "1"))
            elif cmd == "K":
                rows[row] = [] if params == "2" else rows[row][:col]
            i = match.end()
            continue
        ch = raw[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            while len(rows) <= row:
                rows.append([])
        else:
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    text = ["".join(line).rstrip() for line in rows]
    while text and not text[-1]:
        text.pop()
    return text


def assert_display_ended(raw: str) -> list[str]:
    assert "\x1b[?25l" in raw, "the live display never started"
    assert raw.rfind("\x1b[?25h") > raw.rfind("\x1b[?25l"), "the cursor was left hidden"
    lines = screen(raw)
    leftovers = [line for line in lines if "━" in line or "pending " in line]
    assert leftovers == [], "a live area was left on the screen"
    return lines
