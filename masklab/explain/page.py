"""The explanation on disk: one PNG per stage and ``index.html``, a self-contained page (images inlined as
data URIs, no script, no network) that shows them in order with their captions and counts."""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

from masklab.explain._figure import Picture
from masklab.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["Explanation", "write_pages", "render_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #222; }
section { margin: 2.5em 0; border-top: 1px solid #ddd; padding-top: 1em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
p.caption { font-size: 1.05em; line-height: 1.5; max-width: 70em; }
table.counts { border-collapse: collapse; font-size: 0.9em; }
table.counts td { border: 1px solid #ccc; padding: 2px 8px; }
"""


@dataclass(frozen=True)
class Explanation:
    """What :func:`write_pages` wrote: ``out`` (the folder), ``pictures`` (in order), ``paths`` (one PNG per
    picture), ``html`` (``out/index.html``) and ``counts`` (``out/counts.json``)."""

    out: Path
    pictures: list[Picture]
    paths: list[Path]
    html: Path
    counts: Path


def _counts_table(counts: dict[str, int]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k.replace('_', ' '))}</td><td>{v}</td></tr>" for k, v in counts.items())
    return f'<table class="counts">{rows}</table>' if rows else ""


def render_html(pictures: list[Picture], *, title: str, intro: str) -> str:
    """The page's text: every picture inlined (``data:image/png;base64``), caption and counts under it."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    for p in pictures:
        data = base64.b64encode(p.png).decode("ascii")
        parts.append(
            f"<section id='{p.name}'><h2>{html.escape(p.title)}</h2>"
            f"<img src='data:image/png;base64,{data}' alt='{html.escape(p.title)}'>"
            f"<p class='caption'>{html.escape(p.caption)}</p>{_counts_table(p.counts)}</section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_pages(pictures: list[Picture], out: str | os.PathLike, *, title: str, intro: str,
                counts: dict[str, int]) -> Explanation:
    """Write ``out/<name>.png`` per picture, ``out/index.html`` and ``out/counts.json`` (atomically)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_bytes(folder / f"{p.name}.png", p.png) for p in pictures]
    page = atomic_write_text(folder / "index.html", render_html(pictures, title=title, intro=intro))
    doc = {"counts": counts, "pictures": [{"file": f"{p.name}.png", "title": p.title, "caption": p.caption,
                                           "counts": p.counts} for p in pictures]}
    counts_path = atomic_write_json(folder / "counts.json", json.loads(json.dumps(doc)), indent=2)
    return Explanation(out=folder, pictures=pictures, paths=paths, html=page, counts=counts_path)
