"""Reading an HTML run report back: its timeline rows, status counts and outside references."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any


class PageParser(HTMLParser):
    """The timeline's rows (name, status, bar and marker classes, tooltips) and page facts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.external: list[str] = []
        self.titles: list[str] = []
        self._row: dict[str, Any] | None = None
        self._want_name = False
        self._chip: str | None = None
        self._text: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        for key in ("src", "href"):
            value = a.get(key) or ""
            if value and not value.startswith("#"):
                self.external.append(value)
        if tag == "link":
            self.external.append(str(a))
        if a.get("title"):
            self.titles.append(a["title"] or "")
        if tag == "div" and "r" in classes:
            self._row = {"status": a.get("data-status"), "bars": [], "marks": [], "waits": 0}
            self._want_name = True
        elif self._row is not None and tag == "i" and "b" in classes:
            self._row["bars"].append((classes[1], a.get("title", "")))
        elif self._row is not None and tag == "i" and "w" in classes:
            self._row["waits"] += 1
        elif self._row is not None and tag == "b" and "m" in classes:
            self._row["marks"].append(classes[1])
        elif tag == "span" and "chip" in classes:
            self._chip = a.get("data-status")
            self._text = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._want_name and self._row is not None and data.strip():
            self.rows[data] = self._row
            self._want_name = False
        if self._chip is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._chip is not None:
            self.counts[self._chip] = int("".join(self._text).split()[0].replace(",", ""))
            self._chip = None


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser
