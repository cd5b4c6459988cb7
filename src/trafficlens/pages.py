"""Offline HTML pages and their figures: one style, PNGs inlined as data URIs (no network needed).

    page("Comparison", intro_html, table_html, [("caption", figure_png(fig)), ...])
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.id{color:#c0392b}"""


def page(title: str, intro: str, tables: str, figures: list[tuple[str, str]]) -> str:
    """A whole HTML page: a title, intro and tables (HTML), then one captioned image per figure."""
    body = "".join(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='{src}'>"
                   for caption, src in figures)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro}{tables}{body}</body></html>")


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, save_as: Path | None = None) -> str:
    """The figure as a PNG data URI (then closed); with `save_as` (a path without suffix) also
    written as .png and .svg files."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    if save_as is not None:
        save_as.parent.mkdir(parents=True, exist_ok=True)
        save_as.with_suffix(".png").write_bytes(buf.getvalue())
        fig.savefig(save_as.with_suffix(".svg"), format="svg", bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
