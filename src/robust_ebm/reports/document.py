"""A report as data: sections of headings, text, tables, figures and code, rendered twice.

:func:`robust_ebm.reports.html.render_html` writes one self-contained HTML page (figures inline
as base64 PNG); :func:`render_markdown` writes its Markdown twin (figures as relative links) for
terminals and diffs. Text is plain: renderers escape it, so no markup leaks between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Code", "Document", "Figure", "Paragraph", "Section", "Table", "render_markdown"]


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG file, ``path`` relative to the report's folder."""

    path: str
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Paragraph | Table | Figure | Code


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    blocks: Sequence[Block] = field(default_factory=tuple)


@dataclass(frozen=True)
class Document:
    title: str
    intro: str
    sections: Sequence[Section]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document) -> str:
    """The Markdown twin of ``doc`` (GitHub-flavoured tables, figures as relative links)."""
    out = [f"# {doc.title}", "", doc.intro, ""]
    out += ["Contents: " + " · ".join(f"[{s.title}](#{s.anchor})" for s in doc.sections), ""]
    for s in doc.sections:
        out += [f'<a id="{s.anchor}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Paragraph):
                out += [b.text, ""]
            elif isinstance(b, Table):
                if b.caption:
                    out += [f"*{b.caption}*", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                out.append("|" + "---|" * len(b.header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
                out.append("")
            elif isinstance(b, Figure):
                out += [f"![{_md_cell(b.caption)}]({b.path})", "", f"*{b.caption}*", ""]
            elif isinstance(b, Code):
                out += ["```", b.text.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"
