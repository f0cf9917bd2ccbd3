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
    """A table of display strings; ``key`` names it in a wandb run (None: not logged); the first
    ``key_columns`` columns name a row (the HTML page repeats them when it splits a wide table)."""

    header: list[str]
    body: list[list[str]]
    key: str | None = None
    key_columns: int = 1


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
#: the widest a table may be on the page (px): a 1400 px window less the page margins, with room
#: to spare for the estimate below
TABLE_WIDTH = 1200
#: text widths at the page's 13 px table font: average character width of cells and headers (px)
CHAR_PX, HEAD_CHAR_PX = 7.4, 8.0
#: a cell's padding and border (px), and the widest a key column gets before it wraps (characters;
#: the style's max-width of 22em, 286 px)
CELL_PAD_PX, KEY_COLUMN_CHARS = 14, 38
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1600px}"
    "p,li{overflow-wrap:anywhere;max-width:75em}"
    "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1em}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
    "th{background:#f3f3f3;white-space:normal;vertical-align:bottom}"
    "td.k,th.k{text-align:left;white-space:normal;min-width:4em;max-width:22em}"
    "tbody tr:nth-child(even){background:#fafafa}img{max-width:100%}"
)


def _head_width(text: str) -> float:
    """Estimated px of a header that may wrap at spaces, underscores and dots (its longest part)."""
    parts = text.replace("_", "_ ").replace(".", ". ").split()
    return max((len(p) for p in parts), default=0) * HEAD_CHAR_PX + CELL_PAD_PX


def column_widths(header: list[str], body: list[list[str]], key_columns: int = 1) -> list[float]:
    """Estimated px width of each column (cells do not wrap, but key columns wrap at their
    maximum width; headers wrap at word parts)."""
    widths = []
    for j, h in enumerate(header):
        longest = max((len(row[j]) for row in body if j < len(row)), default=0)
        if j < key_columns:
            longest = min(longest, KEY_COLUMN_CHARS)
        widths.append(max(longest * CHAR_PX + CELL_PAD_PX, _head_width(h)))
    return widths


def split_columns(
    header: list[str], body: list[list[str]], key_columns: int, width: float = TABLE_WIDTH
) -> list[list[int]]:
    """Column indices of the parts a table is shown in: all of it when it fits ``width`` px,
    else the key columns followed by as many of the other columns as fit, part after part."""
    widths = column_widths(header, body, key_columns)
    keys = list(range(min(key_columns, len(header))))
    if sum(widths) <= width or len(keys) == len(header):
        return [list(range(len(header)))]
    parts: list[list[int]] = []
    used = sum(widths[j] for j in keys)
    current: list[int] = []
    for j in range(len(keys), len(header)):
        if current and used + widths[j] > width:
            parts.append(keys + current)
            current, used = [], sum(widths[k] for k in keys)
        current.append(j)
        used += widths[j]
    parts.append(keys + current)
    return parts


def _html_inline(parts: Sequence[Inline]) -> str:
    return "".join(
        f"<code>{html.escape(p.text)}</code>" if isinstance(p, Code) else html.escape(p, quote=False) for p in parts
    )


def _head_html(text: str) -> str:
    """A header cell's text, escaped, with break opportunities after underscores and dots."""
    return html.escape(text).replace("_", "_<wbr>").replace(".", ".<wbr>")


def html_table(header: list[str], body: list[list[str]], key_columns: int | None = None) -> str:
    """A ``<table>`` with a head row; cells escaped. With ``key_columns``, a table too wide for
    the page (``TABLE_WIDTH``) is shown as several tables, each repeating the key columns."""
    parts = split_columns(header, body, key_columns) if key_columns is not None else [list(range(len(header)))]
    keys = key_columns or 0

    def tag(name: str, j: int) -> str:  # key columns are left-aligned and wrap
        return f"<{name} class='k'>" if j < keys else f"<{name}>"

    tables = []
    for cols in parts:
        head = "".join(f"{tag('th', j)}{_head_html(header[j])}</th>" for j in cols)
        rows = "".join(
            "<tr>" + "".join(f"{tag('td', j)}{html.escape(row[j])}</td>" for j in cols) + "</tr>" for row in body
        )
        tables.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{rows}</tbody>\n</table>")
    return "\n".join(tables)


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
            lines.append(html_table(block.header, block.body, block.key_columns))
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
