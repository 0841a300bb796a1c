"""One self-contained HTML page from a :class:`~robust_ebm.reports.document.Document`.

Figures are embedded as base64 PNG data URIs, so the page opens from any folder, from a mail
attachment or a CI artifact, with no server and no network; no script runs in it.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from .document import Code, Document, Figure, Paragraph, Table

__all__ = ["render_html"]

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd;
     padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; } table { border-collapse: collapse; margin: .8em 0;
     font-size: 13px; } th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f6; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; } pre { background: #f6f6f8; padding: .8em;
     overflow-x: auto; font-size: 12px; }
"""


def _figure(fig: Figure, base: Path) -> str:
    data = (base / fig.path).read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = html.escape(fig.caption)
    return (f'<figure><img src="{uri}" alt="{cap}" data-file="{html.escape(fig.path)}">'
            f"<figcaption>{cap}</figcaption></figure>")


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in t.rows
    )
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: Document, base: str | os.PathLike[str]) -> str:
    """The page as a string; figure paths are read relative to ``base`` and embedded."""
    base = Path(base)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1><p>{html.escape(doc.intro)}</p>",
        "<nav>" + "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>'
                          for s in doc.sections) + "</nav>",
    ]
    for s in doc.sections:
        parts.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if isinstance(b, Paragraph):
                parts.append(f"<p>{html.escape(b.text)}</p>")
            elif isinstance(b, Table):
                parts.append(_table(b))
            elif isinstance(b, Figure):
                parts.append(_figure(b, base))
            elif isinstance(b, Code):
                parts.append(f"<pre>{html.escape(b.text)}</pre>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
