"""``report.html``: the report's sections as one self-contained page.

Figures are embedded (SVG as base64 data URIs, so their element ids never clash; PNG if the
SVG is missing), the CSS is inline, and nothing is fetched: the page opens offline, attached
to a mail or copied off a cluster.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.analysis.text import cell_text

__all__ = ["render"]

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 0 auto; padding: 1.5em 2em 4em; max-width: 1400px; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { border-bottom: 2px solid #dde; padding-bottom: .15em; margin-top: 1.8em; }
h3 { margin: 1.4em 0 .3em; }
nav { font-size: .9em; margin-bottom: 1em; }
nav a { margin-right: 1em; color: #2a5db0; text-decoration: none; }
code { background: #f2f2f5; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
blockquote { background: #fff4d6; border-left: 4px solid #e0a800; margin: 1em 0;
             padding: .5em 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0 1em; }
th, td { border: 1px solid #d8d8e0; padding: .25em .55em; text-align: left;
         vertical-align: top; }
th { background: #eef0f6; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td { white-space: nowrap; }
td.long { min-width: 22em; white-space: normal; }
tr.skipped td { color: #888; font-style: italic; }
tr.failed td { color: #a33; }
td.pareto { font-weight: 600; color: #1b7a3a; }
figure { margin: .5em 0 1.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .caption { color: #555; font-size: .9em; max-width: 60em; }
.omitted { color: #8a6d00; background: #fffbe8; padding: .4em .8em; border-radius: 4px; }
pre { background: #f6f6f9; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def _inline(text: str) -> str:
    """Escaped text with the Markdown the report uses: `code` and **bold**."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _paragraphs(text: str) -> str:
    out = []
    for block in filter(None, (b.strip() for b in text.split("\n\n"))):
        if block.startswith("> "):
            out.append(f"<blockquote>{_inline(block[2:])}</blockquote>")
        else:
            out.append(f"<p>{_inline(block)}</p>")
    return "\n".join(out)


def table(df: pd.DataFrame) -> str:
    """An HTML table (cells may hold `code`); skipped and failed cells' rows and Pareto marks
    get their own style, numbers align right."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        texts = [cell_text(v) for v in row]
        status = next((t.split(":")[0] for t in texts if t.startswith(("skipped:", "failed"))), "")
        tds = []
        for col, v, t in zip(df.columns, row, texts, strict=True):
            number = isinstance(v, int | float) and not isinstance(v, bool)
            cls = ("pareto" if col == "Pareto" and t else "num" if number
                   else "long" if len(t) > 40 else "")
            body = _inline(t).replace("\n", "<br>")
            tds.append(f'<td class="{cls}">{body}</td>' if cls else f"<td>{body}</td>")
        rows.append(f'<tr class="{status}">' if status else "<tr>")
        rows[-1] += "".join(tds) + "</tr>"
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table></div>")


def image(path: Path) -> str:
    """An ``<img>`` whose source is the file itself, as a base64 data URI."""
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(p) -> str:
    head = f"<h3>{html.escape(p.title, quote=False)}</h3>"
    if p.omitted:
        return head + (f'<p class="caption">{_inline(p.caption)}</p>'
                       f'<p class="omitted">Omitted: {_inline(p.omitted)}.</p>')
    src = p.svg if p.svg is not None and p.svg.is_file() else p.png
    return (f'{head}<figure><img alt="{html.escape(p.title)}" src="{image(src)}">'
            f"<figcaption>{_inline(p.caption)}</figcaption></figure>")


def render(title: str, sections: Sequence) -> str:
    """The whole page for ``sections`` (:class:`harness.report.markdown.Section`)."""
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        body.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title, quote=False)}</h2>')
        body.append(_paragraphs(s.text))
        if s.table is not None:
            body.append(table(s.table))
        body.extend(_figure(p) for p in s.plots)
        if s.raw:
            body.append(f"<details><summary>raw</summary><pre>{html.escape(s.raw)}</pre></details>")
        body.append("</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n" + "\n".join(body)
            + "\n</body></html>\n")
