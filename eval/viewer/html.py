"""The pieces every viewer page is made of: escaping, inline images, tables and the page shell.

Pages are self-contained: styles and the little script live in the page, images are PNG data
URIs, plots are inline SVG (HTML5 needs no ``xmlns`` for it), so a page opens from disk with no
network and names no ``http(s)://`` address.

API:
- ``esc(value) -> str`` — text made safe for HTML (quotes included).
- ``png_data_uri(image) -> str`` — an ``HxWx3`` uint8 array or a PIL image as a ``data:`` URI.
- ``img(image, *, alt, cls="", title="") -> str`` — an ``<img>`` tag with the image inline.
- ``table(header, rows, *, cls="") -> str`` — cells are HTML (escape text with :func:`esc`).
- ``page(title, body, *, script="") -> str`` — the whole document.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px; color: #222;
       background: #fafafa; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #555; margin: .2rem 0 1rem; } .meta b { color: #222; }
.badge { display: inline-block; padding: .1rem .5rem; border-radius: .6rem; font-weight: 600;
         font-size: .85rem; }
.ok { background: #d7f3dc; color: #14632a; } .fail { background: #fbdcdc; color: #8a1c1c; }
pre.reasoning { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; padding: .6rem;
                border-radius: .3rem; font-size: .95rem; margin: .3rem 0; }
figure { display: inline-block; margin: 0 .6rem .6rem 0; text-align: center; vertical-align: top; }
figcaption { font-size: .8rem; color: #555; max-width: 260px; }
img.view { width: 256px; height: auto; image-rendering: pixelated; border: 1px solid #ccc;
           background: #fff; }
.plan { background: #fff; border: 1px solid #ddd; border-radius: .4rem; padding: .6rem .8rem;
        margin: .8rem 0; } .plan.current { border-color: #1f6feb; box-shadow: 0 0 0 2px #cfe0ff; }
.plan h3 { font-size: 1rem; margin: 0 0 .3rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; background: #fff; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; font-size: .9rem; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.failure td { background: #fff4f4; }
.plots { display: flex; flex-wrap: wrap; gap: .6rem; } svg.chart { background: #fff;
         border: 1px solid #ddd; } svg.chart text { font-size: 11px; fill: #444; }
.scrub { display: flex; align-items: center; gap: .8rem; margin: .4rem 0; }
.scrub input[type=range] { flex: 1; } .frame { display: none; } .frame.shown { display: block; }
.frames { display: flex; gap: .6rem; } .legend span { margin-right: 1rem; font-size: .85rem; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: .2rem;
          vertical-align: middle; margin-right: .3rem; }
a { color: #1f5fbf; }
"""


def esc(value: object) -> str:
    """``value`` as text that is safe inside HTML elements and attributes."""
    return html.escape(str(value), quote=True)


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    """A PNG ``data:`` URI of an ``HxWx3`` uint8 array or a PIL image."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def img(image: np.ndarray | Image.Image, *, alt: str, cls: str = "", title: str = "") -> str:
    """An ``<img>`` holding ``image`` inline; ``cls`` adds classes to ``view``."""
    classes = " ".join(["view", cls]).strip()
    tip = f' title="{esc(title)}"' if title else ""
    return f'<img class="{esc(classes)}" alt="{esc(alt)}"{tip} src="{png_data_uri(image)}">'


def figure(content: str, caption: str) -> str:
    """``content`` (HTML) above an escaped caption."""
    return f"<figure>{content}<figcaption>{esc(caption)}</figcaption></figure>"


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "", row_classes: Sequence[str] = ()
) -> str:
    """A table whose header cells are text and whose body cells are HTML; ``row_classes[i]`` styles row i."""
    head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
    body = []
    for i, row in enumerate(rows):
        style = row_classes[i] if i < len(row_classes) and row_classes[i] else ""
        attribute = f' class="{esc(style)}"' if style else ""
        body.append(f"<tr{attribute}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    attribute = f' class="{esc(cls)}"' if cls else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str, *, script: str = "") -> str:
    """A complete HTML document with the viewer's style and, when given, an inline script."""
    code = f"<script>{script}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f'<body data-emcot-view="1">{body}{code}</body></html>\n'
    )
