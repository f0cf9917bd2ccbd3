"""One report model (a tree of sections holding text, lists, tables and images) and its
renderers: Markdown, HTML, and a wandb run (the tables and images that carry a ``key``).

The report is built once as a ``Section`` tree; each renderer walks it. Text is a sequence of
inline parts: plain strings and ``Code`` spans.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Code:
    """An inline code span (a run label, an item id)."""

    text: str


Inline = str | Code


@dataclass
class Text:
    """A paragraph (or a note)."""

    parts: Sequence[Inline]


@dataclass
class Bullets:
    """A bulleted list; each item a sequence of inline parts."""

    items: list[Sequence[Inline]]


@dataclass
class Table:
    """A table of display strings; ``key`` names it in a wandb run (None: not logged)."""

    header: list[str]
    body: list[list[str]]
    key: str | None = None


@dataclass
class Image:
    """An image file, ``src`` relative to the report folder; ``key`` names it in a wandb run."""

    src: str
    alt: str
    key: str | None = None


@dataclass
class Section:
    """A heading and its content; nested sections are one heading level deeper. The root is the
    report (its title the page title and the level-1 heading)."""

    title: str
    children: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.children.extend(blocks)
        return self

    def walk(self) -> list[Block]:
        """Every block, depth first, in document order."""
        out: list[Block] = []
        for child in self.children:
            out.append(child)
            if isinstance(child, Section):
                out += child.walk()
        return out


Block = Text | Bullets | Table | Image | Section


# ------------------------------------------------------------------------------- Markdown
def _md_inline(parts: Sequence[Inline]) -> str:
    return "".join(f"`{p.text}`" if isinstance(p, Code) else p for p in parts)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A pipe table; ``|`` in cells escaped, newlines turned into spaces."""
    def esc(s: object) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def to_markdown(report: Section) -> str:
    """The report as Markdown: blocks separated by blank lines, ``#`` headings by depth."""
    lines: list[str] = []

    def emit(block: Block, level: int) -> None:
        if isinstance(block, Section):
            lines.extend(["#" * level + " " + block.title, ""])
            for child in block.children:
                emit(child, level + 1)
            return
        if isinstance(block, Text):
            lines.append(_md_inline(block.parts))
        elif isinstance(block, Bullets):
            lines.extend("- " + _md_inline(item) for item in block.items)
        elif isinstance(block, Table):
            lines.append(markdown_table(block.header, block.body))
        elif isinstance(block, Image):
            lines.append(f"![{block.alt}]({block.src})")
        lines.append("")

    emit(report, 1)
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------- HTML
STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)


def _html_inline(parts: Sequence[Inline]) -> str:
    return "".join(
        f"<code>{html.escape(p.text)}</code>" if isinstance(p, Code) else html.escape(p, quote=False) for p in parts
    )


def html_table(header: list[str], body: list[list[str]]) -> str:
    """A ``<table>`` with a head row; cells escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{rows}</tbody>\n</table>"


def to_html(report: Section) -> str:
    """The report as one self-contained HTML page (images linked by their relative paths)."""
    esc = html.escape
    lines = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(report.title)}</title>"
        f"<style>{STYLE}</style></head><body>"
    ]

    def emit(block: Block, level: int) -> None:
        if isinstance(block, Section):
            lines.append(f"<h{level}>{esc(block.title)}</h{level}>")
            for child in block.children:
                emit(child, level + 1)
        elif isinstance(block, Text):
            lines.append(f"<p>{_html_inline(block.parts)}</p>")
        elif isinstance(block, Bullets):
            lines.append("<ul>\n" + "\n".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "\n</ul>")
        elif isinstance(block, Table):
            lines.append(html_table(block.header, block.body))
        elif isinstance(block, Image):
            lines.append(f"<img src='{esc(block.src)}' alt='{esc(block.alt)}'>")

    emit(report, 1)
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- wandb
def to_wandb(report: Section, folder: Path, settings: dict[str, Any], name: str, config: dict[str, Any]) -> str:
    """Log the report's keyed tables and images (files under ``folder``) as one step of a new
    wandb run (``settings``: project, mode, entity); returns the run's local directory."""
    import wandb

    run = wandb.init(
        project=settings["project"],
        entity=settings.get("entity"),
        mode=settings["mode"],
        dir=str(folder),
        name=name,
        job_type="compare",
        config=config,
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    )
    try:
        payload: dict[str, Any] = {}
        for block in report.walk():
            if isinstance(block, Table) and block.key:
                payload[block.key] = wandb.Table(columns=block.header, data=block.body)
            elif isinstance(block, Image) and block.key:
                payload[block.key] = wandb.Image(str(folder / block.src))
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
